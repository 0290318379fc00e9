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
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
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
const OK_RANGE: &str = "20000 59999";
const STORM_RANGE: &str = "40000 40001";
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

// ---------------------------------------------------------------------------
// Statistics, targets and formatting (pure; unit-tested below).
// ---------------------------------------------------------------------------

pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `x / base`, None when the base is missing or zero.
pub fn ratio(x: f64, base: f64) -> Option<f64> {
    (base != 0.0 && x.is_finite() && base.is_finite()).then(|| x / base)
}

/// Slowdown in percent from a time-per-operation ratio (1.05 -> +5.0).
pub fn pct(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// Human form of the limit, e.g. "≤ 2.0 %".
    pub limit: String,
    pub measured: String,
    /// None when it could not be measured.
    pub met: Option<bool>,
    /// "met", "missed by 12.3 pp", "not measured".
    pub verdict: String,
}

/// A target `value <= limit` (or `< limit` when `strict`), in `unit`, shown
/// with `decimals` decimals. The verdict says by how much it was missed.
pub fn target_at_most(
    name: &str,
    value: Option<f64>,
    limit: f64,
    strict: bool,
    unit: &str,
    decimals: usize,
) -> Target {
    let sign = if strict { "<" } else { "≤" };
    let limit_s = format!("{sign} {limit:.decimals$}{unit}");
    match value {
        None => Target {
            name: name.into(),
            limit: limit_s,
            measured: "–".into(),
            met: None,
            verdict: "not measured".into(),
        },
        Some(v) => {
            let met = if strict { v < limit } else { v <= limit };
            let verdict = if met {
                "met".to_string()
            } else {
                // "pp" for limits that are themselves percentages.
                let u = if unit.trim() == "%" { " pp" } else { unit };
                format!("missed by {:.decimals$}{u}", v - limit)
            };
            Target {
                name: name.into(),
                limit: limit_s,
                measured: format!("{v:.decimals$}{unit}"),
                met: Some(met),
                verdict,
            }
        }
    }
}

/// `12345.6` -> "12,346".
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// "+12.3 %" for a ratio, "–" without one.
pub fn signed_pct(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{:+.1} %", pct(r)),
        None => "–".into(),
    }
}

pub fn md_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// `key=value` pairs of a pwbench result line.
pub fn parse_kv(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counts from portwatch's JSON output: (events of `comm`, lost total).
pub fn count_portwatch(text: &str, comm: &str) -> (u64, u64) {
    let want = format!("\"comm\":\"{comm}\"");
    let mut events = 0;
    let mut lost = 0;
    for l in text.lines() {
        if l.contains("\"kind\":\"lost\"") {
            lost += json_count(l).unwrap_or(0);
        } else if l.contains(&want) {
            events += 1;
        }
    }
    (events, lost)
}

fn json_count(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"count\":")? + 8..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Counts from the bpftrace script's output: (events of `comm`, lost total).
/// Event lines are `PID TID COMM PROBE ERRNO`; bpftrace reports drops as `Lost N events`.
pub fn count_bpftrace(text: &str, comm: &str) -> (u64, u64) {
    let mut events = 0;
    let mut lost = 0;
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() == 3 && w[0] == "Lost" && w[2] == "events" {
            lost += w[1].parse::<u64>().unwrap_or(0);
        } else if w.len() == 5 && w[2] == comm {
            events += 1;
        }
    }
    (events, lost)
}

// ---------------------------------------------------------------------------
// The machine side: netns, tracers, workloads.
// ---------------------------------------------------------------------------

pub struct Opts {
    pub quick: bool,
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

/// Test network namespaces, deleted on drop.
struct Netns(Vec<String>);

impl Netns {
    fn create(name: &str, range: &str) -> Result<String> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        super::run(Command::new("ip").args(["netns", "add", name]))?;
        super::run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        // Inside the netns only: each netns has its own ip_local_port_range.
        super::run(Command::new("ip").args([
            "netns",
            "exec",
            name,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.ip_local_port_range={range}"),
        ]))?;
        Ok(name.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Deletes `pwbench-*-PID` netns left behind by a bench that was killed.
fn remove_stale_netns() {
    let Some(list) = super::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("pwbench-")
            .and_then(|r| r.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Pins the child to `cpu`, sets its nice value to NICE, and gives it default
/// SIGINT/SIGTERM handling (a shell's background job would otherwise pass
/// SIGINT down ignored).
fn pin_before_exec(cmd: &mut Command, cpu: usize) {
    // SAFETY: sched_setaffinity and signal are plain syscalls, fine between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            // Best effort: without CAP_SYS_NICE the run is merely noisier.
            libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

struct Live {
    kind: Kind,
    child: Child,
    startup_ms: f64,
    out: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Live {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Collects a child's stderr lines; sends the instant of the first line
/// containing `ready` (when given).
fn read_stderr(
    child: &mut Child,
    ready: Option<&'static str>,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<Instant>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let l2 = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if ready.is_some_and(|r| line.contains(r)) {
                let _ = tx.send(Instant::now());
            }
            l2.lock().unwrap().push(line);
        }
    });
    (lines, rx)
}

fn start_tracer(kind: Kind, pw: &Path, script: &Path, out: &Path) -> Result<Live> {
    start_tracer_with(kind, pw, script, out, &[])
}

/// `extra`: more arguments for `portwatch trace --json`.
fn start_tracer_with(
    kind: Kind,
    pw: &Path,
    script: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<Live> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = match kind {
        Kind::Portwatch => {
            let mut c = Command::new(pw);
            c.args(["trace", "--json"]).args(extra);
            c
        }
        Kind::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.arg(script);
            c
        }
        Kind::None => bail!("no tracer to start"),
    };
    cmd.stdin(Stdio::null()).stdout(file).stderr(Stdio::piped());
    pin_before_exec(&mut cmd, TRACER_CPU);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let ready = (kind == Kind::Portwatch).then_some("portwatch: attached");
    let (stderr, rx) = read_stderr(&mut child, ready);
    let deadline = t0 + Duration::from_secs(20);
    let at = loop {
        match kind {
            Kind::Portwatch => {
                if let Ok(at) = rx.recv_timeout(Duration::from_millis(20)) {
                    break at;
                }
            }
            // bpftrace prints "Attaching N probes..." on stdout, here a file.
            _ => {
                let mut s = String::new();
                if let Ok(mut f) = File::open(out) {
                    let _ = f.read_to_string(&mut s);
                }
                if s.contains("Attaching ") {
                    break Instant::now();
                }
                thread::sleep(Duration::from_micros(500));
            }
        }
        if let Some(st) = child.try_wait()? {
            thread::sleep(Duration::from_millis(50));
            bail!(
                "{} exited before attaching ({st}):\n{}",
                kind.name(),
                stderr.lock().unwrap().join("\n")
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} did not attach within 20 s", kind.name());
        }
    };
    Ok(Live {
        kind,
        child,
        startup_ms: (at - t0).as_secs_f64() * 1e3,
        out: out.to_path_buf(),
        stderr,
    })
}

/// SIGINT, then wait (SIGKILL after 15 s). Returns the stderr lines.
fn stop_tracer(mut live: Live) -> Result<Vec<String>> {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(live.pid() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = live.child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = live.child.kill();
            break live.child.wait()?;
        }
        thread::sleep(Duration::from_millis(10));
    };
    thread::sleep(Duration::from_millis(20));
    let lines = live.stderr.lock().unwrap().clone();
    if live.kind == Kind::Portwatch && !st.success() {
        bail!("portwatch ended with {st}:\n{}", lines.join("\n"));
    }
    Ok(lines)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone)]
struct Work {
    n: u64,
    ns: f64,
    ns_per_op: f64,
    cpu_ns: f64,
    /// Run-queue wait: time other processes took CPU 0 from the workload.
    wait_ns: f64,
}

impl Work {
    fn wait_share(&self) -> f64 {
        self.wait_ns / self.ns.max(1.0)
    }
}

/// A success-path run is repeated (at most twice) when another process took
/// more than this share of the workload's core; the least disturbed is kept.
const MAX_WAIT_SHARE: f64 = 0.02;

fn steady_workload(bin: &Path, netns: &str, args: &[String]) -> Result<(Work, u32)> {
    let mut best = workload(bin, netns, args)?;
    let mut repeats = 0;
    while best.wait_share() > MAX_WAIT_SHARE && repeats < 2 {
        repeats += 1;
        let w = workload(bin, netns, args)?;
        if w.wait_share() < best.wait_share() {
            best = w;
        }
    }
    Ok((best, repeats))
}

fn workload(bin: &Path, netns: &str, args: &[String]) -> Result<Work> {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        netns,
        "taskset",
        "-c",
        &WORKLOAD_CPU.to_string(),
    ])
    .arg(bin)
    .args(args);
    // taskset does the pinning the output names; this adds the nice value.
    pin_before_exec(&mut c, WORKLOAD_CPU);
    let out = c.output().with_context(|| super::show(&c))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            super::show(&c),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kv = parse_kv(text.lines().last().unwrap_or(""));
    let get = |k: &str| -> Result<f64> {
        kv.iter()
            .find(|(kk, _)| kk == k)
            .and_then(|(_, v)| v.parse().ok())
            .with_context(|| format!("pwbench printed no {k}: {text}"))
    };
    if get("errors")? > 0.0 {
        bail!("pwbench {}: unexpected results: {text}", args.join(" "));
    }
    Ok(Work {
        n: get("n")? as u64,
        ns: get("ns")?,
        ns_per_op: get("ns_per_op")?,
        cpu_ns: get("cpu_ns")?,
        wait_ns: get("wait_ns").unwrap_or(0.0),
    })
}

/// Tracepoint programs loaded by anyone (bpftool), to flag runs that other
/// tracers on the machine may have slowed.
fn tracepoint_progs() -> usize {
    super::output(Command::new("bpftool").args(["prog", "show"]))
        .map(|s| {
            s.lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("tracepoint"))
                .count()
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct SuccessRun {
    getppid_ns: f64,
    connect_ns: f64,
    /// Workload CPU time over wall time (below 1: softirq work done by
    /// ksoftirqd, or the process waited).
    workload_cpu_share: f64,
    /// Largest run-queue wait share of the two loops kept.
    wait_share: f64,
    /// Loops repeated because another process took the core.
    repeats: u32,
    foreign_tp_progs: usize,
}

struct StormRun {
    kind: Kind,
    n: u64,
    attempts_per_s: f64,
    delivered: u64,
    lost: u64,
    drain_s: f64,
    output_per_s: f64,
    cpu_s: f64,
    hwm_kb: Option<u64>,
    wait_share: f64,
    foreign_tp_progs: usize,
}

pub fn bench(opts: Opts) -> Result<()> {
    if !super::is_root() {
        bail!("the bench loads BPF programs and makes network namespaces: run `cargo xtask bench` as root");
    }
    let t_all = Instant::now();
    let sz = Sizes::new(opts.quick);
    super::setup()?;
    super::apt_install(&super::missing_packages(BENCH_PKGS))?;
    let pw = super::build(true)?;
    super::run(super::cargo().args([
        "build",
        "--release",
        "--package",
        "portwatch",
        "--example",
        "pwbench",
    ]))?;
    let pwbench = super::workspace_root().join("target/release/examples/pwbench");
    super::ensure_tracefs("bpftrace needs it")?;

    let dir = super::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let script = dir.join("portwatch-equivalent.bt");
    fs::write(&script, BPFTRACE_SCRIPT)?;
    let json_path = opts.out.clone().unwrap_or_else(|| dir.join("results.json"));

    remove_stale_netns();
    let me = std::process::id();
    let ok_ns = Netns::create(&format!("pwbench-ok-{me}"), OK_RANGE)?;
    let storm_ns = Netns::create(&format!("pwbench-storm-{me}"), STORM_RANGE)?;
    let _netns = Netns(vec![ok_ns.clone(), storm_ns.clone()]);

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
    drop(_netns);
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

/// Waits until `out` has stopped growing for 1.2 s (longer than portwatch's
/// 0.5 s lost-report tick; at most 60 s after `t_end`) and returns when it
/// last grew.
fn output_settled(out: &Path, t_end: Instant) -> Instant {
    let mut size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let mut t_last = t_end;
    loop {
        thread::sleep(Duration::from_millis(20));
        let s = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        let now = Instant::now();
        if s != size {
            size = s;
            t_last = now;
        }
        if now - t_last > Duration::from_millis(1200) || now - t_end > Duration::from_secs(60) {
            return t_last;
        }
    }
}

/// Destinations and failures of the cause-detail storm (issue 8): every
/// destination's 2-port range held, failures round-robin over them, so
/// each needs its own socket-table look-up.
const SPREAD_DESTS: u16 = 50;
const SPREAD_N: u64 = 10_000;
const SPREAD_PORT: u16 = 7100;

/// One run of the detail storm.
struct DetailRun {
    no_detail: bool,
    delivered: u64,
    lost: u64,
    complete: u64,
    output_per_s: f64,
}

fn detail_storm(
    pw: &Path,
    script: &Path,
    pwbench: &Path,
    netns: &str,
    dir: &Path,
    no_detail: bool,
) -> Result<DetailRun> {
    let out = dir.join("detail-storm.out");
    let extra: &[&str] = if no_detail { &["--no-detail"] } else { &[] };
    let live = start_tracer_with(Kind::Portwatch, pw, script, &out, extra)?;
    let args = [
        "spread".to_string(),
        SPREAD_PORT.to_string(),
        SPREAD_DESTS.to_string(),
        STORM_FILL.to_string(),
        SPREAD_N.to_string(),
    ];
    let w = workload(pwbench, netns, &args);
    let t_end = Instant::now();
    let t_last = output_settled(&out, t_end);
    stop_tracer(live)?;
    let w = w?;
    let text = fs::read_to_string(&out).unwrap_or_default();
    let (delivered, lost) = count_portwatch(&text, "pwbench");
    let complete = count_complete(&text, "pwbench");
    let _ = fs::remove_file(&out);
    if delivered == 0 {
        bail!("portwatch reported none of the detail storm's failures");
    }
    let secs = w.ns / 1e9 + (t_last - t_end).as_secs_f64();
    Ok(DetailRun {
        no_detail,
        delivered,
        lost,
        complete,
        output_per_s: delivered as f64 / secs,
    })
}

/// Events of `comm` whose detail was complete.
pub fn count_complete(text: &str, comm: &str) -> u64 {
    let c = format!("\"comm\":\"{comm}\"");
    text.lines()
        .filter(|l| l.contains(&c) && l.contains("\"detail_complete\":true"))
        .count() as u64
}

fn detail_markdown(runs: &[DetailRun]) -> String {
    let mut s = format!(
        "Cause detail under a storm of {SPREAD_N} EADDRNOTAVAIL failures over {SPREAD_DESTS} destinations (portwatch trace --json, output to a file):\n\n"
    );
    s += &md_row(&[
        "run".into(),
        "events out/s".into(),
        "delivered".into(),
        "lost".into(),
        "complete detail".into(),
        "ratio vs --no-detail".into(),
    ]);
    s += "\n";
    s += &md_row(&vec!["---".to_string(); 6]);
    s += "\n";
    let base = median(
        &runs
            .iter()
            .filter(|r| r.no_detail)
            .map(|r| r.output_per_s)
            .collect::<Vec<_>>(),
    );
    for r in runs {
        s += &md_row(&[
            if r.no_detail {
                "--no-detail"
            } else {
                "with detail (default 50 ms budget)"
            }
            .into(),
            thousands(r.output_per_s),
            r.delivered.to_string(),
            r.lost.to_string(),
            if r.no_detail {
                "-".into()
            } else {
                format!(
                    "{:.1} %",
                    100.0 * r.complete as f64 / r.delivered.max(1) as f64
                )
            },
            match base.and_then(|b| ratio(r.output_per_s, b)) {
                Some(x) => format!("{x:.2}x"),
                None => "-".into(),
            },
        ]);
        s += "\n";
    }
    s
}

fn detail_json(runs: &[DetailRun]) -> Value {
    json!({
        "failures": SPREAD_N,
        "destinations": SPREAD_DESTS,
        "runs": runs.iter().map(|r| json!({
            "no_detail": r.no_detail,
            "events_out_per_s": r.output_per_s,
            "delivered": r.delivered,
            "lost": r.lost,
            "complete": r.complete,
        })).collect::<Vec<_>>(),
    })
}

#[allow(clippy::too_many_arguments)]
fn storm(
    kind: Kind,
    pw: &Path,
    script: &Path,
    pwbench: &Path,
    netns: &str,
    dir: &Path,
    n: u64,
    startups: &mut Vec<(Kind, f64)>,
) -> Result<StormRun> {
    let args = [
        "storm".to_string(),
        LISTEN_PORT.to_string(),
        STORM_FILL.to_string(),
        n.to_string(),
    ];
    let foreign = tracepoint_progs();
    if kind == Kind::None {
        let w = workload(pwbench, netns, &args)?;
        return Ok(StormRun {
            kind,
            n,
            attempts_per_s: w.n as f64 / (w.ns / 1e9),
            delivered: 0,
            lost: 0,
            drain_s: 0.0,
            output_per_s: 0.0,
            cpu_s: 0.0,
            hwm_kb: None,
            wait_share: w.wait_share(),
            foreign_tp_progs: foreign,
        });
    }
    let out = dir.join(format!("storm-{}.out", kind.name()));
    let live = start_tracer(kind, pw, script, &out)?;
    startups.push((kind, live.startup_ms));
    let pid = live.pid();
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    let w = workload(pwbench, netns, &args);
    let t_end = Instant::now();
    let t_last = output_settled(&out, t_end);
    let cpu1 = cpu_ticks(pid).unwrap_or(cpu0);
    let hwm_kb = status_kb(pid, "VmHWM");
    let stderr = stop_tracer(live)?;
    let w = w?;
    let text = fs::read_to_string(&out).unwrap_or_default();
    let (delivered, lost) = match kind {
        Kind::Portwatch => count_portwatch(&text, "pwbench"),
        _ => count_bpftrace(&text, "pwbench"),
    };
    drop(text);
    let _ = fs::remove_file(&out);
    if delivered == 0 {
        bail!(
            "{} reported none of the storm's {n} failures:\n{}",
            kind.name(),
            stderr.join("\n")
        );
    }
    let storm_s = w.ns / 1e9;
    let drain_s = (t_last - t_end).as_secs_f64();
    Ok(StormRun {
        kind,
        n,
        attempts_per_s: w.n as f64 / storm_s,
        delivered,
        lost,
        drain_s,
        output_per_s: delivered as f64 / (storm_s + drain_s),
        cpu_s: (cpu1 - cpu0) as f64 / clk_tck(),
        hwm_kb,
        wait_share: w.wait_share(),
        foreign_tp_progs: foreign,
    })
}

fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    format!("kernel {}, {cpus} CPUs ({model})", kernel.trim())
}

fn machine_json() -> Value {
    json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "summary": machine(),
    })
}

fn date_utc() -> String {
    super::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Report: medians, ratios, targets.
// ---------------------------------------------------------------------------

struct Report {
    backend: String,
    /// Per configuration: median getppid ns, median connect ns.
    getppid: [Option<f64>; 3],
    connect: [Option<f64>; 3],
    connect_all: [Vec<f64>; 3],
    getppid_all: [Vec<f64>; 3],
    /// Worst run-queue wait share of the kept success-path loops, and how
    /// many loops were repeated.
    max_wait_share: f64,
    repeats: u32,
    storm_max_wait_share: f64,
    foreign_runs: usize,
    /// Per run, for the JSON: (config, connect ns, getppid ns, cpu share, wait share).
    run_details: Vec<Value>,
    storm_attempts: [Option<f64>; 3],
    storm_output: [Option<f64>; 3],
    storm_delivered: [u64; 3],
    storm_lost: [u64; 3],
    storm_n: [u64; 3],
    storm_cpu_per_event_us: [Option<f64>; 3],
    storm_drain: [Option<f64>; 3],
    startup_ms: [Vec<f64>; 3],
    storm_hwm_kb: [Option<u64>; 3],
    idle_hwm_kb: [Option<u64>; 3],
    targets: Vec<Target>,
}

fn idx(k: Kind) -> usize {
    match k {
        Kind::None => 0,
        Kind::Portwatch => 1,
        Kind::Bpftrace => 2,
    }
}

/// Syscalls per `pwbench connect` iteration: socket, setsockopt, connect,
/// accept, close, close.
const SYSCALLS_PER_CONNECT: f64 = 6.0;

impl Report {
    fn new(
        runs: &[(Kind, SuccessRun)],
        storms: &[StormRun],
        startups: &[(Kind, f64)],
        idle_hwm: &[(Kind, u64)],
        backend: String,
    ) -> Report {
        let mut connect_all: [Vec<f64>; 3] = Default::default();
        let mut getppid_all: [Vec<f64>; 3] = Default::default();
        for (k, r) in runs {
            connect_all[idx(*k)].push(r.connect_ns);
            getppid_all[idx(*k)].push(r.getppid_ns);
        }
        let mut startup_ms: [Vec<f64>; 3] = Default::default();
        for (k, ms) in startups {
            startup_ms[idx(*k)].push(*ms);
        }
        let mut r = Report {
            backend,
            getppid: [0, 1, 2].map(|i| median(&getppid_all[i])),
            connect: [0, 1, 2].map(|i| median(&connect_all[i])),
            connect_all,
            getppid_all,
            max_wait_share: runs.iter().map(|(_, r)| r.wait_share).fold(0.0, f64::max),
            repeats: runs.iter().map(|(_, r)| r.repeats).sum(),
            storm_max_wait_share: storms.iter().map(|s| s.wait_share).fold(0.0, f64::max),
            run_details: runs
                .iter()
                .map(|(k, r)| {
                    json!({
                        "tracer": k.name(),
                        "connect_ns_per_op": r.connect_ns,
                        "getppid_ns_per_op": r.getppid_ns,
                        "workload_cpu_share": r.workload_cpu_share,
                        "wait_share": r.wait_share,
                        "repeats": r.repeats,
                        "foreign_tracepoint_programs": r.foreign_tp_progs,
                    })
                })
                .chain(storms.iter().map(|s| {
                    json!({
                        "tracer": s.kind.name(),
                        "storm_attempts_per_s": s.attempts_per_s,
                        "delivered": s.delivered,
                        "lost": s.lost,
                        "drain_s": s.drain_s,
                        "tracer_cpu_s": s.cpu_s,
                        "vmhwm_kb": s.hwm_kb,
                        "wait_share": s.wait_share,
                        "foreign_tracepoint_programs": s.foreign_tp_progs,
                    })
                }))
                .collect(),
            foreign_runs: runs
                .iter()
                .filter(|(k, r)| *k == Kind::None && r.foreign_tp_progs > 0)
                .count()
                + storms
                    .iter()
                    .filter(|s| s.kind == Kind::None && s.foreign_tp_progs > 0)
                    .count(),
            storm_attempts: [None; 3],
            storm_output: [None; 3],
            storm_delivered: [0; 3],
            storm_lost: [0; 3],
            storm_n: [0; 3],
            storm_cpu_per_event_us: [None; 3],
            storm_drain: [None; 3],
            startup_ms,
            storm_hwm_kb: [None; 3],
            idle_hwm_kb: [None; 3],
            targets: vec![],
        };
        for k in [Kind::None, Kind::Portwatch, Kind::Bpftrace] {
            let i = idx(k);
            let s: Vec<&StormRun> = storms.iter().filter(|s| s.kind == k).collect();
            if s.is_empty() {
                continue;
            }
            r.storm_attempts[i] = median(&s.iter().map(|s| s.attempts_per_s).collect::<Vec<_>>());
            r.storm_n[i] = s.iter().map(|s| s.n).sum();
            if k != Kind::None {
                r.storm_output[i] = median(&s.iter().map(|s| s.output_per_s).collect::<Vec<_>>());
                r.storm_delivered[i] = s.iter().map(|s| s.delivered).sum();
                r.storm_lost[i] = s.iter().map(|s| s.lost).sum();
                r.storm_drain[i] = median(&s.iter().map(|s| s.drain_s).collect::<Vec<_>>());
                let cpu: f64 = s.iter().map(|s| s.cpu_s).sum();
                r.storm_cpu_per_event_us[i] =
                    (r.storm_delivered[i] > 0).then(|| cpu * 1e6 / r.storm_delivered[i] as f64);
                r.storm_hwm_kb[i] = s.iter().filter_map(|s| s.hwm_kb).max();
            }
            r.idle_hwm_kb[i] = idle_hwm
                .iter()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, kb)| *kb)
                .max();
        }
        r.targets = r.evaluate();
        r
    }

    fn connect_ratio(&self, i: usize) -> Option<f64> {
        ratio(self.connect[i]?, self.connect[0]?)
    }

    fn getppid_ratio(&self, i: usize) -> Option<f64> {
        ratio(self.getppid[i]?, self.getppid[0]?)
    }

    fn evaluate(&self) -> Vec<Target> {
        let pw_slow = self.connect_ratio(1).map(pct);
        let bt_slow = self.connect_ratio(2).map(pct);
        let mut t = vec![target_at_most(
            "success-path slowdown (connect loop), portwatch",
            pw_slow,
            2.0,
            false,
            " %",
            1,
        )];
        let mut below = target_at_most(
            "… below bpftrace's slowdown",
            pw_slow,
            bt_slow.unwrap_or(f64::NAN),
            true,
            " %",
            1,
        );
        if bt_slow.is_none() {
            below.met = None;
            below.verdict = "not measured".into();
        }
        t.push(below);
        let lost = (self.storm_n[1] > 0).then_some(self.storm_lost[1] as f64);
        t.push(target_at_most(
            "events lost in the storm (JSON to a file)",
            lost,
            0.0,
            false,
            "",
            0,
        ));
        t.push(target_at_most(
            "start-up, exec -> attached (median)",
            median(&self.startup_ms[1]),
            100.0,
            true,
            " ms",
            0,
        ));
        let hwm_mib = self.storm_hwm_kb[1].map(|kb| kb as f64 / 1024.0);
        t.push(target_at_most(
            "peak RSS during the storm (VmHWM)",
            hwm_mib,
            20.0,
            true,
            " MiB",
            1,
        ));
        t
    }

    fn markdown(&self, sz: &Sizes, machine: &str) -> String {
        let mut o = Vec::<String>::new();
        let dash = || "–".to_string();
        o.push(format!(
            "portwatch bench, {}: {machine}; portwatch backend: {}.",
            date_utc(),
            self.backend
        ));
        o.push(format!(
            "Workload pinned to CPU {WORKLOAD_CPU} (`taskset -c {WORKLOAD_CPU}`), tracer pinned to CPU {TRACER_CPU}, \
             both at nice {NICE}; test netns, loopback only. Success path: {} interleaved rounds (order rotated) of \
             {} getppid() and {} connect+accept+close; storm: {} round(s) of {} failing connects.",
            sz.rounds, sz.getppid_n, sz.connect_n, sz.storm_rounds, sz.storm_n
        ));
        o.push(String::new());
        o.push(md_row(&[
            "measure".into(),
            "no tracer".into(),
            "portwatch".into(),
            "bpftrace".into(),
        ]));
        o.push("|---|---:|---:|---:|".into());
        let per_s = |ns: Option<f64>| ns.map(|ns| thousands(1e9 / ns)).unwrap_or_else(dash);
        o.push(md_row(&[
            "connect+accept+close: median connects/s".into(),
            per_s(self.connect[0]),
            per_s(self.connect[1]),
            per_s(self.connect[2]),
        ]));
        let us_with_ratio = |i: usize| -> String {
            match self.connect[i] {
                None => dash(),
                Some(ns) if i == 0 => format!("{:.2} µs", ns / 1e3),
                Some(ns) => format!("{:.2} µs ({})", ns / 1e3, signed_pct(self.connect_ratio(i))),
            }
        };
        o.push(md_row(&[
            "… median time per connect (vs no tracer)".into(),
            us_with_ratio(0),
            us_with_ratio(1),
            us_with_ratio(2),
        ]));
        let g = |i: usize| -> String {
            match self.getppid[i] {
                None => dash(),
                Some(ns) if i == 0 => format!("{ns:.0} ns"),
                Some(ns) => format!("{ns:.0} ns ({})", signed_pct(self.getppid_ratio(i))),
            }
        };
        o.push(md_row(&[
            "getppid() (unrelated syscall): median time per call".into(),
            g(0),
            g(1),
            g(2),
        ]));
        let rate = |x: Option<f64>| x.map(thousands).unwrap_or_else(dash);
        o.push(md_row(&[
            "storm: failing connects/s of the client core".into(),
            rate(self.storm_attempts[0]),
            match (self.storm_attempts[1], self.storm_attempts[0]) {
                (Some(a), Some(b)) => format!("{} ({:.2}×)", thousands(a), a / b),
                (a, _) => rate(a),
            },
            match (self.storm_attempts[2], self.storm_attempts[0]) {
                (Some(a), Some(b)) => format!("{} ({:.2}×)", thousands(a), a / b),
                (a, _) => rate(a),
            },
        ]));
        o.push(md_row(&[
            "storm: events/s reaching the output file".into(),
            dash(),
            rate(self.storm_output[1]),
            rate(self.storm_output[2]),
        ]));
        let lost = |i: usize| {
            if self.storm_n[i] == 0 {
                return dash();
            }
            format!(
                "{} of {} ({:.2} %)",
                thousands(self.storm_lost[i] as f64),
                thousands(self.storm_n[i] as f64),
                self.storm_lost[i] as f64 * 100.0 / self.storm_n[i] as f64
            )
        };
        o.push(md_row(&[
            "storm: events lost".into(),
            dash(),
            lost(1),
            lost(2),
        ]));
        let delivered = |i: usize| {
            if self.storm_n[i] == 0 {
                return dash();
            }
            format!(
                "{} of {}",
                thousands(self.storm_delivered[i] as f64),
                thousands(self.storm_n[i] as f64)
            )
        };
        o.push(md_row(&[
            "storm: events in the output file".into(),
            dash(),
            delivered(1),
            delivered(2),
        ]));
        let drain = |i: usize| {
            self.storm_drain[i]
                .map(|s| format!("{:.0} ms", s * 1e3))
                .unwrap_or_else(dash)
        };
        o.push(md_row(&[
            "storm: output still growing after the client stopped".into(),
            dash(),
            drain(1),
            drain(2),
        ]));
        let cpu = |i: usize| {
            self.storm_cpu_per_event_us[i]
                .map(|us| format!("{us:.2} µs"))
                .unwrap_or_else(dash)
        };
        o.push(md_row(&[
            "storm: tracer process CPU per event (utime+stime)".into(),
            dash(),
            cpu(1),
            cpu(2),
        ]));
        let st = |i: usize| {
            let v = &self.startup_ms[i];
            match median(v) {
                None => dash(),
                Some(m) => format!(
                    "{m:.0} ms ({:.0}–{:.0}, n={})",
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                    v.iter().copied().fold(0.0, f64::max),
                    v.len()
                ),
            }
        };
        o.push(md_row(&[
            "start-up, exec -> attached: median (min–max)".into(),
            dash(),
            st(1),
            st(2),
        ]));
        let mib = |kb: Option<u64>| {
            kb.map(|kb| format!("{:.1} MiB", kb as f64 / 1024.0))
                .unwrap_or_else(dash)
        };
        o.push(md_row(&[
            "peak RSS (VmHWM): idle / end of storm".into(),
            dash(),
            format!(
                "{} / {}",
                mib(self.idle_hwm_kb[1]),
                mib(self.storm_hwm_kb[1])
            ),
            format!(
                "{} / {}",
                mib(self.idle_hwm_kb[2]),
                mib(self.storm_hwm_kb[2])
            ),
        ]));
        o.push(String::new());
        o.push(md_row(&[
            "target".into(),
            "limit".into(),
            "measured".into(),
            "result".into(),
        ]));
        o.push("|---|---|---:|---|".into());
        for t in &self.targets {
            o.push(md_row(&[
                t.name.clone(),
                t.limit.clone(),
                t.measured.clone(),
                t.verdict.clone(),
            ]));
        }
        o.push(String::new());
        for n in self.notes() {
            o.push(format!("- {n}"));
        }
        o.join("\n")
    }

    fn notes(&self) -> Vec<String> {
        let mut n = vec![];
        for (i, who) in [(1, "portwatch"), (2, "bpftrace")] {
            if let (Some(c0), Some(ci), Some(g0), Some(gi)) = (
                self.connect[0],
                self.connect[i],
                self.getppid[0],
                self.getppid[i],
            ) {
                let added = ci - c0;
                let slow_path = SYSCALLS_PER_CONNECT * (gi - g0);
                n.push(format!(
                    "{who}: +{added:.0} ns per connect iteration; the node-wide slow syscall path \
                     alone (getppid's +{:.0} ns × {SYSCALLS_PER_CONNECT:.0} syscalls per iteration) \
                     accounts for about {slow_path:.0} ns of it.",
                    gi - g0
                ));
            }
        }
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            median(v).map(|m| (hi - lo) / m * 100.0).unwrap_or(0.0)
        };
        n.push(format!(
            "Noise: connect per-run spread (max-min over median) {:.1} % / {:.1} % / {:.1} % \
             (none / portwatch / bpftrace); getppid {:.1} % / {:.1} % / {:.1} %.",
            spread(&self.connect_all[0]),
            spread(&self.connect_all[1]),
            spread(&self.connect_all[2]),
            spread(&self.getppid_all[0]),
            spread(&self.getppid_all[1]),
            spread(&self.getppid_all[2]),
        ));
        n.push(format!(
            "Other processes on CPU {WORKLOAD_CPU} (run-queue wait of the workload): at most {:.1} % \
             of a kept success-path loop, {} loop(s) repeated for exceeding {:.0} %; at most {:.1} % \
             of a storm.",
            self.max_wait_share * 100.0,
            self.repeats,
            MAX_WAIT_SHARE * 100.0,
            self.storm_max_wait_share * 100.0
        ));
        if self.foreign_runs > 0 {
            n.push(format!(
                "{} no-tracer run(s) started while another tracepoint BPF program was loaded on \
                 the machine: their baseline includes that program's cost.",
                self.foreign_runs
            ));
        }
        n.push(
            "bpftrace's start-up is taken at its \"Attaching N probes...\" line, which it prints \
             just before it attaches; portwatch's at \"portwatch: attached\", printed after."
                .into(),
        );
        n
    }

    fn json(&self, sz: &Sizes) -> Value {
        let per =
            |f: &dyn Fn(usize) -> Value| json!({"none": f(0), "portwatch": f(1), "bpftrace": f(2)});
        json!({
            "schema": 1,
            "date": date_utc(),
            "backend": self.backend,
            "pinning": {"workload_cpu": WORKLOAD_CPU, "tracer_cpu": TRACER_CPU, "workload": "taskset", "tracer": "sched_setaffinity before exec", "nice": NICE},
            "sizes": {"rounds": sz.rounds, "getppid_n": sz.getppid_n, "connect_n": sz.connect_n, "storm_rounds": sz.storm_rounds, "storm_n": sz.storm_n},
            "success_path": {
                "connect_ns_per_op_median": per(&|i| json!(self.connect[i])),
                "connect_ns_per_op_runs": per(&|i| json!(self.connect_all[i])),
                "connect_ratio_vs_none": per(&|i| json!(self.connect_ratio(i))),
                "getppid_ns_per_op_median": per(&|i| json!(self.getppid[i])),
                "getppid_ns_per_op_runs": per(&|i| json!(self.getppid_all[i])),
                "getppid_ratio_vs_none": per(&|i| json!(self.getppid_ratio(i))),
                "max_wait_share": self.max_wait_share,
                "repeated_loops": self.repeats,
                "baseline_runs_with_foreign_tracepoint_programs": self.foreign_runs,
            },
            "storm": {
                "attempts_per_s_median": per(&|i| json!(self.storm_attempts[i])),
                "attempts_ratio_vs_none": per(&|i| json!(self.storm_attempts[i].zip(self.storm_attempts[0]).and_then(|(a, b)| ratio(a, b)))),
                "output_events_per_s_median": per(&|i| json!(self.storm_output[i])),
                "attempts": per(&|i| json!(self.storm_n[i])),
                "delivered": per(&|i| json!(self.storm_delivered[i])),
                "lost": per(&|i| json!(self.storm_lost[i])),
                "drain_s_median": per(&|i| json!(self.storm_drain[i])),
                "tracer_cpu_us_per_event": per(&|i| json!(self.storm_cpu_per_event_us[i])),
                "vmhwm_kb": per(&|i| json!(self.storm_hwm_kb[i])),
            },
            "startup_ms": per(&|i| json!({"median": median(&self.startup_ms[i]), "runs": self.startup_ms[i]})),
            "idle_vmhwm_kb": per(&|i| json!(self.idle_hwm_kb[i])),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "limit": t.limit, "measured": t.measured, "met": t.met, "verdict": t.verdict,
            })).collect::<Vec<_>>(),
            "notes": self.notes(),
            "runs": self.run_details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_detail_of_one_command() {
        let text = "{\"comm\":\"pwbench\",\"detail_complete\":true}\n\
                    {\"comm\":\"pwbench\",\"detail_complete\":false}\n\
                    {\"comm\":\"curl\",\"detail_complete\":true}\n\
                    {\"schema\":2,\"kind\":\"lost\",\"count\":3}\n";
        assert_eq!(count_complete(text, "pwbench"), 1);
        assert_eq!(count_portwatch(text, "pwbench"), (2, 3));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0, 4.0]), Some(3.0));
    }

    #[test]
    fn ratios_and_percent() {
        assert_eq!(ratio(110.0, 100.0), Some(1.1));
        assert_eq!(ratio(1.0, 0.0), None);
        assert!((pct(1.05) - 5.0).abs() < 1e-9);
        assert_eq!(signed_pct(Some(1.25)), "+25.0 %");
        assert_eq!(signed_pct(Some(0.9)), "-10.0 %");
        assert_eq!(signed_pct(None), "–");
    }

    #[test]
    fn targets_say_by_how_much() {
        let t = target_at_most("slowdown", Some(1.5), 2.0, false, " %", 1);
        assert_eq!((t.met, t.verdict.as_str()), (Some(true), "met"));
        let t = target_at_most("slowdown", Some(12.34), 2.0, false, " %", 1);
        assert_eq!(t.met, Some(false));
        assert_eq!(t.verdict, "missed by 10.3 pp");
        assert_eq!(t.limit, "≤ 2.0 %");
        let t = target_at_most("start-up", Some(280.4), 100.0, true, " ms", 0);
        assert_eq!(t.verdict, "missed by 180 ms");
        assert_eq!(t.measured, "280 ms");
        // Strict limits: equal is a miss.
        let t = target_at_most("start-up", Some(100.0), 100.0, true, " ms", 0);
        assert_eq!(t.met, Some(false));
        let t = target_at_most("lost", Some(0.0), 0.0, false, "", 0);
        assert_eq!(t.met, Some(true));
        let t = target_at_most("lost", None, 0.0, false, "", 0);
        assert_eq!((t.met, t.verdict.as_str()), (None, "not measured"));
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(-4321.0), "-4,321");
        assert_eq!(md_row(&["a".into(), "b".into()]), "| a | b |");
    }

    #[test]
    fn parses_workload_and_tracer_output() {
        let kv = parse_kv("op=connect n=10 ns=2000 ns_per_op=200.0 errors=0");
        assert_eq!(kv[1], ("n".to_string(), "10".to_string()));
        let pw = concat!(
            r#"{"schema":1,"kind":"connect","errno":"EADDRNOTAVAIL","pid":7,"comm":"pwbench","port_range":[1,2]}"#,
            "\n",
            r#"{"schema":1,"kind":"connect","errno":"EADDRNOTAVAIL","pid":8,"comm":"curl"}"#,
            "\n",
            r#"{"schema":1,"kind":"lost","count":12}"#,
            "\n",
            r#"{"schema":1,"kind":"lost","count":3}"#,
            "\n"
        );
        assert_eq!(count_portwatch(pw, "pwbench"), (1, 15));
        let bt = "Attaching 4 probes...\n7 7 pwbench tracepoint:syscalls:sys_exit_connect 99\n\
                  Lost 40 events\n8 8 curl tracepoint:syscalls:sys_exit_connect 99\n\n";
        assert_eq!(count_bpftrace(bt, "pwbench"), (1, 40));
    }

    fn report(connect: [f64; 3], getppid: [f64; 3]) -> Report {
        let runs: Vec<(Kind, SuccessRun)> = [Kind::None, Kind::Portwatch, Kind::Bpftrace]
            .into_iter()
            .map(|k| {
                (
                    k,
                    SuccessRun {
                        connect_ns: connect[idx(k)],
                        getppid_ns: getppid[idx(k)],
                        workload_cpu_share: 1.0,
                        wait_share: 0.0,
                        repeats: 0,
                        foreign_tp_progs: 0,
                    },
                )
            })
            .collect();
        let storms = vec![StormRun {
            kind: Kind::Portwatch,
            n: 1000,
            attempts_per_s: 1e5,
            delivered: 1000,
            lost: 0,
            drain_s: 0.1,
            output_per_s: 9e4,
            cpu_s: 0.002,
            hwm_kb: Some(30 * 1024),
            wait_share: 0.0,
            foreign_tp_progs: 0,
        }];
        Report::new(
            &runs,
            &storms,
            &[(Kind::Portwatch, 50.0), (Kind::Bpftrace, 150.0)],
            &[],
            "tracepoint".into(),
        )
    }

    #[test]
    fn report_evaluates_targets_against_the_same_run() {
        let r = report([10_000.0, 10_100.0, 10_500.0], [100.0, 130.0, 131.0]);
        let verdicts: Vec<&str> = r.targets.iter().map(|t| t.verdict.as_str()).collect();
        // +1 % (met), below bpftrace's +5 % (met), 0 lost, 50 ms, 30 MiB (missed by 10).
        assert_eq!(
            verdicts,
            ["met", "met", "met", "met", "missed by 10.0 MiB"],
            "{:?}",
            r.targets
        );
        assert_eq!(r.storm_cpu_per_event_us[1], Some(2.0));
        let md = r.markdown(&Sizes::new(true), "test machine");
        assert!(md.contains("| … median time per connect (vs no tracer) | 10.00 µs | 10.10 µs (+1.0 %) | 10.50 µs (+5.0 %) |"), "{md}");
        assert!(md.contains("| peak RSS during the storm (VmHWM) | < 20.0 MiB | 30.0 MiB | missed by 10.0 MiB |"), "{md}");
        let r = report([10_000.0, 10_600.0, 10_500.0], [100.0, 130.0, 131.0]);
        assert_eq!(r.targets[0].verdict, "missed by 4.0 pp");
        assert_eq!(r.targets[1].verdict, "missed by 1.0 pp");
        let j = r.json(&Sizes::new(true));
        assert_eq!(j["targets"][0]["met"], json!(false));
        assert_eq!(
            j["success_path"]["connect_ratio_vs_none"]["portwatch"],
            json!(1.06)
        );
    }
}
