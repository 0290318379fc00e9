//! bind(): the failure to bind the asked-for address (`__inet_bind` /
//! `inet_bind_sk`, `inet6_bind`) on each backend.

use aya_ebpf::{
    macros::{fexit, kprobe, tracepoint},
    programs::{FExitContext, ProbeContext, TracePointContext},
};
use portwatch_common::{KIND_BIND, PROBE_FEXIT};
use portwatch_ebpf::{net::SOCKADDR_IN6_LEN, shared};

use crate::{
    offsets,
    pending::{self, Pending},
    report,
};

/// Reports a bind of socket `sk` to the sockaddr at `uaddr` (kernel memory)
/// that failed.
#[inline(always)]
pub fn failed(sk: u64, uaddr: u64, ret: i64, probe: u8) {
    if !shared::is_reported(ret) {
        return;
    }
    report(KIND_BIND, probe, ret, |ev, o| {
        // The kernel has copied the caller's sockaddr into kernel memory.
        if let Some(sa) = shared::read_sockaddr(uaddr, SOCKADDR_IN6_LEN as u32, false) {
            shared::fill_from_sockaddr(ev, &sa, false);
        }
        shared::fill_from_sock(o, ev, sk, false);
    });
}

#[inline(always)]
fn sk_of_socket(socket: u64) -> u64 {
    shared::sk_of_socket(&offsets(), socket)
}

// fexit: the return value sits in the context right after the arguments.

/// `int inet_bind_sk(struct sock *, struct sockaddr *, int)` (6.12+).
#[fexit(function = "inet_bind_sk")]
pub fn pw_fx_bind3(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(3) as i64;
    failed(sk, uaddr, ret, PROBE_FEXIT);
    0
}

/// `int __inet_bind(struct sock *, struct sockaddr *, int, u32)`.
#[fexit(function = "__inet_bind")]
pub fn pw_fx_bind4(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(4) as i64;
    failed(sk, uaddr, ret, PROBE_FEXIT);
    0
}

/// `int inet6_bind(struct socket *, struct sockaddr *, int)`.
#[fexit(function = "inet6_bind")]
pub fn pw_fx_bind6(ctx: FExitContext) -> i32 {
    let socket: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(3) as i64;
    failed(sk_of_socket(socket), uaddr, ret, PROBE_FEXIT);
    0
}

/// kprobe entry of a bind function whose first argument is a
/// `struct sock *`; `pending::pw_kret` reports.
#[kprobe]
pub fn pw_kp_bind(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    let addr: u64 = ctx.arg(1).unwrap_or(0);
    pending::remember(&Pending {
        kind: KIND_BIND,
        _pad: [0; 3],
        fd: -1,
        addr,
        addrlen: SOCKADDR_IN6_LEN as u32,
        _pad2: 0,
        sk,
    });
    0
}

/// kprobe entry of `inet6_bind`, whose first argument is a `struct socket *`.
#[kprobe]
pub fn pw_kp_bind6(ctx: ProbeContext) -> u32 {
    let socket: u64 = ctx.arg(0).unwrap_or(0);
    let addr: u64 = ctx.arg(1).unwrap_or(0);
    pending::remember(&Pending {
        kind: KIND_BIND,
        _pad: [0; 3],
        fd: -1,
        addr,
        addrlen: SOCKADDR_IN6_LEN as u32,
        _pad2: 0,
        sk: sk_of_socket(socket),
    });
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn pw_tp_bind_enter(ctx: TracePointContext) -> u32 {
    pending::tp_enter(&ctx, KIND_BIND)
}
