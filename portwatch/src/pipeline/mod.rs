//! The stages events go through, one module each. `trace`: attach ->
//! ring buffer (`kernel`) -> `decode` -> `enrich` -> `filter` -> `cause`
//! -> `sink`. `nodeport-steal`: ring buffer -> `correlate` -> `sink`.
//! `check`: `host::discover` -> `findings` -> `sink`.
//! `trace` composes the trace pipeline (`trace`, `top` and `serve` run it);
//! `control` is how a running pipeline is stopped and told about.

pub mod cause;
pub mod control;
pub mod correlate;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod filter;
pub mod findings;
pub mod sink;
pub mod trace;
