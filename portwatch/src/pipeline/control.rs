//! How a pipeline is driven from outside: when to stop, and whom to tell
//! once every probe is attached. `trace` and `nodeport-steal` stop on
//! SIGINT/SIGTERM; `top` and `serve` run several pipelines in one process
//! and stop them all from one place.

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::kernel::{attach::Hook, probe::Probe};

/// What a pipeline attached, once its probes are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachReport {
    /// The trace pipeline: the kind of probe each hook got.
    Trace(Vec<(Hook, Probe)>),
    /// The nodeport-steal pipeline: the SYN-ACK watch (on tc) and, where
    /// the kernel has IPVS, the kind of probe on its scheduling path.
    Steal { ipvs: Option<Probe> },
}

/// Told, once, what a pipeline attached.
pub type OnAttached = Box<dyn FnOnce(&AttachReport)>;

/// Handed to a pipeline: it runs until `stop` turns true, and calls
/// `attached` once its probes are in (with what it attached).
pub struct Control {
    pub stop: watch::Receiver<bool>,
    pub attached: Option<OnAttached>,
}

impl Control {
    pub fn new(stop: watch::Receiver<bool>) -> Control {
        Control {
            stop,
            attached: None,
        }
    }

    pub fn on_attached(mut self, f: impl FnOnce(&AttachReport) + 'static) -> Control {
        self.attached = Some(Box::new(f));
        self
    }

    pub(crate) fn report_attached(&mut self, what: &AttachReport) {
        if let Some(f) = self.attached.take() {
            f(what);
        }
    }

    /// Resolves once stop is asked for (or nobody can ask any more).
    pub async fn stopped(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }
}

/// A stop switch that SIGINT or SIGTERM turns on. The handlers are installed
/// before this returns, so a signal sent right after start-up is not lost.
pub fn stop_on_signals() -> Result<(watch::Sender<bool>, watch::Receiver<bool>)> {
    let (tx, rx) = watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let tx2 = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        let _ = tx2.send(true);
    });
    Ok((tx, rx))
}
