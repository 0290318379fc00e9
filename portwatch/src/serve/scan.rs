//! The periodic look at every netns of the node: ports in use toward each
//! destination and ports usable (every `--scan-interval`), and the `check`
//! audit (every `--check-interval`). Blocking work (setns, netlink, /proc):
//! `serve` runs it on a blocking thread.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    check,
    holders::Holders,
    pods::{self, Pod},
    ports::{self, PortSet},
    sockdiag::{Sock, STATE_LISTEN},
};

use super::metrics::{pod_labels, FindingLabels, NetnsUsage};

/// What one pass found.
pub struct Pass {
    pub usage: Vec<NetnsUsage>,
    /// Set when the check ran in this pass.
    pub findings: Option<Vec<(FindingLabels, u32)>>,
    /// Netns that could not be read (gone meanwhile, or unreadable).
    pub errors: u64,
}

/// Ephemeral ports in use toward each destination: sockets with a local
/// port in the usable range, every state but LISTEN (TIME_WAIT holds its
/// tuple too), grouped by remote address and port; the `max` most used.
pub fn top_destinations(socks: &[Sock], usable: &PortSet, max: usize) -> Vec<(IpAddr, u16, u32)> {
    let mut by: HashMap<(IpAddr, u16), u32> = HashMap::new();
    for s in socks {
        if s.state != STATE_LISTEN && s.dport != 0 && usable.contains(s.sport) {
            *by.entry((s.dst, s.dport)).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by.into_iter().map(|((a, p), n)| (a, p, n)).collect();
    // Most used first; ties in address order, so the cut is stable.
    v.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    v.truncate(max);
    v
}

/// The pod a process belongs to, from its cgroup path.
pub fn pod_of_pid(pid: u32) -> Option<Pod> {
    pods::parse_kube_path(&pods::proc_cgroup(pid)?)
}

pub struct Options {
    pub max_destinations: usize,
    pub nodeport_range: (u16, u16),
}

/// One pass over every netns; the check too when `with_check`.
/// `name`: fills a pod's names from what the runtime said (cached).
pub fn pass(opts: &Options, with_check: bool, name: &dyn Fn(&mut Pod)) -> Pass {
    let mut out = Pass {
        usage: vec![],
        findings: None,
        errors: 0,
    };
    let targets = match check::discover(&[]) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("listing network namespaces: {e:#}");
            out.errors += 1;
            return out;
        }
    };
    let guarded = {
        let g = PortSet::range(opts.nodeport_range.0, opts.nodeport_range.1);
        match check::ipvs_ports() {
            Some(p) => g.union(&p),
            None => g,
        }
    };
    let holders = with_check.then(Holders::new);
    let mut counts: HashMap<FindingLabels, u32> = HashMap::new();
    for t in &targets {
        let st = match check::read_state(t) {
            Ok(st) => st,
            Err(e) => {
                log::info!("scan: netns {} ({}): {e:#}", t.ino, t.place);
                out.errors += 1;
                continue;
            }
        };
        let mut pod = t.pid.and_then(pod_of_pid);
        if let Some(p) = pod.as_mut() {
            name(p);
        }
        let (namespace, pod_name) = pod_labels(pod.as_ref());
        let usable = ports::usable(st.range, &st.reserved);
        let top = match &st.socks {
            Ok(socks) => top_destinations(socks, &usable, opts.max_destinations),
            Err(e) => {
                log::info!("scan: {e}");
                out.errors += 1;
                vec![]
            }
        };
        out.usage.push(NetnsUsage {
            ino: t.ino,
            namespace: namespace.clone(),
            pod: pod_name.clone(),
            usable: usable.len(),
            top,
        });
        if let Some(h) = &holders {
            for f in check::findings_for(t, &st, &guarded, h) {
                *counts
                    .entry(FindingLabels {
                        check: f.check.into(),
                        severity: f.severity.name().into(),
                        namespace: namespace.clone(),
                        pod: pod_name.clone(),
                    })
                    .or_default() += 1;
            }
        }
    }
    if with_check {
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| (&a.0.check, &a.0.pod).cmp(&(&b.0.check, &b.0.pod)));
        out.findings = Some(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockdiag::STATE_TIME_WAIT;

    fn sock(state: u8, sport: u16, dst: &str, dport: u16) -> Sock {
        Sock {
            state,
            src: "10.0.0.2".parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport,
            inode: 0,
            uid: 0,
        }
    }

    #[test]
    fn top_counts_range_ports_per_destination_most_used_first() {
        let usable = PortSet::range(40000, 40009);
        let socks = vec![
            sock(1, 40000, "10.96.0.10", 80),
            sock(STATE_TIME_WAIT, 40001, "10.96.0.10", 80),
            sock(1, 40002, "10.96.0.11", 443),
            sock(1, 40003, "10.96.0.10", 80),
            // A listener in the range and a port outside it do not count.
            sock(STATE_LISTEN, 40004, "0.0.0.0", 0),
            sock(1, 50000, "10.96.0.10", 80),
            sock(1, 40005, "10.96.0.12", 53),
        ];
        let top = top_destinations(&socks, &usable, 10);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            top,
            vec![
                (ip("10.96.0.10"), 80, 3),
                (ip("10.96.0.11"), 443, 1),
                (ip("10.96.0.12"), 53, 1)
            ]
        );
        assert_eq!(top_destinations(&socks, &usable, 1).len(), 1);
    }

    #[test]
    fn top_is_bounded_with_a_thousand_destinations() {
        let usable = PortSet::range(20000, 29999);
        let socks: Vec<Sock> = (0..1000u16)
            .map(|i| sock(1, 20000 + i, &format!("10.1.{}.{}", i / 250, i % 250), 80))
            .collect();
        let top = top_destinations(&socks, &usable, 20);
        assert_eq!(top.len(), 20);
        assert!(top.iter().all(|d| d.2 == 1));
    }
}
