//! portwatch's kernel programs.
//!
//! Three backends report the same `FailureEvent` for a connect()/bind() that
//! fails with EADDRNOTAVAIL or EADDRINUSE; userspace attaches one per hook,
//! the best the running kernel offers:
//!
//! * fexit on the kernel function that fails (`inet_hash_connect`,
//!   `inet6_hash_connect`, `__inet_bind` / `inet_bind_sk`, `inet6_bind`):
//!   costs only the calls it probes, sees the socket at the moment it fails.
//! * kprobe + kretprobe on the same functions (entry remembers the
//!   arguments per thread, return emits).
//! * the syscall tracepoints `sys_enter_*` / `sys_exit_*` (enter remembers
//!   fd and sockaddr pointer per thread, exit emits on the two errnos). This
//!   one costs every syscall of the node a little (it switches threads to the
//!   slow syscall path), so it is the last resort.
//!
//! No CO-RE here (rustc emits no field relocations): every kernel struct field
//! is read at an offset userspace found in the running kernel's BTF, handed in
//! through the `OFFSETS` global.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user_buf,
    },
    macros::{fexit, kprobe, kretprobe, map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use portwatch_common::{
    FailureEvent, Offsets, AF_INET, AF_INET6, EADDRINUSE, EADDRNOTAVAIL, F_DADDR, F_DPORT, F_NETNS,
    F_PROTO, F_SADDR, F_SOCK, F_SPORT, KIND_BIND, KIND_CONNECT, OFF_FILES, OFF_NETNS, OFF_SOCK,
    OFF_SOCK_NET, PROBE_FEXIT, PROBE_KPROBE, PROBE_TRACEPOINT,
};

/// Set by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    valid: 0,
    task_nsproxy: 0,
    nsproxy_net_ns: 0,
    net_ns_inum: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_file: 0,
    socket_sk: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_net: 0,
    sk_protocol: 0,
};

/// Failure events for userspace. Size set by userspace at load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Index 0: events dropped because the ring buffer was full.
/// Index 1: failures missed because the entry probe could not remember the call.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const LOST_RINGBUF: u32 = 0;
const LOST_PENDING: u32 = 1;

/// What an entry probe remembers for its return probe, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    kind: u8,
    _pad: [u8; 3],
    fd: i32,
    /// sockaddr pointer: user memory (tracepoint) or kernel memory (kprobe).
    addr: u64,
    addrlen: u32,
    _pad2: u32,
    /// struct sock * (kprobe only).
    sk: u64,
}

/// LRU: a thread killed inside connect()/bind() never reaches the exit
/// probe, and its entry must not pin a slot for the life of the node agent.
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn offsets() -> Offsets {
    // Volatile so the compiler cannot fold the build-time zeroes in.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn count_lost(idx: u32) {
    if let Some(p) = LOST.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn is_reported(ret: i64) -> bool {
    ret == -(EADDRNOTAVAIL as i64) || ret == -(EADDRINUSE as i64)
}

#[inline(always)]
unsafe fn read_k<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Network namespace inode of the current task.
#[inline(always)]
fn task_netns(o: &Offsets) -> Option<u32> {
    if o.valid & OFF_NETNS == 0 {
        return None;
    }
    unsafe {
        let task = bpf_get_current_task();
        let nsproxy: u64 = read_k(task, o.task_nsproxy)?;
        let net: u64 = read_k(nsproxy, o.nsproxy_net_ns)?;
        read_k(net, o.net_ns_inum)
    }
}

/// The `struct sock *` behind file descriptor `fd` of the current task.
#[inline(always)]
fn sock_from_fd(o: &Offsets, fd: i32) -> Option<u64> {
    if o.valid & OFF_FILES == 0 || fd < 0 {
        return None;
    }
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = read_k(task, o.task_files)?;
        let fdt: u64 = read_k(files, o.files_fdt)?;
        let max_fds: u32 = read_k(fdt, o.fdt_max_fds)?;
        if fd as u32 >= max_fds {
            return None;
        }
        let fd_array: u64 = read_k(fdt, o.fdt_fd)?;
        let file: u64 = bpf_probe_read_kernel((fd_array + 8 * fd as u64) as *const u64).ok()?;
        if file == 0 {
            return None;
        }
        let socket: u64 = read_k(file, o.file_private_data)?;
        if socket == 0 {
            return None;
        }
        // A socket's file points back at it: guards against the fd having
        // been closed and reused by another thread since the syscall.
        let back: u64 = read_k(socket, o.socket_file)?;
        if back != file {
            return None;
        }
        let sk: u64 = read_k(socket, o.socket_sk)?;
        if sk == 0 {
            None
        } else {
            Some(sk)
        }
    }
}

/// Fills what the socket itself says: protocol, netns, bound port, and, for
/// connect, the addresses it carries. Fields already known are kept.
#[inline(always)]
fn fill_from_sock(o: &Offsets, ev: &mut FailureEvent, sk: u64, with_addrs: bool) {
    if o.valid & OFF_SOCK == 0 || sk == 0 {
        return;
    }
    unsafe {
        if let Some(proto) = read_k::<u16>(sk, o.sk_protocol) {
            ev.proto = proto;
            ev.flags |= F_PROTO;
        }
        if let Some(num) = read_k::<u16>(sk, o.skc_num) {
            ev.sk_num = num;
            ev.flags |= F_SOCK;
        }
        if o.valid & OFF_SOCK_NET != 0 {
            if let Some(net) = read_k::<u64>(sk, o.skc_net) {
                if let Some(inum) = read_k::<u32>(net, o.net_ns_inum) {
                    ev.netns = inum;
                    ev.flags |= F_NETNS;
                }
            }
        }
        if ev.family == 0 {
            if let Some(fam) = read_k::<u16>(sk, o.skc_family) {
                ev.family = fam;
            }
        }
        if !with_addrs {
            return;
        }
        if ev.sk_num != 0 && ev.flags & F_SPORT == 0 {
            ev.sport = ev.sk_num;
            ev.flags |= F_SPORT;
        }
        if ev.family == AF_INET {
            if ev.flags & F_SADDR == 0 {
                if let Some(a) = read_k::<[u8; 4]>(sk, o.skc_rcv_saddr) {
                    if a != [0; 4] {
                        ev.saddr[..4].copy_from_slice(&a);
                        ev.flags |= F_SADDR;
                    }
                }
            }
            if ev.flags & F_DADDR == 0 {
                if let Some(a) = read_k::<[u8; 4]>(sk, o.skc_daddr) {
                    ev.daddr[..4].copy_from_slice(&a);
                    ev.flags |= F_DADDR;
                }
            }
        } else if ev.family == AF_INET6 {
            if ev.flags & F_SADDR == 0 {
                let mut a = [0u8; 16];
                if bpf_probe_read_kernel_buf((sk + o.skc_v6_rcv_saddr as u64) as *const u8, &mut a)
                    .is_ok()
                    && a != [0; 16]
                {
                    ev.saddr = a;
                    ev.flags |= F_SADDR;
                }
            }
            if ev.flags & F_DADDR == 0 {
                let mut a = [0u8; 16];
                if bpf_probe_read_kernel_buf((sk + o.skc_v6_daddr as u64) as *const u8, &mut a)
                    .is_ok()
                {
                    ev.daddr = a;
                    ev.flags |= F_DADDR;
                }
            }
        }
        if ev.flags & F_DPORT == 0 {
            if let Some(p) = read_k::<u16>(sk, o.skc_dport) {
                if p != 0 {
                    ev.dport = u16::from_be(p);
                    ev.flags |= F_DPORT;
                }
            }
        }
    }
}

/// A sockaddr, copied out of user or kernel memory.
#[repr(C)]
struct SockAddr {
    family: u16,
    port_be: u16,
    // sockaddr_in: addr at 4..8; sockaddr_in6: flowinfo at 4..8, addr at 8..24.
    rest: [u8; 24],
}

#[inline(always)]
fn read_sockaddr(addr: u64, len: u32, user: bool) -> Option<SockAddr> {
    if addr == 0 || len < 2 {
        return None;
    }
    let mut buf = [0u8; 28];
    // Read only what the caller gave: a short sockaddr_in is legal.
    let n = if len >= 28 {
        28
    } else if len >= 16 {
        16
    } else {
        2
    };
    let dst = &mut buf[..n];
    let ok = unsafe {
        if user {
            bpf_probe_read_user_buf(addr as *const u8, dst).is_ok()
        } else {
            bpf_probe_read_kernel_buf(addr as *const u8, dst).is_ok()
        }
    };
    if !ok {
        return None;
    }
    let mut rest = [0u8; 24];
    rest.copy_from_slice(&buf[4..28]);
    Some(SockAddr {
        family: u16::from_ne_bytes([buf[0], buf[1]]),
        port_be: u16::from_ne_bytes([buf[2], buf[3]]),
        rest,
    })
}

/// Puts a sockaddr into the event: the destination for connect, the asked-for
/// local address for bind.
#[inline(always)]
fn fill_from_sockaddr(ev: &mut FailureEvent, sa: &SockAddr, as_dest: bool) {
    let port = u16::from_be(sa.port_be);
    let mut a = [0u8; 16];
    match sa.family {
        AF_INET => a[..4].copy_from_slice(&sa.rest[..4]),
        AF_INET6 => a.copy_from_slice(&sa.rest[4..20]),
        _ => return,
    }
    ev.family = sa.family;
    if as_dest {
        ev.daddr = a;
        ev.dport = port;
        ev.flags |= F_DADDR | F_DPORT;
    } else {
        ev.saddr = a;
        ev.sport = port;
        ev.flags |= F_SADDR | F_SPORT;
    }
}

#[inline(always)]
fn new_event(kind: u8, probe: u8, ret: i64) -> FailureEvent {
    let mut ev = FailureEvent::zeroed();
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.ret = ret as i32;
    ev.kind = kind;
    ev.probe = probe;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    ev
}

#[inline(always)]
fn submit(ev: &FailureEvent, o: &Offsets) {
    let mut ev = *ev;
    if ev.flags & F_NETNS == 0 {
        if let Some(ns) = task_netns(o) {
            ev.netns = ns;
            ev.flags |= F_NETNS;
        }
    }
    match EVENTS.reserve::<FailureEvent>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(0);
        }
        None => count_lost(LOST_RINGBUF),
    }
}

#[inline(always)]
fn remember(p: &Pending) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if PENDING.insert(tid, p, 0).is_err() {
        count_lost(LOST_PENDING);
    }
}

#[inline(always)]
fn take_pending() -> Option<Pending> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = unsafe { PENDING.get(tid) }.copied();
    if p.is_some() {
        let _ = PENDING.remove(tid);
    }
    p
}

// ---------------------------------------------------------------------------
// Backend 3: syscall tracepoints (stable ABI: args at 16 + 8*i, ret at 16).
// ---------------------------------------------------------------------------

#[inline(always)]
fn tp_enter(ctx: &TracePointContext, kind: u8) -> u32 {
    let (fd, addr, addrlen) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0) as i32,
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0) as u32,
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

#[inline(always)]
fn tp_exit(ctx: &TracePointContext) -> u32 {
    let Some(p) = take_pending() else { return 0 };
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(0) };
    if !is_reported(ret) {
        return 0;
    }
    let o = offsets();
    let mut ev = new_event(p.kind, PROBE_TRACEPOINT, ret);
    if let Some(sa) = read_sockaddr(p.addr, p.addrlen, true) {
        fill_from_sockaddr(&mut ev, &sa, p.kind == KIND_CONNECT);
    }
    if let Some(sk) = sock_from_fd(&o, p.fd) {
        fill_from_sock(&o, &mut ev, sk, p.kind == KIND_CONNECT);
    }
    submit(&ev, &o);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn pw_tp_conn_enter(ctx: TracePointContext) -> u32 {
    tp_enter(&ctx, KIND_CONNECT)
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn pw_tp_conn_exit(ctx: TracePointContext) -> u32 {
    tp_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn pw_tp_bind_enter(ctx: TracePointContext) -> u32 {
    tp_enter(&ctx, KIND_BIND)
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn pw_tp_bind_exit(ctx: TracePointContext) -> u32 {
    tp_exit(&ctx)
}

// ---------------------------------------------------------------------------
// Backend 1: fexit. The return value sits in the context right after the
// arguments, so each arity gets its own program.
// ---------------------------------------------------------------------------

#[inline(always)]
fn connect_failed(sk: u64, ret: i64, probe: u8) {
    if !is_reported(ret) {
        return;
    }
    let o = offsets();
    let mut ev = new_event(KIND_CONNECT, probe, ret);
    fill_from_sock(&o, &mut ev, sk, true);
    submit(&ev, &o);
}

#[inline(always)]
fn bind_failed(sk: u64, uaddr: u64, ret: i64, probe: u8) {
    if !is_reported(ret) {
        return;
    }
    let o = offsets();
    let mut ev = new_event(KIND_BIND, probe, ret);
    // The kernel has copied the caller's sockaddr into kernel memory.
    if let Some(sa) = read_sockaddr(uaddr, 28, false) {
        fill_from_sockaddr(&mut ev, &sa, false);
    }
    fill_from_sock(&o, &mut ev, sk, false);
    submit(&ev, &o);
}

#[inline(always)]
fn sk_of_socket(socket: u64) -> u64 {
    let o = offsets();
    if o.valid & OFF_SOCK == 0 {
        return 0;
    }
    unsafe { read_k::<u64>(socket, o.socket_sk).unwrap_or(0) }
}

#[inline(always)]
fn fx_connect(ctx: &FExitContext) {
    let sk: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(2) as i64;
    connect_failed(sk, ret, PROBE_FEXIT);
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

/// `int inet_bind_sk(struct sock *, struct sockaddr *, int)` (6.12+).
#[fexit(function = "inet_bind_sk")]
pub fn pw_fx_bind3(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(3) as i64;
    bind_failed(sk, uaddr, ret, PROBE_FEXIT);
    0
}

/// `int __inet_bind(struct sock *, struct sockaddr *, int, u32)`.
#[fexit(function = "__inet_bind")]
pub fn pw_fx_bind4(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(4) as i64;
    bind_failed(sk, uaddr, ret, PROBE_FEXIT);
    0
}

/// `int inet6_bind(struct socket *, struct sockaddr *, int)`.
#[fexit(function = "inet6_bind")]
pub fn pw_fx_bind6(ctx: FExitContext) -> i32 {
    let socket: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg::<i32>(3) as i64;
    bind_failed(sk_of_socket(socket), uaddr, ret, PROBE_FEXIT);
    0
}

// ---------------------------------------------------------------------------
// Backend 2: kprobe + kretprobe on the same functions.
// ---------------------------------------------------------------------------

#[kprobe]
pub fn pw_kp_connect(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(1).unwrap_or(0);
    remember(&Pending {
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

/// Entry of a bind function whose first argument is a `struct sock *`.
#[kprobe]
pub fn pw_kp_bind(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    let addr: u64 = ctx.arg(1).unwrap_or(0);
    remember(&Pending {
        kind: KIND_BIND,
        _pad: [0; 3],
        fd: -1,
        addr,
        addrlen: 28,
        _pad2: 0,
        sk,
    });
    0
}

/// Entry of `inet6_bind`, whose first argument is a `struct socket *`.
#[kprobe]
pub fn pw_kp_bind6(ctx: ProbeContext) -> u32 {
    let socket: u64 = ctx.arg(0).unwrap_or(0);
    let addr: u64 = ctx.arg(1).unwrap_or(0);
    remember(&Pending {
        kind: KIND_BIND,
        _pad: [0; 3],
        fd: -1,
        addr,
        addrlen: 28,
        _pad2: 0,
        sk: sk_of_socket(socket),
    });
    0
}

/// Return of any of the kprobed functions above.
#[kretprobe]
pub fn pw_kret(ctx: RetProbeContext) -> u32 {
    let Some(p) = take_pending() else { return 0 };
    let ret: i64 = ctx.ret::<i32>() as i64;
    if p.kind == KIND_CONNECT {
        connect_failed(p.sk, ret, PROBE_KPROBE);
    } else {
        bind_failed(p.sk, p.addr, ret, PROBE_KPROBE);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
