//! `portwatch top`: the trace pipeline into a live summary. Each interval,
//! the failures grouped by pod x netns x kind x errno x destination (counts
//! in the interval and since start), and for every destination seen
//! failing, the ephemeral ports in use toward it from that netns against
//! the netns's usable ports (`usage`). A redrawn table on a terminal, plain
//! blocks when stdout is not one, or one JSON object per interval.
//!
//! The grouping is `pipeline::aggregate`'s, the output
//! `pipeline::sink::summary`'s; here, the sampling of each failing netns,
//! the interval clock, and the choice of output.

use std::{
    cell::RefCell,
    collections::HashSet,
    io::{self, IsTerminal as _},
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{cli::TopArgs, trace::options},
    host::usage::Sampler,
    pipeline::{
        aggregate::{dest_of, Agg, Sampled, Summary},
        control::{self, Control},
        event::Event,
        sink::{summary, Sink, TraceSink},
        sysctl::SysctlWrite,
        trace::{self, End},
    },
};

/// Failures into the aggregate; a handle on each failing netns is taken
/// while the event's process still lives.
struct TopSink {
    state: Rc<RefCell<State>>,
}

struct State {
    agg: Agg,
    sampler: Sampler,
    /// Netns a handle was asked for this interval (one try each).
    tried: HashSet<u32>,
}

impl Sink<Event> for TopSink {
    fn put(&mut self, ev: &Event) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        if let (Some(ns), Some(_)) = (ev.netns, dest_of(ev)) {
            if st.tried.insert(ns) {
                st.sampler.remember(ns, &[ev.tid, ev.pid]);
            }
        }
        st.agg.record(ev);
        Ok(())
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        self.state.borrow_mut().agg.lost(count);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TraceSink for TopSink {
    /// top summarizes failures; sysctl writes are `trace`'s and `serve`'s.
    fn sysctl(&mut self, _w: &SysctlWrite) -> io::Result<()> {
        Ok(())
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Samples every failing netns, takes the interval's summary, prints it.
fn report(
    state: &RefCell<State>,
    out: &mut dyn Sink<Summary>,
    interval: Duration,
    window: Duration,
    last: bool,
) -> io::Result<()> {
    let dests = state.borrow().agg.destinations();
    let mut sampled = Sampled::new();
    {
        let mut st = state.borrow_mut();
        st.sampler.sweep_if_due();
        for (ns, d) in &dests {
            let r = st
                .sampler
                .sample(*ns, Some(d))
                .map_err(|e| format!("{e:#}"));
            sampled.insert(*ns, r);
        }
        st.tried.clear();
    }
    let s = state
        .borrow_mut()
        .agg
        .take_summary(&sampled, now_ns(), interval, window, last);
    out.put(&s)?;
    out.flush()
}

/// `portwatch top`, until SIGINT/SIGTERM or the reader closes stdout.
pub async fn run(args: TopArgs) -> Result<End> {
    let (stop, rx) = control::stop_on_signals()?;
    let mut out: Box<dyn Sink<Summary>> = if args.trace.json {
        Box::new(summary::JsonSink::new(io::stdout()))
    } else if io::stdout().is_terminal() {
        Box::new(summary::ScreenSink::new(io::stdout()))
    } else {
        Box::new(summary::TableSink::new(io::stdout()))
    };
    let state = Rc::new(RefCell::new(State {
        agg: Agg::default(),
        sampler: Sampler::new(),
        tried: HashSet::new(),
    }));
    let sink = Box::new(TopSink {
        state: state.clone(),
    });
    // Intervals start once the probes are in.
    let started: Rc<RefCell<Option<Instant>>> = Rc::new(RefCell::new(None));
    let s2 = started.clone();
    let ctl = Control::new(rx).on_attached(move |_| *s2.borrow_mut() = Some(Instant::now()));
    let opts = options(&args.trace);
    let pipe = trace::pipeline(&opts, sink, ctl);
    tokio::pin!(pipe);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reader_gone = false;
    let end = loop {
        tokio::select! {
            r = &mut pipe => break r?,
            _ = tick.tick(), if !reader_gone => {
                let Some(since) = *started.borrow() else { continue };
                // The first tick after a slow attach: a full interval first.
                if since.elapsed() < args.interval * 9 / 10 {
                    tick.reset_at((since + args.interval).into());
                    continue;
                }
                let res = report(&state, &mut *out, args.interval, since.elapsed(), false);
                *started.borrow_mut() = Some(Instant::now());
                match res {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        reader_gone = true;
                        let _ = stop.send(true);
                    }
                    Err(e) => {
                        let _ = stop.send(true);
                        let _ = (&mut pipe).await;
                        return Err(e).context("writing the summary");
                    }
                }
            }
        }
    };
    if reader_gone {
        return Ok(End::ReaderGone);
    }
    // What came in since the last summary (the kernel's backlog included).
    let since = started.borrow().unwrap_or_else(Instant::now);
    match report(&state, &mut *out, args.interval, since.elapsed(), true) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(End::ReaderGone),
        Err(e) => Err(e).context("writing the summary"),
        Ok(()) => Ok(end),
    }
}
