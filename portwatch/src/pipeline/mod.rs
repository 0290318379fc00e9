//! The stages events go through, one module each. `trace`: attach ->
//! ring buffer (`kernel`) -> `decode` -> `enrich` -> `filter` -> `cause`
//! -> `sink`, composed in `trace` (which `top` and `serve` run too).
//! Sysctl writes ride along: `decode` -> `sysctl` -> `sink`; `serve`
//! keeps the last ones per netns in `lastwrite`, which `check` reads.
//! `top`: the trace pipeline -> `aggregate` -> `sink`. `nodeport-steal`:
//! ring buffer -> `correlate` -> `sink`. `check`: `host::discover` ->
//! `findings` -> `sink`. `control` is how a running pipeline is stopped
//! and told about; `schema` is what every JSON record shares.

pub mod aggregate;
pub mod cause;
pub mod control;
pub mod correlate;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod filter;
pub mod findings;
pub mod lastwrite;
pub mod schema;
pub mod sink;
pub mod sysctl;
pub mod trace;
