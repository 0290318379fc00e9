//! `portwatch serve`: the node agent. One process runs what `trace` and
//! `nodeport-steal` run (their events go out as JSON lines on stdout, for
//! the cluster's log pipeline), samples every netns's port use each
//! `--scan-interval`, runs `check` each `--check-interval`, and serves it
//! all to Prometheus on `--listen`.

pub mod http;
mod listener;
pub mod metrics;
pub mod scan;
mod tls;

use std::{
    cell::RefCell,
    io::{self, BufWriter},
    path::PathBuf,
    rc::Rc,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use tokio::sync::watch;

use crate::{
    cmd::{
        cli::{self, ServeArgs},
        nodeport,
        trace::options,
    },
    k8s::cri::{Cri, Key, Lookup},
    kernel::{attach::Hook, probe::Probe},
    pipeline::{
        control::{self, AttachReport, Control},
        correlate::Report,
        event::Event,
        lastwrite::{self, Journal},
        sink::{steal as np_out, JsonSink, Sink, TraceSink},
        sysctl::SysctlWrite,
        trace,
    },
};
use http::Shared;
use metrics::Metrics;

/// How long stopping may take before portwatch gives up on a clean drain
/// (Kubernetes' default terminationGracePeriod is far longer; a stop must
/// fit in 2 s).
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Trace events: counted, then out as JSON lines; sysctl writes also
/// kept in the journal of last writes (when there is a state file to keep
/// it in).
struct TraceTee<S> {
    inner: S,
    shared: Arc<Shared>,
    journal: Option<Arc<Mutex<Journal>>>,
}

impl<S: Sink<Event>> Sink<Event> for TraceTee<S> {
    fn put(&mut self, ev: &Event) -> io::Result<()> {
        self.shared.metrics.failure(ev);
        self.inner.put(ev)
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        self.shared.metrics.lost(count);
        self.inner.lost(count)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: TraceSink> TraceSink for TraceTee<S> {
    fn sysctl(&mut self, w: &SysctlWrite) -> io::Result<()> {
        self.shared.metrics.sysctl_write(w);
        if let Some(j) = &self.journal {
            j.lock().unwrap_or_else(|e| e.into_inner()).record(w);
        }
        self.inner.sysctl(w)
    }
}

/// NodePort steal reports: counted, then out as JSON lines.
struct StealTee {
    inner: Box<dyn Sink<Report>>,
    shared: Arc<Shared>,
}

impl Sink<Report> for StealTee {
    fn put(&mut self, r: &Report) -> io::Result<()> {
        self.shared.metrics.steal(r);
        self.inner.put(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        self.shared.metrics.lost(count);
        self.inner.lost(count)
    }
}

/// The probe kinds of the trace hooks, each once: connect on fexit and
/// bind on kprobe -> "fexit+kprobe".
fn backend_of(hooks: &[(Hook, Probe)]) -> String {
    let mut kinds: Vec<&str> = hooks.iter().map(|(_, p)| p.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join("+")
}

/// Which pipelines have attached; ready once both have.
#[derive(Default)]
struct Attached {
    trace: Option<Vec<(Hook, Probe)>>,
    steal: bool,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    // In a container with too few capabilities, one sentence and exit 1
    // rather than a half-blind agent.
    crate::kernel::system::check_agent_privileges()?;
    let (stop_tx, stop_rx) = control::stop_on_signals()?;
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        attached: Default::default(),
        stopping: Default::default(),
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::Reloading::new(tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?)),
        _ => None,
    };
    let limits = listener::Limits {
        header_timeout: args.http_header_timeout,
        request_timeout: args.http_request_timeout,
        idle_timeout: args.http_idle_timeout,
        max_connections: args.max_connections as usize,
        ..listener::Limits::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    eprintln!(
        "portwatch: serving /metrics, /healthz and /readyz on {}://{}{}",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        match (&tls, &args.tls_client_ca) {
            (None, _) =>
                " (plain HTTP: --tls-cert/--tls-key/--tls-client-ca restrict who reads it)",
            (Some(_), None) => " (TLS, any client)",
            (Some(_), Some(_)) => " (TLS, client certificates of --tls-client-ca only)",
        }
    );

    let attached = Rc::new(RefCell::new(Attached::default()));
    let on_attached = || {
        let attached = attached.clone();
        let shared = shared.clone();
        move |what: &AttachReport| {
            let mut a = attached.borrow_mut();
            match what {
                AttachReport::Trace(hooks) => a.trace = Some(hooks.clone()),
                AttachReport::Steal { .. } => a.steal = true,
            }
            if let (Some(t), true) = (&a.trace, a.steal) {
                shared
                    .metrics
                    .build_info(env!("CARGO_PKG_VERSION"), &backend_of(t));
                shared.attached.store(true, Ordering::Relaxed);
                eprintln!("portwatch: serve: every probe attached; ready");
            }
        }
    };

    // Any part failing stops the others, and its error is the exit's.
    let fail = |e: anyhow::Error| {
        let _ = stop_tx.send(true);
        Err::<(), _>(e)
    };

    let server = {
        let stop = stop_rx.clone();
        let app = http::router(shared.clone());
        async move {
            listener::serve(listener, app, tls, limits, stop)
                .await
                .context("HTTP server")
        }
    };

    // One runtime client for the process: the trace pipeline's enricher
    // and the netns scan ask the same thread and connection.
    let cri = if crate::k8s::pods::CgroupResolver::new().root().is_some() {
        Cri::start(args.cri_endpoint.clone())?
    } else {
        Cri::off()
    };
    // The journal of last writes exists only with a file to save it in:
    // `check` reads that file, nothing in serve reads the journal.
    let writes_file = state_file(&args.state_dir);
    let journal = writes_file
        .as_ref()
        .map(|_| Arc::new(Mutex::new(Journal::default())));
    let mut trace_opts = options(&cli::trace_args_for_serve(&args));
    trace_opts.cri = Some(cri.handle());
    trace_opts.attach.guard_port_range = args.guard_port_range;
    let tracing = async {
        let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        let sink = Box::new(TraceTee {
            inner: JsonSink::new(stdout),
            shared: shared.clone(),
            journal: journal.clone(),
        });
        let ctl = Control::new(stop_rx.clone()).on_attached(on_attached());
        match trace::pipeline(&trace_opts, sink, ctl).await {
            Ok(trace::End::Signal) => Ok(()),
            Ok(trace::End::ReaderGone) => {
                fail(anyhow!("stdout was closed: events have nowhere to go"))
            }
            Err(e) => fail(e.context("trace pipeline")),
        }
    };

    let np_args = cli::nodeport_args_for_serve(&args);
    let stealing = async {
        let sh = shared.clone();
        let make_sink = move |clock, ctx| -> Box<dyn Sink<Report>> {
            let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
            Box::new(StealTee {
                inner: Box::new(np_out::JsonSink::new(stdout, clock, ctx)),
                shared: sh,
            })
        };
        let ctl = Control::new(stop_rx.clone()).on_attached(on_attached());
        match nodeport::pipeline(&np_args, make_sink, ctl).await {
            Ok(()) => Ok(()),
            Err(e) => fail(e.context("nodeport-steal pipeline")),
        }
    };

    let keeping = keep_writes(journal.clone().zip(writes_file), stop_rx.clone());

    let scanning = async {
        match scanner(&args, shared.clone(), cri, journal.clone(), stop_rx.clone()).await {
            Ok(()) => Ok(()),
            Err(e) => fail(e.context("netns scanner")),
        }
    };

    let all = async { tokio::join!(server, tracing, stealing, scanning, keeping) };
    let mut stop = stop_rx.clone();
    let give_up = async {
        let _ = stop.wait_for(|s| *s).await;
        shared.stopping.store(true, Ordering::Relaxed);
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::pin!(all);
    tokio::select! {
        (srv, tr, st, sc, ()) = &mut all => {
            tr?;
            st?;
            sc?;
            srv?;
            Ok(())
        }
        _ = give_up => {
            eprintln!("portwatch: serve: parts still draining after {STOP_GRACE:?}; exiting anyway");
            Ok(())
        }
    }
}

/// The file of last writes in `dir`, made if need be; None (and why, once)
/// when it cannot be: serve runs on without it.
fn state_file(dir: &std::path::Path) -> Option<PathBuf> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Some(dir.join(lastwrite::FILE_NAME)),
        Err(e) => {
            eprintln!(
                "portwatch: serve: last sysctl writes not kept for check: --state-dir {}: {e}",
                dir.display()
            );
            None
        }
    }
}

/// Saves the journal of last writes when it changed, at most once a
/// second, and once more on the way out.
async fn keep_writes(
    journal_file: Option<(Arc<Mutex<Journal>>, PathBuf)>,
    mut stop: watch::Receiver<bool>,
) {
    let Some((journal, file)) = journal_file else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let text = journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_dirty();
        if let Some(text) = text {
            let f = file.clone();
            let r = tokio::task::spawn_blocking(move || lastwrite::save(&f, &text)).await;
            if let Ok(Err(e)) = r {
                if !std::mem::replace(&mut warned, true) {
                    eprintln!("portwatch: serve: saving {}: {e}", file.display());
                }
            }
        }
        if last {
            return;
        }
    }
}

/// Every `--scan-interval`: the netns scan; every `--check-interval`: the
/// check too. Each pass runs on a blocking thread; pod names come from the
/// runtime (cached; a pod first seen is labelled by uid until its names
/// arrive, by the next pass).
async fn scanner(
    args: &ServeArgs,
    shared: Arc<Shared>,
    mut cri: Cri,
    journal: Option<Arc<Mutex<Journal>>>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let opts = Arc::new(scan::Options {
        max_destinations: args.max_destinations as usize,
        nodeport_range: args.nodeport_range,
    });
    let mut scan_tick = tokio::time::interval(args.scan_interval);
    let mut check_tick = tokio::time::interval(args.check_interval);
    scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let with_check = tokio::select! {
            _ = check_tick.tick() => true,
            _ = scan_tick.tick() => false,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let o = opts.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let pass = scan::pass(&o, with_check);
            // A pass allocates per netns and frees it all, and stale socket
            // tables are let go meanwhile, in the blocking and look-up
            // threads' malloc arenas: hand the freed pages of every arena
            // back, so that a node's churn of pods and netns does not leave
            // the agent's resident set at its peak (in the soak test: 17.0
            // against 18.0 MiB after the warm-up, without it).
            crate::kernel::system::release_free_memory();
            pass
        })
        .await
        .context("netns scan")?;
        let mut usage = Vec::with_capacity(pass.netns.len());
        for n in &pass.netns {
            let mut pod = n.pod.clone();
            if let Some(p) = pod.as_mut() {
                if let Lookup::Known(Some(names)) = cri.names(Key::Pod(p.uid.clone())) {
                    names.apply(p);
                }
            }
            let (namespace, pod) = metrics::pod_labels(pod.as_ref());
            usage.push(metrics::NetnsUsage {
                ino: n.ino,
                namespace,
                pod,
                usable: n.usable,
                top: n.top.clone(),
            });
        }
        shared.metrics.set_usage(&usage);
        // The kernel reuses a gone netns's inode: its writes go with it.
        let live: std::collections::HashSet<u32> = pass.netns.iter().map(|n| n.ino).collect();
        if let (0, Some(j)) = (pass.errors, &journal) {
            j.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain_netns(|ns| live.contains(&ns));
        }
        if pass.checked {
            let f = metrics::count_findings(
                usage
                    .iter()
                    .zip(&pass.netns)
                    .map(|(u, n)| (u.namespace.as_str(), u.pod.as_str(), &n.findings[..])),
            );
            shared.metrics.set_findings(&f);
        }
        shared.metrics.scan_errors(pass.errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_label_names_each_probe_kind_once() {
        use Hook::{Bind, Connect};
        assert_eq!(
            backend_of(&[(Connect, Probe::Fexit), (Bind, Probe::Fexit)]),
            "fexit"
        );
        assert_eq!(
            backend_of(&[(Connect, Probe::Tracepoint), (Bind, Probe::Kprobe)]),
            "kprobe+tracepoint"
        );
        assert_eq!(backend_of(&[]), "");
    }
}
