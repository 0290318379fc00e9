//! The sysctls portwatch reads, by their /proc/sys path (read inside a
//! netns with `netns::read_sysctls`).

pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
pub const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
