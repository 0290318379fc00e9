//! `portwatch nodeport-steal`: SYN-ACKs for local clients on guarded ports
//! (NodePorts, IPVS virtual services) that IPVS takes as new connections.
//!
//! Pipeline: attach (tc ingress + tracepoints + IPVS fexit or kprobe) -> source
//! (STEALS ring buffer) -> correlate (one report per victim connection) ->
//! output. Besides it, every 2 s: the guarded ports follow the node's IPVS
//! services, and new interfaces (new pods' veths) get the SYN-ACK watch.

use std::{
    collections::BTreeSet,
    io::{self, BufWriter},
    net::SocketAddr,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use portwatch_common::{lost, maps};

use crate::pipeline::correlate::{self, Correlator, Report};
use crate::pipeline::sink::{
    steal::{Context, JsonSink, TableSink},
    Sink,
};
use crate::{
    cmd::cli::NodeportArgs,
    host::{
        ipvs,
        ports::{self, PortSet},
    },
    kernel::{source::Source, steal},
    pipeline::{
        control::{self, AttachReport, Control},
        decode::{self, Clock},
    },
};

/// The ports to guard now: static ones plus the IPVS virtual services.
fn guarded_ports(statics: &PortSet) -> Result<(PortSet, Option<usize>)> {
    let services = ipvs::read_services()?;
    let mut g = statics.clone();
    let n = services
        .as_ref()
        .map(|s| s.iter().filter(|s| s.proto == "TCP").count());
    for s in services.unwrap_or_default() {
        if s.proto == "TCP" {
            g = g.union(&PortSet::range(s.port, s.port));
        }
    }
    Ok((g, n))
}

/// Makes the kernel's GUARDED map hold exactly `want`.
fn sync_guarded(
    map: &mut BpfHashMap<MapData, u16, u8>,
    have: &PortSet,
    want: &PortSet,
) -> Result<()> {
    for p in want.minus(have).iter() {
        map.insert(p, 1, 0)
            .context("updating the guarded ports map")?;
    }
    for p in have.minus(want).iter() {
        let _ = map.remove(&p);
    }
    Ok(())
}

/// Interfaces of this netns to watch: the named ones, or all but `lo`.
fn interfaces(only: &[String]) -> Result<BTreeSet<String>> {
    if !only.is_empty() {
        return Ok(only.iter().cloned().collect());
    }
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "lo" {
            out.insert(name);
        }
    }
    Ok(out)
}

/// The start-up warning: the node's own range can hand out guarded ports.
fn overlap_warning(guarded: &PortSet) -> Option<(String, String)> {
    let p = crate::host::sysctl::read_ports(None, false).ok()?;
    let range = p.range.ok()?;
    let reserved = p.reserved.ok()?;
    let (exposed, fixed) = ports::exposed_guarded(range, &reserved, guarded)?;
    let fix = format!("sysctl -w net.ipv4.ip_local_reserved_ports={fixed}");
    Some((
        format!(
            "warning: ip_local_port_range {}-{} overlaps the guarded ports and {} of them ({exposed}) are not in ip_local_reserved_ports: a connect() may pick one as its source port and lose its SYN-ACK to IPVS. Fix: {fix}",
            range.0,
            range.1,
            exposed.len()
        ),
        fix,
    ))
}

/// The programs loaded and attached, and the SYN-ACK watch on each
/// interface (`only`, or all but `lo`); notes and skipped interfaces said
/// on stderr.
fn attach_all(
    probe: Option<crate::kernel::probe::Probe>,
    only: &[String],
) -> Result<(steal::StealAttached, BTreeSet<String>)> {
    let mut a = steal::attach_nodeport(probe)?;
    for n in &a.notes {
        eprintln!("portwatch: {n}");
    }
    let mut watched = BTreeSet::new();
    for i in interfaces(only)? {
        match steal::attach_tc(&mut a.ebpf, &i) {
            Ok(()) => {
                watched.insert(i);
            }
            // A named interface must work; one found by the scan may be
            // going away as we look.
            Err(e) if !only.is_empty() => return Err(e),
            Err(e) => eprintln!("portwatch: not watching {i}: {e:#}"),
        }
    }
    Ok((a, watched))
}

/// `portwatch nodeport-steal`: reports as a table or JSON lines on stdout,
/// until SIGINT/SIGTERM.
pub async fn run(args: NodeportArgs) -> Result<()> {
    let (_stop, rx) = control::stop_on_signals()?;
    let json = args.json;
    let make_sink = move |clock: Clock, ctx: Context| -> Box<dyn Sink<Report>> {
        let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        if json {
            Box::new(JsonSink::new(stdout, clock, ctx))
        } else {
            Box::new(TableSink::new(stdout, clock, ctx))
        }
    };
    pipeline(&args, make_sink, Control::new(rx)).await
}

/// attach -> STEALS ring buffer -> correlate -> the sink `make_sink` builds
/// (it gets the clock and the context reports are rendered with), until
/// `ctl` says stop (pending reports are flushed) or the reader is gone.
pub async fn pipeline(
    args: &NodeportArgs,
    make_sink: impl FnOnce(Clock, Context) -> Box<dyn Sink<Report>>,
    mut ctl: Control,
) -> Result<()> {
    let mut statics = PortSet::range(args.nodeport_range.0, args.nodeport_range.1);
    if let Some(p) = &args.ports {
        statics = statics.union(p);
    }
    // Loading and attaching are blocking system calls (verification, and a
    // wait for RCU per interface's tc attach): on a thread of their own, so
    // that in `serve` they overlap with the trace pipeline's.
    let (probe, only) = (args.ipvs_probe.0, args.interface.clone());
    let (attached, watched) = tokio::task::spawn_blocking(move || attach_all(probe, &only))
        .await
        .context("attaching nodeport-steal's programs")??;
    // `ipvs` holds the IPVS fexit's attachment: it lives as long as this
    // pipeline.
    let steal::StealAttached {
        mut ebpf,
        ipvs,
        ipvs_missing,
        notes: _,
    } = attached;
    let mut watched = watched;
    let mut gmap: BpfHashMap<MapData, u16, u8> = BpfHashMap::try_from(
        ebpf.take_map(maps::GUARDED)
            .with_context(|| format!("{} map missing", maps::GUARDED))?,
    )?;
    let (mut guarded, nsvc) = guarded_ports(&statics)?;
    sync_guarded(&mut gmap, &PortSet::new(), &guarded)?;

    eprintln!(
        "portwatch: SYN-ACK watch: tc ingress on {}",
        if watched.is_empty() {
            "no interface yet".to_string()
        } else {
            watched.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    );
    // Without the probe, IPVS's connection table names the real server
    // (and does so for IPVS loaded after start-up, too).
    let conn_table = ipvs.is_none();
    let probe = match (&ipvs, &ipvs_missing) {
        (Some(p), _) => {
            eprintln!("portwatch: IPVS scheduling: {}", p.describe());
            p.probe.name()
        }
        (None, why) => {
            let why = why.as_deref().unwrap_or("unknown reason");
            if std::path::Path::new(ipvs::CONN_TABLE).exists() {
                eprintln!(
                    "portwatch: IPVS scheduling: not probed ({why}); steals are seen on the packet path and the real server is read from {}",
                    ipvs::CONN_TABLE
                );
            } else {
                eprintln!(
                    "portwatch: IPVS scheduling: not probed ({why}); steals are seen on the packet path only, without the ipvs part until IPVS is loaded (then the real server is read from {})",
                    ipvs::CONN_TABLE
                );
            }
            "ip_vs_conn"
        }
    };
    eprintln!(
        "portwatch: guarding {} ports: {guarded}{}",
        guarded.len(),
        match nsvc {
            Some(n) => format!(" ({n} IPVS virtual services)"),
            None => String::new(),
        }
    );
    let fix = overlap_warning(&guarded).map(|(w, fix)| {
        eprintln!("portwatch: {w}");
        fix
    });

    let mut source = Source::named(&mut ebpf, maps::STEALS, lost::STEAL)?;
    let clock = Clock::now();
    let ctx = Context { probe, fix };
    let mut sink = make_sink(clock, ctx);
    let mut corr = Correlator::new(args.follow.as_nanos() as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut lost_seen = 0u64;
    eprintln!("portwatch: attached; watching for NodePort steals. Ctrl-C to stop.");
    ctl.report_attached(&AttachReport::Steal {
        ipvs: ipvs.as_ref().map(|p| p.probe),
    });

    let mut records = vec![];
    // enrich -> output: the real server from IPVS's connection table where
    // IPVS is not probed; the victim's pod, from its owner's cgroup.
    let emit = |sink: &mut Box<dyn Sink<Report>>, mut reps: Vec<Report>| -> Result<()> {
        if conn_table {
            fill_from_conn_table(&mut reps);
        }
        for r in &mut reps {
            r.pod = r
                .owner
                .as_ref()
                .and_then(|(pid, _)| crate::k8s::pods::of_pid(*pid));
            sink.put(r)?;
        }
        if !reps.is_empty() {
            sink.flush()?;
        }
        Ok(())
    };
    let res: Result<()> = async {
        loop {
            tokio::select! {
                r = source.next_batch(decode_into(&mut records)) => {
                    r?;
                    let reps: Vec<_> = records.drain(..).filter_map(|r| corr.feed(r)).collect();
                    emit(&mut sink, reps)?;
                }
                _ = tick.tick() => {
                    emit(&mut sink, corr.expire(decode::boot_now_ns()))?;
                    let lost = source.lost_total()?;
                    if lost > lost_seen {
                        eprintln!("portwatch: {} records lost (ring buffer full)", lost - lost_seen);
                        sink.lost(lost - lost_seen)?;
                        lost_seen = lost;
                    }
                }
                _ = rescan.tick() => {
                    // While its entry is young (IPVS expires a CLOSE one in
                    // 10 s), for the connections that resent their SYN.
                    if conn_table {
                        let keys = corr.without_real_server();
                        for (k, rs) in keys.iter().zip(real_servers(&keys)) {
                            if let Some(rs) = rs {
                                corr.set_real_server(*k, rs);
                            }
                        }
                    }
                    let (g, _) = guarded_ports(&statics)?;
                    if g != guarded {
                        sync_guarded(&mut gmap, &guarded, &g)?;
                        eprintln!("portwatch: guarding {} ports now: {g}", g.len());
                        guarded = g;
                    }
                    if args.interface.is_empty() {
                        for i in interfaces(&[])? {
                            if !watched.contains(&i) && steal::attach_tc(&mut ebpf, &i).is_ok() {
                                eprintln!("portwatch: SYN-ACK watch: tc ingress on {i} (new)");
                                watched.insert(i);
                            }
                        }
                    }
                }
                _ = ctl.stopped() => break,
            }
        }
        source.drain(decode_into(&mut records));
        let mut reps: Vec<_> = records.drain(..).filter_map(|r| corr.feed(r)).collect();
        reps.extend(corr.flush());
        emit(&mut sink, reps)?;
        Ok(())
    }
    .await;
    match res {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        r => r,
    }
}

/// The real server IPVS sent each (node side, peer)'s SYN-ACK to, from its
/// connection table in one read; None where it has none, or where the
/// table cannot be read (said on stderr). IPVS took the peer's SYN-ACK as
/// a new connection from the peer (client) to the node's port (virtual
/// service).
fn real_servers(keys: &[(SocketAddr, SocketAddr)]) -> Vec<Option<SocketAddr>> {
    let as_ipvs: Vec<_> = keys
        .iter()
        .map(|(local, remote)| (*remote, *local))
        .collect();
    ipvs::real_servers_of(&as_ipvs).unwrap_or_else(|e| {
        eprintln!("portwatch: {e:#}");
        vec![None; keys.len()]
    })
}

/// The real server of each steal that has none yet, from IPVS's connection
/// table (one read for the batch).
fn fill_from_conn_table(reps: &mut [Report]) {
    let idx: Vec<usize> = (0..reps.len())
        .filter(|&i| reps[i].steal && reps[i].real_server.is_none())
        .collect();
    let keys: Vec<_> = idx
        .iter()
        .map(|&i| (reps[i].local, reps[i].remote))
        .collect();
    for (i, rs) in idx.into_iter().zip(real_servers(&keys)) {
        reps[i].real_server = rs;
    }
}

/// The ring buffer's records, decoded, onto `records` (unknown ones dropped).
fn decode_into(records: &mut Vec<correlate::Record>) -> impl FnMut(&[u8]) + '_ {
    |rec| records.extend(correlate::decode(rec))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
