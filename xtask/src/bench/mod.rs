//! `cargo xtask bench`: what `portwatch trace` costs the node, measured in one
//! run against no tracer and against an equivalent Debian `bpftrace` script.
//!
//! 1. Success path: `pwbench connect` (socket, SO_LINGER 0, connect, accept,
//!    close, close toward a loopback listener) and `pwbench getppid` (an
//!    unrelated syscall: the syscall tracepoints slow every syscall of the node),
//!    in rounds of A = no tracer, B = portwatch, C = bpftrace, the order
//!    rotated each round. Medians per configuration, ratios against A.
//! 2. Failure storm: a netns whose 2-port range is held, so every connect()
//!    fails with EADDRNOTAVAIL at the client core's full speed; events that
//!    reach the output file, events lost, tracer CPU per event.
//! 3. Start-up: exec -> "attached" (portwatch) / "Attaching N probes..." (bpftrace),
//!    over every tracer start of the run.
//! 4. Peak RSS (VmHWM) of the tracers at the end of the storm.
//!
//! The workload runs pinned to CPU 0 (`taskset -c 0`) inside test netns this
//! task creates and deletes; the tracer is pinned to CPU 1. Results: a
//! markdown table on stdout and `target/bench/results.json`. Nothing is
//! asserted on times: the targets are shown as met / missed and by how much.

use std::{
    fs::{self, File},
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

/// Debian packages the bench needs on top of `xtask setup`'s.
const BENCH_PKGS: &[&str] = &["bpftrace", "iproute2", "util-linux", "bpftool"];

const WORKLOAD_CPU: usize = 0;
const TRACER_CPU: usize = 1;
/// Workload and tracer run at this nice value, so that other processes on a
/// shared machine (builds, VMs) take as little of their cores as possible.
/// The same for every configuration.
const NICE: i32 = -20;
/// Even-sized ranges only (odd sizes make the kernel's port scan skip ports).
const OK_RANGE: (u16, u16) = (20000, 59999);
const STORM_RANGE: (u16, u16) = (40000, 40001);
const STORM_FILL: u32 = 2;
const LISTEN_PORT: u16 = 7000;

/// The bpftrace equivalent of `portwatch trace` on the tracepoint backend:
/// the same four tracepoints, per-thread state from enter to exit (a hash
/// map where portwatch has an LRU hash), and only errno 98/99 reported.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:syscalls:sys_enter_connect { @pending[tid] = args->uservaddr; }
tracepoint:syscalls:sys_enter_bind { @pending[tid] = args->umyaddr; }
tracepoint:syscalls:sys_exit_connect, tracepoint:syscalls:sys_exit_bind /@pending[tid]/ {
  delete(@pending[tid]);
  if (args->ret == -99 || args->ret == -98) {
    printf("%d %d %s %s %d\n", pid, tid, comm, probe, -args->ret);
  }
}
"#;

mod machine;
mod report;
mod runs;
mod stats;
mod vm;
mod vmreport;

pub use vm::bench_vm;

use xtask::testkit::Netns;

use machine::*;
use report::*;
use runs::*;
use stats::*;

pub struct Opts {
    pub quick: bool,
    /// `--vm`: the production-kernel bench in a guest (vm.rs).
    pub vm: bool,
    pub out: Option<PathBuf>,
}

struct Sizes {
    rounds: usize,
    getppid_n: u64,
    connect_n: u64,
    storm_rounds: usize,
    storm_n: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                rounds: 3,
                getppid_n: 500_000,
                connect_n: 3_000,
                storm_rounds: 1,
                storm_n: 100_000,
            }
        } else {
            Sizes {
                rounds: 7,
                getppid_n: 2_000_000,
                connect_n: 10_000,
                storm_rounds: 3,
                storm_n: 300_000,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    None,
    Portwatch,
    Bpftrace,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::None => "none",
            Kind::Portwatch => "portwatch",
            Kind::Bpftrace => "bpftrace",
        }
    }
}

pub fn bench(opts: Opts) -> Result<()> {
    if opts.vm {
        return bench_vm(opts);
    }
    if !crate::is_root() {
        bail!("the bench loads BPF programs and makes network namespaces: run `cargo xtask bench` as root");
    }
    let t_all = Instant::now();
    let sz = Sizes::new(opts.quick);
    crate::setup(crate::Need::Tests)?;
    crate::apt_install(&crate::missing_packages(BENCH_PKGS))?;
    let pw = crate::build(true)?;
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "portwatch",
        "--example",
        "pwbench",
    ]))?;
    let pwbench = crate::workspace_root().join("target/release/examples/pwbench");
    crate::ensure_tracefs("bpftrace needs it")?;

    let dir = crate::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let script = dir.join("portwatch-equivalent.bt");
    fs::write(&script, BPFTRACE_SCRIPT)?;
    let json_path = opts.out.clone().unwrap_or_else(|| dir.join("results.json"));

    remove_stale_netns();
    let me = std::process::id();
    let netns = (
        Netns::add(&format!("pwbench-ok-{me}"), OK_RANGE)?,
        Netns::add(&format!("pwbench-storm-{me}"), STORM_RANGE)?,
    );
    let (ok_ns, storm_ns) = (netns.0.name.clone(), netns.1.name.clone());

    let loadavg_start = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut startups: Vec<(Kind, f64)> = Vec::new();
    let mut backend = None::<String>;
    let mut idle_hwm: Vec<(Kind, u64)> = Vec::new();

    // --- 1. success path, interleaved -----------------------------------
    let kinds = [Kind::None, Kind::Portwatch, Kind::Bpftrace];
    let mut runs: Vec<(Kind, SuccessRun)> = Vec::new();
    for round in 0..sz.rounds {
        for i in 0..kinds.len() {
            let kind = kinds[(i + round) % kinds.len()];
            eprintln!(
                "xtask: bench: success path, round {}/{}, {}",
                round + 1,
                sz.rounds,
                kind.name()
            );
            let foreign = tracepoint_progs();
            let live = match kind {
                Kind::None => None,
                k => {
                    let l = start_tracer(k, &pw, &script, &dir.join(format!("{}.out", k.name())))?;
                    startups.push((k, l.startup_ms));
                    Some(l)
                }
            };
            let g = steady_workload(
                &pwbench,
                &ok_ns,
                &["getppid".into(), sz.getppid_n.to_string()],
            );
            let c = steady_workload(
                &pwbench,
                &ok_ns,
                &[
                    "connect".into(),
                    LISTEN_PORT.to_string(),
                    sz.connect_n.to_string(),
                ],
            );
            if let Some(l) = live {
                if let Some(kb) = status_kb(l.pid(), "VmHWM") {
                    idle_hwm.push((kind, kb));
                }
                let out = l.out.clone();
                let lines = stop_tracer(l)?;
                if kind == Kind::Portwatch && backend.is_none() {
                    backend = lines.iter().find_map(|l| {
                        l.strip_prefix("portwatch: connect hook: ")
                            .and_then(|r| r.split_whitespace().next())
                            .map(str::to_string)
                    });
                }
                let _ = fs::remove_file(out);
            }
            let ((g, rg), (c, rc)) = (g?, c?);
            runs.push((
                kind,
                SuccessRun {
                    getppid_ns: g.ns_per_op,
                    connect_ns: c.ns_per_op,
                    workload_cpu_share: (g.cpu_ns + c.cpu_ns) / (g.ns + c.ns),
                    wait_share: g.wait_share().max(c.wait_share()),
                    repeats: rg + rc,
                    foreign_tp_progs: foreign,
                },
            ));
        }
    }

    // --- 2. failure storm -----------------------------------------------
    let mut storms: Vec<StormRun> = Vec::new();
    for round in 0..sz.storm_rounds {
        let order = if round % 2 == 0 {
            [Kind::None, Kind::Portwatch, Kind::Bpftrace]
        } else {
            [Kind::None, Kind::Bpftrace, Kind::Portwatch]
        };
        for kind in order {
            eprintln!(
                "xtask: bench: failure storm, round {}/{}, {}",
                round + 1,
                sz.storm_rounds,
                kind.name()
            );
            storms.push(storm(
                kind,
                &pw,
                &script,
                &pwbench,
                &storm_ns,
                &dir,
                sz.storm_n,
                &mut startups,
            )?);
        }
    }
    // --- 5. cause detail under a storm from many destinations ---------------
    let mut details: Vec<DetailRun> = Vec::new();
    for round in 0..2 {
        for no_detail in [round % 2 == 0, round % 2 == 1] {
            eprintln!(
                "xtask: bench: detail storm ({} failures, {SPREAD_DESTS} destinations), round {}/2, {}",
                SPREAD_N,
                round + 1,
                if no_detail { "--no-detail" } else { "with detail" }
            );
            details.push(detail_storm(
                &pw, &script, &pwbench, &storm_ns, &dir, no_detail,
            )?);
        }
    }
    drop(netns);
    let loadavg_end = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // --- results ----------------------------------------------------------
    let report = Report::new(
        &runs,
        &storms,
        &startups,
        &idle_hwm,
        backend.unwrap_or_else(|| "unknown".into()),
    );
    let table = report.markdown(&sz, &machine());
    println!("{table}");
    println!("{}", detail_markdown(&details));
    let mut j = report.json(&sz);
    j["detail_storm"] = detail_json(&details);
    j["machine"] = machine_json();
    j["loadavg"] = json!({"start": loadavg_start.trim(), "end": loadavg_end.trim()});
    j["duration_s"] = json!(t_all.elapsed().as_secs_f64());
    j["bpftrace_script"] = json!(BPFTRACE_SCRIPT);
    fs::write(&json_path, serde_json::to_string_pretty(&j)? + "\n")?;
    eprintln!(
        "xtask: bench: wrote {} ({:.0} s in all)",
        json_path.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
