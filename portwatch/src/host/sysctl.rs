//! The sysctls portwatch reads, and the one reader of a network
//! namespace's ephemeral port settings (`ip_local_port_range`,
//! `ip_local_reserved_ports`, and for the audit `tcp_tw_reuse`), read inside
//! the netns with one setns (`netns::read_sysctls`).

use std::fs::File;

use anyhow::Result;

use crate::host::{
    netns::{self, parse_port_range},
    ports::PortSet,
};

pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
pub const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";

/// A netns's port settings, each parsed on its own (the error says which
/// value did not parse, and how it read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSysctls {
    pub range: Result<(u16, u16), String>,
    pub reserved: Result<PortSet, String>,
    /// Read only when asked for; None when absent or unparsable.
    pub tw_reuse: Option<u32>,
}

impl PortSysctls {
    /// Parses the files' contents (`tw_reuse`: that file's, when read).
    pub fn parse(range: &str, reserved: &str, tw_reuse: Option<&str>) -> PortSysctls {
        PortSysctls {
            range: parse_port_range(range)
                .ok_or_else(|| format!("unparsable ip_local_port_range {:?}", range.trim())),
            reserved: PortSet::parse(reserved)
                .map_err(|e| format!("ip_local_reserved_ports {:?}: {e:#}", reserved.trim())),
            tw_reuse: tw_reuse.and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// Reads the port settings of the netns behind `ns` (None: the calling
/// thread's own), `tcp_tw_reuse` too when `with_tw_reuse`.
pub fn read_ports(ns: Option<&File>, with_tw_reuse: bool) -> Result<PortSysctls> {
    let paths: &[&str] = if with_tw_reuse {
        &[PORT_RANGE, RESERVED_PORTS, TW_REUSE]
    } else {
        &[PORT_RANGE, RESERVED_PORTS]
    };
    let v = netns::read_sysctls(ns, paths)?;
    Ok(PortSysctls::parse(
        &v[0],
        &v[1],
        v.get(2).map(String::as_str),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_parses_on_its_own() {
        let p = PortSysctls::parse("41000\t41003\n", "8080,30000-32767\n", Some("2\n"));
        assert_eq!(p.range, Ok((41000, 41003)));
        assert_eq!(p.reserved.unwrap().len(), 2769);
        assert_eq!(p.tw_reuse, Some(2));
        let p = PortSysctls::parse("x", "\n", None);
        assert!(p.range.unwrap_err().contains("ip_local_port_range \"x\""));
        assert_eq!(p.reserved.unwrap().len(), 0);
        assert_eq!(p.tw_reuse, None);
        let p = PortSysctls::parse("32768 60999", "70000", None);
        assert!(p.reserved.unwrap_err().contains("ip_local_reserved_ports"));
    }

    #[test]
    fn reads_its_own_netns() {
        let p = read_ports(None, true).unwrap();
        assert!(p.range.is_ok() && p.reserved.is_ok(), "{p:?}");
    }
}
