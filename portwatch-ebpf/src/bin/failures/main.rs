//! The `failures` object, loaded by `portwatch trace`.
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
//! Apart from failures, [`sysctl`] reports writes of the sysctls that
//! decide which ports connect() may pick (a `cgroup/sysctl` program on the
//! cgroup2 root), into the same ring buffer.
//!
//! Hooks by family: [`connect`], [`bind`]; [`pending`] carries a call from
//! an entry probe to its return probe (kprobe and tracepoint backends).
//! Every kernel struct field is read at an offset userspace found in the
//! running kernel's BTF, handed in through the `OFFSETS` global.
#![no_std]
#![no_main]

mod bind;
mod connect;
mod pending;
mod sysctl;

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use portwatch_common::{lost, FailureEvent, Offsets};
use portwatch_ebpf::shared;

use pending::Pending;

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
    task_tgid: 0,
    task_pid: 0,
    task_comm: 0,
    nr_connect: 0,
    nr_bind: 0,
};

/// Failure events (and sysctl writes, told apart by their `kind` byte) for
/// userspace. Size set by userspace at load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// What was dropped, at the slots of `portwatch_common::lost::FAILURES`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::FAILURES_SLOTS, 0);

/// LRU: a thread killed inside connect()/bind() never reaches the exit
/// probe, and its entry must not pin a slot for the life of the node agent.
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn offsets() -> Offsets {
    shared::global(&OFFSETS)
}

/// Sends a failure to userspace: the record of the current task is built
/// in place in the ring buffer, `fill` adds what the hook knows, and the
/// task's netns goes in where the socket did not give one. Built there, not
/// on the stack, its "known yet?" flags are memory the verifier does not
/// follow as constants; on the stack every optional read doubled the states
/// it walked (58,000 instructions verified for an 870-instruction program).
#[inline(always)]
fn report(kind: u8, probe: u8, ret: i64, fill: impl FnOnce(&mut FailureEvent, &Offsets)) {
    let Some(mut entry) = EVENTS.reserve::<FailureEvent>(0) else {
        shared::count_lost(&LOST, lost::EVENTS_FULL);
        return;
    };
    let o = offsets();
    {
        let ev = entry.write(shared::new_event(kind, probe, ret));
        fill(ev, &o);
        shared::fill_task_netns(ev, &o);
    }
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
