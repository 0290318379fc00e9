//! The kernel side, seen from userspace: the eBPF objects loaded (`load`)
//! and their programs attached (`attach` for trace, `steal` for
//! nodeport-steal), with what that needs (`btf`, `offsets`,
//! `tpformat`, `system`), the fexit aya cannot load (on a module's
//! function: `modfexit`), the kinds of probe a hook gets (`probe`), and
//! the programs' ring buffers mapped (`ring`) and read (`source`).

pub mod attach;
pub mod btf;
pub mod load;
pub mod modfexit;
pub mod offsets;
pub mod probe;
pub mod ring;
pub mod source;
pub mod steal;
pub mod system;
pub mod tpformat;
