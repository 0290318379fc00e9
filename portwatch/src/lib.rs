//! portwatch: ephemeral port exhaustion, seen from the kernel.
//!
//! The library behind the `portwatch` binary, in four rooms; imports run
//! one way, from the top of this list down:
//!
//! - `cmd`: one module per command, each a thin composition of the rest,
//!   and the command line (`cmd::cli`).
//! - `pipeline`: the stages events go through. For `trace`: attach ->
//!   ring buffer -> decode -> enrich -> filter -> cause -> sink.
//! - `kernel`, `host`, `k8s`: what the stages read. `kernel`: loading and
//!   attaching the eBPF programs (BTF, offsets, tracepoint layouts,
//!   privileges) and their ring buffers; `host`: network namespaces,
//!   socket tables, port sets, socket holders, IPVS, port usage; `k8s`:
//!   pods from cgroups, and their names from the container runtime.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cmd;
#[cfg(test)]
mod fuzz;
pub(crate) mod host;
pub(crate) mod k8s;
pub(crate) mod kernel;
pub(crate) mod pipeline;
