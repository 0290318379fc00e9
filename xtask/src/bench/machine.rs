//! The machine side: test netns, tracers as processes, workloads, and what
//! /proc says about them.

use super::*;
use xtask::testkit::{watch_stderr, Stderr};

/// Deletes `pwbench-*-PID` netns left behind by a bench that was killed.
pub(crate) fn remove_stale_netns() {
    let Some(list) = crate::output(Command::new("ip").args(["netns", "list"])) else {
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

/// Pins the child to `cpu`, sets its nice value to `nice`, and gives it default
/// SIGINT/SIGTERM handling (a shell's background job would otherwise pass
/// SIGINT down ignored).
pub(crate) fn pin_before_exec(cmd: &mut Command, cpu: usize, nice: i32) {
    // SAFETY: sched_setaffinity and signal are plain syscalls, fine between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            // Best effort: without CAP_SYS_NICE the run is merely noisier.
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) struct Live {
    pub(crate) kind: Kind,
    pub(crate) child: Child,
    pub(crate) startup_ms: f64,
    pub(crate) out: PathBuf,
    pub(crate) stderr: Arc<Mutex<Vec<String>>>,
}

impl Live {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub(crate) fn start_tracer(kind: Kind, pw: &Path, script: &Path, out: &Path) -> Result<Live> {
    start_tracer_with(kind, pw, script, out, &[])
}

/// `extra`: more arguments for `portwatch trace --json`.
pub(crate) fn start_tracer_with(
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
        Kind::Bpftrace | Kind::Floor => {
            let mut c = Command::new("bpftrace");
            c.arg(script);
            c
        }
        Kind::None => bail!("no tracer to start"),
    };
    cmd.stdin(Stdio::null()).stdout(file).stderr(Stdio::piped());
    pin_before_exec(&mut cmd, TRACER_CPU, TRACER_NICE);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let ready = (kind == Kind::Portwatch).then_some("portwatch: attached");
    let Stderr {
        lines: stderr,
        ready: rx,
    } = watch_stderr(&mut child, ready);
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
pub(crate) fn stop_tracer(mut live: Live) -> Result<Vec<String>> {
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
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub(crate) fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub(crate) n: u64,
    pub(crate) ns: f64,
    pub(crate) ns_per_op: f64,
    pub(crate) cpu_ns: f64,
    /// Run-queue wait: time other processes took CPU 0 from the workload.
    pub(crate) wait_ns: f64,
}

impl Work {
    pub(crate) fn wait_share(&self) -> f64 {
        self.wait_ns / self.ns.max(1.0)
    }
}

/// A success-path run is repeated (at most twice) when another process took
/// more than this share of the workload's core; the least disturbed is kept.
pub(crate) const MAX_WAIT_SHARE: f64 = 0.02;

pub(crate) fn steady_workload(bin: &Path, netns: &str, args: &[String]) -> Result<(Work, u32)> {
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

pub(crate) fn workload(bin: &Path, netns: &str, args: &[String]) -> Result<Work> {
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
    pin_before_exec(&mut c, WORKLOAD_CPU, NICE);
    let out = c.output().with_context(|| crate::show(&c))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            crate::show(&c),
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
pub(crate) fn tracepoint_progs() -> usize {
    crate::output(Command::new("bpftool").args(["prog", "show"]))
        .map(|s| {
            s.lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("tracepoint"))
                .count()
        })
        .unwrap_or(0)
}

pub(crate) fn machine() -> String {
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

pub(crate) fn machine_json() -> Value {
    json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "summary": machine(),
    })
}

pub(crate) fn date_utc() -> String {
    crate::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
