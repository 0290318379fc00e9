//! The periodic look at every netns of the node: ports in use toward each
//! destination and ports usable (every `--scan-interval`), and the `check`
//! audit (every `--check-interval`). Blocking work (setns, netlink, /proc):
//! `serve` runs it on a blocking thread.

use crate::{
    host::{
        discover,
        holders::Holders,
        ports::{self, PortSet},
        sockdiag::Sock,
        usage::{self, DestUse},
    },
    k8s::pods::{self, Pod},
    pipeline::findings,
};

/// One netns as a pass saw it.
pub struct NetnsPass {
    pub ino: u32,
    /// Whose pod it is (uid and ids from the cgroup of a process in it;
    /// names are the caller's to add).
    pub pod: Option<Pod>,
    pub usable: u32,
    /// Most used first, at most the bound.
    pub top: Vec<DestUse>,
    /// (check, severity) of each finding, when the check ran.
    pub findings: Vec<(&'static str, &'static str)>,
}

/// What one pass found.
pub struct Pass {
    pub netns: Vec<NetnsPass>,
    /// The check ran in this pass.
    pub checked: bool,
    /// Netns that could not be read (gone meanwhile, or unreadable).
    pub errors: u64,
}

/// The `max` destinations with the most ephemeral ports in use (the
/// counting rule is `usage::group`'s: what `ss -tan` shows).
pub fn top_destinations(socks: &[Sock], usable: &PortSet, max: usize) -> Vec<DestUse> {
    let mut v = usage::group(socks, usable, None);
    v.truncate(max);
    v
}

pub struct Options {
    pub max_destinations: usize,
    pub nodeport_range: (u16, u16),
}

/// One pass over every netns; the check too when `with_check`.
pub fn pass(opts: &Options, with_check: bool) -> Pass {
    let mut out = Pass {
        netns: vec![],
        checked: with_check,
        errors: 0,
    };
    let targets = match discover::discover(&[]) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("listing network namespaces: {e:#}");
            out.errors += 1;
            return out;
        }
    };
    let guarded = {
        let g = PortSet::range(opts.nodeport_range.0, opts.nodeport_range.1);
        match discover::ipvs_ports() {
            Some(p) => g.union(&p),
            None => g,
        }
    };
    let holders = with_check.then(Holders::new);
    for t in &targets {
        let st = match discover::read_state(t) {
            Ok(st) => st,
            Err(e) => {
                log::info!("scan: netns {} ({}): {e:#}", t.ino, t.place);
                out.errors += 1;
                continue;
            }
        };
        let usable = ports::usable(st.range, &st.reserved);
        let top = match &st.socks {
            Ok(socks) => top_destinations(socks, &usable, opts.max_destinations),
            Err(e) => {
                log::info!("scan: {e}");
                out.errors += 1;
                vec![]
            }
        };
        let findings = match &holders {
            Some(h) => findings::findings_for(t, &st, &guarded, h)
                .iter()
                .map(|f| (f.check, f.severity.name()))
                .collect(),
            None => vec![],
        };
        out.netns.push(NetnsPass {
            ino: t.ino,
            pod: t.pid.and_then(pods::of_pid),
            usable: usable.len(),
            top,
            findings,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(sport: u16, dst: &str) -> Sock {
        Sock {
            state: 1,
            src: "10.0.0.2".parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport: 80,
            inode: 0,
            uid: 0,
        }
    }

    #[test]
    fn top_keeps_the_most_used_within_the_bound() {
        let usable = PortSet::range(20000, 29999);
        // 1,000 destinations with one port each, one with three.
        let mut socks: Vec<Sock> = (0..1000u16)
            .map(|i| sock(20000 + i, &format!("10.1.{}.{}", i / 250, i % 250)))
            .collect();
        socks.push(sock(21000, "10.1.3.7"));
        socks.push(sock(21001, "10.1.3.7"));
        let top = top_destinations(&socks, &usable, 20);
        assert_eq!(top.len(), 20);
        assert_eq!(
            top[0],
            DestUse {
                daddr: "10.1.3.7".parse().unwrap(),
                dport: 80,
                in_use: 3
            }
        );
        assert!(top[1..].iter().all(|d| d.in_use == 1));
    }
}
