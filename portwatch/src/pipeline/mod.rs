//! The stages events go through, one module each. `trace`: attach ->
//! ring buffer (`kernel`) -> `decode` -> `enrich` -> `filter` -> `cause`
//! -> `sink`, composed in `trace` (which `top` and `serve` run too).
//! Sysctl writes ride along: `decode` -> `sysctl` -> `sink`; `serve`
//! keeps the last ones per netns in `lastwrite`, which `check` reads.
//! `top`: the trace pipeline -> `aggregate` -> `sink`. `nodeport-steal`:
//! ring buffer -> `correlate` -> `sink`. `check`: `host::discover` ->
//! `findings` -> `sink`. `control` is how a running pipeline is stopped
//! and told about; `schema` is what every JSON record shares.

/// Records that may wait in one of the event path's queues at once (the
/// failures waiting for their detail, the sysctl writes waiting for their
/// pod's names). A queue is the one buffer a storm could grow: without a
/// bound, a ring buffer's worth of records (tens of thousands, 440 bytes
/// each plus their strings) waited at once behind the first look-ups, and
/// the queue kept that capacity for good. At the bound the reader leaves
/// records in the kernel's ring buffer (already paid for) until the front
/// of the queue has gone out.
pub const MAX_WAITING: usize = 4096;

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
