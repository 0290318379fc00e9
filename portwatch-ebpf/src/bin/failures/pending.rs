//! A call carried from an entry probe to its return probe, per thread: the
//! kprobe backend's kretprobe and the tracepoint backend's `sys_exit_*`.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{kretprobe, tracepoint},
    programs::{RetProbeContext, TracePointContext},
};
use portwatch_common::{lost, KIND_BIND, KIND_CONNECT, OFF_REGS, PROBE_KPROBE, PROBE_TRACEPOINT};
use portwatch_ebpf::{
    net::{SYS_ENTER_ARG0_OFF, SYS_ENTER_ARG_SIZE, SYS_EXIT_NR_OFF, SYS_EXIT_RET_OFF},
    shared,
};

use crate::{bind, connect, offsets, report, LOST, PENDING};

/// What an entry probe remembers for its return probe, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub fd: i32,
    /// sockaddr pointer: user memory (tracepoint) or kernel memory (kprobe).
    pub addr: u64,
    pub addrlen: u32,
    pub _pad2: u32,
    /// struct sock * (kprobe only).
    pub sk: u64,
}

#[inline(always)]
pub fn remember(p: &Pending) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if PENDING.insert(tid, p, 0).is_err() {
        shared::count_lost(&LOST, lost::PENDING_FULL);
    }
}

#[inline(always)]
fn take_pending() -> Option<Pending> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out at once, before anything could
    // delete the entry.
    let p = unsafe { PENDING.get(tid) }.copied();
    if p.is_some() {
        let _ = PENDING.remove(tid);
    }
    p
}

/// `sys_enter_connect` / `sys_enter_bind`: `(int fd, struct sockaddr *,
/// int addrlen)`, remembered for the exit.
#[inline(always)]
pub fn tp_enter(ctx: &TracePointContext, kind: u8) -> u32 {
    const FD: usize = SYS_ENTER_ARG0_OFF;
    const ADDR: usize = SYS_ENTER_ARG0_OFF + SYS_ENTER_ARG_SIZE;
    const ADDRLEN: usize = SYS_ENTER_ARG0_OFF + 2 * SYS_ENTER_ARG_SIZE;
    // SAFETY: the syscall tracepoint record's arguments are u64s at these
    // offsets (a stable ABI); the helper checks the reads.
    let (fd, addr, addrlen) = unsafe {
        (
            ctx.read_at::<u64>(FD).unwrap_or(0) as i32,
            ctx.read_at::<u64>(ADDR).unwrap_or(0),
            ctx.read_at::<u64>(ADDRLEN).unwrap_or(0) as u32,
        )
    };
    remember(&Pending {
        kind,
        _pad: [0; 3],
        fd,
        addr,
        addrlen,
        _pad2: 0,
        sk: 0,
    });
    0
}

/// `sys_exit_connect` and `sys_exit_bind` (userspace attaches this one
/// program to both, so the kernel verifies it once): reports the call
/// remembered at enter if it failed with one of the two errnos.
#[tracepoint]
pub fn pw_tp_exit(ctx: TracePointContext) -> u32 {
    tp_exit(&ctx)
}

#[inline(always)]
fn tp_exit(ctx: &TracePointContext) -> u32 {
    let Some(p) = take_pending() else { return 0 };
    // SAFETY: the syscall exit record's return value is an i64 at this
    // offset (a stable ABI); the helper checks the read.
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET_OFF).unwrap_or(0) };
    if !shared::is_reported(ret) {
        return 0;
    }
    // One branch on the kind, each side with its constant: the verifier
    // walks the two fills one after the other, not every mix of them.
    if p.kind == KIND_CONNECT {
        tp_report(&p, KIND_CONNECT, ret, true);
    } else {
        tp_report(&p, p.kind, ret, false);
    }
    0
}

#[inline(always)]
fn tp_report(p: &Pending, kind: u8, ret: i64, connect: bool) {
    report(kind, PROBE_TRACEPOINT, ret, |ev, o| {
        if let Some(sa) = shared::read_sockaddr(p.addr, p.addrlen, true) {
            shared::fill_from_sockaddr(ev, &sa, connect);
        }
        if let Some(sk) = shared::sock_from_fd(o, p.fd) {
            shared::fill_from_sock(o, ev, sk, connect);
        }
    });
}

/// `sys_exit_connect` and `sys_exit_bind` alone, where the kernel lets a
/// program read the task's saved user registers (`bpf_task_pt_regs`,
/// 5.15+): the call's fd, sockaddr and length are still in them at exit
/// (x86-64: rdi, rsi, rdx). No enter program runs and nothing is remembered
/// per thread, so a connect()/bind() that succeeds costs one read of its
/// return value here.
#[tracepoint]
pub fn pw_tp_exit_regs(ctx: TracePointContext) -> u32 {
    // SAFETY: the syscall exit record's number and return value sit at
    // these offsets (a stable ABI); the helper checks the reads.
    let (nr, ret) = unsafe {
        (
            ctx.read_at::<i32>(SYS_EXIT_NR_OFF).unwrap_or(-1),
            ctx.read_at::<i64>(SYS_EXIT_RET_OFF).unwrap_or(0),
        )
    };
    if !shared::is_reported(ret) {
        return 0;
    }
    let o = offsets();
    if o.valid & OFF_REGS == 0 {
        return 0;
    }
    // SAFETY: the helpers give the current task and its saved registers;
    // the three reads go through the checking helper.
    let (fd, addr, addrlen) = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let arg = |r: *const u64| bpf_probe_read_kernel(r).unwrap_or(0);
        (
            arg(&raw const (*regs).rdi),
            arg(&raw const (*regs).rsi),
            arg(&raw const (*regs).rdx),
        )
    };
    let mut p = Pending {
        kind: KIND_CONNECT,
        _pad: [0; 3],
        fd: fd as i32,
        addr,
        addrlen: addrlen as u32,
        _pad2: 0,
        sk: 0,
    };
    if nr as u32 == o.nr_connect {
        tp_report(&p, KIND_CONNECT, ret, true);
    } else if nr as u32 == o.nr_bind {
        p.kind = KIND_BIND;
        tp_report(&p, KIND_BIND, ret, false);
    }
    0
}

/// Return of any of the kprobed functions (connect's and bind's).
#[kretprobe]
pub fn pw_kret(ctx: RetProbeContext) -> u32 {
    let Some(p) = take_pending() else { return 0 };
    let ret: i64 = ctx.ret::<i32>() as i64;
    if p.kind == KIND_CONNECT {
        connect::failed(p.sk, ret, PROBE_KPROBE);
    } else {
        bind::failed(p.sk, p.addr, ret, PROBE_KPROBE);
    }
    0
}
