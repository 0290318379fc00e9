//! The decoded event: what every stage after `decode` works with, and
//! what the `cause` stage fills in (the cause and its detail).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{host::ports::PortSet, k8s::pods::Pod, kernel::probe::Probe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Connect,
    Bind,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Bind => "bind",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[allow(clippy::upper_case_acronyms)]
pub enum Errno {
    #[serde(rename = "EADDRNOTAVAIL")]
    #[value(name = "EADDRNOTAVAIL", alias = "eaddrnotavail", alias = "99")]
    EADDRNOTAVAIL,
    #[serde(rename = "EADDRINUSE")]
    #[value(name = "EADDRINUSE", alias = "eaddrinuse", alias = "98")]
    EADDRINUSE,
}

impl Errno {
    pub fn from_ret(ret: i32) -> Option<Errno> {
        // wrapping: i32::MIN has no negation (and is no errno).
        match ret.wrapping_neg() {
            portwatch_common::EADDRNOTAVAIL => Some(Errno::EADDRNOTAVAIL),
            portwatch_common::EADDRINUSE => Some(Errno::EADDRINUSE),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Errno::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            Errno::EADDRINUSE => "EADDRINUSE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Mptcp,
    Sctp,
    Other,
}

impl Proto {
    /// The same word the JSON output uses.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Mptcp => "mptcp",
            Proto::Sctp => "sctp",
            Proto::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The same word the JSON output uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// connect(): no free source port toward daddr:dport was left.
    PortsExhausted,
    /// connect(): the port was fixed by bind() and that 4-tuple exists.
    TupleInUse,
    /// bind(): the explicit port asked for is taken.
    PortInUse,
    /// bind(ip, 0): no free port was left for autobind.
    BindPortsExhausted,
    /// bind(): the address is not configured in the netns.
    AddrNotLocal,
    /// The evidence was gone before anyone looked.
    Unknown,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::PortsExhausted => "ports_exhausted",
            Cause::TupleInUse => "tuple_in_use",
            Cause::PortInUse => "port_in_use",
            Cause::BindPortsExhausted => "bind_ports_exhausted",
            Cause::AddrNotLocal => "addr_not_local",
            Cause::Unknown => "unknown",
        }
    }
}

/// Socket states and how many sockets are in each (`{"ESTABLISHED": 3}`).
pub type States = BTreeMap<&'static str, u32>;

/// A process and how many of the sockets in question it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderCount {
    pub pid: u32,
    pub comm: String,
    pub pod: Option<Pod>,
    pub count: u32,
}

/// Sockets on a port, and their process when they have one: one entry per
/// (process, state, local address), with how many sockets it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortHolder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub pod: Option<Pod>,
    pub state: &'static str,
    /// The sockets' local address:port.
    pub local: String,
    pub count: u32,
}

/// `ports_exhausted` / `bind_ports_exhausted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exhausted {
    pub range: Option<[u16; 2]>,
    /// Reserved ports inside the range, in the kernel's list syntax.
    pub reserved: Option<String>,
    /// Range size less the reserved ports in it.
    pub usable: Option<u32>,
    pub in_use: Option<u32>,
    pub states: Option<States>,
    pub holders: Option<Vec<HolderCount>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub sport: u16,
    pub states: Option<States>,
    pub holders: Option<Vec<HolderCount>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortInUse {
    pub port: u16,
    /// Listeners first.
    pub holders: Option<Vec<PortHolder>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Exhausted(Exhausted),
    Tuple(Tuple),
    PortInUse(PortInUse),
    AddrNotLocal { addr: Option<IpAddr> },
    Unknown { reason: String },
}

/// One connect()/bind() failure, decoded and (after `enrich`) annotated.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Nanoseconds since the Unix epoch (UTC).
    pub time_ns: u64,
    pub kind: Kind,
    pub errno: Errno,
    pub ret: i32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    pub netns: Option<u32>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// The socket's own bound port when the kernel side read the socket
    /// (0: no port was bound).
    pub sock_port: Option<u16>,
    pub probe: Probe,
    /// Filled by `enrich`: the netns's `ip_local_port_range`.
    pub port_range: Option<(u16, u16)>,
    /// Filled by `enrich`: the netns's `ip_local_reserved_ports`.
    pub reserved: Option<PortSet>,
    /// Filled by `enrich`: the cgroup v2 path of `cgroup_id` (None: unresolved).
    pub cgroup: Option<String>,
    /// Filled by `enrich`: the pod, when the cgroup path is a pod's.
    pub pod: Option<Pod>,
    /// Filled by `cause`: why it failed.
    pub cause: Option<Cause>,
    /// Filled by `cause`: the evidence and who holds the ports.
    pub detail: Option<Detail>,
    /// Filled by `cause`: false when part of the detail is missing (look-up
    /// past the budget, netns or sockets gone).
    pub detail_complete: Option<bool>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A connect() that failed for want of a port: the base of the
    /// pipeline's unit tests.
    pub fn sample_event() -> Event {
        Event {
            time_ns: 1_795_421_553_123_456_789, // 2026-11-23T08:12:33.123456Z
            kind: Kind::Connect,
            errno: Errno::EADDRNOTAVAIL,
            ret: -99,
            pid: 4242,
            tid: 4243,
            comm: "curl".into(),
            uid: 0,
            cgroup_id: 1234,
            netns: Some(4026532598),
            proto: Some(Proto::Tcp),
            family: Some(Family::Ipv4),
            saddr: None,
            sport: None,
            daddr: Some("127.0.0.1".parse().unwrap()),
            dport: Some(7100),
            sock_port: Some(0),
            probe: Probe::Tracepoint,
            port_range: Some((41000, 41003)),
            reserved: None,
            cgroup: None,
            pod: None,
            cause: None,
            detail: None,
            detail_complete: None,
        }
    }
}
