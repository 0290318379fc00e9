//! The trace pipeline, as `trace`, `top` and `serve` run it: attach ->
//! read ring buffer -> decode -> enrich -> filter -> cause -> sink, until
//! told to stop or the sink's reader is gone.

use std::{
    io::{self, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::{
        attach::{self, Attached},
        source::Source,
    },
    pipeline::{
        cause::{self, Detailer},
        control::{AttachReport, Control},
        decode::{self, Clock},
        enrich::Enricher,
        event::Event,
        filter::Filter,
        sink::Sink,
    },
};

/// How the run ended, for the exit code.
pub enum End {
    Signal,
    ReaderGone,
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// What a trace pipeline runs with.
pub struct Options {
    /// Which probes, and the ring buffer's size.
    pub attach: attach::Options,
    /// The container runtime's CRI socket (None: the first that answers).
    pub cri_endpoint: Option<PathBuf>,
    /// The detail budget, and whether look-ups are made at all.
    pub detail: cause::Options,
    /// Which events go out.
    pub filter: Filter,
    /// How often handles on network namespaces that have gone are closed.
    pub netns_sweep: std::time::Duration,
    /// A runtime client the process already has (`serve`'s, shared with
    /// its netns scan); None: the pipeline starts its own at `cri_endpoint`.
    pub cri: Option<crate::k8s::cri::Cri>,
}

/// attach -> ring buffer -> decode -> enrich -> filter -> cause -> `sink`,
/// until `ctl` says stop (then what the kernel already wrote still goes
/// out) or the sink's reader is gone.
pub async fn pipeline(
    opts: &Options,
    mut sink: Box<dyn Sink<Event>>,
    mut ctl: Control,
) -> Result<End> {
    let Attached {
        mut ebpf,
        hooks,
        notes,
    } = attach::attach(&opts.attach)?;
    for n in &notes {
        eprintln!("portwatch: {n}");
    }
    let mut attached = vec![];
    for h in &hooks {
        attached.push((h.hook, h.probe));
        let skipped = h
            .skipped
            .iter()
            .map(|(p, why)| format!("{} unavailable: {why}", p.name()))
            .collect::<Vec<_>>();
        let tail = if skipped.is_empty() {
            String::new()
        } else {
            format!(" [{}]", skipped.join("; "))
        };
        eprintln!(
            "portwatch: {} hook: {} on {}{tail}",
            h.hook.name(),
            h.probe.name(),
            h.target
        );
    }
    let mut source = Source::new(&mut ebpf)?;
    let clock = Clock::now();
    let mut enricher = Enricher::new(
        opts.cri_endpoint.clone(),
        opts.cri.as_ref(),
        opts.netns_sweep,
    )?;
    eprintln!("portwatch: {}", enricher.pods_note());
    let names_wake = enricher.names_wake();
    if opts.detail.lookups {
        if let Err(e) = crate::host::sockdiag::probe() {
            eprintln!(
                "portwatch: the socket table is unreadable ({e:#}): events carry their cause, but in_use, states and holders stay null"
            );
        }
    }
    let (mut detailer, mut detail_done) = Detailer::new(opts.detail)?;
    let filter = &opts.filter;
    let mut lost_tick = tokio::time::interval(Duration::from_millis(500));
    let mut lost_seen = 0u64;
    eprintln!("portwatch: attached; tracing connect()/bind() failures (EADDRNOTAVAIL, EADDRINUSE). Ctrl-C to stop.");
    ctl.report_attached(&AttachReport::Trace(attached));

    // Records are decoded straight out of the ring buffer (no copy), and
    // the rest of the pipeline runs once the ring's borrow has ended.
    let mut batch: Vec<Event> = Vec::new();
    let decode_into = |batch: &mut Vec<Event>, rec: &[u8]| match decode::decode(rec, &clock) {
        Ok(ev) => batch.push(ev),
        Err(e) => log::warn!("undecodable record: {e:#}"),
    };
    // enrich -> filter -> cause: events wait in the detailer (in order, up
    // to the budget each) for their look-ups (socket table, pod names), then
    // go out. An event whose pod names are still being looked up is
    // filtered on them when they are in (or the budget is spent).
    let process = |batch: &mut Vec<Event>, detailer: &mut Detailer, enricher: &mut Enricher| {
        for mut ev in batch.drain(..) {
            let names = enricher.enrich(&mut ev);
            if filter.could_match(&ev, names.is_some()) {
                detailer.push_named(ev, names, |ino, ev| enricher.handle(ino, ev));
            }
        }
    };
    let emit = |detailer: &mut Detailer, sink: &mut Box<dyn Sink<Event>>| -> io::Result<()> {
        let now = Instant::now();
        let mut any = false;
        while let Some(ev) = detailer.pop_ready(now) {
            if !filter.matches(&ev) {
                continue;
            }
            sink.put(&ev)?;
            any = true;
        }
        if any {
            sink.flush()?;
        }
        Ok(())
    };
    let report_lost =
        |sink: &mut Box<dyn Sink<Event>>, source: &Source, seen: &mut u64| -> io::Result<()> {
            let total = source.lost_total().unwrap_or(*seen);
            if total > *seen {
                let n = total - *seen;
                *seen = total;
                eprintln!("portwatch: {n} events lost (kernel ring buffer full; {total} in all)");
                sink.lost(n)?;
                sink.flush()?;
            }
            Ok(())
        };

    let end = loop {
        let deadline = detailer.next_deadline();
        let res = tokio::select! {
            r = source.next_batch(|b| decode_into(&mut batch, b)) => {
                r?;
                process(&mut batch, &mut detailer, &mut enricher);
                emit(&mut detailer, &mut sink)
            }
            Some(done) = detail_done.recv() => {
                detailer.complete(done);
                emit(&mut detailer, &mut sink)
            }
            _ = names_wake.notified() => emit(&mut detailer, &mut sink),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                emit(&mut detailer, &mut sink)
            }
            _ = lost_tick.tick() => {
                enricher.maintain();
                report_lost(&mut sink, &source, &mut lost_seen)
            }
            _ = ctl.stopped() => break End::Signal,
        };
        if let Err(e) = res {
            if is_broken_pipe(&e) {
                break End::ReaderGone;
            }
            return Err(e).context("writing events");
        }
    };
    if let End::Signal = end {
        // What the kernel wrote before the signal still goes out, each event
        // with what its look-up found within the budget.
        source.drain(|b| decode_into(&mut batch, b));
        process(&mut batch, &mut detailer, &mut enricher);
        let mut res = emit(&mut detailer, &mut sink);
        while res.is_ok() && !detailer.is_empty() {
            let deadline = detailer.next_deadline().unwrap_or_else(Instant::now);
            tokio::select! {
                Some(done) = detail_done.recv() => detailer.complete(done),
                _ = names_wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            res = emit(&mut detailer, &mut sink);
        }
        let _ = res.and_then(|_| report_lost(&mut sink, &source, &mut lost_seen));
    }
    drop(source);
    // Dropping the loader detaches every link and unloads every program.
    drop(ebpf);
    let _ = io::stderr().flush();
    Ok(end)
}
