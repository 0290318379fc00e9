//! Stage 6: events out, as JSON lines (a versioned contract, see
//! docs/schema.md: `json`) or as an aligned table with a plain-words hint
//! (`table`); likewise nodeport-steal's reports (`steal`), top's summaries
//! (`summary`) and check's findings (`findings`).

pub mod findings;
pub mod json;
pub mod steal;
pub mod summary;
pub mod table;

use std::io;

use crate::pipeline::{event::Event, sysctl::SysctlWrite};

pub use json::JsonSink;
pub use table::TableSink;

/// Where a pipeline's records go, whatever the command: decoded events
/// (trace, top, serve), nodeport-steal's reports, top's summaries.
pub trait Sink<T: ?Sized> {
    fn put(&mut self, item: &T) -> io::Result<()>;
    /// `count` records were dropped by the kernel side since the last call.
    fn lost(&mut self, count: u64) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Where the trace pipeline's records go: its failures, and the writes of
/// the port sysctls it also sees. Each sink says what it does with a write.
pub trait TraceSink: Sink<Event> {
    fn sysctl(&mut self, w: &SysctlWrite) -> io::Result<()>;
}
