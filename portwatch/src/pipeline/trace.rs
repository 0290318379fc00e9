//! The trace pipeline, as `trace`, `top` and `serve` run it: attach ->
//! read ring buffer -> decode -> enrich -> filter -> cause -> sink, until
//! told to stop or the sink's reader is gone. The sysctl writes the same
//! ring buffer carries go decode -> `sysctl` (enrich, verdict, filter) ->
//! sink.

use std::{
    io::{self, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::{
        attach::{self, Attached},
        source::{Source, MAX_BATCH},
    },
    pipeline::{
        cause::{self, Detailer},
        control::{AttachReport, Control},
        decode::{self, Clock, Record},
        enrich::Enricher,
        filter::Filter,
        sink::TraceSink,
        sysctl::{self, NodeNetns},
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
    /// The NodePort range: the ports a sysctl write must not expose in the
    /// node's netns.
    pub nodeport_range: (u16, u16),
}

/// attach -> ring buffer -> decode -> enrich -> filter -> cause -> `sink`,
/// until `ctl` says stop (then what the kernel already wrote still goes
/// out) or the sink's reader is gone.
pub async fn pipeline(
    opts: &Options,
    mut sink: Box<dyn TraceSink>,
    mut ctl: Control,
) -> Result<End> {
    let node = NodeNetns::from_env()?;
    // `_fexits` holds the fexit attachments: they last as long as this
    // pipeline.
    let Attached {
        mut ebpf,
        fexits: _fexits,
        hooks,
        sysctl: sysctl_watch,
        notes,
    } = {
        // Blocking system calls (BTF, verification, attach): on a thread of
        // their own, so that in `serve` they overlap with nodeport-steal's.
        let o = opts.attach.clone();
        tokio::task::spawn_blocking(move || attach::attach(&o))
            .await
            .context("attaching trace's programs")??
    };
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
    match &sysctl_watch {
        Ok(at) => eprintln!(
            "portwatch: sysctl writes: {at}: writes of {} are reported (the node's netns: {}, {})",
            sysctl::Name::ALL.map(sysctl::Name::dotted).join(", "),
            node.ino.map_or_else(|| "unknown".into(), |i| i.to_string()),
            node.from
        ),
        Err(why) => eprintln!(
            "portwatch: sysctl writes are not watched ({why}); failures are traced without them"
        ),
    }
    let mut sysctls = sysctl::Stage::new(
        node,
        crate::host::ports::PortSet::range(opts.nodeport_range.0, opts.nodeport_range.1),
        opts.detail.budget,
    );
    if opts.attach.guard_port_range {
        if let Err(why) = &sysctl_watch {
            anyhow::bail!("--guard-port-range needs the sysctl watch, which did not attach: {why}");
        }
        let g = sysctls
            .guard()
            .context("--guard-port-range: the node's ip_local_reserved_ports could not be read")?;
        attach::set_sysctl_guard(&mut ebpf, &g)?;
        eprintln!(
            "portwatch: guarding the node's netns: a write of net.ipv4.ip_local_port_range there that takes in guarded ports {lo}-{hi} not in ip_local_reserved_ports is refused (EPERM), and so is a write of ip_local_reserved_ports that stops keeping the guarded ports the range takes in",
            lo = opts.nodeport_range.0,
            hi = opts.nodeport_range.1
        );
    }
    // Keeps the kernel side's guard in step with the node's reserved ports
    // (after a write in the node's netns, and every tick).
    let refresh_guard = |sysctls: &mut sysctl::Stage, ebpf: &mut aya::Ebpf| {
        if !opts.attach.guard_port_range {
            return;
        }
        match sysctls.guard() {
            Some(g) => {
                if let Err(e) = attach::set_sysctl_guard(ebpf, &g) {
                    log::warn!("{e:#}");
                }
            }
            None => log::warn!("the node's ip_local_reserved_ports could not be read; the guard keeps its last ports"),
        }
    };
    let mut source = Source::new(&mut ebpf)?;
    crate::kernel::system::startup_mark("ring buffer mapped");
    let clock = Clock::now();
    let mut enricher = Enricher::new(
        opts.cri_endpoint.clone(),
        opts.cri.as_ref(),
        opts.netns_sweep,
    )?;
    crate::kernel::system::startup_mark("pod enrichment ready");
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
    crate::kernel::system::startup_mark("socket-table look-ups ready");
    let filter = &opts.filter;
    let mut lost_tick = tokio::time::interval(Duration::from_millis(500));
    let mut lost_seen = 0u64;
    eprintln!("portwatch: attached; tracing connect()/bind() failures (EADDRNOTAVAIL, EADDRINUSE). Ctrl-C to stop.");
    ctl.report_attached(&AttachReport::Trace(attached));

    // Records are decoded straight out of the ring buffer (no copy), and
    // the rest of the pipeline runs once the ring's borrow has ended.
    let mut batch: Vec<Record> = Vec::new();
    let decode_into = |batch: &mut Vec<Record>, rec: &[u8]| match decode::decode_record(rec, &clock)
    {
        Ok(r) => batch.push(r),
        Err(e) => log::warn!("undecodable record: {e:#}"),
    };
    // enrich -> filter -> cause: events wait in the detailer (in order, up
    // to the budget each) for their look-ups (socket table, pod names), then
    // go out. An event whose pod names are still being looked up is
    // filtered on them when they are in (or the budget is spent).
    // Sysctl writes take the same path in their own queue (`sysctls`):
    // enrich (pod, verdict) -> filter -> wait for the pod's names.
    let process = |batch: &mut Vec<Record>,
                   detailer: &mut Detailer,
                   sysctls: &mut sysctl::Stage,
                   enricher: &mut Enricher| {
        for rec in batch.drain(..) {
            match rec {
                Record::Failure(mut ev) => {
                    let names = enricher.enrich(&mut ev);
                    if filter.could_match(&ev, names.is_some()) {
                        detailer.push_named(ev, names, |ino, ev| enricher.handle(ino, ev));
                    }
                }
                Record::Sysctl(w) => sysctls.push(w, enricher, filter),
            }
        }
    };
    let emit = |detailer: &mut Detailer,
                sysctls: &mut sysctl::Stage,
                sink: &mut Box<dyn TraceSink>|
     -> io::Result<()> {
        let now = Instant::now();
        let mut any = false;
        while let Some(ev) = detailer.pop_ready(now) {
            if !filter.matches(&ev) {
                continue;
            }
            sink.put(&ev)?;
            any = true;
        }
        while let Some(w) = sysctls.pop_ready(now) {
            if !filter.matches_sysctl(&w) {
                continue;
            }
            sink.sysctl(&w)?;
            any = true;
        }
        if any {
            sink.flush()?;
        }
        Ok(())
    };
    let next_deadline = |detailer: &Detailer, sysctls: &sysctl::Stage| match (
        detailer.next_deadline(),
        sysctls.next_deadline(),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let report_lost =
        |sink: &mut Box<dyn TraceSink>, source: &Source, seen: &mut u64| -> io::Result<()> {
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
        let deadline = next_deadline(&detailer, &sysctls);
        let res = tokio::select! {
            // The detailer's and the sysctl stage's queues are bounded:
            // while one is full, records wait in the ring buffer, and the
            // queue drains as look-ups finish or deadlines pass.
            r = source.next_batch(|b| decode_into(&mut batch, b)),
                if detailer.has_room(MAX_BATCH) && sysctls.has_room(MAX_BATCH) => {
                r?;
                process(&mut batch, &mut detailer, &mut sysctls, &mut enricher);
                if sysctls.node_written() {
                    refresh_guard(&mut sysctls, &mut ebpf);
                }
                emit(&mut detailer, &mut sysctls, &mut sink)
            }
            Some(done) = detail_done.recv() => {
                detailer.complete(done);
                emit(&mut detailer, &mut sysctls, &mut sink)
            }
            _ = names_wake.notified() => emit(&mut detailer, &mut sysctls, &mut sink),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                emit(&mut detailer, &mut sysctls, &mut sink)
            }
            _ = lost_tick.tick() => {
                enricher.maintain();
                refresh_guard(&mut sysctls, &mut ebpf);
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
        process(&mut batch, &mut detailer, &mut sysctls, &mut enricher);
        let mut res = emit(&mut detailer, &mut sysctls, &mut sink);
        while res.is_ok() && !(detailer.is_empty() && sysctls.is_empty()) {
            let deadline = next_deadline(&detailer, &sysctls).unwrap_or_else(Instant::now);
            tokio::select! {
                Some(done) = detail_done.recv() => detailer.complete(done),
                _ = names_wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            res = emit(&mut detailer, &mut sysctls, &mut sink);
        }
        let _ = res.and_then(|_| report_lost(&mut sink, &source, &mut lost_seen));
    }
    drop(source);
    // Dropping the loader detaches every link and unloads every program.
    drop(ebpf);
    let _ = io::stderr().flush();
    Ok(end)
}
