//! tc ingress: a TCP SYN-ACK (IPv4) to a guarded port, looked up in the
//! kernel's socket table before IPVS (netfilter LOCAL_IN) sees it.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, BPF_F_CURRENT_NETNS, TC_ACT_OK},
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_sk_release, bpf_skc_lookup_tcp},
    },
    macros::classifier,
    programs::TcContext,
};
use portwatch_common::{StealEvent, SynAckKey, AF_INET, PROBE_TC, STEAL_SYNACK, TCP_SYN_SENT};
use portwatch_ebpf::net::{
    ETH_HLEN, ETH_P_IP, ETH_TYPE_OFF, IPPROTO_TCP, IPV4_DADDR_OFF, IPV4_HLEN_MAX, IPV4_HLEN_MIN,
    IPV4_IHL_MASK, IPV4_IHL_UNIT, IPV4_PROTO_OFF, IPV4_SADDR_OFF, IPV4_VIHL_OFF,
    SOCK_TUPLE_IPV4_LEN, SYNACK, SYNACK_MASK, TCP_DPORT_OFF, TCP_FLAGS_OFF, TCP_SPORT_OFF,
};

use crate::{emit_steal, is_guarded, SYNACKS};

/// Never changes the packet's fate: it only looks.
#[classifier]
pub fn pw_tc_synack(ctx: TcContext) -> i32 {
    let _ = tc_synack(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn tc_synack(ctx: &TcContext) -> Option<()> {
    let ethertype: u16 = ctx.load(ETH_TYPE_OFF).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN + IPV4_VIHL_OFF).ok()?;
    let proto: u8 = ctx.load(ETH_HLEN + IPV4_PROTO_OFF).ok()?;
    if proto != IPPROTO_TCP {
        return None;
    }
    let ihl = ((vihl & IPV4_IHL_MASK) as usize) * IPV4_IHL_UNIT;
    if !(IPV4_HLEN_MIN..=IPV4_HLEN_MAX).contains(&ihl) {
        return None;
    }
    let saddr: u32 = ctx.load(ETH_HLEN + IPV4_SADDR_OFF).ok()?;
    let daddr: u32 = ctx.load(ETH_HLEN + IPV4_DADDR_OFF).ok()?;
    let t = ETH_HLEN + ihl;
    let sport: u16 = ctx.load(t + TCP_SPORT_OFF).ok()?;
    let dport: u16 = ctx.load(t + TCP_DPORT_OFF).ok()?;
    let flags: u8 = ctx.load(t + TCP_FLAGS_OFF).ok()?;
    if flags & SYNACK_MASK != SYNACK {
        return None;
    }
    let lport = u16::from_be(dport);
    if !is_guarded(lport) {
        return None;
    }
    // The tuple as the packet carries it: source = the peer.
    // SAFETY: bpf_sock_tuple is plain integers, for which zero is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = daddr;
    tuple.__bindgen_anon_1.ipv4.sport = sport;
    tuple.__bindgen_anon_1.ipv4.dport = dport;
    // SAFETY: the skb is the program's own; the tuple outlives the call and
    // its IPv4 member is the size given. A socket found is read only while
    // its reference is held, and released on the one path out.
    let state = unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            &mut tuple,
            SOCK_TUPLE_IPV4_LEN,
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
    let mut key = SynAckKey {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: lport,
        remote_port: u16::from_be(sport),
    };
    key.local_addr[..4].copy_from_slice(&daddr.to_ne_bytes());
    key.remote_addr[..4].copy_from_slice(&saddr.to_ne_bytes());
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
    ev.family = AF_INET;
    ev.local_port = key.local_port;
    ev.remote_port = key.remote_port;
    ev.local_addr = key.local_addr;
    ev.remote_addr = key.remote_addr;
    emit_steal(&ev);
    Some(())
}
