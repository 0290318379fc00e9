//! connect(): the failure to find a local port (`inet_hash_connect`,
//! `inet6_hash_connect`) on each backend.

use aya_ebpf::{
    macros::{fexit, kprobe, tracepoint},
    programs::{FExitContext, ProbeContext, TracePointContext},
};
use portwatch_common::{KIND_CONNECT, PROBE_FEXIT};
use portwatch_ebpf::shared;

use crate::{
    pending::{self, Pending},
    report,
};

/// Reports a connect that failed on socket `sk` (the socket carries the
/// addresses).
#[inline(always)]
pub fn failed(sk: u64, ret: i64, probe: u8) {
    if !shared::is_reported(ret) {
        return;
    }
    report(KIND_CONNECT, probe, ret, |ev, o| {
        shared::fill_from_sock(o, ev, sk, true)
    });
}

// fexit: the return value sits in the context right after the arguments.

#[inline(always)]
fn fx_connect(ctx: &FExitContext) {
    let sk: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(2) as i64;
    failed(sk, ret, PROBE_FEXIT);
}

/// `int inet_hash_connect(struct inet_timewait_death_row *, struct sock *)`.
#[fexit(function = "inet_hash_connect")]
pub fn pw_fx_conn4(ctx: FExitContext) -> i32 {
    fx_connect(&ctx);
    0
}

/// `int inet6_hash_connect(struct inet_timewait_death_row *, struct sock *)`.
#[fexit(function = "inet6_hash_connect")]
pub fn pw_fx_conn6(ctx: FExitContext) -> i32 {
    fx_connect(&ctx);
    0
}

/// kprobe entry of either function; `pending::pw_kret` reports.
#[kprobe]
pub fn pw_kp_connect(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(1).unwrap_or(0);
    pending::remember(&Pending {
        kind: KIND_CONNECT,
        _pad: [0; 3],
        fd: -1,
        addr: 0,
        addrlen: 0,
        _pad2: 0,
        sk,
    });
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn pw_tp_conn_enter(ctx: TracePointContext) -> u32 {
    pending::tp_enter(&ctx, KIND_CONNECT)
}
