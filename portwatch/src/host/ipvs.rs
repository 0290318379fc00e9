//! The node's IPVS virtual services, read from `/proc/net/ip_vs` (what
//! `ipvsadm -Ln` shows), in portwatch's own network namespace. `check`
//! guards their ports from the ephemeral range; `nodeport-steal` watches
//! SYN-ACKs for the TCP ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    /// TCP, UDP or SCTP.
    pub proto: String,
    pub addr: IpAddr,
    pub port: u16,
    pub scheduler: String,
}

/// `None` when the kernel has no IPVS (module not loaded, or not built).
pub fn read_services() -> Result<Option<Vec<VirtualService>>> {
    match std::fs::read_to_string("/proc/net/ip_vs") {
        Ok(text) => Ok(Some(parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading /proc/net/ip_vs"),
    }
}

/// Virtual services of `/proc/net/ip_vs`: `TCP  0A000001:7580 rr` (hex
/// address and port), IPv6 as `TCP  [fd00:0000:...:0001]:7580 rr`. Real
/// servers (`  -> ...`) and firewall-mark services (`FWM`, no port) are
/// skipped.
pub fn parse(text: &str) -> Vec<VirtualService> {
    let mut out = vec![];
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let proto = match w.next() {
            Some(p @ ("TCP" | "UDP" | "SCTP")) => p,
            _ => continue,
        };
        let (Some(ap), sched) = (w.next(), w.next().unwrap_or("")) else {
            continue;
        };
        let Some((a, p)) = ap.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(p, 16) else {
            continue;
        };
        let addr = if let Some(v6) = a.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            match v6.parse::<Ipv6Addr>() {
                Ok(x) => IpAddr::V6(x),
                Err(_) => continue,
            }
        } else {
            match u32::from_str_radix(a, 16) {
                Ok(x) => IpAddr::V4(Ipv4Addr::from(x)),
                Err(_) => continue,
            }
        };
        out.push(VirtualService {
            proto: proto.to_string(),
            addr,
            port,
            scheduler: sched.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_not_real_servers() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A000001:7580 rr
  -> 0A000103:1F90      Masq    1      0          1
UDP  0A000001:0035 rr
TCP  [fd00:0000:0000:0000:0000:0000:0000:0001]:01BB wlc
FWM  00000001 rr
";
        let s = parse(text);
        assert_eq!(
            s,
            vec![
                VirtualService {
                    proto: "TCP".into(),
                    addr: "10.0.0.1".parse().unwrap(),
                    port: 30080,
                    scheduler: "rr".into()
                },
                VirtualService {
                    proto: "UDP".into(),
                    addr: "10.0.0.1".parse().unwrap(),
                    port: 53,
                    scheduler: "rr".into()
                },
                VirtualService {
                    proto: "TCP".into(),
                    addr: "fd00::1".parse().unwrap(),
                    port: 443,
                    scheduler: "wlc".into()
                },
            ]
        );
        assert!(parse("").is_empty());
    }
}
