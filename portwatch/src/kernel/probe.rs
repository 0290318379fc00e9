//! The kinds of probe that can attach a hook: named in `--backend`, in the
//! start-up report, and carried by every event.

use serde::Serialize;

/// Which kind of probe saw an event; also the `--backend` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Fexit,
    Kprobe,
    Tracepoint,
}

impl Probe {
    pub fn name(self) -> &'static str {
        match self {
            Probe::Fexit => "fexit",
            Probe::Kprobe => "kprobe",
            Probe::Tracepoint => "tracepoint",
        }
    }
}
