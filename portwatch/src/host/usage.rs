//! How many ephemeral ports a network namespace has in use, per
//! destination: the sampler behind `portwatch top` (and `serve`'s gauges).
//!
//! A connect() without bind() takes its source port from
//! `ip_local_port_range` less `ip_local_reserved_ports` (the *usable* ports),
//! and a port is free again for a destination only once no socket holds that
//! 4-tuple, TIME_WAIT included. So the ports in use toward `daddr:dport`
//! are the TCP sockets of the netns, in any state but LISTEN, whose peer is
//! `daddr:dport` and whose local port is usable: what `ss -tan` lists with
//! that peer and a source port in the range. One sample is one setns thread
//! (sysctls and a filtered sock_diag dump, see `sockdiag`).

use std::{collections::HashMap, fs::File, net::IpAddr};

use anyhow::{anyhow, Context as _, Result};

use crate::host::{
    netns::{self, NetnsHandles},
    ports::{self, PortSet},
    sockdiag::{self, PortFilter, Sock, STATE_LISTEN},
    sysctl::read_ports,
};

/// A destination: remote address (IPv4-mapped IPv6 as IPv4) and port.
pub type Dest = (IpAddr, u16);

/// Ephemeral ports in use toward one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestUse {
    pub daddr: IpAddr,
    pub dport: u16,
    /// Sockets toward it holding a usable local port.
    pub in_use: u32,
}

/// One sample of a netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// `ip_local_port_range`.
    pub range: (u16, u16),
    /// The reserved ports inside the range.
    pub reserved: PortSet,
    /// Range size less the reserved ports in it: what one destination can
    /// take at most (from one source address).
    pub usable: u32,
    /// Sockets holding a usable local port, every destination together.
    pub total: u32,
    /// Of `total`, the ones bound but not connected (no destination): each
    /// keeps its port from every destination.
    pub unconnected: u32,
    /// By `in_use`, most first (then address, port). `sample`: every
    /// destination with a socket. `sample_toward`: exactly the destinations
    /// asked for, 0 for those with none.
    pub dests: Vec<DestUse>,
}

impl Usage {
    /// Ports in use toward `d` (0 when it is not in `dests`).
    pub fn in_use(&self, d: Dest) -> u32 {
        let d = (d.0.to_canonical(), d.1);
        self.dests
            .iter()
            .find(|u| (u.daddr, u.dport) == d)
            .map_or(0, |u| u.in_use)
    }

    /// `in_use` as a percentage of `usable` (None when nothing is usable).
    pub fn percent(&self, in_use: u32) -> Option<f64> {
        percent(in_use, self.usable)
    }
}

/// `in_use / usable` in percent, rounded to one decimal.
pub fn percent(in_use: u32, usable: u32) -> Option<f64> {
    (usable > 0).then(|| (in_use as f64 * 1000.0 / usable as f64).round() / 10.0)
}

/// Groups sockets by destination: those in any state but LISTEN with a
/// local port in `usable` and a peer (port != 0). `only`: count just these
/// destinations, each listed even at 0. Sorted by count, most first.
pub fn group(socks: &[Sock], usable: &PortSet, only: Option<&[Dest]>) -> Vec<DestUse> {
    let mut counts: HashMap<Dest, u32> = HashMap::new();
    if let Some(only) = only {
        for d in only {
            counts.insert((d.0.to_canonical(), d.1), 0);
        }
    }
    for s in socks {
        if s.state == STATE_LISTEN || s.dport == 0 || !usable.contains(s.sport) {
            continue;
        }
        let d = (s.dst.to_canonical(), s.dport);
        match counts.get_mut(&d) {
            Some(n) => *n += 1,
            None if only.is_none() => {
                counts.insert(d, 1);
            }
            None => {}
        }
    }
    let mut v: Vec<DestUse> = counts
        .into_iter()
        .map(|((daddr, dport), in_use)| DestUse {
            daddr,
            dport,
            in_use,
        })
        .collect();
    v.sort_by(|a, b| {
        b.in_use
            .cmp(&a.in_use)
            .then(a.daddr.cmp(&b.daddr))
            .then(a.dport.cmp(&b.dport))
    });
    v
}

/// Sockets holding a usable port: (all of them, the unconnected ones).
fn totals(socks: &[Sock], usable: &PortSet) -> (u32, u32) {
    let held = socks
        .iter()
        .filter(|s| s.state != STATE_LISTEN && usable.contains(s.sport));
    let (mut total, mut unconnected) = (0, 0);
    for s in held {
        total += 1;
        if s.dport == 0 {
            unconnected += 1;
        }
    }
    (total, unconnected)
}

fn sample_here(only: Option<&[Dest]>) -> Result<Usage> {
    let p = read_ports(None, false)?;
    let range = p.range.map_err(|e| anyhow!(e))?;
    let reserved = p
        .reserved
        .map_err(|e| anyhow!(e))?
        .intersect(&PortSet::range(range.0, range.1));
    let usable = ports::usable(range, &reserved);
    // Filtered in the kernel: only sockets on a range port come back.
    let socks = sockdiag::dump(
        libc::IPPROTO_TCP as u8,
        PortFilter::SportRange(range.0, range.1),
    )?;
    let (total, unconnected) = totals(&socks, &usable);
    Ok(Usage {
        range,
        usable: usable.len(),
        dests: group(&socks, &usable, only),
        reserved,
        total,
        unconnected,
    })
}

fn sample_in(ns: Option<&File>, only: Option<&[Dest]>) -> Result<Usage> {
    match ns {
        None => sample_here(only),
        Some(ns) => netns::run_in(ns, move || sample_here(only))?,
    }
}

/// Every destination the netns behind `ns` (None: portwatch's own) has
/// ephemeral ports in use toward, with its range and usable count.
pub fn sample(ns: Option<&File>) -> Result<Usage> {
    sample_in(ns, None)
}

/// `sample`, counting only `dests` (each listed, 0 when none are in use).
pub fn sample_toward(ns: Option<&File>, dests: &[Dest]) -> Result<Usage> {
    sample_in(ns, Some(dests))
}

/// Samples netns by inode, keeping a handle on each it was shown, so a
/// netns can still be read after the process that named it has exited.
pub struct Sampler {
    handles: NetnsHandles,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            handles: NetnsHandles::new(),
        }
    }

    /// Takes (and keeps) a handle on netns `ino` through `pids` (an event's
    /// tid and pid: call it while they live). False when none was found.
    pub fn remember(&mut self, ino: u32, pids: &[u32]) -> bool {
        self.handles.is_own(ino) || self.handles.get(ino, pids).is_some()
    }

    /// Closes the handles of namespaces that have gone, when a sweep is due.
    pub fn sweep_if_due(&mut self) {
        self.handles.sweep_if_due();
    }

    /// A sample of netns `ino` (`only`: just these destinations). Netns not
    /// remembered are looked for under /run/netns and in /proc.
    pub fn sample(&mut self, ino: u32, only: Option<&[Dest]>) -> Result<Usage> {
        let ns = if self.handles.is_own(ino) {
            None
        } else {
            let f = self.handles.get(ino, &[]);
            Some(f.ok_or_else(|| anyhow!("netns {ino} is gone (no process or mount holds it)"))?)
        };
        match only {
            Some(d) => sample_toward(ns, d),
            None => sample(ns),
        }
        .with_context(|| format!("netns {ino}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sockdiag::STATE_TIME_WAIT;
    use std::net::{TcpListener, TcpStream};

    fn sock(state: u8, sport: u16, dst: &str, dport: u16) -> Sock {
        Sock {
            state,
            src: "10.0.0.1".parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport,
            inode: 0,
            uid: 0,
        }
    }

    const EST: u8 = 1;
    const SYN_SENT: u8 = 2;
    const CLOSE: u8 = 7;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn groups_by_destination_most_first() {
        let usable = ports::usable((41000, 41007), &PortSet::parse("41007").unwrap());
        let socks = [
            sock(EST, 41000, "10.0.0.9", 80),
            sock(STATE_TIME_WAIT, 41001, "10.0.0.9", 80),
            sock(SYN_SENT, 41002, "10.0.0.9", 80),
            sock(EST, 41000, "10.0.0.8", 443),
            sock(EST, 41001, "::ffff:10.0.0.8", 443), // same destination, v4-mapped
            sock(EST, 41003, "10.0.0.8", 80),         // another port: its own destination
            sock(EST, 41000, "fd00::1", 80),
            // Not counted: a listener, a port outside the range, a reserved
            // port, a bound socket with no peer.
            sock(STATE_LISTEN, 41004, "0.0.0.0", 0),
            sock(EST, 40999, "10.0.0.9", 80),
            sock(EST, 41007, "10.0.0.9", 80),
            sock(CLOSE, 41005, "0.0.0.0", 0),
        ];
        let g = group(&socks, &usable, None);
        let got: Vec<(IpAddr, u16, u32)> = g.iter().map(|d| (d.daddr, d.dport, d.in_use)).collect();
        assert_eq!(
            got,
            vec![
                (ip("10.0.0.9"), 80, 3),
                (ip("10.0.0.8"), 443, 2),
                (ip("10.0.0.8"), 80, 1),
                (ip("fd00::1"), 80, 1),
            ]
        );
        assert_eq!(totals(&socks, &usable), (8, 1));
        // Only the destinations asked for, each listed, zero included.
        let only = [(ip("::ffff:10.0.0.8"), 443), (ip("192.0.2.1"), 80)];
        let g = group(&socks, &usable, Some(&only));
        let got: Vec<(IpAddr, u16, u32)> = g.iter().map(|d| (d.daddr, d.dport, d.in_use)).collect();
        assert_eq!(
            got,
            vec![(ip("10.0.0.8"), 443, 2), (ip("192.0.2.1"), 80, 0)]
        );
        assert!(group(&[], &usable, None).is_empty());
    }

    #[test]
    fn usage_helpers() {
        let u = Usage {
            range: (41000, 41003),
            reserved: PortSet::new(),
            usable: 4,
            total: 5,
            unconnected: 0,
            dests: vec![
                DestUse {
                    daddr: ip("10.0.0.9"),
                    dport: 80,
                    in_use: 3,
                },
                DestUse {
                    daddr: ip("10.0.0.8"),
                    dport: 80,
                    in_use: 2,
                },
            ],
        };
        assert_eq!(u.in_use((ip("::ffff:10.0.0.9"), 80)), 3);
        assert_eq!(u.in_use((ip("10.0.0.9"), 81)), 0);
        assert_eq!(u.percent(3), Some(75.0));
        assert_eq!(percent(1, 3), Some(33.3));
        assert_eq!(percent(2, 3), Some(66.7));
        assert_eq!(percent(0, 0), None);
    }

    /// The real table of this process's netns: a connection made here is
    /// counted toward its listener when its port is in the range.
    #[test]
    fn samples_this_netns() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lport = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        let cport = c.local_addr().unwrap().port();
        let dest = (ip("127.0.0.1"), lport);
        let u = sample_toward(None, &[dest]).unwrap();
        assert!(u.range.0 <= u.range.1);
        assert_eq!(u.dests.len(), 1);
        let want = u32::from(ports::usable(u.range, &u.reserved).contains(cport));
        assert_eq!(u.in_use(dest), want, "{u:?}");
        let all = sample(None).unwrap();
        assert_eq!(all.in_use(dest), want, "{all:?}");
        assert!(all.total >= want);
        let mut s = Sampler::new();
        let me = netns::own_ino().unwrap();
        assert!(s.remember(me, &[std::process::id()]));
        assert_eq!(s.sample(me, Some(&[dest])).unwrap().in_use(dest), want);
        assert!(s.sample(1, None).is_err(), "inode 1 is no netns");
    }
}
