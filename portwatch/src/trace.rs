//! `portwatch trace`: attach -> read ring buffer -> decode -> enrich ->
//! filter -> output, until Ctrl-C / SIGTERM or the reader closes stdout.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    attach::{self, Attached},
    cli::TraceArgs,
    decode::{self, Clock},
    enrich::Enricher,
    event::Event,
    filter::Filter,
    output::{JsonSink, Sink, TableSink},
    source::Source,
};

/// How the run ended, for the exit code.
pub enum End {
    Signal,
    ReaderGone,
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

pub async fn run(args: TraceArgs) -> Result<End> {
    let Attached {
        mut ebpf,
        hooks,
        notes,
    } = attach::attach(&attach::Options {
        backend: args.backend.0,
        ringbuf_bytes: args.ringbuf_size * 1024,
    })?;
    for n in &notes {
        eprintln!("portwatch: {n}");
    }
    for h in &hooks {
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
    let mut enricher = Enricher::new();
    let filter = Filter {
        pid: args.pid,
        comm: args.comm.clone(),
        errno: args.errno,
        dport: args.dport,
    };
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(TableSink::new(stdout))
    };

    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut lost_tick = tokio::time::interval(Duration::from_millis(500));
    let mut lost_seen = 0u64;
    eprintln!("portwatch: attached; tracing connect()/bind() failures (EADDRNOTAVAIL, EADDRINUSE). Ctrl-C to stop.");

    // Records are decoded straight out of the ring buffer (no copy), and
    // the rest of the pipeline runs once the ring's borrow has ended.
    let mut batch: Vec<Event> = Vec::new();
    let decode_into = |batch: &mut Vec<Event>, rec: &[u8]| match decode::decode(rec, &clock) {
        Ok(ev) => batch.push(ev),
        Err(e) => log::warn!("undecodable record: {e:#}"),
    };
    let mut process = |batch: &mut Vec<Event>, sink: &mut Box<dyn Sink>| -> io::Result<()> {
        for mut ev in batch.drain(..) {
            enricher.enrich(&mut ev);
            if filter.matches(&ev) {
                sink.event(&ev)?;
            }
        }
        sink.flush()
    };
    let report_lost =
        |sink: &mut Box<dyn Sink>, source: &Source, seen: &mut u64| -> io::Result<()> {
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
        let res = tokio::select! {
            r = source.next_batch(|b| decode_into(&mut batch, b)) => {
                r?;
                process(&mut batch, &mut sink)
            }
            _ = lost_tick.tick() => report_lost(&mut sink, &source, &mut lost_seen),
            _ = sigint.recv() => break End::Signal,
            _ = sigterm.recv() => break End::Signal,
        };
        if let Err(e) = res {
            if is_broken_pipe(&e) {
                break End::ReaderGone;
            }
            return Err(e).context("writing events");
        }
    };
    if let End::Signal = end {
        // What the kernel wrote before the signal still goes out.
        source.drain(|b| decode_into(&mut batch, b));
        let _ = process(&mut batch, &mut sink)
            .and_then(|_| report_lost(&mut sink, &source, &mut lost_seen));
    }
    drop(source);
    // Dropping the loader detaches every link and unloads every program.
    drop(ebpf);
    let _ = io::stderr().flush();
    Ok(end)
}
