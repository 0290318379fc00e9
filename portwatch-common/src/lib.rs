//! The wire format between portwatch's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` plain data: the eBPF side writes it into
//! the ring buffer, userspace reads the same bytes back. Changing a layout is a
//! change to both sides at once, which is why the types live in one crate.
#![no_std]

/// What failed.
pub const KIND_CONNECT: u8 = 1;
pub const KIND_BIND: u8 = 2;

/// Which kind of probe saw the failure.
pub const PROBE_FEXIT: u8 = 1;
pub const PROBE_KPROBE: u8 = 2;
pub const PROBE_TRACEPOINT: u8 = 3;

/// `FailureEvent::flags`: which optional fields the kernel side could fill.
pub const F_SADDR: u16 = 1 << 0;
pub const F_SPORT: u16 = 1 << 1;
pub const F_DADDR: u16 = 1 << 2;
pub const F_DPORT: u16 = 1 << 3;
pub const F_PROTO: u16 = 1 << 4;
pub const F_NETNS: u16 = 1 << 5;
/// The socket itself was read at the failure (its bound port is in `sk_num`).
pub const F_SOCK: u16 = 1 << 6;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

pub const EADDRINUSE: i32 = 98;
pub const EADDRNOTAVAIL: i32 = 99;

pub const COMM_LEN: usize = 16;

/// One connect()/bind() failure, as the kernel side saw it.
///
/// Ports are in host byte order; addresses are in network byte order, IPv4 in
/// the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureEvent {
    /// `bpf_ktime_get_boot_ns()` at the failure (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Inode number of the network namespace (valid with `F_NETNS`).
    pub netns: u32,
    /// The negative errno returned.
    pub ret: i32,
    pub kind: u8,
    pub probe: u8,
    /// IPPROTO_* of the socket (valid with `F_PROTO`).
    pub proto: u16,
    pub flags: u16,
    pub family: u16,
    /// Source port: the address asked for by bind(), the socket's bound port for connect().
    pub sport: u16,
    pub dport: u16,
    /// The socket's own bound port at the failure (valid with `F_SOCK`).
    pub sk_num: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    pub _reserved: u32,
}

pub const FAILURE_EVENT_SIZE: usize = core::mem::size_of::<FailureEvent>();

impl FailureEvent {
    pub const fn zeroed() -> Self {
        FailureEvent {
            ts_ns: 0,
            cgroup_id: 0,
            pid: 0,
            tid: 0,
            uid: 0,
            netns: 0,
            ret: 0,
            kind: 0,
            probe: 0,
            proto: 0,
            flags: 0,
            family: 0,
            sport: 0,
            dport: 0,
            sk_num: 0,
            _pad: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; COMM_LEN],
            _reserved: 0,
        }
    }
}

// ---------------------------------------------------------------------------
// sysctl writes: a `cgroup/sysctl` program on the cgroup2 root sees every
// write of the few sysctls that decide which ports connect() may pick.
// ---------------------------------------------------------------------------

/// `SysctlEvent::kind`, at the same offset as `FailureEvent::kind`: one
/// ring buffer carries both, and userspace tells them apart by this byte.
pub const KIND_SYSCTL: u8 = 3;

/// Where `kind` sits in every record of the `failures` ring buffer.
pub const KIND_OFFSET: usize = 36;

/// The sysctls reported, as `bpf_sysctl_get_name` spells them (slashes);
/// `SysctlEvent::which` is an index into this list.
pub const SYSCTL_NAMES: [&str; 4] = [
    "net/ipv4/ip_local_port_range",
    "net/ipv4/ip_local_reserved_ports",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/ip_unprivileged_port_start",
];
pub const SYSCTL_PORT_RANGE: u8 = 0;
pub const SYSCTL_RESERVED_PORTS: u8 = 1;
pub const SYSCTL_TW_REUSE: u8 = 2;
pub const SYSCTL_UNPRIVILEGED_PORT_START: u8 = 3;

/// Bytes of the buffer a name is read into (the longest name above, its
/// NUL and zero padding). A longer name is none of ours.
pub const SYSCTL_NAME_WORDS: usize = 5;
pub const SYSCTL_NAME_LEN: usize = SYSCTL_NAME_WORDS * 8;

/// `name` zero-padded into 8-byte words, the way the kernel side compares
/// it with the name it read (word by word: no memcmp in BPF).
pub const fn sysctl_name_words(name: &str) -> [u64; SYSCTL_NAME_WORDS] {
    let b = name.as_bytes();
    assert!(b.len() < SYSCTL_NAME_LEN);
    let mut w = [0u64; SYSCTL_NAME_WORDS];
    let mut i = 0;
    while i < b.len() {
        w[i / 8] |= (b[i] as u64) << (8 * (i % 8));
        i += 1;
    }
    w
}

/// Bytes kept of a value (old or new), its NUL included: a longer value
/// (a long `ip_local_reserved_ports` list) is cut and flagged.
pub const SYSCTL_VALUE_LEN: usize = 128;

/// `SysctlEvent::flags`.
/// The netns was read (`netns` is valid).
pub const SF_NETNS: u16 = 1 << 0;
/// The current value was read (`old` is valid).
pub const SF_OLD: u16 = 1 << 1;
/// `old` was longer than `SYSCTL_VALUE_LEN - 1` bytes and is cut.
pub const SF_OLD_TRUNC: u16 = 1 << 2;
/// `new` was longer than `SYSCTL_VALUE_LEN - 1` bytes and is cut.
pub const SF_NEW_TRUNC: u16 = 1 << 3;
/// The program refused the write (the writer got EPERM).
pub const SF_REFUSED: u16 = 1 << 4;

/// One write of a reported sysctl, before the kernel applies it. `old` and
/// `new` are NUL-terminated text, as the kernel shows the value and as the
/// writer wrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysctlEvent {
    // The first 36 bytes are laid out as in `FailureEvent`.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Inode of the writer's network namespace, the one whose value the
    /// write changes (valid with `SF_NETNS`).
    pub netns: u32,
    pub _ret: i32,
    /// `KIND_SYSCTL`.
    pub kind: u8,
    /// Index into `SYSCTL_NAMES`.
    pub which: u8,
    pub flags: u16,
    pub comm: [u8; COMM_LEN],
    pub old: [u8; SYSCTL_VALUE_LEN],
    pub new: [u8; SYSCTL_VALUE_LEN],
}

pub const SYSCTL_EVENT_SIZE: usize = core::mem::size_of::<SysctlEvent>();

/// Port spans the guard keeps from being exposed, at most this many.
pub const GUARD_SPANS: usize = 16;

/// An inclusive port span.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSpan {
    pub lo: u16,
    pub hi: u16,
}

/// What `serve --guard-port-range` hands the kernel side, for netns
/// `netns` (the node's); both span lists are kept current by userspace.
/// - A write of `ip_local_port_range` whose new range takes in a port of
///   `spans` (the guarded ports not in `ip_local_reserved_ports`) that the
///   old range did not is refused (EPERM).
/// - A write of `ip_local_reserved_ports` is refused unless each span of
///   `keep` (guarded ports in the range that the reservation covers now)
///   lies within one item of the new list (`LO-HI` or `PORT`): a list
///   that covers a span only in pieces is refused too (it refuses more,
///   never less), as is a list longer than the kernel side reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysctlGuard {
    /// 0: nothing is refused.
    pub enabled: u32,
    pub netns: u32,
    /// How many of `spans` are in use.
    pub count: u32,
    /// How many of `keep` are in use.
    pub keep_count: u32,
    pub spans: [PortSpan; GUARD_SPANS],
    pub keep: [PortSpan; GUARD_KEEP],
}

/// Spans of `SysctlGuard::keep`: few, since each item of a new list is
/// checked against each (the verifier walks every pair).
pub const GUARD_KEEP: usize = 4;

/// Bytes of a new `ip_local_reserved_ports` the guard reads, and the items
/// it parses from them.
pub const GUARD_LIST_TEXT: usize = 128;
pub const GUARD_LIST_ITEMS: usize = 16;

/// `Offsets::valid` bits: which groups of offsets userspace found in the
/// running kernel's BTF. A group that is not valid is never dereferenced.
pub const OFF_NETNS: u32 = 1 << 0;
pub const OFF_FILES: u32 = 1 << 1;
pub const OFF_SOCK: u32 = 1 << 2;
pub const OFF_SOCK_NET: u32 = 1 << 3;
pub const OFF_TASK: u32 = 1 << 4;
/// The syscall exit program may read the call's arguments from the task's
/// saved user registers (x86-64's `struct pt_regs`, its layout checked
/// against the kernel's BTF), given the syscall numbers below.
pub const OFF_REGS: u32 = 1 << 5;

/// Kernel struct member offsets (bytes), read by userspace from the running
/// kernel's BTF at start-up and handed to the programs as a global.
///
/// Rust eBPF gets no CO-RE relocations with the pinned toolchain, so these
/// replace them: a field read is `base + offset` with the running kernel's
/// own offset, never one baked in at build time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub valid: u32,
    // task -> netns inode: task_struct.nsproxy -> nsproxy.net_ns -> net.ns.inum
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_ns_inum: u32,
    // task -> fd -> socket: task_struct.files -> files_struct.fdt -> fdtable.fd[fd]
    //   -> file.private_data (struct socket *) -> socket.sk
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    // struct sock / sock_common
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_net: u32,
    pub sk_protocol: u32,
    // the task itself: task_struct.tgid (its pid), .pid (its tid), .comm;
    // for cgroup programs, which get bpf_get_current_pid_tgid and
    // bpf_get_current_comm only from 6.1 on
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_comm: u32,
    // the syscall numbers of connect() and bind(), which tell the two exit
    // tracepoints apart (`__syscall_nr`) where nothing was remembered at enter
    pub nr_connect: u32,
    pub nr_bind: u32,
}

// ---------------------------------------------------------------------------
// nodeport-steal: what the kernel side sees of a SYN-ACK meant for a local
// client on a guarded port, of IPVS taking it, and of the client afterwards.
// ---------------------------------------------------------------------------

/// A SYN-ACK arrived (tc ingress) for a guarded local port, and the kernel's
/// socket table has a socket in SYN_SENT for its 4-tuple.
pub const STEAL_SYNACK: u8 = 1;
/// IPVS created a connection (`ip_vs_conn_new`) for a SYN-ACK seen above.
pub const STEAL_IPVS: u8 = 2;
/// A socket on a guarded local port retransmitted its SYN.
pub const STEAL_RETRANS: u8 = 3;
/// A socket on a guarded local port left SYN_SENT (`newstate` says where).
pub const STEAL_STATE: u8 = 4;

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;

/// One record of the nodeport-steal ring buffer. Addresses are as the
/// victim socket sees them: `local` is the node side (the guarded port),
/// `remote` the peer that answered (the pod).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StealEvent {
    pub ts_ns: u64,
    pub kind: u8,
    pub probe: u8,
    pub oldstate: u8,
    pub newstate: u8,
    /// Owner of the socket (the task that called connect()), 0 if unknown.
    pub pid: u32,
    pub local_port: u16,
    pub remote_port: u16,
    /// IPVS: the real server the connection was sent to.
    pub rs_port: u16,
    /// AF_INET or AF_INET6: of `local_addr` and `remote_addr`.
    pub family: u16,
    /// Of `rs_addr` (IPVS may send a connection of one family to a real
    /// server of the other).
    pub rs_family: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub rs_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

pub const STEAL_EVENT_SIZE: usize = core::mem::size_of::<StealEvent>();

impl StealEvent {
    pub const fn zeroed() -> Self {
        StealEvent {
            ts_ns: 0,
            kind: 0,
            probe: 0,
            oldstate: 0,
            newstate: 0,
            pid: 0,
            local_port: 0,
            remote_port: 0,
            rs_port: 0,
            family: 0,
            rs_family: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            rs_addr: [0; 16],
            comm: [0; COMM_LEN],
        }
    }
}

/// `StealEvent::probe` for the packet path (tc ingress).
pub const PROBE_TC: u8 = 4;

/// Key of the connections whose SYN-ACK was seen on a guarded port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
}

/// Where a socket tracepoint record (`sock:inet_sock_set_state`,
/// `tcp:tcp_retransmit_skb`) keeps the socket and its 4-tuple: IPv4
/// addresses in `saddr`/`daddr`, IPv6 in `saddr_v6`/`daddr_v6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TpSockFields {
    pub skaddr: u32,
    pub sport: u32,
    pub dport: u32,
    /// [`TP_NO_FAMILY`] where the record has no `family` field (5.10's
    /// `tcp_retransmit_skb`): then an IPv4 socket is one whose `saddr_v6`
    /// holds a v4-mapped address (the kernel stores one there for IPv4).
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

/// `TpSockFields::family` of a record without a `family` field.
pub const TP_NO_FAMILY: u32 = u32::MAX;

/// Offsets of the fields the nodeport-steal programs read: tracepoint
/// records (from tracefs `format` files, which differ between kernels) and
/// IPVS's `struct ip_vs_conn_param` (from the ip_vs module's BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealOffsets {
    pub valid: u32,
    // sock:inet_sock_set_state
    pub ss: TpSockFields,
    pub ss_oldstate: u32,
    pub ss_newstate: u32,
    pub ss_protocol: u32,
    // tcp:tcp_retransmit_skb
    pub rt: TpSockFields,
    pub rt_state: u32,
    // struct ip_vs_conn_param
    pub cp_af: u32,
    pub cp_caddr: u32,
    pub cp_vaddr: u32,
    pub cp_cport: u32,
    pub cp_vport: u32,
    pub cp_protocol: u32,
}

/// `StealOffsets::valid` bits.
pub const SOFF_STATE: u32 = 1 << 0;
pub const SOFF_RETRANS: u32 = 1 << 1;
pub const SOFF_IPVS: u32 = 1 << 2;

// ---------------------------------------------------------------------------
// Names both sides use. The kernel side is two objects, `failures` (what
// `trace` loads) and `steal` (what `nodeport-steal` loads), each with only
// its own maps. On the eBPF side a map's name is its static's identifier
// and a program's its function's (the aya macros take no constants), so a
// userspace unit test parses both built objects and checks that each holds
// exactly the names listed here for it: a rename on either side fails it.
// ---------------------------------------------------------------------------

/// Map names.
pub mod maps {
    /// `failures`: the [`FailureEvent`](crate::FailureEvent) ring buffer
    /// (its size is set by userspace at load).
    pub const EVENTS: &str = "EVENTS";
    /// `failures`: what an entry probe remembers for its return probe.
    pub const PENDING: &str = "PENDING";
    /// Both objects, one each: per-CPU counts of what the kernel side
    /// dropped, at the slots in [`crate::lost`].
    pub const LOST: &str = "LOST";
    /// `failures`: the [`SysctlGuard`](crate::SysctlGuard), one entry,
    /// filled by `serve --guard-port-range`.
    pub const SYSCTL_GUARD: &str = "SYSCTL_GUARD";
    /// `failures`: the guard's per-CPU buffer for a new reserved-ports list.
    pub const GUARD_LIST: &str = "GUARD_LIST";
    /// `steal`: the [`StealEvent`](crate::StealEvent) ring buffer.
    pub const STEALS: &str = "STEALS";
    /// `steal`: the guarded local ports, kept current by userspace.
    pub const GUARDED: &str = "GUARDED";
    /// `steal`: connections whose SYN-ACK was seen on a guarded port.
    pub const SYNACKS: &str = "SYNACKS";
    /// `steal`: who called connect() on a socket.
    pub const OWNERS: &str = "OWNERS";

    /// Every map of the `failures` object.
    pub const FAILURES: &[&str] = &[EVENTS, LOST, PENDING, SYSCTL_GUARD, GUARD_LIST];
    /// Every map of the `steal` object.
    pub const STEAL: &[&str] = &[STEALS, LOST, GUARDED, SYNACKS, OWNERS];
}

/// Globals userspace sets before load.
pub mod globals {
    /// `failures`: the [`Offsets`](crate::Offsets) from the kernel's BTF.
    pub const OFFSETS: &str = "OFFSETS";
    /// `steal`: the [`StealOffsets`](crate::StealOffsets).
    pub const STEAL_OFFSETS: &str = "STEAL_OFFSETS";
}

/// Program names.
pub mod progs {
    // failures, fexit: one program per function (the return value's place
    // in the context depends on the arity).
    /// `inet_hash_connect`.
    pub const FX_CONN4: &str = "pw_fx_conn4";
    /// `inet6_hash_connect`.
    pub const FX_CONN6: &str = "pw_fx_conn6";
    /// `inet_bind_sk` (3 arguments, 6.12+).
    pub const FX_BIND3: &str = "pw_fx_bind3";
    /// `__inet_bind` (4 arguments).
    pub const FX_BIND4: &str = "pw_fx_bind4";
    /// `inet6_bind`.
    pub const FX_BIND6: &str = "pw_fx_bind6";

    // failures, kprobe + kretprobe.
    /// Entry of `inet_hash_connect` / `inet6_hash_connect`.
    pub const KP_CONNECT: &str = "pw_kp_connect";
    /// Entry of `__inet_bind` / `inet_bind_sk` (first argument a `struct sock *`).
    pub const KP_BIND: &str = "pw_kp_bind";
    /// Entry of `inet6_bind` (first argument a `struct socket *`).
    pub const KP_BIND6: &str = "pw_kp_bind6";
    /// Return of every function above.
    pub const KRET: &str = "pw_kret";

    // failures, syscall tracepoints.
    pub const TP_CONN_ENTER: &str = "pw_tp_conn_enter";
    pub const TP_BIND_ENTER: &str = "pw_tp_bind_enter";
    /// `sys_exit_connect` and `sys_exit_bind`: one program for both (what
    /// enter remembered says which call it was), verified once.
    pub const TP_EXIT: &str = "pw_tp_exit";
    /// `sys_exit_connect` and `sys_exit_bind` with no enter program: the
    /// call's arguments from the task's saved registers (5.15+).
    pub const TP_EXIT_REGS: &str = "pw_tp_exit_regs";

    // steal.
    /// tc ingress: SYN-ACKs for guarded ports.
    pub const TC_SYNACK: &str = "pw_tc_synack";
    /// fexit on `ip_vs_conn_new`: loaded by portwatch itself against the
    /// ip_vs module's BTF (aya's loader only knows vmlinux's).
    pub const FX_IPVS_CONN_NEW: &str = "pw_fx_ipvs_conn_new";
    /// kprobe on `ip_vs_conn_new`: where the fexit cannot be had.
    pub const KP_IPVS_CONN_NEW: &str = "pw_kp_ipvs_conn_new";
    /// `sock:inet_sock_set_state`.
    pub const TP_SOCK_STATE: &str = "pw_tp_sock_state";
    /// `tcp:tcp_retransmit_skb`.
    pub const TP_RETRANS: &str = "pw_tp_retrans";

    // failures, cgroup/sysctl.
    /// Writes of the sysctls in `SYSCTL_NAMES`, on the cgroup2 root.
    pub const SYSCTL: &str = "pw_sysctl";
    /// The same with the reserved-ports guard, for `serve
    /// --guard-port-range` (one of the two is loaded).
    pub const SYSCTL_GUARD: &str = "pw_sysctl_guard";

    /// Every program of the `failures` object.
    pub const FAILURES: &[&str] = &[
        FX_CONN4,
        FX_CONN6,
        FX_BIND3,
        FX_BIND4,
        FX_BIND6,
        KP_CONNECT,
        KP_BIND,
        KP_BIND6,
        KRET,
        TP_CONN_ENTER,
        TP_BIND_ENTER,
        TP_EXIT,
        TP_EXIT_REGS,
        SYSCTL,
        SYSCTL_GUARD,
    ];
    /// Every program of the `steal` object.
    pub const STEAL: &[&str] = &[
        TC_SYNACK,
        FX_IPVS_CONN_NEW,
        KP_IPVS_CONN_NEW,
        TP_SOCK_STATE,
        TP_RETRANS,
    ];
}

/// Slots of each object's `LOST` map. Every slot an object has is one
/// userspace adds to the command's lost count.
pub mod lost {
    /// `failures`: a failure found the EVENTS ring buffer full.
    pub const EVENTS_FULL: u32 = 0;
    /// `failures`: an entry probe could not remember its call in PENDING,
    /// so its return probe missed the failure.
    pub const PENDING_FULL: u32 = 1;
    /// The slots of the `failures` object's LOST, in order.
    pub const FAILURES: &[u32] = &[EVENTS_FULL, PENDING_FULL];
    /// Size of the `failures` object's LOST.
    pub const FAILURES_SLOTS: u32 = FAILURES.len() as u32;

    /// `steal`: a record found the STEALS ring buffer full.
    pub const STEALS_FULL: u32 = 0;
    /// The slots of the `steal` object's LOST, in order.
    pub const STEAL: &[u32] = &[STEALS_FULL];
    /// Size of the `steal` object's LOST.
    pub const STEAL_SLOTS: u32 = STEAL.len() as u32;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C) plain integers and byte arrays with no padding
    // holes that could carry uninitialised bytes into the kernel.
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::FailureEvent {}
    unsafe impl aya::Pod for super::SysctlEvent {}
    unsafe impl aya::Pod for super::SysctlGuard {}
    unsafe impl aya::Pod for super::StealEvent {}
    unsafe impl aya::Pod for super::StealOffsets {}
    unsafe impl aya::Pod for super::SynAckKey {}
    unsafe impl aya::Pod for super::TpSockFields {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_is_stable() {
        // The eBPF side and userspace must agree on this; a change here is a
        // wire-format change.
        assert_eq!(FAILURE_EVENT_SIZE, 104);
        assert_eq!(core::mem::align_of::<FailureEvent>(), 8);
        assert_eq!(core::mem::size_of::<Offsets>(), 25 * 4);
        assert_eq!(STEAL_EVENT_SIZE, 96);
        assert_eq!(core::mem::size_of::<SynAckKey>(), 36);
        assert_eq!(core::mem::size_of::<StealOffsets>(), 27 * 4);
        assert_eq!(core::mem::size_of::<TpSockFields>(), 8 * 4);
        assert_eq!(SYSCTL_EVENT_SIZE, 312);
        assert_eq!(
            core::mem::size_of::<SysctlGuard>(),
            16 + 4 * GUARD_SPANS + 4 * GUARD_KEEP
        );
        assert_eq!(core::mem::align_of::<SysctlEvent>(), 8);
    }

    #[test]
    fn both_records_keep_kind_at_one_offset() {
        assert_eq!(core::mem::offset_of!(FailureEvent, kind), KIND_OFFSET);
        assert_eq!(core::mem::offset_of!(SysctlEvent, kind), KIND_OFFSET);
        // Two record types in one ring: sizes differ too.
        assert_ne!(SYSCTL_EVENT_SIZE, FAILURE_EVENT_SIZE);
        assert!(![KIND_CONNECT, KIND_BIND].contains(&KIND_SYSCTL));
    }

    #[test]
    fn sysctl_names_pack_into_words() {
        let w = sysctl_name_words("net/ipv4/tcp_tw_reuse");
        assert_eq!(w[0].to_le_bytes(), *b"net/ipv4");
        assert_eq!(w[1].to_le_bytes(), *b"/tcp_tw_");
        assert_eq!(w[2].to_le_bytes(), *b"reuse\0\0\0");
        assert_eq!(w[3..], [0, 0]);
        for n in SYSCTL_NAMES {
            assert!(n.len() < SYSCTL_NAME_LEN, "{n} and its NUL fit");
        }
        assert_eq!(
            SYSCTL_NAMES[SYSCTL_PORT_RANGE as usize],
            "net/ipv4/ip_local_port_range"
        );
        assert_eq!(
            SYSCTL_NAMES[SYSCTL_RESERVED_PORTS as usize],
            "net/ipv4/ip_local_reserved_ports"
        );
        assert_eq!(
            SYSCTL_NAMES[SYSCTL_TW_REUSE as usize],
            "net/ipv4/tcp_tw_reuse"
        );
        assert_eq!(
            SYSCTL_NAMES[SYSCTL_UNPRIVILEGED_PORT_START as usize],
            "net/ipv4/ip_unprivileged_port_start"
        );
    }

    #[test]
    fn lost_slots_are_dense_and_in_bounds() {
        // Each object's LOST has exactly its slots, numbered from 0.
        for (slots, size) in [
            (lost::FAILURES, lost::FAILURES_SLOTS),
            (lost::STEAL, lost::STEAL_SLOTS),
        ] {
            assert_eq!(slots.len() as u32, size);
            for (i, &s) in slots.iter().enumerate() {
                assert_eq!(s, i as u32);
            }
        }
    }

    #[test]
    fn names_are_unique_within_an_object() {
        for names in [maps::FAILURES, maps::STEAL, progs::FAILURES, progs::STEAL] {
            for (i, a) in names.iter().enumerate() {
                assert!(!names[i + 1..].contains(a), "{a} listed twice");
            }
        }
    }
}
