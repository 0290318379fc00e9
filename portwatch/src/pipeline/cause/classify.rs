//! What the event alone says: the cause from the kernel's own evidence,
//! and which part of the socket table a look-up would read for the rest.

use std::net::IpAddr;

use crate::pipeline::event::{Cause, Errno, Event, Kind, Proto};

/// What the event alone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Known(Cause),
    /// connect() failed but the socket could not be read: the socket table
    /// decides (a range used up toward the destination), or nothing does.
    Undecided,
}

pub fn classify(ev: &Event) -> Verdict {
    match (ev.kind, ev.errno) {
        (Kind::Connect, Errno::EADDRNOTAVAIL) => match ev.sock_port {
            Some(0) => Verdict::Known(Cause::PortsExhausted),
            Some(_) => Verdict::Known(Cause::TupleInUse),
            None => Verdict::Undecided,
        },
        // The local address of a socket with a port already in use.
        (Kind::Connect, Errno::EADDRINUSE) => match ev.sock_port {
            Some(p) if p != 0 => Verdict::Known(Cause::TupleInUse),
            _ => Verdict::Undecided,
        },
        (Kind::Bind, Errno::EADDRINUSE) => match ev.sport {
            Some(0) => Verdict::Known(Cause::BindPortsExhausted),
            Some(_) => Verdict::Known(Cause::PortInUse),
            None => Verdict::Known(Cause::Unknown),
        },
        (Kind::Bind, Errno::EADDRNOTAVAIL) => Verdict::Known(Cause::AddrNotLocal),
    }
}

/// Which part of a netns's socket table a look-up reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Sockets toward this destination.
    Toward(IpAddr, u16),
    /// Sockets of one 4-tuple: toward this destination from this local port.
    /// Its own key, so a fresh collision never reads a snapshot of the
    /// destination taken before the colliding connection existed.
    Tuple(IpAddr, u16, u16),
    /// Sockets on this local port.
    LocalPort(u16),
    /// Sockets with a local port in this range.
    LocalRange(u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub netns: u32,
    pub proto: u8,
    pub scope: Scope,
}

/// IPv4-mapped IPv6 addresses as IPv4, as the socket table gives them.
pub(super) fn canon(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        a => a,
    }
}

pub(super) fn the_connect_port(ev: &Event) -> Option<u16> {
    ev.sock_port
        .filter(|&p| p != 0)
        .or(ev.sport.filter(|&p| p != 0))
}

/// The look-up an event needs, if any can be made.
pub fn key_for(ev: &Event, v: Verdict) -> Option<Key> {
    let netns = ev.netns?;
    let proto = match ev.proto? {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
        _ => return None,
    };
    let scope = match v {
        Verdict::Undecided | Verdict::Known(Cause::PortsExhausted) => {
            Scope::Toward(canon(ev.daddr?), ev.dport?)
        }
        Verdict::Known(Cause::TupleInUse) => {
            Scope::Tuple(canon(ev.daddr?), ev.dport?, the_connect_port(ev)?)
        }
        Verdict::Known(Cause::PortInUse) => Scope::LocalPort(ev.sport?),
        Verdict::Known(Cause::BindPortsExhausted) => {
            let (lo, hi) = ev.port_range?;
            Scope::LocalRange(lo, hi)
        }
        Verdict::Known(Cause::AddrNotLocal | Cause::Unknown) => return None,
    };
    Some(Key {
        netns,
        proto,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::tests::sample_event;

    #[test]
    fn classifies_from_the_kernels_evidence() {
        let mut ev = sample_event();
        assert_eq!(classify(&ev), Verdict::Known(Cause::PortsExhausted));
        ev.sock_port = Some(41001);
        assert_eq!(classify(&ev), Verdict::Known(Cause::TupleInUse));
        ev.sock_port = None;
        assert_eq!(classify(&ev), Verdict::Undecided);
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.sport = Some(0);
        assert_eq!(classify(&b), Verdict::Known(Cause::BindPortsExhausted));
        b.sport = Some(7200);
        assert_eq!(classify(&b), Verdict::Known(Cause::PortInUse));
        b.sport = None;
        assert_eq!(classify(&b), Verdict::Known(Cause::Unknown));
        b.errno = Errno::EADDRNOTAVAIL;
        assert_eq!(classify(&b), Verdict::Known(Cause::AddrNotLocal));
    }

    #[test]
    fn keys_group_by_netns_and_destination() {
        let ev = sample_event();
        let k = key_for(&ev, classify(&ev)).unwrap();
        assert_eq!(k.scope, Scope::Toward("127.0.0.1".parse().unwrap(), 7100));
        let mut v6 = sample_event();
        v6.daddr = Some("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            key_for(&v6, classify(&v6)),
            Some(k.clone()),
            "v4-mapped is v4"
        );
        let mut other = sample_event();
        other.netns = Some(1);
        assert_ne!(key_for(&other, classify(&other)), Some(k));
        let mut tup = sample_event();
        tup.sock_port = Some(41500);
        assert_eq!(
            key_for(&tup, classify(&tup)).unwrap().scope,
            Scope::Tuple("127.0.0.1".parse().unwrap(), 7100, 41500),
            "a collision is looked up on its own"
        );
        let mut no_ns = sample_event();
        no_ns.netns = None;
        assert_eq!(key_for(&no_ns, classify(&no_ns)), None);
    }
}
