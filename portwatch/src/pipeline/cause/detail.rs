//! The finished event: its cause and the detail (states, holders, port
//! counts) from what a look-up found, and whether that detail is complete.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::classify::{canon, the_connect_port, Verdict};
use crate::{
    host::{
        holders::Owner,
        ports::{self, PortSet},
        sockdiag::{self, Sock, STATE_LISTEN},
    },
    k8s::pods::Pod,
    pipeline::event::{
        Cause, Detail, Event, Exhausted, HolderCount, PortHolder, PortInUse, States, Tuple,
    },
};

const MAX_HOLDERS: usize = 5;
/// Entries of a `port_in_use` holder list (listeners come first).
const MAX_PORT_HOLDERS: usize = 20;

/// What one look-up found.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub socks: Vec<Sock>,
    pub owners: HashMap<u32, Owner>,
    /// The last `ports_exhausted` detail made from it, with the range and
    /// reserved ports it was made for: under a storm every failure toward
    /// one destination shares this snapshot and gets the same detail,
    /// which was a sixth of the tracer's CPU to compute each time.
    exhausted: std::sync::Mutex<Option<ExhaustedMemo>>,
}

type ExhaustedMemo = (Option<(u16, u16)>, Option<PortSet>, Exhausted);

impl Snapshot {
    pub fn new(socks: Vec<Sock>, owners: HashMap<u32, Owner>) -> Snapshot {
        Snapshot {
            socks,
            owners,
            exhausted: Default::default(),
        }
    }

    /// The `ports_exhausted` detail of `ev` (`make` it if the last one was
    /// for another range or reserved ports).
    fn exhausted_for(&self, ev: &Event, make: impl FnOnce() -> Exhausted) -> Exhausted {
        let mut m = self
            .exhausted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((range, reserved, d)) = m.as_ref() {
            if *range == ev.port_range && *reserved == ev.reserved {
                return d.clone();
            }
        }
        let d = make();
        *m = Some((ev.port_range, ev.reserved.clone(), d.clone()));
        d
    }
}

fn states_of<'a>(socks: impl Iterator<Item = &'a Sock>) -> States {
    let mut m = States::new();
    for s in socks {
        *m.entry(sockdiag::state_name(s.state)).or_default() += 1;
    }
    m
}

/// Processes by the number of the given sockets they hold, most first.
pub fn holder_counts<'a>(
    socks: impl Iterator<Item = &'a Sock>,
    owners: &HashMap<u32, Owner>,
    max: usize,
) -> Vec<HolderCount> {
    let mut by_pid: HashMap<u32, HolderCount> = HashMap::new();
    for s in socks {
        if let Some(o) = owners.get(&s.inode) {
            by_pid
                .entry(o.pid)
                .or_insert_with(|| HolderCount {
                    pid: o.pid,
                    comm: o.comm.clone(),
                    pod: o.pod.clone(),
                    count: 0,
                })
                .count += 1;
        }
    }
    let mut v: Vec<HolderCount> = by_pid.into_values().collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    v.truncate(max);
    v
}

fn addr_overlaps(a: IpAddr, asked: Option<IpAddr>) -> bool {
    match asked.map(canon) {
        None => true,
        Some(b) => a.is_unspecified() || b.is_unspecified() || a == b,
    }
}

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    }
}

/// Range, reserved and usable of the event's netns: known without a look-up.
fn exhausted_base(ev: &Event) -> Exhausted {
    let reserved_in = match (ev.port_range, &ev.reserved) {
        (Some((lo, hi)), Some(r)) => Some(r.intersect(&PortSet::range(lo, hi))),
        _ => None,
    };
    Exhausted {
        range: ev.port_range.map(|(a, b)| [a, b]),
        usable: match (ev.port_range, &reserved_in) {
            (Some(r), Some(res)) => Some(ports::usable(r, res).len()),
            _ => None,
        },
        reserved: reserved_in.map(|r| r.to_string()),
        in_use: None,
        states: None,
        holders: None,
    }
}

/// Fills in_use/states/holders from the sockets that hold range ports.
fn exhausted_from(mut d: Exhausted, snap: &Snapshot, keep: impl Fn(&Sock) -> bool) -> Exhausted {
    let Some([lo, hi]) = d.range else { return d };
    let socks: Vec<&Sock> = snap
        .socks
        .iter()
        .filter(|s| (lo..=hi).contains(&s.sport) && keep(s))
        .collect();
    d.in_use = Some(socks.len() as u32);
    d.states = Some(states_of(socks.iter().copied()));
    d.holders = Some(holder_counts(
        socks.iter().copied(),
        &snap.owners,
        MAX_HOLDERS,
    ));
    d
}

/// The finished event: cause, detail, and whether the detail is complete.
/// `outcome` is the look-up's result (None: there was none, or it did not
/// arrive within the budget).
pub fn finish(ev: &mut Event, v: Verdict, outcome: Option<&Result<Arc<Snapshot>, String>>) {
    let snap = match outcome {
        Some(Ok(s)) => Some(s.as_ref()),
        _ => None,
    };
    let (cause, detail, complete) = match v {
        Verdict::Known(Cause::PortsExhausted) | Verdict::Undecided => {
            let d = match snap {
                Some(s) => s.exhausted_for(ev, || {
                    exhausted_from(exhausted_base(ev), s, |s| s.state != STATE_LISTEN)
                }),
                None => exhausted_base(ev),
            };
            let cause = match v {
                Verdict::Known(c) => c,
                // Undecided: only the table's word counts, never a guess.
                _ => match (d.in_use, d.usable) {
                    (Some(n), Some(u)) if n >= u => Cause::PortsExhausted,
                    _ => Cause::Unknown,
                },
            };
            if cause == Cause::Unknown {
                let reason = "the socket could not be read at the failure, and the socket table does not show the range used up toward this destination".to_string();
                (cause, Detail::Unknown { reason }, snap.is_some())
            } else {
                let complete = d.in_use.is_some() && d.usable.is_some();
                (cause, Detail::Exhausted(d), complete)
            }
        }
        Verdict::Known(Cause::TupleInUse) => {
            let sport = the_connect_port(ev).unwrap_or(0);
            let mut d = Tuple {
                sport,
                states: None,
                holders: None,
            };
            if let Some(s) = snap {
                let socks: Vec<&Sock> = s
                    .socks
                    .iter()
                    .filter(|x| x.sport == sport && x.state != STATE_LISTEN)
                    .collect();
                d.states = Some(states_of(socks.iter().copied()));
                d.holders = Some(holder_counts(socks.iter().copied(), &s.owners, MAX_HOLDERS));
            }
            // The kernel saw the 4-tuple taken: a table without it (the
            // connection closed meanwhile) is not the whole story.
            let complete = d.states.as_ref().is_some_and(|s| !s.is_empty());
            (Cause::TupleInUse, Detail::Tuple(d), complete)
        }
        Verdict::Known(Cause::PortInUse) => {
            let port = ev.sport.unwrap_or(0);
            let holders = snap.map(|s| {
                let mut socks: Vec<&Sock> = s
                    .socks
                    .iter()
                    .filter(|x| x.sport == port && addr_overlaps(x.src, ev.saddr))
                    .collect();
                socks.sort_by_key(|x| (x.state != STATE_LISTEN, x.state, x.inode));
                let mut v: Vec<PortHolder> = vec![];
                for x in socks {
                    let o = s.owners.get(&x.inode);
                    let h = PortHolder {
                        pid: o.map(|o| o.pid),
                        comm: o.map(|o| o.comm.clone()),
                        pod: o.and_then(|o| o.pod.clone()),
                        state: sockdiag::state_name(x.state),
                        local: endpoint(x.src, x.sport),
                        count: 1,
                    };
                    match v
                        .iter_mut()
                        .find(|e| (e.pid, e.state, &e.local) == (h.pid, h.state, &h.local))
                    {
                        Some(e) => e.count += 1,
                        None => v.push(h),
                    }
                }
                v.truncate(MAX_PORT_HOLDERS);
                v
            });
            // Likewise a port the kernel saw taken but the table shows free.
            let complete = holders.as_ref().is_some_and(|h| !h.is_empty());
            (
                Cause::PortInUse,
                Detail::PortInUse(PortInUse { port, holders }),
                complete,
            )
        }
        Verdict::Known(Cause::BindPortsExhausted) => {
            let base = exhausted_base(ev);
            let d = match snap {
                Some(s) => exhausted_from(base, s, |_| true),
                None => base,
            };
            let complete = d.in_use.is_some() && d.usable.is_some();
            (Cause::BindPortsExhausted, Detail::Exhausted(d), complete)
        }
        Verdict::Known(Cause::AddrNotLocal) => (
            Cause::AddrNotLocal,
            Detail::AddrNotLocal { addr: ev.saddr },
            ev.saddr.is_some(),
        ),
        Verdict::Known(Cause::Unknown) => (
            Cause::Unknown,
            Detail::Unknown {
                reason: "the kernel side could not read the address bind() asked for".into(),
            },
            false,
        ),
    };
    ev.cause = Some(cause);
    ev.detail = Some(detail);
    ev.detail_complete = Some(complete);
    name_holders(ev);
}

/// Holders in the event's own pod get the names the event's pod has (the
/// runtime was asked for those; a holder's uid alone would need a look-up
/// of its own).
fn name_holders(ev: &mut Event) {
    let (Some(own), Some(detail)) = (&ev.pod, &mut ev.detail) else {
        return;
    };
    let same = |p: &mut Option<Pod>| {
        if let Some(p) = p.as_mut().filter(|p| p.uid == own.uid) {
            p.namespace.clone_from(&own.namespace);
            p.name.clone_from(&own.name);
            if p.container_id.is_some() && p.container_id == own.container_id {
                p.container.clone_from(&own.container);
            }
        }
    };
    match detail {
        Detail::Exhausted(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::Tuple(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::PortInUse(d) => d
            .holders
            .iter_mut()
            .flatten()
            .for_each(|h| same(&mut h.pod)),
        Detail::AddrNotLocal { .. } | Detail::Unknown { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host::sockdiag::STATE_TIME_WAIT,
        pipeline::{
            cause::classify::classify,
            event::{tests::sample_event, Errno, Kind},
        },
    };

    fn sock(state: u8, sport: u16, inode: u32) -> Sock {
        Sock {
            state,
            src: "127.0.0.1".parse().unwrap(),
            sport,
            dst: "127.0.0.1".parse().unwrap(),
            dport: 7100,
            inode,
            uid: 0,
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: format!("p{pid}"),
            pod: None,
        }
    }

    fn snap(socks: Vec<Sock>, owners: &[(u32, u32)]) -> Result<Arc<Snapshot>, String> {
        Ok(Arc::new(Snapshot::new(
            socks,
            owners.iter().map(|&(i, p)| (i, owner(p))).collect(),
        )))
    }

    #[test]
    fn exhaustion_detail_counts_states_and_holders() {
        let mut ev = sample_event();
        ev.reserved = Some(PortSet::parse("8080,41003").unwrap());
        let s = snap(
            vec![
                sock(1, 41000, 10),
                sock(1, 41001, 11),
                sock(STATE_TIME_WAIT, 41002, 0),
                sock(1, 40999, 12), // outside the range
            ],
            &[(10, 500), (11, 500), (12, 501)],
        );
        let v = classify(&ev);
        finish(&mut ev, v, Some(&s));
        assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        let v = serde_json::to_value(ev.detail.as_ref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"range":[41000,41003],"reserved":"41003","usable":3,"in_use":3,
                "states":{"ESTABLISHED":2,"TIME_WAIT":1},
                "holders":[{"pid":500,"comm":"p500","pod":null,"count":2}]})
        );
        assert_eq!(ev.detail_complete, Some(true));
        // Failures sharing the snapshot share the detail made for their
        // range and reserved ports; another range gets its own.
        let mut again = sample_event();
        again.reserved = Some(PortSet::parse("8080,41003").unwrap());
        let v = classify(&again);
        finish(&mut again, v, Some(&s));
        assert_eq!(again.detail, ev.detail);
        let mut wider = sample_event();
        wider.port_range = Some((40999, 41002));
        wider.reserved = Some(PortSet::new());
        let v = classify(&wider);
        finish(&mut wider, v, Some(&s));
        let v = serde_json::to_value(wider.detail.as_ref().unwrap()).unwrap();
        assert_eq!(
            (v["usable"].as_u64(), v["in_use"].as_u64()),
            (Some(4), Some(4)),
            "{v}"
        );
        let v = classify(&again);
        finish(&mut again, v, Some(&s));
        assert_eq!(again.detail, ev.detail);
    }

    #[test]
    fn no_snapshot_means_incomplete_never_invented() {
        let mut ev = sample_event();
        ev.reserved = Some(PortSet::new());
        let v = classify(&ev);
        finish(&mut ev, v, None);
        assert_eq!(ev.cause, Some(Cause::PortsExhausted));
        assert_eq!(ev.detail_complete, Some(false));
        let v = serde_json::to_value(ev.detail.as_ref().unwrap()).unwrap();
        assert_eq!(v["usable"], 4);
        assert!(v["in_use"].is_null() && v["holders"].is_null(), "{v}");
        // Undecided without the table: unknown, not a guess.
        let mut u = sample_event();
        u.sock_port = None;
        u.reserved = Some(PortSet::new());
        let v = classify(&u);
        finish(&mut u, v, Some(&Err("netns gone".into())));
        assert_eq!(u.cause, Some(Cause::Unknown));
        // Undecided with a table that shows the range used up: exhausted.
        let mut u = sample_event();
        u.sock_port = None;
        u.reserved = Some(PortSet::new());
        let full = snap((41000..=41003).map(|p| sock(1, p, 0)).collect(), &[]);
        let v = classify(&u);
        finish(&mut u, v, Some(&full));
        assert_eq!(u.cause, Some(Cause::PortsExhausted));
        let part = snap(vec![sock(1, 41000, 0)], &[]);
        let mut u2 = u.clone();
        finish(&mut u2, Verdict::Undecided, Some(&part));
        assert_eq!(u2.cause, Some(Cause::Unknown));
    }

    #[test]
    fn port_in_use_lists_listeners_first() {
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(7200);
        let mut l = sock(STATE_LISTEN, 7200, 20);
        l.src = "0.0.0.0".parse().unwrap();
        let mut other_addr = sock(1, 7200, 22);
        other_addr.src = "10.1.1.1".parse().unwrap();
        let s = snap(
            vec![
                sock(1, 7200, 21),
                l,
                other_addr,
                sock(1, 7200, 0),
                sock(1, 7200, 0),
            ],
            &[(20, 7), (21, 8)],
        );
        let v = classify(&b);
        finish(&mut b, v, Some(&s));
        let Some(Detail::PortInUse(d)) = &b.detail else {
            panic!("{:?}", b.detail)
        };
        let h = d.holders.as_ref().unwrap();
        assert_eq!(
            h.len(),
            3,
            "10.1.1.1:7200 does not clash with 127.0.0.1: {h:?}"
        );
        assert_eq!((h[0].pid, h[0].state, h[0].count), (Some(7), "LISTEN", 1));
        assert_eq!(h[0].local, "0.0.0.0:7200");
        // Sockets without a process (not yet accepted) are one entry.
        assert_eq!((h[1].pid, h[1].state, h[1].count), (None, "ESTABLISHED", 2));
        assert_eq!(
            (h[2].pid, h[2].state, h[2].count),
            (Some(8), "ESTABLISHED", 1)
        );
        assert_eq!(b.detail_complete, Some(true));
        // The holder gone before the look-up: what is known, marked incomplete.
        let v = classify(&b);
        finish(&mut b, v, Some(&snap(vec![], &[])));
        assert_eq!(b.cause, Some(Cause::PortInUse));
        assert_eq!(b.detail_complete, Some(false));
    }

    #[test]
    fn holders_most_ports_first_at_most_five() {
        let socks: Vec<Sock> = (0..20)
            .map(|i| sock(1, 41000 + i, 100 + i as u32))
            .collect();
        // pid 1 holds 1 socket, pid 2 two, ... pid 6 holds 5 (20 sockets).
        let mut owners = HashMap::new();
        let mut i = 100;
        for pid in 1..=6u32 {
            for _ in 0..pid.min(5) {
                if i < 120 {
                    owners.insert(i, owner(pid));
                    i += 1;
                }
            }
        }
        let h = holder_counts(socks.iter(), &owners, 5);
        assert_eq!(h.len(), 5);
        assert!(h.windows(2).all(|w| w[0].count >= w[1].count), "{h:?}");
        assert_eq!(h.iter().map(|x| x.count).sum::<u32>(), 5 + 5 + 4 + 3 + 2);
    }
}
