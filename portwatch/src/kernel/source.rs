//! Stage 2: records out of the kernel's ring buffer, and the count of those
//! the kernel side could not reserve.

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use portwatch_common::{lost, maps};
use tokio::io::unix::AsyncFd;

use super::ring::Ring;

/// Records handed out per call of `next_batch`: a storm is read in slices,
/// so the caller's batch stays this small however full the ring is.
pub const MAX_BATCH: usize = 1024;

/// After the reader has emptied the ring it lets this long pass before it
/// waits on the ring again. The kernel wakes a reader that has caught up at
/// the next record: under a storm, without the pause, that was a wake-up
/// and a context switch for every few records (a third of the tracer's
/// CPU). With it, a storm's records are read a millisecond's worth at a
/// time, and an event is out at most this much later.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(1);

pub struct Source {
    ring: AsyncFd<Ring>,
    lost: PerCpuArray<MapData, u64>,
    /// The LOST counters that belong to this ring.
    lost_idx: &'static [u32],
    /// When the ring was last emptied.
    emptied_at: Option<tokio::time::Instant>,
}

impl Source {
    /// The failure events of `trace` (the `failures` object).
    pub fn new(ebpf: &mut Ebpf) -> Result<Source> {
        Source::named(ebpf, maps::EVENTS, lost::FAILURES)
    }

    /// Ring buffer `ring`, whose losses the kernel side counts in `LOST` at
    /// `lost_idx`.
    pub fn named(ebpf: &mut Ebpf, ring: &str, lost_idx: &'static [u32]) -> Result<Source> {
        let ring = Ring::new(
            ebpf.take_map(ring)
                .with_context(|| format!("{ring} map missing"))?,
        )
        .with_context(|| format!("reading the {ring} ring buffer"))?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map(maps::LOST)
                .with_context(|| format!("{} map missing", maps::LOST))?,
        )?;
        // SAFETY: the AsyncFd owns the Ring, which owns the fd: it stays open
        // for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e))?;
        Ok(Source {
            ring,
            lost,
            lost_idx,
            emptied_at: None,
        })
    }

    /// Waits until records are ready, then hands every ready one to `f`.
    pub async fn next_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<()> {
        if let Some(t) = self.emptied_at {
            tokio::time::sleep_until(t + COALESCE).await;
        }
        let mut guard = self.ring.readable_mut().await?;
        if guard.get_inner_mut().read(MAX_BATCH, &mut f) {
            guard.clear_ready();
            self.emptied_at = Some(tokio::time::Instant::now());
            return Ok(());
        }
        self.emptied_at = None;
        // More is waiting: the ring stays ready, and the caller's loop
        // comes back for it after handling this much.
        Ok(())
    }

    /// Hands every record ready now to `f`, without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        while !self.ring.get_mut().read(MAX_BATCH, &mut f) {}
    }

    /// Events the kernel side dropped since start (ring buffer full, or no
    /// room to track a thread between entry and return).
    pub fn lost_total(&self) -> Result<u64> {
        let mut sum = 0;
        for idx in self.lost_idx {
            sum += self.lost.get(idx, 0)?.iter().sum::<u64>();
        }
        Ok(sum)
    }
}

/// Forwards the programs' aya-log records to the `log` crate (RUST_LOG).
pub fn spawn_ebpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: as above, the logger owns its ring buffer's fd.
        let Ok(mut fd) =
            (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
        else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
