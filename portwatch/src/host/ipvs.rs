//! The node's IPVS virtual services, read from `/proc/net/ip_vs` (what
//! `ipvsadm -Ln` shows), in portwatch's own network namespace. `check`
//! guards their ports from the ephemeral range; `nodeport-steal` watches
//! SYN-ACKs for the TCP ones. Its connection table, `/proc/net/ip_vs_conn`
//! (what `ipvsadm -Lnc` shows), names the real server a stolen SYN-ACK went
//! to where the kernel has no module BTF to probe IPVS with (before 5.11).

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

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

/// One entry of IPVS's connection table: client -> virtual service ->
/// real server ("destination").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub proto: String,
    pub client: SocketAddr,
    pub virt: SocketAddr,
    pub dest: SocketAddr,
    /// e.g. SYN_RECV, CLOSE, ESTABLISHED.
    pub state: String,
}

pub const CONN_TABLE: &str = "/proc/net/ip_vs_conn";

/// The real servers of the TCP connections IPVS made from each `(client,
/// virtual service)` of `wanted`, read from [`CONN_TABLE`] in one pass,
/// line by line (a busy node's table is large; nothing is kept but the
/// matches). `None` for a pair without a connection, all `None` without
/// IPVS.
pub fn real_servers_of(wanted: &[(SocketAddr, SocketAddr)]) -> Result<Vec<Option<SocketAddr>>> {
    let mut out = vec![None; wanted.len()];
    if wanted.is_empty() {
        return Ok(out);
    }
    let f = match std::fs::File::open(CONN_TABLE) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {CONN_TABLE}")),
    };
    let mut left = wanted.len();
    for line in BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {CONN_TABLE}"))?;
        let Some(c) = parse_conn(&line) else { continue };
        if c.proto != "TCP" {
            continue;
        }
        for (i, w) in wanted.iter().enumerate() {
            if out[i].is_none() && *w == (c.client, c.virt) {
                out[i] = Some(c.dest);
                left -= 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// Every connection of a `/proc/net/ip_vs_conn` text.
#[cfg(test)]
pub fn parse_conns(text: &str) -> Vec<Conn> {
    text.lines().filter_map(parse_conn).collect()
}

/// One line of `/proc/net/ip_vs_conn` (`ip_vs_conn_seq_show`):
/// `TCP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV  57`, addresses
/// as hex (IPv4, network order printed as a number) or `%pI6` (eight
/// groups of four hex digits), ports as hex; persistence-engine fields may
/// follow. The header and anything malformed give `None`. The real
/// server's family may differ from the client's (IPVS tunnels v4 to v6).
pub fn parse_conn(line: &str) -> Option<Conn> {
    let mut w = line.split_whitespace();
    let proto = match w.next()? {
        p @ ("TCP" | "UDP" | "SCTP" | "IP") => p,
        _ => return None,
    };
    let mut sock = || -> Option<SocketAddr> {
        let a = hex_addr(w.next()?)?;
        let p = w.next()?;
        if p.len() != 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(SocketAddr::new(a, u16::from_str_radix(p, 16).ok()?))
    };
    let (client, virt, dest) = (sock()?, sock()?, sock()?);
    if client.is_ipv4() != virt.is_ipv4() {
        return None;
    }
    let state = w.next()?.to_string();
    // The seconds left before it expires.
    w.next()?.parse::<u32>().ok()?;
    Some(Conn {
        proto: proto.to_string(),
        client,
        virt,
        dest,
        state,
    })
}

/// `0A000001` (IPv4) or `fd00:0000:0000:0000:0000:0000:0000:0001` (IPv6).
fn hex_addr(s: &str) -> Option<IpAddr> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(s, 16).ok()?)));
    }
    // %pI6: exactly eight groups of four hex digits, never shortened.
    let groups: Vec<&str> = s.split(':').collect();
    if groups.len() != 8
        || !groups
            .iter()
            .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As 5.10's `ipvsadm -Lnc` showed the stolen SYN-ACK: `10.0.0.2:80 ->
    /// 10.0.0.1:30080 -> 10.0.1.3:8080`.
    const CONNS: &str = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV         57
TCP 0A000002 0050 0A000001 7581 0A000103 1F90 CLOSE             9
UDP 0A000005 D431 0A000001 0035 0A000104 0035 UDP             298
TCP fd00:0000:0000:0000:0000:0000:0000:0002 0050 fd00:0000:0000:0000:0000:0000:0000:0001 7582 fd01:0000:0000:0000:0000:0000:0000:0003 1F90 SYN_RECV         58
TCP 0A000009 C000 0A000001 01BB 0A000107 01BB ESTABLISHED    899 sip 0123abcd
";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_as_the_kernel_prints_them() {
        let c = parse_conns(CONNS);
        assert_eq!(c.len(), 5, "{c:?}");
        assert_eq!(
            c[0],
            Conn {
                proto: "TCP".into(),
                client: sa("10.0.0.2:80"),
                virt: sa("10.0.0.1:30080"),
                dest: sa("10.0.1.3:8080"),
                state: "SYN_RECV".into(),
            }
        );
        assert_eq!(c[1].state, "CLOSE");
        assert_eq!(c[2].proto, "UDP");
        assert_eq!(c[3].client, sa("[fd00::2]:80"));
        assert_eq!(c[3].virt, sa("[fd00::1]:30082"));
        assert_eq!(c[3].dest, sa("[fd01::3]:8080"));
        // Persistence-engine columns after the expiry are ignored.
        assert_eq!(c[4].dest, sa("10.0.1.7:443"));
    }

    #[test]
    fn malformed_connection_lines_are_skipped() {
        for bad in [
            "",
            "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData",
            "TCP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV",
            "TCP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV x",
            "TCP 0A00002 0050 0A000001 7580 0A000103 1F90 SYN_RECV 57",
            "TCP 0A000002 50 0A000001 7580 0A000103 1F90 SYN_RECV 57",
            "TCP 0A000002 0050 0A000001 +580 0A000103 1F90 SYN_RECV 57",
            "TCP fd00::2 0050 0A000001 7580 0A000103 1F90 SYN_RECV 57",
            "TCP 0A000002 0050 fd00:0000:0000:0000:0000:0000:0000:0001 7580 0A000103 1F90 SYN_RECV 57",
            "ICMP 0A000002 0050 0A000001 7580 0A000103 1F90 SYN_RECV 57",
        ] {
            assert_eq!(parse_conn(bad), None, "{bad:?}");
        }
        // A v4 service may send to a v6 real server (tunnel).
        let mixed = "TCP 0A000002 0050 0A000001 7580 fd01:0000:0000:0000:0000:0000:0000:0003 1F90 SYN_RECV 57";
        assert_eq!(parse_conn(mixed).unwrap().dest, sa("[fd01::3]:8080"));
    }

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
