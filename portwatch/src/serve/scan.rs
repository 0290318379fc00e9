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
    sockdiag::Sock,
    usage,
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

/// The `max` destinations with the most ephemeral ports in use (the
/// counting rule is `usage::group`'s: what `ss -tan` shows).
pub fn top_destinations(socks: &[Sock], usable: &PortSet, max: usize) -> Vec<(IpAddr, u16, u32)> {
    usage::group(socks, usable, None)
        .into_iter()
        .take(max)
        .map(|d| (d.daddr, d.dport, d.in_use))
        .collect()
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
        assert_eq!(top[0], ("10.1.3.7".parse().unwrap(), 80, 3));
        assert!(top[1..].iter().all(|d| d.2 == 1));
    }
}
