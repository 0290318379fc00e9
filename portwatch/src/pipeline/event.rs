//! The decoded event: what every stage after `decode` works with.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    host::ports::PortSet,
    kernel::probe::Probe,
    pipeline::cause::{Cause, Detail},
};

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
        match -ret {
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
    pub pod: Option<crate::k8s::pods::Pod>,
    /// Filled by `cause`: why it failed.
    pub cause: Option<Cause>,
    /// Filled by `cause`: the evidence and who holds the ports.
    pub detail: Option<Detail>,
    /// Filled by `cause`: false when part of the detail is missing (look-up
    /// past the budget, netns or sockets gone).
    pub detail_complete: Option<bool>,
}
