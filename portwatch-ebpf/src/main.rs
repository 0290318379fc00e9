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
    bindings::{bpf_sock, bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user_buf,
    },
    macros::{classifier, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FExitContext, ProbeContext, RetProbeContext, TcContext, TracePointContext},
};
use portwatch_common::{
    FailureEvent, Offsets, StealEvent, StealOffsets, SynAckKey, TpSockFields, AF_INET, AF_INET6,
    EADDRINUSE, EADDRNOTAVAIL, F_DADDR, F_DPORT, F_NETNS, F_PROTO, F_SADDR, F_SOCK, F_SPORT,
    KIND_BIND, KIND_CONNECT, OFF_FILES, OFF_NETNS, OFF_SOCK, OFF_SOCK_NET, PROBE_FEXIT,
    PROBE_KPROBE, PROBE_TC, PROBE_TRACEPOINT, SOFF_IPVS, SOFF_RETRANS, SOFF_STATE, STEAL_IPVS,
    STEAL_RETRANS, STEAL_STATE, STEAL_SYNACK, TCP_SYN_SENT,
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
/// Index 2: nodeport-steal records dropped because STEALS was full.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

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

// ---------------------------------------------------------------------------
// nodeport-steal: a SYN-ACK for a guarded local port (a NodePort / IPVS
// virtual service port) whose socket is in SYN_SENT, IPVS taking it, and
// what happens to that socket afterwards.
// ---------------------------------------------------------------------------

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
};

#[map]
static STEALS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

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
#[repr(C)]
#[derive(Clone, Copy)]
struct Owner {
    pid: u32,
    _pad: u32,
    comm: [u8; 16],
}

#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(16384, 0);

const LOST_STEALS: u32 = 2;

#[inline(always)]
fn steal_offsets() -> StealOffsets {
    unsafe { core::ptr::read_volatile(&STEAL_OFFSETS) }
}

#[inline(always)]
fn is_guarded(port: u16) -> bool {
    unsafe { GUARDED.get(&port) }.is_some()
}

#[inline(always)]
fn emit_steal(ev: &StealEvent) {
    match STEALS.reserve::<StealEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(0);
        }
        None => count_lost(LOST_STEALS),
    }
}

#[inline(always)]
fn with_owner(ev: &mut StealEvent, skaddr: u64) {
    if let Some(o) = unsafe { OWNERS.get(&skaddr) } {
        ev.pid = o.pid;
        ev.comm = o.comm;
    }
}

const TC_ACT_OK: i32 = 0;
const ETH_HLEN: usize = 14;

/// tc ingress: a TCP SYN-ACK (IPv4) to a guarded port, looked up in the
/// kernel's socket table before IPVS (netfilter LOCAL_IN) sees it.
#[classifier]
pub fn pw_tc_synack(ctx: TcContext) -> i32 {
    let _ = tc_synack(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn tc_synack(ctx: &TcContext) -> Option<()> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if u16::from_be(ethertype) != 0x0800 {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != 6 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if !(20..=60).contains(&ihl) {
        return None;
    }
    let saddr: u32 = ctx.load(ETH_HLEN + 12).ok()?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16).ok()?;
    let t = ETH_HLEN + ihl;
    let sport: u16 = ctx.load(t).ok()?;
    let dport: u16 = ctx.load(t + 2).ok()?;
    let flags: u8 = ctx.load(t + 13).ok()?;
    // SYN and ACK set, RST not.
    if flags & 0x16 != 0x12 {
        return None;
    }
    let lport = u16::from_be(dport);
    if !is_guarded(lport) {
        return None;
    }
    // The tuple as the packet carries it: source = the peer.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = daddr;
    tuple.__bindgen_anon_1.ipv4.sport = sport;
    tuple.__bindgen_anon_1.ipv4.dport = dport;
    let state = unsafe {
        let sk = aya_ebpf::helpers::generated::bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut _,
            &mut tuple,
            12,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return None;
        }
        let state = core::ptr::read_volatile(&(*(sk as *const bpf_sock)).state);
        aya_ebpf::helpers::generated::bpf_sk_release(sk as *mut _);
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
    if unsafe { SYNACKS.get(&key) }.is_some() {
        return None;
    }
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

/// `struct ip_vs_conn *ip_vs_conn_new(const struct ip_vs_conn_param *p,
///   int dest_af, const union nf_inet_addr *daddr, __be16 dport, ...)`:
/// IPVS made a connection entry. Reported only for a connection whose
/// SYN-ACK was just seen on a guarded port (a stolen reply), not for the
/// node's ordinary IPVS traffic.
#[kprobe]
pub fn pw_kp_ipvs_conn_new(ctx: ProbeContext) -> u32 {
    let _ = ipvs_conn_new(&ctx);
    0
}

#[inline(always)]
fn ipvs_conn_new(ctx: &ProbeContext) -> Option<()> {
    let o = steal_offsets();
    if o.valid & SOFF_IPVS == 0 {
        return None;
    }
    let p: u64 = ctx.arg(0)?;
    let daddr: u64 = ctx.arg(2)?;
    let dport: u64 = ctx.arg(3)?;
    unsafe {
        let proto: u16 = read_k(p, o.cp_protocol)?;
        if proto != 6 {
            return None;
        }
        let caddr_p: u64 = read_k(p, o.cp_caddr)?;
        let vaddr_p: u64 = read_k(p, o.cp_vaddr)?;
        let cport: u16 = read_k(p, o.cp_cport)?;
        let vport: u16 = read_k(p, o.cp_vport)?;
        let mut key = SynAckKey {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: u16::from_be(vport),
            remote_port: u16::from_be(cport),
        };
        let v: [u8; 4] = bpf_probe_read_kernel(vaddr_p as *const [u8; 4]).ok()?;
        let c: [u8; 4] = bpf_probe_read_kernel(caddr_p as *const [u8; 4]).ok()?;
        key.local_addr[..4].copy_from_slice(&v);
        key.remote_addr[..4].copy_from_slice(&c);
        SYNACKS.get(&key)?;
        let mut ev = StealEvent::zeroed();
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.kind = STEAL_IPVS;
        ev.probe = PROBE_KPROBE;
        ev.family = AF_INET;
        ev.local_port = key.local_port;
        ev.remote_port = key.remote_port;
        ev.local_addr = key.local_addr;
        ev.remote_addr = key.remote_addr;
        let rs: [u8; 4] = bpf_probe_read_kernel(daddr as *const [u8; 4]).ok()?;
        ev.rs_addr[..4].copy_from_slice(&rs);
        ev.rs_port = u16::from_be(dport as u16);
        emit_steal(&ev);
    }
    Some(())
}

/// Reads a tracepoint field at an offset userspace found in its format file.
#[inline(always)]
unsafe fn tp_field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

/// A record for the IPv4 socket a tracepoint names, if its local port is
/// guarded.
#[inline(always)]
fn tp_sock_event(ctx: &TracePointContext, f: &TpSockFields, kind: u8) -> Option<StealEvent> {
    unsafe {
        let sport: u16 = tp_field(ctx, f.sport)?;
        if !is_guarded(sport) {
            return None;
        }
        let family: u16 = tp_field(ctx, f.family)?;
        if family != AF_INET {
            return None;
        }
        let mut ev = StealEvent::zeroed();
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.kind = kind;
        ev.probe = PROBE_TRACEPOINT;
        ev.family = family;
        ev.local_port = sport;
        ev.remote_port = tp_field(ctx, f.dport)?;
        let s: [u8; 4] = tp_field(ctx, f.saddr)?;
        let d: [u8; 4] = tp_field(ctx, f.daddr)?;
        ev.local_addr[..4].copy_from_slice(&s);
        ev.remote_addr[..4].copy_from_slice(&d);
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
    unsafe {
        let proto: u16 = tp_field(ctx, o.ss_protocol)?;
        if proto != 6 {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
