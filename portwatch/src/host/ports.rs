//! Port sets: `ip_local_port_range` / `ip_local_reserved_ports` arithmetic.
//!
//! A `PortSet` is a sorted list of disjoint, non-adjacent inclusive ranges,
//! written the way the kernel writes `ip_local_reserved_ports`
//! (`8080,30000-32767`; empty when nothing is reserved).

use std::fmt;

use anyhow::{bail, Context as _, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    /// Sorted, disjoint, never adjacent: `(lo, hi)` inclusive.
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn new() -> PortSet {
        PortSet::default()
    }

    pub fn range(lo: u16, hi: u16) -> PortSet {
        if lo > hi {
            return PortSet::new();
        }
        PortSet {
            ranges: vec![(lo, hi)],
        }
    }

    /// From any list of ranges (overlapping, unsorted, adjacent: all fine).
    pub fn from_ranges(it: impl IntoIterator<Item = (u16, u16)>) -> PortSet {
        let mut v: Vec<(u16, u16)> = it.into_iter().filter(|(a, b)| a <= b).collect();
        v.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        PortSet { ranges: out }
    }

    /// Parses the kernel's list syntax: `8080,30000-32767`, blank or empty
    /// for none. Whitespace around items and a trailing newline are fine.
    pub fn parse(s: &str) -> Result<PortSet> {
        let mut v = vec![];
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (item, item),
            };
            let lo: u16 = lo
                .parse()
                .with_context(|| format!("bad port {lo:?} in {item:?}"))?;
            let hi: u16 = hi
                .parse()
                .with_context(|| format!("bad port {hi:?} in {item:?}"))?;
            if lo > hi {
                bail!("backwards range {item:?}");
            }
            v.push((lo, hi));
        }
        Ok(PortSet::from_ranges(v))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ports.
    pub fn len(&self) -> u32 {
        self.ranges
            .iter()
            .map(|&(a, b)| b as u32 - a as u32 + 1)
            .sum()
    }

    /// The ranges, `(lo, hi)` inclusive, sorted and disjoint.
    pub fn spans(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Every port, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| lo..=hi)
    }

    pub fn contains(&self, p: u16) -> bool {
        // Few ranges in practice; binary search keeps a big list cheap too.
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < p {
                    std::cmp::Ordering::Less
                } else if lo > p {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::from_ranges(self.ranges.iter().chain(other.ranges.iter()).copied())
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut out = vec![];
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a0, a1) = self.ranges[i];
            let (b0, b1) = other.ranges[j];
            let lo = a0.max(b0);
            let hi = a1.min(b1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet { ranges: out }
    }

    /// The ports of `self` that are not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = vec![];
        for &(lo, hi) in &self.ranges {
            let mut cur = lo as u32;
            let hi = hi as u32;
            for &(b0, b1) in &other.ranges {
                let (b0, b1) = (b0 as u32, b1 as u32);
                if b1 < cur || b0 > hi {
                    continue;
                }
                if b0 > cur {
                    out.push((cur as u16, (b0 - 1) as u16));
                }
                cur = b1 + 1;
                if cur > hi {
                    break;
                }
            }
            if cur <= hi {
                out.push((cur as u16, hi as u16));
            }
        }
        PortSet { ranges: out }
    }
}

impl fmt::Display for PortSet {
    /// The kernel's own syntax, ready for `sysctl -w`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// `--nodeport-range` style `LO-HI`.
pub fn parse_lo_hi(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| "expected LO-HI, e.g. 30000-32767".to_string())?;
    let lo: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let hi: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if lo > hi || lo == 0 {
        return Err(format!("{s:?}: expected 1 <= LO <= HI <= 65535"));
    }
    Ok((lo, hi))
}

/// The ports a connect() may pick in `range` once `reserved` is taken out.
pub fn usable(range: (u16, u16), reserved: &PortSet) -> PortSet {
    PortSet::range(range.0, range.1).minus(reserved)
}

/// Guarded ports (NodePorts, IPVS ports) that a connect() could still take
/// as its source port: inside `range` and not reserved. With them, the
/// `ip_local_reserved_ports` value that closes the gap while keeping every
/// port already reserved. `None` when nothing is exposed.
pub fn exposed_guarded(
    range: (u16, u16),
    reserved: &PortSet,
    guarded: &PortSet,
) -> Option<(PortSet, PortSet)> {
    let exposed = PortSet::range(range.0, range.1)
        .intersect(guarded)
        .minus(reserved);
    (!exposed.is_empty()).then(|| (exposed, reserved.union(guarded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(s: &str) -> PortSet {
        PortSet::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_the_kernel_syntax() {
        assert_eq!(ps("8080,30000-32767").to_string(), "8080,30000-32767");
        assert_eq!(ps("").to_string(), "");
        assert_eq!(ps("\n").len(), 0);
        assert!(ps("").is_empty());
        assert_eq!(ps("30000-32767\n").len(), 2768);
        // Unsorted, overlapping and adjacent items come out merged.
        assert_eq!(ps("9,1-3,4,2-2,10-12,7").to_string(), "1-4,7,9-12");
        assert_eq!(ps(" 5 , 6 ").to_string(), "5-6");
        assert_eq!(ps("65535,0").to_string(), "0,65535");
        for bad in ["x", "1-", "-5", "5-4", "70000", "1,,x"] {
            assert!(PortSet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_and_len() {
        let s = ps("8080,30000-32767");
        assert!(s.contains(8080) && s.contains(30000) && s.contains(32767));
        assert!(!s.contains(8079) && !s.contains(8081) && !s.contains(32768));
        assert!(!s.contains(0) && !PortSet::new().contains(0));
        assert_eq!(s.len(), 2769);
        assert_eq!(PortSet::range(0, 65535).len(), 65536);
    }

    #[test]
    fn overlap_of_range_and_nodeports() {
        let range = PortSet::range(1024, 65535);
        let nodeports = PortSet::range(30000, 32767);
        assert_eq!(range.intersect(&nodeports), nodeports);
        // The default range does not touch the NodePorts.
        assert!(PortSet::range(32768, 60999)
            .intersect(&nodeports)
            .is_empty());
        // Partly reserved: what is left uncovered.
        let reserved = ps("8080,30000-30999");
        let gap = range.intersect(&nodeports).minus(&reserved);
        assert_eq!(gap.to_string(), "31000-32767");
        assert_eq!(
            ps("1-10,20-30").intersect(&ps("5-25,28")).to_string(),
            "5-10,20-25,28"
        );
        assert!(ps("1-3").intersect(&ps("4-5")).is_empty());
    }

    #[test]
    fn minus_cuts_holes_and_edges() {
        assert_eq!(ps("1-10").minus(&ps("3,5-6")).to_string(), "1-2,4,7-10");
        assert_eq!(ps("1-10").minus(&ps("1-10")).to_string(), "");
        assert_eq!(ps("1-10").minus(&ps("0-1,10-20")).to_string(), "2-9");
        assert_eq!(ps("0-65535").minus(&ps("65535")).to_string(), "0-65534");
        assert_eq!(ps("0-65535").minus(&ps("0")).to_string(), "1-65535");
        assert_eq!(ps("5").minus(&PortSet::new()).to_string(), "5");
        // Usable ports: the range less the reserved ports inside it.
        assert_eq!(usable((42000, 42005), &ps("42005,8080")).len(), 5);
    }

    #[test]
    fn merge_keeps_existing_reservations() {
        let existing = ps("8080,31000-31010");
        let merged = existing.union(&PortSet::range(30000, 32767));
        assert_eq!(merged.to_string(), "8080,30000-32767");
        assert_eq!(merged.intersect(&existing), existing, "nothing dropped");
        assert_eq!(
            ps("1-2").union(&ps("3")).to_string(),
            "1-3",
            "adjacent ranges join"
        );
    }

    #[test]
    fn lo_hi_argument() {
        assert_eq!(parse_lo_hi("30000-32767"), Ok((30000, 32767)));
        assert!(parse_lo_hi("32767-30000").is_err());
        assert!(parse_lo_hi("30000").is_err());
        assert!(parse_lo_hi("0-5").is_err());
    }

    #[test]
    fn exposed_guarded_ports_and_the_reservation_that_closes_them() {
        let g = ps("30000-32767");
        assert_eq!(exposed_guarded((32768, 60999), &ps(""), &g), None);
        let (exp, fix) = exposed_guarded((1024, 65535), &ps("8080,31000-31999"), &g).unwrap();
        assert_eq!(exp.to_string(), "30000-30999,32000-32767");
        assert_eq!(fix.to_string(), "8080,30000-32767");
        assert_eq!(exposed_guarded((1024, 65535), &fix, &g), None);
    }
}
