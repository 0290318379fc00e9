//! The protocol and ABI numbers the programs compare against or read at,
//! named.

use aya_ebpf::bindings::{
    bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
};

// Ethernet.
/// Length of an Ethernet header without VLAN tag: the IP header follows.
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType in the Ethernet header.
pub const ETH_TYPE_OFF: usize = 12;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

// IPv4 header.
/// Offset of the version + IHL byte.
pub const IPV4_VIHL_OFF: usize = 0;
/// The IHL bits of that byte: the header length in 32-bit words.
pub const IPV4_IHL_MASK: u8 = 0x0f;
/// Bytes per IHL unit.
pub const IPV4_IHL_UNIT: usize = 4;
/// Shortest and longest header IHL can describe, in bytes.
pub const IPV4_HLEN_MIN: usize = 20;
pub const IPV4_HLEN_MAX: usize = 60;
/// Offset of the protocol byte.
pub const IPV4_PROTO_OFF: usize = 9;
/// Offsets of the source and destination addresses.
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;

// IPv6 header: fixed length; a TCP header right after it is the only case
// looked at (kube-proxy's and a pod's SYN-ACKs carry no extension headers).
pub const IPV6_HLEN: usize = 40;
/// Offset of the next-header byte.
pub const IPV6_NEXTHDR_OFF: usize = 6;
/// Offsets of the source and destination addresses.
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;

/// IPPROTO_TCP, as IP headers, sockets and tracepoint records carry it.
pub const IPPROTO_TCP: u8 = 6;

// TCP header.
/// Offsets of the source and destination ports.
pub const TCP_SPORT_OFF: usize = 0;
pub const TCP_DPORT_OFF: usize = 2;
/// Offset of the flags byte (CWR ECE URG ACK PSH RST SYN FIN).
pub const TCP_FLAGS_OFF: usize = 13;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
/// The flags a SYN-ACK test looks at (0x16) ...
pub const SYNACK_MASK: u8 = TCP_FLAG_SYN | TCP_FLAG_RST | TCP_FLAG_ACK;
/// ... and their values in a SYN-ACK: SYN and ACK set, RST not (0x12).
pub const SYNACK: u8 = TCP_FLAG_SYN | TCP_FLAG_ACK;

/// Size of `bpf_sock_tuple`'s IPv4 member, the tuple size
/// `bpf_skc_lookup_tcp` is given for an IPv4 lookup (12).
pub const SOCK_TUPLE_IPV4_LEN: u32 =
    core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
/// Size of its IPv6 member (36).
pub const SOCK_TUPLE_IPV6_LEN: u32 =
    core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32;

// Socket addresses.
/// `sa_family_t`: the shortest sockaddr worth reading.
pub const SA_FAMILY_LEN: usize = 2;
/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`: the longest sockaddr read.
pub const SOCKADDR_IN6_LEN: usize = 28;
/// Offset of the port in either (after the family).
pub const SOCKADDR_PORT_OFF: usize = 2;
/// Where the rest of a sockaddr starts (after family and port).
pub const SOCKADDR_REST_OFF: usize = 4;
/// `sin_addr` in a `sockaddr_in`.
pub const SIN_ADDR_OFF: usize = 4;
/// `sin6_addr` in a `sockaddr_in6` (after `sin6_flowinfo`).
pub const SIN6_ADDR_OFF: usize = 8;

// Syscall tracepoint records (`syscalls:sys_enter_*` / `sys_exit_*`): a
// stable ABI, the common header then the syscall number.
/// Offset of `sys_enter_*`'s first argument; each argument takes 8 bytes.
pub const SYS_ENTER_ARG0_OFF: usize = 16;
pub const SYS_ENTER_ARG_SIZE: usize = 8;
/// Offset of `sys_exit_*`'s syscall number (`__syscall_nr`, an int).
pub const SYS_EXIT_NR_OFF: usize = 8;
/// Offset of `sys_exit_*`'s return value.
pub const SYS_EXIT_RET_OFF: usize = 16;
