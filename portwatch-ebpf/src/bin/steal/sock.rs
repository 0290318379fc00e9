//! The victim socket afterwards, from the sock/tcp tracepoints: who owns
//! it, when it leaves SYN_SENT, and each SYN it resends.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use portwatch_common::{
    StealEvent, TpSockFields, AF_INET, AF_INET6, PROBE_TRACEPOINT, SOFF_RETRANS, SOFF_STATE,
    STEAL_RETRANS, STEAL_STATE, TCP_SYN_SENT, TP_NO_FAMILY,
};
use portwatch_ebpf::net::IPPROTO_TCP;

use crate::{emit_steal, is_guarded, steal_offsets, OWNERS};

/// Who called connect() on a socket, kept in OWNERS.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Owner {
    pid: u32,
    _pad: u32,
    comm: [u8; 16],
}

#[inline(always)]
fn with_owner(ev: &mut StealEvent, skaddr: u64) {
    // SAFETY: the value is copied out at once.
    if let Some(o) = unsafe { OWNERS.get(&skaddr) } {
        ev.pid = o.pid;
        ev.comm = o.comm;
    }
}

/// Reads a tracepoint field at an offset userspace found in its format file.
///
/// # Safety
/// `T` must be valid for any bit pattern, and the field at `off` that wide.
#[inline(always)]
unsafe fn tp_field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    // SAFETY: the helper checks the read; the caller vouches for T.
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

/// ::ffff:0:0/96, how the kernel stores an IPv4 address in an IPv6 field.
const V4_MAPPED: [u32; 3] = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff])];

/// A record for the socket a tracepoint names (IPv4 or IPv6), if its local
/// port is guarded.
#[inline(always)]
fn tp_sock_event(ctx: &TracePointContext, f: &TpSockFields, kind: u8) -> Option<StealEvent> {
    // SAFETY: integer and address-byte fields at offsets from the
    // tracepoint's format file.
    unsafe {
        let sport: u16 = tp_field(ctx, f.sport)?;
        if !is_guarded(sport) {
            return None;
        }
        let family = if f.family == TP_NO_FAMILY {
            let w: [u32; 4] = tp_field(ctx, f.saddr_v6)?;
            if [w[0], w[1], w[2]] == V4_MAPPED {
                AF_INET
            } else {
                AF_INET6
            }
        } else {
            tp_field::<u16>(ctx, f.family)?
        };
        let mut ev = StealEvent::zeroed();
        if family == AF_INET {
            let s: [u8; 4] = tp_field(ctx, f.saddr)?;
            let d: [u8; 4] = tp_field(ctx, f.daddr)?;
            ev.local_addr[..4].copy_from_slice(&s);
            ev.remote_addr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            ev.local_addr = tp_field(ctx, f.saddr_v6)?;
            ev.remote_addr = tp_field(ctx, f.daddr_v6)?;
        } else {
            return None;
        }
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.kind = kind;
        ev.probe = PROBE_TRACEPOINT;
        ev.family = family;
        ev.local_port = sport;
        ev.remote_port = tp_field(ctx, f.dport)?;
        Some(ev)
    }
}

/// `sock:inet_sock_set_state`: remembers who connects (entering SYN_SENT
/// runs in connect()'s context), and reports a guarded socket leaving
/// SYN_SENT: established, or given up.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn pw_tp_sock_state(ctx: TracePointContext) -> u32 {
    let _ = sock_state(&ctx);
    0
}

#[inline(always)]
fn sock_state(ctx: &TracePointContext) -> Option<()> {
    let o = steal_offsets();
    if o.valid & SOFF_STATE == 0 {
        return None;
    }
    // SAFETY: integer and pointer fields at offsets from the tracepoint's
    // format file.
    unsafe {
        let proto: u16 = tp_field(ctx, o.ss_protocol)?;
        if proto != IPPROTO_TCP as u16 {
            return None;
        }
        let skaddr: u64 = tp_field(ctx, o.ss.skaddr)?;
        let old: i32 = tp_field(ctx, o.ss_oldstate)?;
        let new: i32 = tp_field(ctx, o.ss_newstate)?;
        if new == TCP_SYN_SENT as i32 {
            let mut owner = Owner {
                pid: (bpf_get_current_pid_tgid() >> 32) as u32,
                _pad: 0,
                comm: [0; 16],
            };
            if let Ok(c) = bpf_get_current_comm() {
                owner.comm = c;
            }
            let _ = OWNERS.insert(&skaddr, &owner, 0);
            return None;
        }
        if old != TCP_SYN_SENT as i32 {
            return None;
        }
        let Some(mut ev) = tp_sock_event(ctx, &o.ss, STEAL_STATE) else {
            let _ = OWNERS.remove(&skaddr);
            return None;
        };
        ev.oldstate = old as u8;
        ev.newstate = new as u8;
        with_owner(&mut ev, skaddr);
        let _ = OWNERS.remove(&skaddr);
        emit_steal(&ev);
    }
    Some(())
}

/// `tcp:tcp_retransmit_skb`: a guarded socket in SYN_SENT resends its SYN
/// (its SYN-ACK did not arrive).
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn pw_tp_retrans(ctx: TracePointContext) -> u32 {
    let _ = retrans(&ctx);
    0
}

#[inline(always)]
fn retrans(ctx: &TracePointContext) -> Option<()> {
    let o = steal_offsets();
    if o.valid & SOFF_RETRANS == 0 {
        return None;
    }
    // SAFETY: integer and pointer fields at offsets from the tracepoint's
    // format file.
    unsafe {
        let state: i32 = tp_field(ctx, o.rt_state)?;
        if state != TCP_SYN_SENT as i32 {
            return None;
        }
        let mut ev = tp_sock_event(ctx, &o.rt, STEAL_RETRANS)?;
        let skaddr: u64 = tp_field(ctx, o.rt.skaddr)?;
        with_owner(&mut ev, skaddr);
        emit_steal(&ev);
    }
    Some(())
}
