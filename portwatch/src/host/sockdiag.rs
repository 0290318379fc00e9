//! The kernel's socket table, read the way `ss` reads it: a
//! NETLINK_SOCK_DIAG inet_diag dump. The netlink socket answers for the
//! network namespace it was created in, so `dump_in` opens it on a thread
//! that has entered the wanted netns.
//!
//! A port filter (the same bytecode `ss` compiles from `sport = :N`) runs in
//! the kernel, so a node with many sockets sends back only those asked for.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context as _, Result};

use crate::host::netns;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;

// enum of inet_diag bytecode operations (linux/inet_diag.h).
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_S_EQ: u8 = 11;
const BC_D_EQ: u8 = 12;

const NLMSG_HDR: usize = 16;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;

/// TCP state numbers (include/net/tcp_states.h) as `ss` names them.
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

pub const STATE_TIME_WAIT: u8 = 6;
pub const STATE_LISTEN: u8 = 10;

/// One socket of the table. Ports in host order; IPv4-mapped IPv6
/// addresses are given as IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sock {
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Socket inode (0: no file, e.g. TIME_WAIT or not yet accepted).
    pub inode: u32,
    pub uid: u32,
}

/// Which sockets the kernel sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortFilter {
    /// Local port equal.
    Sport(u16),
    /// Local port within `lo..=hi`.
    SportRange(u16, u16),
    /// Local and remote port equal (one 4-tuple, the addresses aside).
    SportDport(u16, u16),
    /// Every socket of the protocol.
    Any,
}

fn op(code: u8, yes: u8, no: u16) -> [u8; 4] {
    let n = no.to_ne_bytes();
    [code, yes, n[0], n[1]]
}

/// inet_diag bytecode: each comparison is two 4-byte ops (the port rides in
/// the second one's `no`); `yes` steps to the next comparison, `no` jumps
/// 4 bytes past the end, which the kernel reads as "reject".
fn bytecode(f: PortFilter) -> Vec<u8> {
    let cmps: Vec<(u8, u16)> = match f {
        PortFilter::Sport(p) => vec![(BC_S_EQ, p)],
        PortFilter::SportRange(lo, hi) => vec![(BC_S_GE, lo), (BC_S_LE, hi)],
        PortFilter::SportDport(s, d) => vec![(BC_S_EQ, s), (BC_D_EQ, d)],
        PortFilter::Any => vec![],
    };
    let total = cmps.len() * 8;
    let mut bc = Vec::with_capacity(total);
    for (i, (code, port)) in cmps.into_iter().enumerate() {
        let left = (total - i * 8) as u16;
        bc.extend(op(code, 8, left + 4));
        bc.extend(op(0, 0, port));
    }
    bc
}

fn request(family: u8, proto: u8, f: PortFilter, seq: u32) -> Vec<u8> {
    let bc = bytecode(f);
    // No filter: no bytecode attribute at all.
    let attr_len = if bc.is_empty() { 0 } else { 4 + bc.len() };
    let len = NLMSG_HDR + REQ_V2 + attr_len;
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zero id.
    m.extend([family, proto, 0, 0]);
    m.extend(u32::MAX.to_ne_bytes()); // every state
    m.extend([0u8; 48]);
    if attr_len > 0 {
        m.extend((attr_len as u16).to_ne_bytes());
        m.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend(&bc);
    }
    debug_assert_eq!(m.len(), len);
    m
}

fn addr(family: u8, b: &[u8]) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let a: [u8; 16] = b[..16].try_into().unwrap();
        let v6 = Ipv6Addr::from(a);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// Parses one inet_diag_msg.
fn parse_msg(b: &[u8]) -> Option<Sock> {
    if b.len() < DIAG_MSG {
        return None;
    }
    let family = b[0];
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    Some(Sock {
        state: b[1],
        sport: u16::from_be_bytes([b[4], b[5]]),
        dport: u16::from_be_bytes([b[6], b[7]]),
        src: addr(family, &b[8..24]),
        dst: addr(family, &b[24..40]),
        uid: u32_at(64),
        inode: u32_at(68),
    })
}

fn nl_socket() -> Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the fd it returns is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
    }
    // SAFETY: `fd` was just opened above, is valid, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dump_family(
    fd: &OwnedFd,
    family: u8,
    proto: u8,
    f: PortFilter,
    out: &mut Vec<Sock>,
) -> Result<()> {
    let seq = 1;
    let req = request(family, proto, f, seq);
    // SAFETY: sockaddr_nl is plain C data, for which all zeroes is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `req` and `sa` are live for the call, and the lengths passed
    // are theirs.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error()).context("sending the sock_diag request");
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is live and writable for `buf.len()` bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("reading the sock_diag dump");
        }
        if parse_reply(&buf[..n as usize], proto, out)? {
            return Ok(());
        }
    }
}

/// One datagram of a dump: its sockets go onto `out`. True once the dump is
/// over (NLMSG_DONE, or an NLMSG_ERROR of 0).
pub(crate) fn parse_reply(mut b: &[u8], proto: u8, out: &mut Vec<Sock>) -> Result<bool> {
    if b.is_empty() {
        bail!("sock_diag dump ended without NLMSG_DONE");
    }
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(b[4..6].try_into().unwrap());
        if len < NLMSG_HDR || len > b.len() {
            bail!("malformed netlink message (len {len})");
        }
        let body = &b[NLMSG_HDR..len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let Some(err) = body.get(0..4) else {
                    bail!("malformed netlink error message (len {len})");
                };
                let err = i32::from_ne_bytes(err.try_into().unwrap());
                if err == 0 {
                    return Ok(true);
                }
                if err == -libc::ENOENT {
                    bail!(
                        "the kernel has no inet_diag for protocol {proto} (modules inet_diag, tcp_diag, udp_diag not loaded?)"
                    );
                }
                // wrapping: i32::MIN has no negation (and is no errno).
                return Err(io::Error::from_raw_os_error(err.wrapping_neg()))
                    .context("sock_diag answered");
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(s) = parse_msg(body) {
                    out.push(s);
                }
            }
            _ => {}
        }
        let adv = (len + 3) & !3;
        b = &b[adv.min(b.len())..];
    }
    Ok(false)
}

/// Every IPv4 and IPv6 socket of protocol `proto` (IPPROTO_TCP / _UDP)
/// matching `f`, in the netns of the calling thread.
pub fn dump(proto: u8, f: PortFilter) -> Result<Vec<Sock>> {
    let fd = nl_socket()?;
    let mut out = vec![];
    dump_family(&fd, libc::AF_INET as u8, proto, f, &mut out)?;
    dump_family(&fd, libc::AF_INET6 as u8, proto, f, &mut out)?;
    Ok(out)
}

/// Whether this netns's socket table can be read (one tiny filtered dump).
pub fn probe() -> Result<()> {
    dump(libc::IPPROTO_TCP as u8, PortFilter::Sport(1)).map(|_| ())
}

/// Where a look-up of the socket table runs: portwatch's own netns, or the
/// one behind a handle.
pub enum NsHandle {
    Own,
    File(File),
}

/// `dump`, in the netns behind `ns` (None: portwatch's own).
pub fn dump_in(ns: Option<&File>, proto: u8, f: PortFilter) -> Result<Vec<Sock>> {
    match ns {
        None => dump(proto, f),
        Some(ns) => netns::run_in(ns, move || dump(proto, f))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn bytecode_layout_matches_the_kernels_audit() {
        // One comparison: code, yes=8, no=len+4, then the port op.
        let bc = bytecode(PortFilter::Sport(7100));
        assert_eq!(bc.len(), 8);
        assert_eq!(&bc[..2], &[BC_S_EQ, 8]);
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 12);
        assert_eq!(u16::from_ne_bytes([bc[6], bc[7]]), 7100);
        // Two: the second's reject jump is relative to itself.
        let bc = bytecode(PortFilter::SportRange(41000, 41003));
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 20);
        assert_eq!(u16::from_ne_bytes([bc[10], bc[11]]), 12);
        assert_eq!(
            request(2, 6, PortFilter::Sport(1), 1).len(),
            16 + 56 + 4 + 8
        );
        // No filter, no bytecode attribute.
        assert!(bytecode(PortFilter::Any).is_empty());
        assert_eq!(request(2, 6, PortFilter::Any, 1).len(), 16 + 56);
    }

    #[test]
    fn parses_an_inet_diag_msg() {
        let mut b = [0u8; 72];
        b[0] = libc::AF_INET6 as u8;
        b[1] = 6;
        b[4..6].copy_from_slice(&41000u16.to_be_bytes());
        b[6..8].copy_from_slice(&7100u16.to_be_bytes());
        b[8..24].copy_from_slice(&"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        b[24..40].copy_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        b[68..72].copy_from_slice(&1234u32.to_ne_bytes());
        let s = parse_msg(&b).unwrap();
        assert_eq!(state_name(s.state), "TIME_WAIT");
        assert_eq!((s.sport, s.dport, s.inode), (41000, 7100, 1234));
        assert_eq!(
            s.src,
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "v4-mapped as v4"
        );
        assert_eq!(s.dst, "::1".parse::<IpAddr>().unwrap());
        assert!(parse_msg(&b[..71]).is_none());
    }

    fn nlmsg(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDR + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn replies_end_fail_or_carry_sockets() {
        let mut out = vec![];
        let mut msg = [0u8; 72];
        msg[0] = libc::AF_INET as u8;
        let two = [
            nlmsg(SOCK_DIAG_BY_FAMILY, &msg),
            nlmsg(SOCK_DIAG_BY_FAMILY, &msg),
        ]
        .concat();
        assert!(!parse_reply(&two, 6, &mut out).unwrap());
        assert_eq!(out.len(), 2);
        assert!(parse_reply(&nlmsg(NLMSG_DONE, &[0; 4]), 6, &mut out).unwrap());
        assert!(parse_reply(&nlmsg(NLMSG_ERROR, &[0; 4]), 6, &mut out).unwrap());
        let e = parse_reply(
            &nlmsg(NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes()),
            6,
            &mut out,
        );
        assert!(e.unwrap_err().to_string().contains("no inet_diag"));
        assert!(parse_reply(&[], 6, &mut out).is_err());
        assert!(parse_reply(&nlmsg(NLMSG_DONE, &[])[..15], 6, &mut out).is_ok());
    }

    /// An NLMSG_ERROR too short to hold its error code (it was read past
    /// the message), and error i32::MIN (negated with overflow).
    #[test]
    fn malformed_errors_are_errors_not_panics() {
        let mut out = vec![];
        let e = parse_reply(&nlmsg(NLMSG_ERROR, &[0]), 6, &mut out).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
        assert!(parse_reply(&nlmsg(NLMSG_ERROR, &i32::MIN.to_ne_bytes()), 6, &mut out).is_err());
        assert!(out.is_empty());
    }

    /// The real kernel table, in this process's netns: a listener and a
    /// connection made here show up, with the filters doing their part.
    #[test]
    fn dumps_this_processes_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lport = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        let cport = c.local_addr().unwrap().port();
        let tcp = libc::IPPROTO_TCP as u8;
        let by_sport = dump(tcp, PortFilter::Sport(cport)).unwrap();
        let mine: Vec<&Sock> = by_sport.iter().filter(|s| s.dport == lport).collect();
        assert_eq!(mine.len(), 1, "{by_sport:?}");
        assert_eq!(state_name(mine[0].state), "ESTABLISHED");
        assert_ne!(mine[0].inode, 0);
        assert!(by_sport.iter().all(|s| s.sport == cport), "{by_sport:?}");
        let by_sport = dump(tcp, PortFilter::Sport(lport)).unwrap();
        assert!(by_sport.iter().all(|s| s.sport == lport));
        assert!(by_sport
            .iter()
            .any(|s| s.state == STATE_LISTEN && s.dport == 0));
        let tuple = dump(tcp, PortFilter::SportDport(cport, lport)).unwrap();
        assert_eq!(tuple.len(), 1, "{tuple:?}");
        assert!(
            dump(tcp, PortFilter::SportDport(cport, lport.wrapping_add(1)))
                .unwrap()
                .is_empty()
        );
        probe().unwrap();
        let ranged = dump(tcp, PortFilter::SportRange(cport, cport)).unwrap();
        assert!(ranged.iter().any(|s| s.dport == lport), "{ranged:?}");
        // No filter: all of them, the listener and both ends.
        let all = dump(tcp, PortFilter::Any).unwrap();
        for (sp, dp) in [(lport, 0), (cport, lport), (lport, cport)] {
            assert!(
                all.iter().any(|s| (s.sport, s.dport) == (sp, dp)),
                "{sp} {dp}"
            );
        }
        assert!(ranged.iter().all(|s| s.sport == cport));
    }
}
