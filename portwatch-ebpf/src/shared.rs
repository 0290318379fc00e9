//! What the programs of both objects share: reading kernel memory at
//! offsets userspace found, reading sockaddrs, the globals userspace sets,
//! lost counting and ring buffer output ([`submit!`](crate::submit)). Maps
//! are the objects' own: what here uses one takes it as an argument.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user_buf,
    },
    maps::PerCpuArray,
};
use portwatch_common::{
    FailureEvent, Offsets, AF_INET, AF_INET6, COMM_LEN, EADDRINUSE, EADDRNOTAVAIL, F_DADDR,
    F_DPORT, F_NETNS, F_PROTO, F_SADDR, F_SOCK, F_SPORT, OFF_FILES, OFF_NETNS, OFF_SOCK,
    OFF_SOCK_NET, OFF_TASK,
};

use crate::net::{
    SA_FAMILY_LEN, SIN6_ADDR_OFF, SIN_ADDR_OFF, SOCKADDR_IN6_LEN, SOCKADDR_IN_LEN,
    SOCKADDR_PORT_OFF, SOCKADDR_REST_OFF,
};

/// The value of a global userspace set before load
/// (`EbpfLoader::set_global`). Volatile, so the compiler cannot fold the
/// build-time zeroes in.
#[inline(always)]
pub fn global<T: Copy>(g: &'static T) -> T {
    // SAFETY: `g` is a reference, so valid, aligned and initialised for T.
    unsafe { core::ptr::read_volatile(g) }
}

/// Counts one record lost at `slot` of a per-CPU LOST map.
#[inline(always)]
pub fn count_lost(lost: &PerCpuArray<u64>, slot: u32) {
    if let Some(p) = lost.get_ptr_mut(slot) {
        // SAFETY: the kernel returned this CPU's value of the slot, valid for
        // the whole program run, and nothing else on this CPU writes it
        // meanwhile (BPF programs run without preemption).
        unsafe { *p += 1 };
    }
}

/// Puts event `$ev` into ring buffer `$ring`, or counts it at slot `$slot`
/// of the per-CPU `$lost` map when the ring is full:
/// `submit!(EVENTS, LOST, lost::EVENTS_FULL, ev)`.
///
/// A macro rather than a function taking the maps: written out in place,
/// every program compiles to the same instructions as when each object
/// spelled this out itself (a function, even inlined, changed the code).
#[macro_export]
macro_rules! submit {
    ($ring:expr, $lost:expr, $slot:expr, $ev:expr) => {
        match $ring.reserve(0) {
            Some(mut entry) => {
                entry.write($ev);
                entry.submit(0);
            }
            None => $crate::shared::count_lost(&$lost, $slot),
        }
    };
}

/// Whether a connect()/bind() return value is one portwatch reports.
#[inline(always)]
pub fn is_reported(ret: i64) -> bool {
    ret == -(EADDRNOTAVAIL as i64) || ret == -(EADDRINUSE as i64)
}

/// Reads a `T` at `base + off` in kernel memory.
///
/// # Safety
/// `T` must be valid for any bit pattern (the read may find anything there).
#[inline(always)]
pub unsafe fn read_k<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails
    // (None) on a bad one; the caller vouches for T.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Network namespace inode of the current task.
#[inline(always)]
pub fn task_netns(o: &Offsets) -> Option<u32> {
    if o.valid & OFF_NETNS == 0 {
        return None;
    }
    // SAFETY: pointers and an inode number (plain integers); every read is
    // checked by the helper.
    unsafe {
        let task = bpf_get_current_task();
        let nsproxy: u64 = read_k(task, o.task_nsproxy)?;
        let net: u64 = read_k(nsproxy, o.nsproxy_net_ns)?;
        read_k(net, o.net_ns_inum)
    }
}

/// The current task's (pid, tid) and comm, read from its `task_struct` at
/// BTF offsets: what bpf_get_current_pid_tgid and bpf_get_current_comm
/// give, for programs that may not call them (cgroup programs before 6.1)
/// but may call bpf_get_current_task and bpf_probe_read_kernel.
#[inline(always)]
pub fn task_ids(o: &Offsets) -> Option<(u32, u32, [u8; COMM_LEN])> {
    if o.valid & OFF_TASK == 0 {
        return None;
    }
    // SAFETY: integers and a byte array; every read is checked by the
    // helper.
    unsafe {
        let task = bpf_get_current_task();
        let tgid: u32 = read_k(task, o.task_tgid)?;
        let pid: u32 = read_k(task, o.task_pid)?;
        let comm: [u8; COMM_LEN] = read_k(task, o.task_comm)?;
        Some((tgid, pid, comm))
    }
}

/// The `struct sock *` behind file descriptor `fd` of the current task.
#[inline(always)]
pub fn sock_from_fd(o: &Offsets, fd: i32) -> Option<u64> {
    if o.valid & OFF_FILES == 0 || fd < 0 {
        return None;
    }
    // SAFETY: pointers and a count (plain integers); every read is checked
    // by the helper.
    unsafe {
        let task = bpf_get_current_task();
        let files: u64 = read_k(task, o.task_files)?;
        let fdt: u64 = read_k(files, o.files_fdt)?;
        let max_fds: u32 = read_k(fdt, o.fdt_max_fds)?;
        if fd as u32 >= max_fds {
            return None;
        }
        let fd_array: u64 = read_k(fdt, o.fdt_fd)?;
        // fdtable.fd is an array of `struct file *`.
        let file: u64 = bpf_probe_read_kernel(
            (fd_array + core::mem::size_of::<u64>() as u64 * fd as u64) as *const u64,
        )
        .ok()?;
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

/// The `struct sock *` of a `struct socket *`, 0 if unknown.
#[inline(always)]
pub fn sk_of_socket(o: &Offsets, socket: u64) -> u64 {
    if o.valid & OFF_SOCK == 0 {
        return 0;
    }
    // SAFETY: a pointer (plain integer), read through the checking helper.
    unsafe { read_k::<u64>(socket, o.socket_sk).unwrap_or(0) }
}

/// Fills what the socket itself says: protocol, netns, bound port, and, for
/// connect, the addresses it carries. Fields already known are kept.
#[inline(always)]
pub fn fill_from_sock(o: &Offsets, ev: &mut FailureEvent, sk: u64, with_addrs: bool) {
    if o.valid & OFF_SOCK == 0 || sk == 0 {
        return;
    }
    // SAFETY: integers, pointers and byte arrays, read through the checking
    // helpers.
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

/// Bytes of a sockaddr after family and port.
const SOCKADDR_REST_LEN: usize = SOCKADDR_IN6_LEN - SOCKADDR_REST_OFF;

/// A sockaddr, copied out of user or kernel memory.
#[repr(C)]
pub struct SockAddr {
    pub family: u16,
    pub port_be: u16,
    /// sockaddr_in: addr at 4..8; sockaddr_in6: flowinfo at 4..8, addr at
    /// 8..24 (offsets in the whole sockaddr).
    pub rest: [u8; SOCKADDR_REST_LEN],
}

/// Reads the sockaddr at `addr`, `len` bytes long as its owner says, from
/// user memory (`user`) or kernel memory.
#[inline(always)]
pub fn read_sockaddr(addr: u64, len: u32, user: bool) -> Option<SockAddr> {
    if addr == 0 || len < SA_FAMILY_LEN as u32 {
        return None;
    }
    let mut buf = [0u8; SOCKADDR_IN6_LEN];
    // Read only what the caller gave: a short sockaddr_in is legal.
    let n = if len >= SOCKADDR_IN6_LEN as u32 {
        SOCKADDR_IN6_LEN
    } else if len >= SOCKADDR_IN_LEN as u32 {
        SOCKADDR_IN_LEN
    } else {
        SA_FAMILY_LEN
    };
    let dst = &mut buf[..n];
    // SAFETY: both helpers check the source address and write only `dst`.
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
    let mut rest = [0u8; SOCKADDR_REST_LEN];
    rest.copy_from_slice(&buf[SOCKADDR_REST_OFF..SOCKADDR_IN6_LEN]);
    Some(SockAddr {
        family: u16::from_ne_bytes([buf[0], buf[1]]),
        port_be: u16::from_ne_bytes([buf[SOCKADDR_PORT_OFF], buf[SOCKADDR_PORT_OFF + 1]]),
        rest,
    })
}

/// Puts a sockaddr into the event: the destination for connect, the asked-for
/// local address for bind.
#[inline(always)]
pub fn fill_from_sockaddr(ev: &mut FailureEvent, sa: &SockAddr, as_dest: bool) {
    const V4: usize = SIN_ADDR_OFF - SOCKADDR_REST_OFF;
    const V6: usize = SIN6_ADDR_OFF - SOCKADDR_REST_OFF;
    let port = u16::from_be(sa.port_be);
    let mut a = [0u8; 16];
    match sa.family {
        AF_INET => a[..4].copy_from_slice(&sa.rest[V4..V4 + 4]),
        AF_INET6 => a.copy_from_slice(&sa.rest[V6..V6 + 16]),
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

/// A failure event for the current task, stamped now.
#[inline(always)]
pub fn new_event(kind: u8, probe: u8, ret: i64) -> FailureEvent {
    let mut ev = FailureEvent::zeroed();
    // SAFETY: the helper has no preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: the helper has no preconditions.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.ret = ret as i32;
    ev.kind = kind;
    ev.probe = probe;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    ev
}

/// Sets the event's netns from the current task when the socket did not
/// give it.
#[inline(always)]
pub fn fill_task_netns(ev: &mut FailureEvent, o: &Offsets) {
    if ev.flags & F_NETNS == 0 {
        if let Some(ns) = task_netns(o) {
            ev.netns = ns;
            ev.flags |= F_NETNS;
        }
    }
}
