//! Writes of the port sysctls (`ip_local_port_range`,
//! `ip_local_reserved_ports`, `tcp_tw_reuse`, `ip_unprivileged_port_start`),
//! as the trace pipeline carries them next to the failures: the decoded
//! write (`SysctlWrite`), what it does (`assess`: a pure function of the
//! values and the netns's other settings), and the stage that fills in the
//! writer's pod and the verdict and lets each write wait for its pod's
//! names within the detail budget (`Stage`).
//!
//! The verdict that matters most, `creates_nodeport_overlap`, is only given
//! in the node's network namespace: a pod's own range never meets the
//! node's NodePorts. The node's netns is portwatch's own at start-up;
//! tests name another with `PORTWATCH_NODE_NETNS` (a path to a netns file).

use std::{
    collections::VecDeque,
    fs::File,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use portwatch_common::{PortSpan, SysctlGuard};
use serde::Serialize;

use crate::{
    host::{
        netns::{self, parse_port_range},
        ports::{exposed_guarded, usable, PortSet},
        sysctl::{read_ports, PortSysctls},
    },
    k8s::{cri, pods::Pod},
    pipeline::{enrich::Enricher, filter::Filter, MAX_WAITING},
};

/// Names the node's network namespace (a path to a netns file) instead of
/// portwatch's own; for tests, which stand a test netns in for the node.
pub const NODE_NETNS_ENV: &str = "PORTWATCH_NODE_NETNS";

/// The sysctls reported, by their dotted names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Name {
    #[serde(rename = "net.ipv4.ip_local_port_range")]
    PortRange,
    #[serde(rename = "net.ipv4.ip_local_reserved_ports")]
    ReservedPorts,
    #[serde(rename = "net.ipv4.tcp_tw_reuse")]
    TwReuse,
    #[serde(rename = "net.ipv4.ip_unprivileged_port_start")]
    UnprivilegedPortStart,
}

impl Name {
    pub const ALL: [Name; 4] = [
        Name::PortRange,
        Name::ReservedPorts,
        Name::TwReuse,
        Name::UnprivilegedPortStart,
    ];

    /// From the kernel side's index into `portwatch_common::SYSCTL_NAMES`.
    pub fn from_index(i: u8) -> Option<Name> {
        use portwatch_common::*;
        match i {
            SYSCTL_PORT_RANGE => Some(Name::PortRange),
            SYSCTL_RESERVED_PORTS => Some(Name::ReservedPorts),
            SYSCTL_TW_REUSE => Some(Name::TwReuse),
            SYSCTL_UNPRIVILEGED_PORT_START => Some(Name::UnprivilegedPortStart),
            _ => None,
        }
    }

    /// As `sysctl -w` takes it.
    pub fn dotted(self) -> &'static str {
        match self {
            Name::PortRange => "net.ipv4.ip_local_port_range",
            Name::ReservedPorts => "net.ipv4.ip_local_reserved_ports",
            Name::TwReuse => "net.ipv4.tcp_tw_reuse",
            Name::UnprivilegedPortStart => "net.ipv4.ip_unprivileged_port_start",
        }
    }
}

/// What a write does, the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Node's netns only: guarded ports (NodePorts) become pickable source
    /// ports that were not before.
    CreatesNodeportOverlap,
    /// `ip_local_reserved_ports` loses ports it held.
    RemovesReservation,
    /// `ip_local_port_range`: fewer usable ports than before.
    NarrowsRange,
    /// `ip_local_port_range`: both ends have the same parity.
    Parity,
    Ok,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::CreatesNodeportOverlap => "creates_nodeport_overlap",
            Verdict::RemovesReservation => "removes_reservation",
            Verdict::NarrowsRange => "narrows_range",
            Verdict::Parity => "parity",
            Verdict::Ok => "ok",
        }
    }
}

/// The verdict and its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Every guarded port the netns exposes once the write is applied
    /// (`creates_nodeport_overlap`).
    pub exposed: Option<PortSet>,
    /// The `ip_local_reserved_ports` value that would close the exposure,
    /// keeping what is reserved (`creates_nodeport_overlap`).
    pub fix: Option<PortSet>,
    /// Ports the write takes out of `ip_local_reserved_ports`.
    pub removed: Option<PortSet>,
    /// Usable ports (range less reserved) before and after a range write.
    pub usable: Option<(u32, u32)>,
}

impl Assessment {
    fn of(verdict: Verdict) -> Assessment {
        Assessment {
            verdict,
            exposed: None,
            fix: None,
            removed: None,
            usable: None,
        }
    }
}

/// The netns's settings besides the one written, as read when the write
/// was reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings<'a> {
    pub range: Option<(u16, u16)>,
    pub reserved: Option<&'a PortSet>,
    /// The guarded ports, given only for the node's netns.
    pub guarded: Option<&'a PortSet>,
}

/// Guarded ports exposed by `range` with `reserved` (empty: none).
fn exposed(range: (u16, u16), reserved: &PortSet, guarded: &PortSet) -> PortSet {
    exposed_guarded(range, reserved, guarded).map_or_else(PortSet::new, |(e, _)| e)
}

/// What writing `new` over `old` does, or None when that cannot be told:
/// a value that does not parse (or that the kernel will refuse), a cut
/// value, or a setting the verdict needs that could not be read.
pub fn assess(name: Name, old: Option<&str>, new: &str, s: &Settings) -> Option<Assessment> {
    match name {
        Name::PortRange => {
            let old = parse_port_range(old?)?;
            let new = parse_port_range(new)?;
            let reserved = s.reserved?;
            let before = usable(old, reserved).len();
            let after = usable(new, reserved).len();
            if let Some(g) = s.guarded {
                let now = exposed(new, reserved, g);
                if !now.minus(&exposed(old, reserved, g)).is_empty() {
                    return Some(Assessment {
                        exposed: Some(now),
                        fix: Some(reserved.union(g)),
                        usable: Some((before, after)),
                        ..Assessment::of(Verdict::CreatesNodeportOverlap)
                    });
                }
            }
            let verdict = if after < before {
                Verdict::NarrowsRange
            } else if new.0 % 2 == new.1 % 2 {
                Verdict::Parity
            } else {
                Verdict::Ok
            };
            Some(Assessment {
                usable: Some((before, after)),
                ..Assessment::of(verdict)
            })
        }
        Name::ReservedPorts => {
            let old = PortSet::parse(old?).ok()?;
            let new = PortSet::parse(new).ok()?;
            if let Some(g) = s.guarded {
                let range = s.range?;
                let now = exposed(range, &new, g);
                if !now.minus(&exposed(range, &old, g)).is_empty() {
                    return Some(Assessment {
                        exposed: Some(now),
                        fix: Some(new.union(g)),
                        removed: Some(old.minus(&new)),
                        ..Assessment::of(Verdict::CreatesNodeportOverlap)
                    });
                }
            }
            let removed = old.minus(&new);
            if removed.is_empty() {
                Some(Assessment::of(Verdict::Ok))
            } else {
                Some(Assessment {
                    removed: Some(removed),
                    ..Assessment::of(Verdict::RemovesReservation)
                })
            }
        }
        Name::TwReuse | Name::UnprivilegedPortStart => {
            new.trim().parse::<u32>().ok()?;
            Some(Assessment::of(Verdict::Ok))
        }
    }
}

/// One write of a reported sysctl, decoded and (after `Stage::push`)
/// annotated.
#[derive(Debug, Clone, PartialEq)]
pub struct SysctlWrite {
    /// Nanoseconds since the Unix epoch (UTC).
    pub time_ns: u64,
    pub name: Name,
    /// The value before the write, as the kernel shows it (whitespace runs
    /// made one space); None when the kernel did not give it.
    pub old: Option<String>,
    pub old_truncated: bool,
    /// The value written, as the writer wrote it (whitespace runs made one
    /// space).
    pub new: String,
    pub new_truncated: bool,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    /// The writer's netns: the one whose value changes.
    pub netns: Option<u32>,
    /// The kernel side refused the write (the writer got EPERM).
    pub refused: bool,
    /// Filled by `Stage::push`: the cgroup v2 path of `cgroup_id`.
    pub cgroup: Option<String>,
    /// Filled by `Stage::push`: the pod, when the cgroup path is a pod's.
    pub pod: Option<Pod>,
    /// Filled by `Stage::push`: whether `netns` is the node's.
    pub node_netns: bool,
    /// Filled by `Stage::push`: what the write does (None: cannot tell).
    pub assessment: Option<Assessment>,
}

/// A value's text: up to its NUL, whitespace runs made one space.
pub fn value_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The node's network namespace: its inode, and a handle to read it by
/// when it is not portwatch's own.
pub struct NodeNetns {
    pub ino: Option<u32>,
    file: Option<File>,
    /// Where it came from, for the start-up line.
    pub from: String,
}

impl NodeNetns {
    /// `PORTWATCH_NODE_NETNS` when set, else portwatch's own netns.
    pub fn from_env() -> Result<NodeNetns> {
        match std::env::var_os(NODE_NETNS_ENV) {
            Some(p) => NodeNetns::at(Path::new(&p)),
            None => Ok(NodeNetns {
                ino: netns::own_ino(),
                file: None,
                from: "portwatch's own".into(),
            }),
        }
    }

    pub fn at(path: &Path) -> Result<NodeNetns> {
        let f = File::open(path)
            .with_context(|| format!("{NODE_NETNS_ENV}: opening {}", path.display()))?;
        let ino = f.metadata()?.ino() as u32;
        Ok(NodeNetns {
            ino: Some(ino),
            file: (netns::own_ino() != Some(ino)).then_some(f),
            from: format!("{} ({NODE_NETNS_ENV})", path.display()),
        })
    }

    fn read(&self) -> Option<PortSysctls> {
        read_ports(self.file.as_ref(), false).ok()
    }
}

/// What the kernel side refuses under `serve --guard-port-range`, in the
/// node's netns `node` (range `range`, reserved ports `reserved`):
/// - a new `ip_local_port_range` taking in guarded ports that `reserved`
///   does not cover and the old range did not hold (`spans`);
/// - a new `ip_local_reserved_ports` that no longer covers, each in one
///   item, the guarded ports of the range it covers now (`keep`).
///
/// At most `GUARD_SPANS` and `GUARD_KEEP` spans: past that the last one stretches over
/// the rest (the holes in there are then guarded too: it refuses more,
/// never less).
pub fn guard_of(
    node: u32,
    guarded: &PortSet,
    range: (u16, u16),
    reserved: &PortSet,
) -> SysctlGuard {
    let mut g = SysctlGuard {
        enabled: 1,
        netns: node,
        ..SysctlGuard::default()
    };
    g.count = fill_spans(&mut g.spans, guarded.minus(reserved).spans());
    let kept = guarded
        .intersect(&PortSet::range(range.0, range.1))
        .intersect(reserved);
    g.keep_count = fill_spans(&mut g.keep, kept.spans());
    g
}

/// `spans` into `out`, the last one stretched over any that do not fit;
/// how many are in use.
fn fill_spans(out: &mut [PortSpan], spans: &[(u16, u16)]) -> u32 {
    let max = out.len();
    for (i, &(lo, hi)) in spans.iter().take(max).enumerate() {
        out[i] = PortSpan { lo, hi };
    }
    if spans.len() > max {
        out[max - 1].hi = spans[spans.len() - 1].1;
    }
    spans.len().min(max) as u32
}

struct Waiting {
    w: SysctlWrite,
    names: Option<cri::Slot>,
    deadline: Instant,
}

/// Enrich -> filter -> wait for the pod's names, for sysctl writes. Writes
/// leave in the order they came (among themselves; failures have their own
/// queue).
pub struct Stage {
    node: NodeNetns,
    guarded: PortSet,
    budget: Duration,
    queue: VecDeque<Waiting>,
    /// A write in the node's netns came by since `guard` was last asked.
    node_written: bool,
}

impl Stage {
    pub fn new(node: NodeNetns, guarded: PortSet, budget: Duration) -> Stage {
        Stage {
            node,
            guarded,
            budget,
            queue: VecDeque::new(),
            node_written: false,
        }
    }

    /// The guard for the node's netns as its settings are now (None: the
    /// node's netns or its reserved ports cannot be read).
    pub fn guard(&mut self) -> Option<SysctlGuard> {
        self.node_written = false;
        let now = self.node.read()?;
        let (range, reserved) = (now.range.ok()?, now.reserved.ok()?);
        Some(guard_of(self.node.ino?, &self.guarded, range, &reserved))
    }

    /// Whether a write in the node's netns came by since `guard` was last
    /// asked (the guard may need its reserved ports again).
    pub fn node_written(&self) -> bool {
        self.node_written
    }

    /// Fills what userspace knows (cgroup, pod, node netns, verdict) and
    /// queues the write if `filter` may take it.
    pub fn push(&mut self, mut w: SysctlWrite, enricher: &mut Enricher, filter: &Filter) {
        let pids = [w.tid, w.pid];
        let (cgroup, pod, names) = enricher.pod_of(w.cgroup_id, &pids);
        w.cgroup = cgroup;
        w.pod = pod;
        w.node_netns = w.netns.is_some() && w.netns == self.node.ino;
        self.node_written |= w.node_netns;
        // Only the port list and range verdicts need the netns's settings.
        let settings = match w.name {
            Name::TwReuse | Name::UnprivilegedPortStart => None,
            _ if w.node_netns => self.node.read(),
            _ => w.netns.and_then(|ino| enricher.ports_now(ino, &pids)),
        };
        let reserved = settings.as_ref().and_then(|p| p.reserved.as_ref().ok());
        let s = Settings {
            range: settings.as_ref().and_then(|p| p.range.clone().ok()),
            reserved,
            guarded: w.node_netns.then_some(&self.guarded),
        };
        w.assessment = if w.old_truncated || w.new_truncated {
            None
        } else {
            assess(w.name, w.old.as_deref(), &w.new, &s)
        };
        if !filter.could_match_sysctl(&w, names.is_some()) {
            return;
        }
        self.queue.push_back(Waiting {
            w,
            names,
            deadline: Instant::now() + self.budget,
        });
    }

    /// When the oldest waiting write must go out at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|w| w.deadline)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether `n` more writes may wait without passing `MAX_WAITING`: a
    /// loop of writes from a pod whose names are being looked up waits in
    /// the ring buffer beyond that, as failures do behind the same bound.
    pub fn has_room(&self, n: usize) -> bool {
        self.queue.len() + n <= MAX_WAITING
    }

    /// The next write that may go out now: its pod's names are in, or its
    /// time is up.
    pub fn pop_ready(&mut self, now: Instant) -> Option<SysctlWrite> {
        let w = self.queue.front()?;
        if !(w.names.as_ref().is_none_or(|s| s.get().is_some()) || now >= w.deadline) {
            return None;
        }
        let mut w = self.queue.pop_front()?;
        if let (Some(n), Some(pod)) = (w.names.as_ref().and_then(cri::names_in), &mut w.w.pod) {
            n.apply(pod);
        }
        Some(w.w)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portwatch_common::{GUARD_KEEP, GUARD_SPANS};

    fn ps(s: &str) -> PortSet {
        PortSet::parse(s).unwrap()
    }

    /// `ip_local_port_range` 32768-60999 rewritten wide by an initContainer:
    /// the base of the sinks' tests.
    pub fn sample_write() -> SysctlWrite {
        SysctlWrite {
            time_ns: 1_795_421_553_123_456_789, // 2026-11-23T08:12:33.123456Z
            name: Name::PortRange,
            old: Some("32768 60999".into()),
            old_truncated: false,
            new: "1024 65535".into(),
            new_truncated: false,
            pid: 4242,
            tid: 4242,
            comm: "sysctl".into(),
            uid: 0,
            cgroup_id: 1234,
            netns: Some(4026531840),
            refused: false,
            cgroup: None,
            pod: None,
            node_netns: true,
            assessment: assess(
                Name::PortRange,
                Some("32768 60999"),
                "1024 65535",
                &Settings {
                    range: Some((32768, 60999)),
                    reserved: Some(&PortSet::new()),
                    guarded: Some(&PortSet::range(30000, 32767)),
                },
            ),
        }
    }

    fn range(old: &str, new: &str, reserved: &str, node: bool) -> Option<Assessment> {
        let r = ps(reserved);
        let g = PortSet::range(30000, 32767);
        assess(
            Name::PortRange,
            Some(old),
            new,
            &Settings {
                range: parse_port_range(old),
                reserved: Some(&r),
                guarded: node.then_some(&g),
            },
        )
    }

    fn verdict(a: Option<Assessment>) -> Option<Verdict> {
        a.map(|a| a.verdict)
    }

    #[test]
    fn widening_the_node_range_over_the_nodeports() {
        // The incident: the node's default range widened over 30000-32767.
        let a = range("32768\t60999", "1024 65535", "", true).unwrap();
        assert_eq!(a.verdict, Verdict::CreatesNodeportOverlap);
        assert_eq!(a.exposed.unwrap().to_string(), "30000-32767");
        assert_eq!(a.fix.unwrap().to_string(), "30000-32767");
        assert_eq!(a.usable, Some((28232, 64512)));
        // With part reserved: the rest is exposed, the fix keeps what is there.
        let a = range("32768 60999", "1024 65535", "8080,30000-30999", true).unwrap();
        assert_eq!(a.exposed.unwrap().to_string(), "31000-32767");
        assert_eq!(a.fix.unwrap().to_string(), "8080,30000-32767");
        // Everything guarded reserved already: no overlap, the range grew.
        assert_eq!(
            verdict(range("32768 60999", "1024 65535", "30000-32767", true)),
            Some(Verdict::Ok)
        );
        // The same write in a pod's netns: its own range, no NodePorts there.
        let a = range("32768 60999", "1024 65535", "", false).unwrap();
        assert_eq!(a.verdict, Verdict::Ok);
        assert_eq!(a.usable, Some((28232, 64512)));
    }

    #[test]
    fn an_overlap_that_was_there_is_not_created_again() {
        // Already exposed before: narrowing that keeps part of it exposed
        // exposes nothing new.
        assert_eq!(
            verdict(range("1024 65535", "20000 40001", "", true)),
            Some(Verdict::NarrowsRange)
        );
        // Widening from one exposure into more of the guarded ports creates.
        assert_eq!(
            verdict(range("31000 40001", "30000 40001", "", true)),
            Some(Verdict::CreatesNodeportOverlap)
        );
    }

    #[test]
    fn narrows_parity_and_ok() {
        let a = range("32768 60999", "40000 40003", "", false).unwrap();
        assert_eq!(a.verdict, Verdict::NarrowsRange);
        assert_eq!(a.usable, Some((28232, 4)));
        // Reserved ports count: 4 ports, 2 reserved -> 2 usable.
        let a = range("40000 40005", "40000 40003", "40000-40001", false).unwrap();
        assert_eq!(a.usable, Some((4, 2)));
        assert_eq!(a.verdict, Verdict::NarrowsRange);
        // Wider, both ends even: parity.
        assert_eq!(
            verdict(range("40000 40003", "40000 40010", "", false)),
            Some(Verdict::Parity)
        );
        // Narrowing wins over parity (the worse first).
        assert_eq!(
            verdict(range("40000 40011", "40000 40002", "", false)),
            Some(Verdict::NarrowsRange)
        );
        // Same size, different parity: ok.
        assert_eq!(
            verdict(range("40000 40003", "41000 41003", "", false)),
            Some(Verdict::Ok)
        );
        // Unchanged: ok.
        assert_eq!(
            verdict(range("32768 60999", "32768 60999", "", false)),
            Some(Verdict::Ok)
        );
    }

    #[test]
    fn cannot_tell_without_values_or_settings() {
        // The kernel refuses a backwards range; garbage does not parse.
        assert_eq!(range("32768 60999", "5000 4000", "", true), None);
        assert_eq!(range("32768 60999", "x", "", true), None);
        // No old value, or no reserved ports read: cannot tell.
        let s = Settings::default();
        assert_eq!(assess(Name::PortRange, None, "1 2", &s), None);
        assert_eq!(
            assess(Name::PortRange, Some("32768 60999"), "1024 65535", &s),
            None
        );
    }

    #[test]
    fn reserved_ports_writes() {
        let g = PortSet::range(30000, 32767);
        let node = |old: &str, new: &str, range: (u16, u16)| {
            assess(
                Name::ReservedPorts,
                Some(old),
                new,
                &Settings {
                    range: Some(range),
                    reserved: None,
                    guarded: Some(&g),
                },
            )
        };
        // Emptying the NodePort reservation of a wide node range.
        let a = node("30000-32767", "", (1024, 65535)).unwrap();
        assert_eq!(a.verdict, Verdict::CreatesNodeportOverlap);
        assert_eq!(a.exposed.unwrap().to_string(), "30000-32767");
        assert_eq!(a.removed.unwrap().to_string(), "30000-32767");
        assert_eq!(a.fix.unwrap().to_string(), "30000-32767");
        // The same on the default range exposes nothing: only removes.
        let a = node("8080,30000-32767", "30000-32767", (32768, 60999)).unwrap();
        assert_eq!(a.verdict, Verdict::RemovesReservation);
        assert_eq!(a.removed.unwrap().to_string(), "8080");
        // Adding a reservation (the fix) is fine.
        assert_eq!(
            node("8080", "8080,30000-32767", (1024, 65535)).map(|a| a.verdict),
            Some(Verdict::Ok)
        );
        // In a pod's netns: only removal counts.
        let pod = assess(Name::ReservedPorts, Some("8080"), "", &Settings::default()).unwrap();
        assert_eq!(pod.verdict, Verdict::RemovesReservation);
        assert_eq!(
            assess(
                Name::ReservedPorts,
                Some("8080"),
                "70000",
                &Settings::default()
            ),
            None
        );
    }

    #[test]
    fn other_sysctls_are_ok_when_they_parse() {
        let s = Settings::default();
        for n in [Name::TwReuse, Name::UnprivilegedPortStart] {
            assert_eq!(verdict(assess(n, Some("0"), "1", &s)), Some(Verdict::Ok));
            assert_eq!(assess(n, Some("0"), "on", &s), None);
        }
    }

    #[test]
    fn the_guard_keeps_the_unreserved_nodeports() {
        let g = guard_of(
            7,
            &PortSet::range(30000, 32767),
            (32768, 60999),
            &ps("8080,31000-31010"),
        );
        assert_eq!((g.enabled, g.netns, g.count), (1, 7, 2));
        assert_eq!(
            g.spans[0],
            PortSpan {
                lo: 30000,
                hi: 30999
            }
        );
        assert_eq!(
            g.spans[1],
            PortSpan {
                lo: 31011,
                hi: 32767
            }
        );
        assert_eq!(g.spans[2], PortSpan::default());
        // All reserved: nothing to refuse.
        assert_eq!(
            guard_of(
                7,
                &PortSet::range(30000, 32767),
                (32768, 60999),
                &ps("30000-32767")
            )
            .count,
            0
        );
        // More spans than the kernel side holds: the last stretches over
        // the rest, so nothing guarded is ever let through.
        let holes = (0..40).map(|i| 30000 + 2 * i).map(|p| (p, p));
        let g = guard_of(
            7,
            &PortSet::range(30000, 32767),
            (32768, 60999),
            &PortSet::from_ranges(holes),
        );
        assert_eq!(g.count as usize, GUARD_SPANS);
        assert_eq!(
            g.spans[0],
            PortSpan {
                lo: 30001,
                hi: 30001
            }
        );
        assert_eq!(
            g.spans[GUARD_SPANS - 1],
            PortSpan {
                lo: 30031,
                hi: 32767
            }
        );
    }

    #[test]
    fn the_guard_keeps_the_reservation_that_shields_the_range() {
        let k = |g: &SysctlGuard| -> Vec<(u16, u16)> {
            g.keep[..g.keep_count as usize]
                .iter()
                .map(|s| (s.lo, s.hi))
                .collect()
        };
        let nodeports = PortSet::range(30000, 32767);
        // The default range takes in no NodePort: no reservation to keep.
        assert_eq!(
            k(&guard_of(7, &nodeports, (32768, 60999), &ps("30000-32767"))),
            vec![]
        );
        // A wide range over reserved NodePorts: they must stay reserved.
        let g = guard_of(7, &nodeports, (1024, 65535), &ps("8080,30000-32767"));
        assert_eq!(k(&g), vec![(30000, 32767)]);
        assert_eq!(g.count, 0);
        // Only the part of the range reserved now; 8080 is no NodePort.
        let g = guard_of(7, &nodeports, (31000, 65535), &ps("8080,30500-31500,32000"));
        assert_eq!(k(&g), vec![(31000, 31500), (32000, 32000)]);
        // Past GUARD_KEEP pieces the last stretches over the rest.
        let pieces = PortSet::from_ranges((0..40).map(|i| 30000 + 2 * i).map(|p| (p, p)));
        let g = guard_of(7, &nodeports, (1024, 65535), &pieces);
        assert_eq!(g.keep_count as usize, GUARD_KEEP);
        assert_eq!(
            g.keep[GUARD_KEEP - 1],
            PortSpan {
                lo: 30006,
                hi: 30078
            }
        );
    }

    #[test]
    fn the_waiting_writes_are_bounded() {
        let node = NodeNetns::from_env().unwrap();
        let mut st = Stage::new(
            node,
            PortSet::range(30000, 32767),
            Duration::from_millis(30),
        );
        while st.has_room(1000) {
            st.queue.push_back(Waiting {
                w: sample_write(),
                names: Some(Default::default()),
                deadline: Instant::now() + Duration::from_secs(1),
            });
        }
        assert_eq!(st.queue.len(), MAX_WAITING - 999);
        assert!(
            st.pop_ready(Instant::now()).is_none(),
            "waits for its names"
        );
        assert!(st
            .pop_ready(Instant::now() + Duration::from_secs(2))
            .is_some());
        assert!(st.has_room(1000));
    }

    #[test]
    fn names_and_values() {
        for i in 0..4u8 {
            let n = Name::from_index(i).unwrap();
            assert_eq!(
                n.dotted().replace('.', "/"),
                portwatch_common::SYSCTL_NAMES[i as usize]
            );
            assert_eq!(
                serde_json::to_value(n).unwrap(),
                serde_json::json!(n.dotted())
            );
        }
        assert_eq!(Name::from_index(4), None);
        assert_eq!(value_text(b"32768\t60999\n\0garbage"), "32768 60999");
        assert_eq!(value_text(b"1024  65535"), "1024 65535");
        assert_eq!(value_text(b"\0"), "");
    }
}
