//! portwatch's kernel programs, as two objects (one `[[bin]]` each):
//!
//! * `failures` (`src/bin/failures`), loaded by `trace`: a connect()/bind()
//!   that fails with EADDRNOTAVAIL or EADDRINUSE, seen by one of three
//!   backends per hook (fexit, kprobe + kretprobe, syscall tracepoints).
//! * `steal` (`src/bin/steal`), loaded by `nodeport-steal`: a SYN-ACK for a
//!   local client on a guarded port (tc), IPVS taking it (kprobe), and what
//!   becomes of the client's socket (sock/tcp tracepoints).
//!
//! `serve` runs both commands' pipelines and so loads each object once.
//! Their map, global and program names, and the slots of their lost
//! counters, are constants in `portwatch-common`.
//!
//! This lib holds what the programs of both share: [`shared`] (reading
//! kernel memory and sockaddrs, the globals userspace sets, lost counting,
//! ring buffer output) and [`net`] (the protocol numbers they compare with).
//! It has no maps and no programs: each object declares its own.
//!
//! No CO-RE here (rustc emits no field relocations): every kernel struct field
//! is read at an offset userspace found in the running kernel's BTF or in a
//! tracefs format file, handed in through a global.
#![no_std]

pub mod net;
pub mod shared;
