//! tc ingress: a TCP SYN-ACK (IPv4 or IPv6) to a guarded port, looked up in the
//! kernel's socket table before IPVS (netfilter LOCAL_IN) sees it.

use aya_ebpf::{
    bindings::{
        bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, BPF_F_CURRENT_NETNS, TC_ACT_OK,
    },
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_sk_release, bpf_skc_lookup_tcp},
    },
    macros::classifier,
    programs::TcContext,
};
use portwatch_common::{
    StealEvent, SynAckKey, AF_INET, AF_INET6, PROBE_TC, STEAL_SYNACK, TCP_SYN_SENT,
};
use portwatch_ebpf::net::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, ETH_TYPE_OFF, IPPROTO_TCP, IPV4_DADDR_OFF, IPV4_HLEN_MAX,
    IPV4_HLEN_MIN, IPV4_IHL_MASK, IPV4_IHL_UNIT, IPV4_PROTO_OFF, IPV4_SADDR_OFF, IPV4_VIHL_OFF,
    IPV6_DADDR_OFF, IPV6_HLEN, IPV6_NEXTHDR_OFF, IPV6_SADDR_OFF, SOCK_TUPLE_IPV4_LEN,
    SOCK_TUPLE_IPV6_LEN, SYNACK, SYNACK_MASK, TCP_DPORT_OFF, TCP_FLAGS_OFF, TCP_SPORT_OFF,
};

use crate::{emit_steal, is_guarded, SYNACKS};

/// Never changes the packet's fate: it only looks.
#[classifier]
pub fn pw_tc_synack(ctx: TcContext) -> i32 {
    let _ = tc_synack(&ctx);
    TC_ACT_OK
}

/// The SYN-ACK's addresses (as the key stores them: IPv4 in the first 4
/// bytes) and ports, with the `bpf_skc_lookup_tcp` tuple for it.
struct Packet {
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    tuple: bpf_sock_tuple,
    tuple_len: u32,
}

/// Where the TCP header starts, the family, and both addresses, for an
/// IPv4 or IPv6 packet carrying TCP.
#[inline(always)]
fn ip_header(ctx: &TcContext) -> Option<(usize, u16, [u8; 16], [u8; 16])> {
    let ethertype: u16 = ctx.load(ETH_TYPE_OFF).ok()?;
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    match u16::from_be(ethertype) {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN + IPV4_VIHL_OFF).ok()?;
            let proto: u8 = ctx.load(ETH_HLEN + IPV4_PROTO_OFF).ok()?;
            if proto != IPPROTO_TCP {
                return None;
            }
            let ihl = ((vihl & IPV4_IHL_MASK) as usize) * IPV4_IHL_UNIT;
            if !(IPV4_HLEN_MIN..=IPV4_HLEN_MAX).contains(&ihl) {
                return None;
            }
            let sa: [u8; 4] = ctx.load(ETH_HLEN + IPV4_SADDR_OFF).ok()?;
            let da: [u8; 4] = ctx.load(ETH_HLEN + IPV4_DADDR_OFF).ok()?;
            s[..4].copy_from_slice(&sa);
            d[..4].copy_from_slice(&da);
            Some((ETH_HLEN + ihl, AF_INET, s, d))
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(ETH_HLEN + IPV6_NEXTHDR_OFF).ok()?;
            if next != IPPROTO_TCP {
                return None;
            }
            s = ctx.load(ETH_HLEN + IPV6_SADDR_OFF).ok()?;
            d = ctx.load(ETH_HLEN + IPV6_DADDR_OFF).ok()?;
            Some((ETH_HLEN + IPV6_HLEN, AF_INET6, s, d))
        }
        _ => None,
    }
}

/// An IPv6 address as four network-order words.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// A TCP SYN-ACK to a guarded port, or None.
#[inline(always)]
fn synack(ctx: &TcContext) -> Option<Packet> {
    let (t, family, saddr, daddr) = ip_header(ctx)?;
    let sport: u16 = ctx.load(t + TCP_SPORT_OFF).ok()?;
    let dport: u16 = ctx.load(t + TCP_DPORT_OFF).ok()?;
    let flags: u8 = ctx.load(t + TCP_FLAGS_OFF).ok()?;
    if flags & SYNACK_MASK != SYNACK || !is_guarded(u16::from_be(dport)) {
        return None;
    }
    // The tuple as the packet carries it: source = the peer.
    // SAFETY: bpf_sock_tuple is plain integers, for which zero is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // Writing a whole union member is safe; reading one would not be.
    let tuple_len = if family == AF_INET {
        tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
            saddr: u32::from_ne_bytes([saddr[0], saddr[1], saddr[2], saddr[3]]),
            daddr: u32::from_ne_bytes([daddr[0], daddr[1], daddr[2], daddr[3]]),
            sport,
            dport,
        };
        SOCK_TUPLE_IPV4_LEN
    } else {
        tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
            saddr: words(&saddr),
            daddr: words(&daddr),
            sport,
            dport,
        };
        SOCK_TUPLE_IPV6_LEN
    };
    Some(Packet {
        family,
        saddr,
        daddr,
        sport: u16::from_be(sport),
        dport: u16::from_be(dport),
        tuple,
        tuple_len,
    })
}

#[inline(always)]
fn tc_synack(ctx: &TcContext) -> Option<()> {
    let mut p = synack(ctx)?;
    // SAFETY: the skb is the program's own; the tuple outlives the call and
    // its member for the family is the size given. A socket found is read
    // only while its reference is held, and released on the one path out.
    let state = unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            &mut p.tuple,
            p.tuple_len,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return None;
        }
        let state = core::ptr::read_volatile(&(*(sk as *const bpf_sock)).state);
        bpf_sk_release(sk as *mut _);
        state
    };
    if state != TCP_SYN_SENT as u32 {
        return None;
    }
    let key = SynAckKey {
        local_addr: p.daddr,
        remote_addr: p.saddr,
        local_port: p.dport,
        remote_port: p.sport,
    };
    // SAFETY: only whether the entry exists is used, never its value.
    if unsafe { SYNACKS.get(&key) }.is_some() {
        return None;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let _ = SYNACKS.insert(&key, &now, 0);
    let mut ev = StealEvent::zeroed();
    ev.ts_ns = now;
    ev.kind = STEAL_SYNACK;
    ev.probe = PROBE_TC;
    ev.family = p.family;
    ev.local_port = key.local_port;
    ev.remote_port = key.remote_port;
    ev.local_addr = key.local_addr;
    ev.remote_addr = key.remote_addr;
    emit_steal(&ev);
    Some(())
}
