//! Who last wrote each port sysctl, per netns. `serve` keeps the last few
//! writes of every netns (`Journal`) and saves them, as the same
//! `sysctl_write` JSON lines it prints, to `sysctl-writes.jsonl` in its
//! state directory; `check` reads that file back (`load`) and gives each
//! finding the last write of the sysctl the finding is about (`last_of`).
//!
//! The file is rewritten whole (a temporary file renamed over it), so a
//! reader never sees half of it. Entries of a netns that has gone are
//! dropped at the next scan, since the kernel reuses netns inodes.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    host::{netns::parse_port_range, ports::PortSet},
    pipeline::{
        sink::json::sysctl_line,
        sysctl::{Name, SysctlWrite},
    },
};

/// Where `serve` keeps what outlives one scan (and `check` looks).
pub const DEFAULT_STATE_DIR: &str = "/run/portwatch";
/// The file of last writes in the state directory.
pub const FILE_NAME: &str = "sysctl-writes.jsonl";
/// Writes kept per netns and sysctl.
pub const KEEP: usize = 4;
/// Netns kept at most; past it the netns written to longest ago goes.
pub const MAX_NETNS: usize = 4096;
/// The largest file `load` reads: KEEP x 4 sysctls x MAX_NETNS lines of
/// well under 1 KiB each, with room to spare.
const MAX_FILE: u64 = 64 << 20;

/// The default file of last writes.
pub fn default_file() -> PathBuf {
    Path::new(DEFAULT_STATE_DIR).join(FILE_NAME)
}

/// The last `KEEP` writes of each (netns, sysctl), as JSON lines.
#[derive(Default)]
pub struct Journal {
    entries: HashMap<(u32, Name), VecDeque<(u64, String)>>,
    dirty: bool,
}

impl Journal {
    /// Keeps `w` (writes without a netns cannot be matched to one: dropped).
    pub fn record(&mut self, w: &SysctlWrite) {
        let Some(ns) = w.netns else { return };
        let q = self.entries.entry((ns, w.name)).or_default();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back((w.time_ns, sysctl_line(w)));
        self.dirty = true;
        self.bound();
    }

    /// At most MAX_NETNS netns: the ones written to longest ago go first.
    fn bound(&mut self) {
        let mut newest: HashMap<u32, u64> = HashMap::new();
        if self.entries.len() <= MAX_NETNS {
            return;
        }
        for ((ns, _), q) in &self.entries {
            let t = q.back().map_or(0, |e| e.0);
            let n = newest.entry(*ns).or_default();
            *n = (*n).max(t);
        }
        if newest.len() <= MAX_NETNS {
            return;
        }
        let mut by_age: Vec<(u64, u32)> = newest.into_iter().map(|(ns, t)| (t, ns)).collect();
        by_age.sort_unstable();
        let cut = by_age.len() - MAX_NETNS;
        let gone: std::collections::HashSet<u32> = by_age[..cut].iter().map(|e| e.1).collect();
        self.entries.retain(|(ns, _), _| !gone.contains(ns));
    }

    /// Drops the writes of every netns for which `live` is false.
    pub fn retain_netns(&mut self, live: impl Fn(u32) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|(ns, _), _| live(*ns));
        self.dirty |= self.entries.len() != before;
    }

    /// The file's contents, oldest write first, when something changed
    /// since the last call.
    pub fn take_dirty(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let mut all: Vec<&(u64, String)> = self.entries.values().flatten().collect();
        all.sort_by_key(|e| e.0);
        let mut out = String::with_capacity(all.iter().map(|e| e.1.len() + 1).sum());
        for (_, line) in all {
            out.push_str(line);
            out.push('\n');
        }
        Some(out)
    }
}

/// Replaces `path` with `contents` in one rename.
pub fn save(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_data()?;
    fs::rename(&tmp, path)
}

/// A write as `check` reads it back from the file: the fields of a
/// `sysctl_write` record that say who did what, plus whether the sysctl
/// still holds what that write set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastWrite {
    pub time: String,
    pub name: String,
    pub old: Option<String>,
    pub new: String,
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    /// The writer's pod object as the write's record has it.
    pub pod: Option<serde_json::Value>,
    pub netns: u32,
    pub verdict: Option<String>,
    pub refused: bool,
    /// Filled by `check`: the sysctl still holds `new` (false: something
    /// portwatch did not see changed it since).
    #[serde(default)]
    pub current: Option<bool>,
}

impl LastWrite {
    /// "pod NAMESPACE/NAME" or "pod UID" or "host", for the table.
    pub fn who(&self) -> String {
        let Some(p) = &self.pod else {
            return "host".into();
        };
        match (
            p["namespace"].as_str(),
            p["name"].as_str(),
            p["uid"].as_str(),
        ) {
            (Some(ns), Some(n), _) => format!("pod {ns}/{n}"),
            (_, _, Some(uid)) => format!("pod {uid}"),
            _ => "pod ?".into(),
        }
    }

    /// Whether the sysctl as read now (`range`, `reserved`, `tw_reuse`)
    /// holds what this write set; None for a sysctl check does not read.
    pub fn holds(
        &self,
        range: (u16, u16),
        reserved: &PortSet,
        tw_reuse: Option<u32>,
    ) -> Option<bool> {
        let n = &self.new;
        if self.name == Name::PortRange.dotted() {
            Some(parse_port_range(n) == Some(range))
        } else if self.name == Name::ReservedPorts.dotted() {
            Some(PortSet::parse(n.trim()).is_ok_and(|p| &p == reserved))
        } else if self.name == Name::TwReuse.dotted() {
            Some(tw_reuse.is_some() && n.trim().parse::<u32>().ok() == tw_reuse)
        } else {
            None
        }
    }
}

/// What `load` found.
pub struct Loaded {
    pub writes: Vec<LastWrite>,
    /// Lines that were not a readable sysctl_write record.
    pub skipped: usize,
}

/// The writes `serve` kept at `path`; None when there is no such file
/// (no `serve` on this node, or it has seen no write yet).
pub fn load(path: &Path) -> Result<Option<Loaded>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut text = String::new();
    f.take(MAX_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(parse(&text)))
}

/// The records of a last-writes file; lines that are not one are counted.
pub fn parse(text: &str) -> Loaded {
    let mut writes = vec![];
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["kind"] == "sysctl_write" => match serde_json::from_value::<LastWrite>(v) {
                Ok(w) => writes.push(w),
                Err(_) => skipped += 1,
            },
            _ => skipped += 1,
        }
    }
    Loaded { writes, skipped }
}

/// The last write that went through to one of `names` in `netns`
/// (refused ones changed nothing).
pub fn last_of<'a>(writes: &'a [LastWrite], netns: u32, names: &[Name]) -> Option<&'a LastWrite> {
    writes
        .iter()
        .filter(|w| w.netns == netns && !w.refused)
        .filter(|w| names.iter().any(|n| n.dotted() == w.name))
        // RFC 3339 in UTC with fixed width: text order is time order.
        .max_by(|a, b| a.time.cmp(&b.time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sysctl::tests::sample_write;

    fn write(ns: u32, name: Name, t: u64, new: &str) -> SysctlWrite {
        let mut w = sample_write();
        w.netns = Some(ns);
        w.name = name;
        w.time_ns = t;
        w.new = new.into();
        w
    }

    #[test]
    fn keeps_the_last_few_per_netns_and_sysctl_and_reads_them_back() {
        let mut j = Journal::default();
        assert_eq!(j.take_dirty(), None);
        for i in 0..(KEEP as u64 + 2) {
            j.record(&write(
                7,
                Name::PortRange,
                1_000_000_000 * (i + 1),
                &format!("1024 {}", 60000 + i),
            ));
        }
        j.record(&write(
            7,
            Name::ReservedPorts,
            50_000_000_000,
            "30000-32767",
        ));
        j.record(&write(8, Name::PortRange, 60_000_000_000, "1024 65535"));
        let text = j.take_dirty().unwrap();
        assert_eq!(j.take_dirty(), None, "unchanged: nothing to save");
        let l = parse(&text);
        assert_eq!(l.skipped, 0);
        assert_eq!(l.writes.len(), KEEP + 2);
        let last = last_of(&l.writes, 7, &[Name::PortRange]).unwrap();
        assert_eq!(last.new, format!("1024 {}", 60000 + KEEP as u64 + 1));
        assert_eq!(last.comm, "sysctl");
        let either = last_of(&l.writes, 7, &[Name::PortRange, Name::ReservedPorts]).unwrap();
        assert_eq!(either.name, "net.ipv4.ip_local_reserved_ports");
        assert!(last_of(&l.writes, 9, &Name::ALL).is_none());
        assert!(last_of(&l.writes, 8, &[Name::TwReuse]).is_none());

        j.retain_netns(|ns| ns == 8);
        let l = parse(&j.take_dirty().unwrap());
        assert_eq!(l.writes.len(), 1);
        assert_eq!(l.writes[0].netns, 8);
    }

    #[test]
    fn refused_writes_changed_nothing() {
        let mut j = Journal::default();
        j.record(&write(7, Name::PortRange, 1, "40000 40001"));
        let mut r = write(7, Name::PortRange, 2, "1024 65535");
        r.refused = true;
        j.record(&r);
        let l = parse(&j.take_dirty().unwrap());
        assert_eq!(
            last_of(&l.writes, 7, &[Name::PortRange]).unwrap().new,
            "40000 40001"
        );
    }

    #[test]
    fn the_oldest_netns_go_past_the_bound() {
        let mut j = Journal::default();
        for ns in 0..(MAX_NETNS as u32 + 3) {
            j.record(&write(ns, Name::PortRange, 1 + ns as u64, "1024 65535"));
        }
        let l = parse(&j.take_dirty().unwrap());
        assert_eq!(l.writes.len(), MAX_NETNS);
        assert!(l.writes.iter().all(|w| w.netns >= 3));
    }

    #[test]
    fn holds_compares_with_what_the_netns_has_now() {
        let l = parse(&{
            let mut j = Journal::default();
            j.record(&write(1, Name::PortRange, 1, "1024 65535"));
            j.record(&write(1, Name::ReservedPorts, 2, "30000-32767,8080"));
            j.record(&write(1, Name::TwReuse, 3, "1"));
            j.take_dirty().unwrap()
        });
        let res = PortSet::parse("8080,30000-32767").unwrap();
        let h: Vec<Option<bool>> = l
            .writes
            .iter()
            .map(|w| w.holds((1024, 65535), &res, Some(1)))
            .collect();
        assert_eq!(h, vec![Some(true); 3]);
        let h: Vec<Option<bool>> = l
            .writes
            .iter()
            .map(|w| w.holds((32768, 60999), &PortSet::default(), Some(2)))
            .collect();
        assert_eq!(h, vec![Some(false); 3]);
    }

    #[test]
    fn junk_lines_are_counted_not_fatal() {
        let l = parse("not json\n{\"kind\":\"connect\"}\n{\"kind\":\"sysctl_write\"}\n\n");
        assert_eq!((l.writes.len(), l.skipped), (0, 3));
    }

    #[test]
    fn who_names_the_pod_as_well_as_it_is_known() {
        let mut l = parse(&{
            let mut j = Journal::default();
            j.record(&write(1, Name::PortRange, 1, "1024 65535"));
            j.take_dirty().unwrap()
        });
        let w = &mut l.writes[0];
        w.pod = None;
        assert_eq!(w.who(), "host");
        w.pod = Some(serde_json::json!({"uid": "u-1", "namespace": null, "name": null}));
        assert_eq!(w.who(), "pod u-1");
        w.pod =
            Some(serde_json::json!({"uid": "u-1", "namespace": "kube-system", "name": "tuner"}));
        assert_eq!(w.who(), "pod kube-system/tuner");
    }
}
