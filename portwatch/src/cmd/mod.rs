//! The commands, one module each: thin compositions of the pipeline's
//! stages. `cli` is the command line they are started from.

pub mod check;
pub mod cli;
pub mod generate;
pub mod nodeport;
pub mod serve;
pub mod top;
pub mod trace;

/// Start-up phases, logged at debug (`RUST_LOG=portwatch::startup=debug`).
pub use crate::kernel::system::startup_mark;
