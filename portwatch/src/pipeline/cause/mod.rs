//! Stage between `filter` and `sink`: why each failure happened, and who
//! holds the ports.
//!
//! `classify` works from the kernel's own evidence in the event, on every
//! backend: for connect() the socket's bound port at the failure (`sk_num`,
//! read from struct sock) tells a 4-tuple collision (a port fixed by bind())
//! from an exhausted range (no port yet); for bind() the port asked for tells
//! a taken port from an exhausted autobind.
//!
//! The detail comes from the socket table of the event's netns (sock_diag)
//! and /proc (holders). Those look-ups run on worker threads, off the event
//! path, at most one per netns x destination per second; an event waits for
//! its detail no longer than the budget and then goes out with what is known
//! and `detail_complete: false`. Within the same budget it waits for its
//! pod's names when the enrich stage is still asking the runtime (`cri`).
//!
//! `classify`: the cause from the event; `detail`: the finished event from
//! a look-up's result; `lookup`: the look-ups and the queue events wait in.

pub mod classify;
pub mod detail;
pub mod lookup;

pub use classify::classify;
pub use detail::{finish, holder_counts};
pub use lookup::{Detailer, Options};
