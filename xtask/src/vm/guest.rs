//! Booting a guest and reading its report off the serial console; the
//! kernel x backend x hook matrix.

use super::*;

/// What one guest reported.
#[derive(Default, Debug)]
pub struct GuestReport {
    /// (test binary, backend) -> libtest's outcome per test, and the rc.
    pub runs: BTreeMap<(String, String), Run>,
    pub done: bool,
    pub problems: Vec<String>,
    /// `uname -r` in the guest.
    pub release: Option<String>,
    /// What portwatch printed at start-up, by command ("trace",
    /// "nodeport"), without the "portwatch: " prefix.
    pub info: Vec<(String, String)>,
    /// The guest's wall time, boot to power-off.
    pub secs: f64,
}

#[derive(Default, Debug)]
pub struct Run {
    pub tests: Vec<(String, bool)>,
    pub rc: Option<i32>,
}

impl GuestReport {
    /// Feeds one console line.
    pub fn line(&mut self, cur: &mut Option<(String, String)>, l: &str) {
        let l = l.trim_end_matches('\r');
        if let Some(rest) = l.strip_prefix("PWVM-BEGIN ") {
            let mut w = rest.split_whitespace();
            let key = (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            );
            self.runs.entry(key.clone()).or_default();
            *cur = Some(key);
        } else if let Some(rest) = l.strip_prefix("PWVM-END ") {
            let mut w = rest.split_whitespace();
            let key = (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            );
            let rc = w
                .next()
                .and_then(|r| r.strip_prefix("rc="))
                .and_then(|r| r.parse().ok());
            self.runs.entry(key).or_default().rc = rc;
            *cur = None;
        } else if let Some(at) = l.find("PWVM-KERNEL ") {
            // The first line after boot: the console's reset codes come first.
            let rest = &l[at + "PWVM-KERNEL ".len()..];
            self.release = rest.split_whitespace().nth(1).map(str::to_string);
        } else if let Some(rest) = l.strip_prefix("PWVM-INFO ") {
            if let Some((what, msg)) = rest.split_once(' ') {
                let msg = msg.strip_prefix("portwatch: ").unwrap_or(msg);
                self.info.push((what.to_string(), msg.to_string()));
            }
        } else if l.starts_with("PWVM-DONE") {
            self.done = true;
        } else if let Some(rest) = l.strip_prefix("PWVM-FAIL ") {
            self.problems.push(rest.to_string());
        } else if let (Some(key), Some(rest)) = (cur.as_ref(), l.strip_prefix("test ")) {
            // "test name ... ok" / "test name ... FAILED"
            if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
                let ok = match outcome.trim() {
                    "ok" => true,
                    "FAILED" => false,
                    _ => return,
                };
                self.runs
                    .get_mut(key)
                    .unwrap()
                    .tests
                    .push((name.to_string(), ok));
            }
        }
    }

    pub fn passed(&self) -> usize {
        self.runs
            .values()
            .flat_map(|r| &r.tests)
            .filter(|t| t.1)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.runs
            .values()
            .flat_map(|r| &r.tests)
            .filter(|t| !t.1)
            .count()
    }

    /// Why this guest's run counts as failed, if it does.
    pub fn failure(&self) -> Option<String> {
        if !self.problems.is_empty() {
            return Some(self.problems.join("; "));
        }
        if !self.done {
            return Some(
                "the guest did not finish (crash or time-out; see its console log)".into(),
            );
        }
        for ((t, b), r) in &self.runs {
            if r.tests.is_empty() {
                return Some(format!("{t} on {b}: no test ran"));
            }
            let bad: Vec<_> = r
                .tests
                .iter()
                .filter(|x| !x.1)
                .map(|x| x.0.as_str())
                .collect();
            if !bad.is_empty() {
                return Some(format!("{t} on {b}: failed {}", bad.join(", ")));
            }
            if r.rc != Some(0) {
                return Some(format!("{t} on {b}: exit {:?}", r.rc));
            }
        }
        if self.runs.is_empty() {
            return Some("no test run reported".into());
        }
        None
    }
}

/// qemu's flags for every guest (TCG: KVM fails on these machines); `extra`
/// goes before `-kernel` (e.g. `-icount`).
pub(crate) fn qemu_args(extra: &[&str]) -> Vec<String> {
    [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "1536",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// The kernel command line of every guest.
pub(crate) const APPEND: &str = "console=ttyS0 panic=-1 quiet loglevel=3";

/// Boots `vmlinuz` + `initrd` and hands each serial console line to
/// `on_line` (also written to `dir/console.log`) until the guest powers
/// off. Ok(false) when it was killed at `timeout`.
pub(crate) fn boot_serial(
    name: &str,
    vmlinuz: &Path,
    initrd: &Path,
    dir: &Path,
    extra_qemu: &[&str],
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<bool> {
    let log_path = dir.join("console.log");
    let mut log = fs::File::create(&log_path)?;
    let mut c = Command::new("qemu-system-x86_64");
    c.args(qemu_args(extra_qemu))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", APPEND])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("xtask: {name}: $ {}", show(&c));
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut finished = true;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => {
                writeln!(log, "{l}")?;
                on_line(&l);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if t0.elapsed() > timeout {
                    let _ = child.kill();
                    finished = false;
                    break;
                }
            }
        }
    }
    let _ = child.wait();
    Ok(finished)
}

pub(crate) fn boot(k: &Kernel, vmlinuz: &Path, initrd: &Path, dir: &Path) -> Result<GuestReport> {
    let t0 = Instant::now();
    let mut rep = GuestReport::default();
    let mut cur = None;
    let finished = boot_serial(k.name, vmlinuz, initrd, dir, &[], GUEST_TIMEOUT, |l| {
        println!("[{}] {l}", k.name);
        rep.line(&mut cur, l);
    })?;
    if !finished {
        rep.problems
            .push(format!("timed out after {} s", GUEST_TIMEOUT.as_secs()));
    }
    rep.secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "xtask: {}: guest ran {:.0} s, {} passed, {} failed",
        k.name,
        t0.elapsed().as_secs_f64(),
        rep.passed(),
        rep.failed()
    );
    Ok(rep)
}

/// Which hook a test exercises, from its name.
pub(crate) fn hook_of(test: &str) -> Option<&'static str> {
    if test.contains("connect") {
        Some("connect")
    } else if test.contains("bind") {
        Some("bind")
    } else {
        None
    }
}

pub(crate) fn cell<'a>(tests: impl Iterator<Item = &'a (String, bool)>) -> String {
    let (mut n, mut p) = (0, 0);
    for t in tests {
        n += 1;
        p += t.1 as usize;
    }
    if n == 0 {
        "-".to_string()
    } else if p == n {
        format!("pass ({p})")
    } else {
        format!("FAIL ({}/{n})", n - p)
    }
}

/// kernel x backend x hook: pass/fail counts from the tests that exercise
/// it (every per-backend test binary together), then the automatic choice
/// and the binaries that run once (nodeport-steal with IPVS, check).
pub fn matrix(reports: &[(&str, GuestReport)]) -> String {
    let mut s = String::from(
        "| kernel | backend | connect hook | bind hook | all tests |\n|---|---|---|---|---|\n",
    );
    for (k, rep) in reports {
        fn runs_of<'a>(
            rep: &'a GuestReport,
            b: &'a str,
        ) -> impl Iterator<Item = (&'a (String, String), &'a Run)> + 'a {
            rep.runs.iter().filter(move |((_, rb), _)| rb == b)
        }
        let of = |b: &'static str| runs_of(rep, b);
        for b in BACKENDS {
            if of(b).next().is_none() {
                continue;
            }
            let tests = || of(b).flat_map(|(_, r)| r.tests.iter());
            s += &format!(
                "| {k} | {b} | {} | {} | {} |\n",
                cell(tests().filter(|t| hook_of(&t.0) == Some("connect"))),
                cell(tests().filter(|t| hook_of(&t.0) == Some("bind"))),
                cell(tests())
            );
        }
        for ((bin, _), r) in of("auto") {
            s += &format!(
                "| {k} | auto | - | - | {bin}: picks {}: {} |\n",
                AUTO_PICKS,
                cell(r.tests.iter())
            );
        }
        for ((bin, _), r) in of("any") {
            s += &format!("| {k} | - | - | - | {bin}: {} |\n", cell(r.tests.iter()));
        }
    }
    s
}

/// Start and end of the generated section of docs/kernels.md.
pub(crate) const DOC_BEGIN: &str =
    "<!-- BEGIN generated by `cargo xtask vm-test`: a rerun of all kernels replaces this section -->";
pub(crate) const DOC_END: &str = "<!-- END generated by `cargo xtask vm-test` -->";

/// What the run was, for the generated section's headline.
pub struct RunInfo<'a> {
    pub date: &'a str,
    pub machine: &'a str,
    pub wall_secs: f64,
    pub parallel: usize,
}

/// A table cell: `|` would end it.
fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

/// What portwatch said at start-up in one guest: `what` is the command
/// ("trace", "nodeport"), `prefix` the start of the line.
fn said<'a>(rep: &'a GuestReport, what: &str, prefix: &str) -> Option<&'a str> {
    rep.info
        .iter()
        .find(|(w, l)| w == what && l.starts_with(prefix))
        .map(|(_, l)| l.as_str())
}

/// The generated section of docs/kernels.md: when and where it ran, each
/// guest's kernel and counts, the kernel x backend x hook matrix, and what
/// portwatch chose at start-up on each kernel (and why, where it fell
/// back), all from this run. Failures are marked, never hidden.
pub fn doc_section(reports: &[(&str, GuestReport)], failed: &[String], run: &RunInfo) -> String {
    let (p, f) = reports
        .iter()
        .fold((0, 0), |(p, f), (_, r)| (p + r.passed(), f + r.failed()));
    let mut s = format!(
        "Last run: {}, on {}; {} guests, {} at a time (one vCPU each, qemu TCG); {p} passed, {f} failed, {:.0} s wall.\n\n",
        run.date,
        run.machine,
        reports.len(),
        run.parallel,
        run.wall_secs
    );
    if failed.is_empty() {
        s += "Every guest finished and every test passed.\n\n";
    } else {
        s += "**This run FAILED:**\n\n";
        for why in failed {
            s += &format!("- {}\n", esc(why));
        }
        s += "\n";
    }
    s += "| kernel | guest's `uname -r` | guest time | passed | failed |\n|---|---|---|---|---|\n";
    for (k, r) in reports {
        s += &format!(
            "| {k} | {} | {:.0} s | {} | {} |\n",
            r.release.as_deref().unwrap_or("(not reported)"),
            r.secs,
            r.passed(),
            r.failed()
        );
    }
    s += "\nPer kernel x backend x hook (`connect`/`bind`: the tests named for that hook; \"all\": every test of the per-backend binaries `trace` and `cause`):\n\n";
    s += &matrix(reports);
    s += "\nWhat portwatch chose at start-up without `--backend` (`trace`, `nodeport-steal`), as it said it:\n\n";
    s += "| kernel | connect hook | bind hook | sysctl writes | IPVS (nodeport-steal) |\n|---|---|---|---|---|\n";
    for (k, r) in reports {
        let cell = |what: &str, prefix: &str| {
            said(r, what, prefix).map_or("(not reported)".to_string(), esc)
        };
        s += &format!(
            "| {k} | {} | {} | {} | {} |\n",
            cell("trace", "connect hook: "),
            cell("trace", "bind hook: "),
            cell("trace", "sysctl writes"),
            cell("nodeport", "IPVS scheduling: "),
        );
    }
    let notes: Vec<String> = reports
        .iter()
        .flat_map(|(k, r)| {
            r.info
                .iter()
                .filter(|(_, l)| {
                    ![
                        "connect hook: ",
                        "bind hook: ",
                        "sysctl writes",
                        "IPVS scheduling: ",
                        "attached",
                        "SYN-ACK watch",
                        "guarding ",
                        "tracefs was not mounted",
                        // The guests run no CRI runtime: the same on every kernel.
                        "pods: ",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                        && !l.starts_with("warning: ip_local_port_range")
                })
                .map(move |(w, l)| format!("- {k}, {w}: {}", l))
        })
        .collect();
    if !notes.is_empty() {
        s += "\nOther start-up notes:\n\n";
        s += &notes.join("\n");
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> GuestReport {
        let mut r = GuestReport::default();
        let mut cur = None;
        for l in lines {
            r.line(&mut cur, l);
        }
        r
    }

    #[test]
    fn a_clean_run_passes_and_a_failure_or_crash_does_not() {
        let ok = [
            "PWVM-BEGIN trace fexit",
            "test connect_exhaustion_ipv4 ... ok",
            "test bind_port_in_use_ipv4 ... ok\r",
            "PWVM-END trace fexit rc=0",
            "PWVM-DONE",
        ];
        let r = feed(&ok);
        assert_eq!(r.failure(), None);
        assert_eq!((r.passed(), r.failed()), (2, 0));

        let mut bad = ok.to_vec();
        bad[2] = "test bind_port_in_use_ipv4 ... FAILED";
        bad[3] = "PWVM-END trace fexit rc=101";
        let r = feed(&bad);
        assert!(r.failure().unwrap().contains("bind_port_in_use_ipv4"));
        let m = matrix(&[("6.1", r)]);
        assert!(
            m.contains("| 6.1 | fexit | pass (1) | FAIL (1/1) | FAIL (1/2) |"),
            "{m}"
        );

        // No PWVM-DONE: the guest crashed or hung.
        assert!(feed(&ok[..4]).failure().unwrap().contains("did not finish"));
        // A run in which no test ran is not a pass.
        let r = feed(&[
            "PWVM-BEGIN trace kprobe",
            "PWVM-END trace kprobe rc=0",
            "PWVM-DONE",
        ]);
        assert!(r.failure().unwrap().contains("no test ran"));
        // A test line outside a run is ignored, a module failure is not.
        let r = feed(&["test x ... ok", "PWVM-FAIL module veth", "PWVM-DONE"]);
        assert!(r.failure().unwrap().contains("veth"));
    }

    #[test]
    fn the_doc_section_says_what_ran_what_was_chosen_and_marks_failures() {
        let lines = [
            "\x1bcPWVM-KERNEL 5.10 5.10.0-46-cloud-amd64\r",
            "PWVM-BEGIN trace fexit",
            "test connect_exhaustion_ipv4 ... ok",
            "PWVM-END trace fexit rc=0",
            "PWVM-INFO trace portwatch: connect hook: fexit on inet_hash_connect, inet6_hash_connect",
            "PWVM-INFO trace portwatch: bind hook: fexit on __inet_bind, inet6_bind",
            "PWVM-INFO trace portwatch: sysctl writes: cgroup/sysctl on the cgroup2 root /sys/fs/cgroup: writes of a | b are reported",
            "PWVM-INFO nodeport portwatch: IPVS scheduling: not probed (no module BTF for ip_vs); read from /proc/net/ip_vs_conn",
            "PWVM-INFO nodeport portwatch: SYN retransmissions will not be counted: x",
            "PWVM-DONE",
        ];
        let r = feed(&lines);
        assert_eq!(r.release.as_deref(), Some("5.10.0-46-cloud-amd64"));
        assert_eq!(r.failure(), None);
        let run = RunInfo {
            date: "2026-12-06 06:00 UTC",
            machine: "kernel 6.18, 2 CPUs (x)",
            wall_secs: 900.0,
            parallel: 2,
        };
        let doc = doc_section(&[("5.10", r)], &[], &run);
        assert!(
            doc.contains("2026-12-06 06:00 UTC, on kernel 6.18, 2 CPUs (x)"),
            "{doc}"
        );
        assert!(doc.contains("1 passed, 0 failed, 900 s wall"), "{doc}");
        assert!(doc.contains("| 5.10 | 5.10.0-46-cloud-amd64 |"), "{doc}");
        assert!(
            doc.contains("| 5.10 | fexit | pass (1) | - | pass (1) |"),
            "{doc}"
        );
        assert!(
            doc.contains("| 5.10 | connect hook: fexit on inet_hash_connect, inet6_hash_connect | bind hook: fexit on __inet_bind, inet6_bind | sysctl writes: cgroup/sysctl on the cgroup2 root /sys/fs/cgroup: writes of a \\| b are reported | IPVS scheduling: not probed (no module BTF for ip_vs); read from /proc/net/ip_vs_conn |"),
            "{doc}"
        );
        assert!(
            doc.contains("- 5.10, nodeport: SYN retransmissions will not be counted: x"),
            "{doc}"
        );
        assert!(!doc.contains("FAILED"), "{doc}");

        // A failed run says so, and its cells show the failures.
        let mut bad = lines.to_vec();
        bad[2] = "test connect_exhaustion_ipv4 ... FAILED";
        let r = feed(&bad);
        let why = format!("5.10: {}", r.failure().unwrap());
        let doc = doc_section(&[("5.10", r)], &[why], &run);
        assert!(doc.contains("**This run FAILED:**"), "{doc}");
        assert!(
            doc.contains("- 5.10: trace on fexit: failed connect_exhaustion_ipv4"),
            "{doc}"
        );
        assert!(
            doc.contains("| 5.10 | fexit | FAIL (1/1) | - | FAIL (1/1) |"),
            "{doc}"
        );
    }
}
