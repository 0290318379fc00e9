//! The commands, one module each: thin compositions of the pipeline's
//! stages. `cli` is the command line they are started from.

pub mod check;
pub mod cli;
pub mod generate;
pub mod nodeport;
pub mod serve;
pub mod top;
pub mod trace;

/// One malloc arena for the process (see `kernel::system::one_heap`):
/// called by `main` before anything else.
pub fn one_heap() {
    crate::kernel::system::one_heap();
}
