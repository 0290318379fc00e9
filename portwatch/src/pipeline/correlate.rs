//! From kernel records to one report per victim connection.
//!
//! A report opens when a SYN-ACK reaches a guarded port whose socket is in
//! SYN_SENT (the packet path saw it before IPVS could). IPVS creating a
//! connection for that same 4-tuple makes it a steal with the IPVS part;
//! what the socket does next gives the outcome: ESTABLISHED (the reply got
//! through: a near miss), SYN retransmissions (it never got its reply), or
//! CLOSE (the connect failed). A report goes out when the outcome is final,
//! or when `follow` has passed since the SYN-ACK.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use portwatch_common::{
    StealEvent, AF_INET, STEAL_EVENT_SIZE, STEAL_IPVS, STEAL_RETRANS, STEAL_STATE, STEAL_SYNACK,
    TCP_CLOSE, TCP_ESTABLISHED,
};

/// One kernel record, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub ts_ns: u64,
    pub what: What,
    /// The victim socket's own address (node side, the guarded port).
    pub local: SocketAddr,
    /// Its peer (the pod that answered).
    pub remote: SocketAddr,
    pub owner: Option<(u32, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum What {
    SynAck,
    /// IPVS sent the SYN-ACK on to this real server.
    Ipvs {
        real_server: SocketAddr,
    },
    Retransmit,
    /// The socket left SYN_SENT for `new` (a TCP state number).
    State {
        new: u8,
    },
}

/// An address of a record: IPv4 in the first 4 bytes, IPv6 in all 16. An
/// IPv6 socket talking to an IPv4 peer (v4-mapped, `::ffff:a.b.c.d`) is
/// named by the IPv4 address its packets carry, so that its tracepoint
/// records and its SYN-ACK's meet on one key.
fn addr(family: u16, b: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    }
    let v6 = Ipv6Addr::from(*b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn decode(rec: &[u8]) -> Option<Record> {
    if rec.len() < STEAL_EVENT_SIZE {
        return None;
    }
    // SAFETY: length checked; StealEvent is plain old data.
    let ev: StealEvent = unsafe { std::ptr::read_unaligned(rec.as_ptr() as *const StealEvent) };
    let what = match ev.kind {
        STEAL_SYNACK => What::SynAck,
        STEAL_IPVS => What::Ipvs {
            real_server: SocketAddr::new(
                addr(
                    if ev.rs_family != 0 {
                        ev.rs_family
                    } else {
                        ev.family
                    },
                    &ev.rs_addr,
                ),
                ev.rs_port,
            ),
        },
        STEAL_RETRANS => What::Retransmit,
        STEAL_STATE => What::State { new: ev.newstate },
        _ => return None,
    };
    let owner = (ev.pid != 0).then(|| {
        let end = ev
            .comm
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(ev.comm.len());
        (
            ev.pid,
            String::from_utf8_lossy(&ev.comm[..end]).into_owned(),
        )
    });
    Some(Record {
        ts_ns: ev.ts_ns,
        what,
        local: SocketAddr::new(addr(ev.family, &ev.local_addr), ev.local_port),
        remote: SocketAddr::new(addr(ev.family, &ev.remote_addr), ev.remote_port),
        owner,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Retransmitting,
    Failed,
    Established,
    Unknown,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Retransmitting => "retransmitting",
            Outcome::Failed => "failed",
            Outcome::Established => "established",
            Outcome::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Boot-clock time of the SYN-ACK.
    pub ts_ns: u64,
    /// true: the reply never reached the socket (or IPVS took it).
    pub steal: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub owner: Option<(u32, String)>,
    pub real_server: Option<SocketAddr>,
    pub outcome: Outcome,
    pub retransmits: u32,
    /// The victim's pod, filled by the pipeline from the owner's cgroup.
    pub pod: Option<crate::k8s::pods::Pod>,
}

struct Open {
    ts_ns: u64,
    owner: Option<(u32, String)>,
    real_server: Option<SocketAddr>,
    retransmits: u32,
}

pub struct Correlator {
    follow_ns: u64,
    open: HashMap<(SocketAddr, SocketAddr), Open>,
}

/// Bound on connections followed at once (a storm must not grow memory).
const MAX_OPEN: usize = 4096;

impl Correlator {
    pub fn new(follow_ns: u64) -> Correlator {
        Correlator {
            follow_ns,
            open: HashMap::new(),
        }
    }

    fn report(key: (SocketAddr, SocketAddr), o: Open, last: Option<Outcome>) -> Report {
        let outcome = match last {
            Some(x) => x,
            None if o.retransmits > 0 => Outcome::Retransmitting,
            None => Outcome::Unknown,
        };
        let steal =
            o.real_server.is_some() || matches!(outcome, Outcome::Retransmitting | Outcome::Failed);
        Report {
            ts_ns: o.ts_ns,
            steal,
            local: key.0,
            remote: key.1,
            owner: o.owner,
            real_server: o.real_server,
            outcome,
            retransmits: o.retransmits,
            pod: None,
        }
    }

    /// Feeds one record; returns the report it completes, if any.
    pub fn feed(&mut self, r: Record) -> Option<Report> {
        let key = (r.local, r.remote);
        match r.what {
            What::SynAck => {
                if self.open.len() >= MAX_OPEN || self.open.contains_key(&key) {
                    return None;
                }
                self.open.insert(
                    key,
                    Open {
                        ts_ns: r.ts_ns,
                        owner: r.owner,
                        real_server: None,
                        retransmits: 0,
                    },
                );
                None
            }
            What::Ipvs { real_server } => {
                if let Some(o) = self.open.get_mut(&key) {
                    o.real_server = Some(real_server);
                }
                None
            }
            What::Retransmit => {
                let o = self.open.get_mut(&key)?;
                o.retransmits += 1;
                if o.owner.is_none() {
                    o.owner = r.owner;
                }
                None
            }
            What::State { new } => {
                let mut o = self.open.remove(&key)?;
                if o.owner.is_none() {
                    o.owner = r.owner;
                }
                let out = match new {
                    TCP_ESTABLISHED => Outcome::Established,
                    TCP_CLOSE => Outcome::Failed,
                    _ => Outcome::Unknown,
                };
                Some(Self::report(key, o, Some(out)))
            }
        }
    }

    /// The open connections that look stolen (the socket resent its SYN:
    /// the reply did not reach it) and that IPVS has not been seen taking
    /// yet, as (node side, peer): where IPVS cannot be probed, whoever can
    /// name a real server for them (IPVS's connection table) hands it to
    /// [`Correlator::set_real_server`]. Not the others: a stale IPVS entry
    /// for the same 4-tuple must not make a connection that gets through a
    /// steal.
    pub fn without_real_server(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.open
            .iter()
            .filter(|(_, o)| o.real_server.is_none() && o.retransmits > 0)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn set_real_server(&mut self, key: (SocketAddr, SocketAddr), rs: SocketAddr) {
        if let Some(o) = self.open.get_mut(&key) {
            o.real_server.get_or_insert(rs);
        }
    }

    /// Reports for connections followed for `follow` without a final state.
    pub fn expire(&mut self, now_boot_ns: u64) -> Vec<Report> {
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, o)| now_boot_ns.saturating_sub(o.ts_ns) >= self.follow_ns)
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Report> = due
            .into_iter()
            .filter_map(|k| self.open.remove(&k).map(|o| Self::report(k, o, None)))
            .collect();
        out.sort_by_key(|r| r.ts_ns);
        out
    }

    /// Everything still open, at exit.
    pub fn flush(&mut self) -> Vec<Report> {
        self.expire(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portwatch_common::AF_INET6;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rec(ts: u64, what: What) -> Record {
        Record {
            ts_ns: ts,
            what,
            local: sa("10.0.0.1:30080"),
            remote: sa("10.0.0.2:80"),
            owner: None,
        }
    }

    #[test]
    fn ipvs_steal_that_fails() {
        let mut c = Correlator::new(10_000);
        assert_eq!(c.feed(rec(1, What::SynAck)), None);
        let rs = sa("10.0.1.3:8080");
        assert_eq!(c.feed(rec(2, What::Ipvs { real_server: rs })), None);
        let mut r = rec(3, What::Retransmit);
        r.owner = Some((42, "kubelet".into()));
        assert_eq!(c.feed(r), None);
        // A second SYN-ACK for the same connection opens nothing new.
        assert_eq!(c.feed(rec(4, What::SynAck)), None);
        let rep = c.feed(rec(5, What::State { new: TCP_CLOSE })).unwrap();
        assert!(rep.steal);
        assert_eq!(rep.outcome, Outcome::Failed);
        assert_eq!(rep.real_server, Some(rs));
        assert_eq!(rep.owner, Some((42, "kubelet".into())));
        assert_eq!((rep.ts_ns, rep.retransmits), (1, 1));
        assert!(c.expire(u64::MAX).is_empty());
    }

    /// Without an IPVS probe the real server comes from IPVS's connection
    /// table, for the connections still open without one.
    #[test]
    fn real_server_from_elsewhere_makes_it_a_steal_with_the_ipvs_part() {
        let mut c = Correlator::new(10_000);
        c.feed(rec(1, What::SynAck));
        let key = (sa("10.0.0.1:30080"), sa("10.0.0.2:80"));
        // Not before the socket shows it lost its reply.
        assert!(c.without_real_server().is_empty());
        c.feed(rec(2, What::Retransmit));
        assert_eq!(c.without_real_server(), vec![key]);
        let rs = sa("10.0.1.3:8080");
        c.set_real_server(key, rs);
        assert!(c.without_real_server().is_empty());
        // A probe's own word is not overwritten; an unknown key is ignored.
        c.set_real_server(key, sa("10.9.9.9:1"));
        c.set_real_server((sa("10.0.0.1:1"), sa("10.0.0.2:80")), rs);
        let rep = c.feed(rec(3, What::State { new: TCP_CLOSE })).unwrap();
        assert!(rep.steal);
        assert_eq!(rep.real_server, Some(rs));
    }

    #[test]
    fn delivered_reply_is_a_near_miss_and_silence_expires() {
        let mut c = Correlator::new(100);
        c.feed(rec(1, What::SynAck));
        let rep = c
            .feed(rec(
                2,
                What::State {
                    new: TCP_ESTABLISHED,
                },
            ))
            .unwrap();
        assert!(!rep.steal);
        assert_eq!(rep.outcome, Outcome::Established);

        // Packet path only: retransmissions, no IPVS, expiry with the
        // outcome so far.
        c.feed(rec(10, What::SynAck));
        c.feed(rec(20, What::Retransmit));
        assert!(c.expire(50).is_empty());
        let reps = c.expire(110);
        assert_eq!(reps.len(), 1);
        assert!(reps[0].steal);
        assert_eq!(reps[0].real_server, None);
        assert_eq!(reps[0].outcome, Outcome::Retransmitting);

        // Nothing at all after the SYN-ACK: unknown, not a steal.
        c.feed(rec(200, What::SynAck));
        let reps = c.flush();
        assert_eq!(reps[0].outcome, Outcome::Unknown);
        assert!(!reps[0].steal);

        // Records for connections never opened are ignored.
        assert_eq!(c.feed(rec(300, What::State { new: TCP_CLOSE })), None);
        assert_eq!(c.feed(rec(300, What::Retransmit)), None);
    }

    #[test]
    fn decodes_the_kernel_record() {
        let mut ev = StealEvent::zeroed();
        ev.kind = STEAL_IPVS;
        ev.family = AF_INET;
        ev.local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.rs_addr[..4].copy_from_slice(&[10, 0, 1, 3]);
        ev.local_port = 30080;
        ev.remote_port = 80;
        ev.rs_port = 8080;
        ev.pid = 7;
        ev.comm[..4].copy_from_slice(b"curl");
        // SAFETY: `ev` is a live StealEvent of STEAL_EVENT_SIZE bytes, plain
        // data (repr(C)), borrowed for the slice's lifetime.
        let bytes =
            unsafe { std::slice::from_raw_parts(&ev as *const _ as *const u8, STEAL_EVENT_SIZE) };
        let r = decode(bytes).unwrap();
        assert_eq!(r.local, sa("10.0.0.1:30080"));
        assert_eq!(r.remote, sa("10.0.0.2:80"));
        assert_eq!(
            r.what,
            What::Ipvs {
                real_server: sa("10.0.1.3:8080")
            }
        );
        assert_eq!(r.owner, Some((7, "curl".into())));
        assert!(decode(&bytes[..10]).is_none());

        // IPv6, with an IPv4 real server (IPVS may send one family to the
        // other).
        ev.family = AF_INET6;
        ev.rs_family = AF_INET;
        ev.local_addr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        ev.remote_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts(&ev as *const _ as *const u8, STEAL_EVENT_SIZE) };
        let r = decode(bytes).unwrap();
        assert_eq!(r.local, sa("[fd00::1]:30080"));
        assert_eq!(r.remote, sa("[fd00::2]:80"));
        assert_eq!(
            r.what,
            What::Ipvs {
                real_server: sa("10.0.1.3:8080")
            }
        );

        // An IPv6 socket to an IPv4 peer: named as its packets are.
        ev.kind = STEAL_STATE;
        ev.local_addr = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        ev.remote_addr = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts(&ev as *const _ as *const u8, STEAL_EVENT_SIZE) };
        let r = decode(bytes).unwrap();
        assert_eq!(r.local, sa("10.0.0.1:30080"));
        assert_eq!(r.remote, sa("10.0.0.2:80"));
    }
}
