//! What the host tells, read from /proc, /sys and netlink: network
//! namespaces (`netns`), every one of them found and read (`discover`),
//! their socket tables (`sockdiag`), the processes holding sockets
//! (`holders`), IPVS services (`ipvs`), ephemeral ports in use (`usage`),
//! port-list arithmetic (`ports`) and the sysctls read (`sysctl`).

pub mod discover;
pub mod holders;
pub mod ipvs;
pub mod netns;
pub mod ports;
pub mod sockdiag;
pub mod sysctl;
pub mod usage;
