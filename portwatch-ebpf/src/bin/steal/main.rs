//! The `steal` object, loaded by `portwatch nodeport-steal`: a SYN-ACK for
//! a guarded local port (a NodePort / IPVS virtual service port) whose
//! socket is in SYN_SENT, IPVS taking it, and what happens to that socket
//! afterwards.
//!
//! Hooks by family: [`packet`] (tc ingress), [`ipvs`] (fexit or kprobe on
//! `ip_vs_conn_new`), [`sock`] (the sock/tcp tracepoints). Tracepoint
//! record layouts and IPVS struct offsets come from userspace through the
//! `STEAL_OFFSETS` global.
#![no_std]
#![no_main]

mod ipvs;
mod packet;
mod sock;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use portwatch_common::{lost, StealEvent, StealOffsets, SynAckKey, TpSockFields};
use portwatch_ebpf::shared;

use sock::Owner;

/// Set by userspace before load.
#[unsafe(no_mangle)]
static STEAL_OFFSETS: StealOffsets = StealOffsets {
    valid: 0,
    ss: NO_TP_SOCK,
    ss_oldstate: 0,
    ss_newstate: 0,
    ss_protocol: 0,
    rt: NO_TP_SOCK,
    rt_state: 0,
    cp_af: 0,
    cp_caddr: 0,
    cp_vaddr: 0,
    cp_cport: 0,
    cp_vport: 0,
    cp_protocol: 0,
};

const NO_TP_SOCK: TpSockFields = TpSockFields {
    skaddr: 0,
    sport: 0,
    dport: 0,
    family: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
};

/// Records for userspace.
#[map]
static STEALS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// What was dropped, at the slots of `portwatch_common::lost::STEAL`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::STEAL_SLOTS, 0);

/// The guarded local ports (host byte order); kept current by userspace.
#[map]
static GUARDED: HashMap<u16, u8> = HashMap::with_max_entries(65536, 0);

/// Connections whose SYN-ACK was seen on a guarded port: one report per
/// connection however often the peer resends, and the filter that keeps
/// IPVS's ordinary new connections out of the ring buffer.
#[map]
static SYNACKS: LruHashMap<SynAckKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// Who called connect() on a socket (by `struct sock *`), remembered when
/// it enters SYN_SENT (in the caller's context) for the reports that come
/// later from softirq context.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn steal_offsets() -> StealOffsets {
    shared::global(&STEAL_OFFSETS)
}

#[inline(always)]
fn is_guarded(port: u16) -> bool {
    // SAFETY: only whether the entry exists is used, never its value.
    unsafe { GUARDED.get(&port) }.is_some()
}

#[inline(always)]
fn emit_steal(ev: &StealEvent) {
    portwatch_ebpf::submit!(STEALS, LOST, lost::STEALS_FULL, *ev);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
