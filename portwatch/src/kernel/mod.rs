//! The kernel side, seen from userspace: the eBPF programs loaded and
//! attached (`attach`), with what that needs (`btf`, `offsets`,
//! `tpformat`, `system`), the kinds of probe a hook gets (`probe`), and
//! the programs' ring buffers read (`source`).

pub mod attach;
pub mod btf;
pub mod offsets;
pub mod probe;
pub mod source;
pub mod system;
pub mod tpformat;
