//! `portwatch trace` against real failures, as root, in test network
//! namespaces with a narrowed `ip_local_port_range`.
//!
//! PORTWATCH_TEST_BACKEND=fexit|kprobe|tracepoint runs every test on that
//! backend and checks the `probe` field (the VM stage does this per kernel).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const RANGE: (u16, u16) = (41000, 41003); // 4 ports: even, so exactly 4 connects fit

fn backend_args() -> Vec<String> {
    match std::env::var("PORTWATCH_TEST_BACKEND") {
        Ok(b) if !b.is_empty() => vec!["--backend".into(), b],
        _ => vec![],
    }
}

fn trace(extra: &[&str]) -> Tracer {
    let mut args = vec!["trace".to_string(), "--json".into()];
    args.extend(backend_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn check_probe(ev: &Value) {
    if let Ok(b) = std::env::var("PORTWATCH_TEST_BACKEND") {
        if !b.is_empty() {
            assert_eq!(ev["probe"], b.as_str(), "{ev}");
        }
    }
}

fn exhaustion(addr: &str, family: &str) {
    let ns = Netns::new("exh", RANGE);
    let mut t = trace(&[]);
    // 4 connects fill the range; the next 2 fail with EADDRNOTAVAIL (99).
    let out = client_once(&ns, &format!("listen {addr} 7100 connect {addr} 7100 6"));
    assert_eq!(
        out.iter().filter(|l| l.starts_with("ok ")).count(),
        4,
        "{out:?}"
    );
    assert_eq!(out.iter().filter(|l| *l == "err 99").count(), 2, "{out:?}");
    let mut all = vec![];
    // The client has exited; its pid comes from the events, checked below.
    let evs = t.events_in(ns.inode, 2, &mut all);
    assert_eq!(
        evs.len(),
        2,
        "exactly the two failures, nothing for the 4 successes: {evs:?}"
    );
    let pid = evs[0]["pid"].as_u64().unwrap() as u32;
    for ev in &evs {
        assert_common(ev, "connect", "EADDRNOTAVAIL", pid, "pwclient", &ns, RANGE);
        assert_eq!(ev["daddr"], addr, "{ev}");
        assert_eq!(ev["dport"], 7100, "{ev}");
        assert_eq!(ev["family"], family, "{ev}");
        assert_eq!(ev["proto"], "tcp", "{ev}");
        check_probe(ev);
    }
    let (st, _) = t.stop();
    assert!(st.success(), "{st}");
}

#[test]
fn connect_exhaustion_ipv4() {
    exhaustion("127.0.0.1", "ipv4");
}

#[test]
fn connect_exhaustion_ipv6() {
    exhaustion("::1", "ipv6");
}

#[test]
fn connect_failure_pid_matches_the_client() {
    let ns = Netns::new("pid", RANGE);
    let mut c = Client::start(
        &ns,
        "--wait --hold listen 127.0.0.1 7100 connect 127.0.0.1 7100 5",
        None,
    );
    let pid_s = c.pid.to_string();
    let mut t = trace(&["--pid", &pid_s]);
    c.go();
    let out = c.wait_line("holding");
    assert_eq!(out.last().map(String::as_str), Some("err 99"), "{out:?}");
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_common(
        &evs[0],
        "connect",
        "EADDRNOTAVAIL",
        c.pid,
        "pwclient",
        &ns,
        RANGE,
    );
    assert!(
        all.iter().all(|e| e["pid"] == c.pid),
        "--pid lets nothing else through: {all:?}"
    );
    drop(c);
    assert!(t.stop().0.success());
}

/// connect()s the syscall tracepoints never see: TCP Fast Open connects
/// inside sendto(), io_uring connects from io_uring_enter(). The kernel
/// function probes (fexit, kprobe) must report both; the tracepoint backend
/// is blind to them, and the test pins that down too. A plain connect()
/// that fails last is the sentinel every backend reports.
#[test]
fn kernel_probes_see_connects_made_outside_connect_syscall() {
    let ns = Netns::new("iou", RANGE);
    let mut t = trace(&[]);
    let backend = t.backend_of("connect");
    let out = client_once(
        &ns,
        "listen 127.0.0.1 7100 fill 127.0.0.1 7100 4 fastopen 127.0.0.1 7100 \
         uring-connect 127.0.0.1 7100 connect 127.0.0.1 7100",
    );
    assert_eq!(out, ["filled", "err 99", "err 99", "err 99"], "{out:?}");
    let sees_kernel_path = backend != "tracepoint";
    let n = if sees_kernel_path { 3 } else { 1 };
    let mut all = vec![];
    let evs = t.events_in(ns.inode, n, &mut all);
    assert_eq!(evs.len(), n, "{backend}: {evs:?}");
    let pid = evs[0]["pid"].as_u64().unwrap() as u32;
    for ev in &evs {
        assert_common(ev, "connect", "EADDRNOTAVAIL", pid, "pwclient", &ns, RANGE);
        assert_eq!(ev["daddr"], "127.0.0.1", "{ev}");
        assert_eq!(ev["dport"], 7100, "{ev}");
        assert_eq!(ev["probe"], backend.as_str(), "{ev}");
    }
    assert!(t.stop().0.success());
}

fn bind_in_use(addr: &str, family: &str) {
    let ns = Netns::new("bind", RANGE);
    let mut t = trace(&[]);
    let out = client_once(&ns, &format!("listen {addr} 7200 bind {addr} 7200"));
    assert_eq!(out, vec!["err 98"]);
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let ev = &evs[0];
    let pid = ev["pid"].as_u64().unwrap() as u32;
    assert_common(ev, "bind", "EADDRINUSE", pid, "pwclient", &ns, RANGE);
    assert_eq!(ev["saddr"], addr, "the address bind() asked for: {ev}");
    assert_eq!(ev["sport"], 7200, "{ev}");
    assert_eq!(ev["family"], family, "{ev}");
    assert_eq!(ev["proto"], "tcp", "{ev}");
    assert!(ev["daddr"].is_null() && ev["dport"].is_null(), "{ev}");
    check_probe(ev);
    assert!(t.stop().0.success());
}

#[test]
fn bind_port_in_use_ipv4() {
    bind_in_use("127.0.0.1", "ipv4");
}

#[test]
fn bind_port_in_use_ipv6() {
    bind_in_use("::1", "ipv6");
}

#[test]
fn bind_autobind_exhausted_and_address_not_local() {
    let ns = Netns::new("auto", RANGE);
    let mut t = trace(&[]);
    // Every range port held by a connected socket: bind(ip, 0) has nothing
    // to give (EADDRINUSE); a foreign address gives EADDRNOTAVAIL.
    let out = client_once(
        &ns,
        "listen 127.0.0.1 7100 fill 127.0.0.1 7100 4 bind 127.0.0.1 0 bind 192.0.2.1 7300",
    );
    assert_eq!(out, vec!["filled", "err 98", "err 99"]);
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 2, &mut all);
    assert_eq!(evs.len(), 2, "{evs:?}");
    let pid = evs[0]["pid"].as_u64().unwrap() as u32;
    assert_common(&evs[0], "bind", "EADDRINUSE", pid, "pwclient", &ns, RANGE);
    assert_eq!(evs[0]["sport"], 0, "bind asked for any port: {}", evs[0]);
    assert_common(
        &evs[1],
        "bind",
        "EADDRNOTAVAIL",
        pid,
        "pwclient",
        &ns,
        RANGE,
    );
    assert_eq!(evs[1]["saddr"], "192.0.2.1");
    assert_eq!(evs[1]["sport"], 7300);
    assert!(t.stop().0.success());
}

#[test]
fn other_errnos_and_successes_are_not_reported() {
    let ns = Netns::new("other", RANGE);
    ns.sysctl("net/ipv4/tcp_syncookies", "0");
    let mut t = trace(&[]);
    // ECONNREFUSED (111), ETIMEDOUT (110), and successful connects and binds.
    let out = client_once(&ns, "connect 127.0.0.1 7999 timeout 127.0.0.1 7300 listen 127.0.0.1 7100 connect 127.0.0.1 7100 2 bind 127.0.0.1 7400",
    );
    assert_eq!(out[0], "err 111", "{out:?}");
    assert_eq!(out[1], "err 110", "{out:?}");
    assert!(
        out[2].starts_with("ok ") && out[3].starts_with("ok ") && out[4] == "ok 7400",
        "{out:?}"
    );
    // Then one real failure, as a marker that the tracer was seeing this netns.
    let out = client_once(&ns, "listen 127.0.0.1 7500 bind 127.0.0.1 7500");
    assert_eq!(out, vec!["err 98"]);
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "only the marker: {evs:?}");
    assert_eq!(evs[0]["sport"], 7500);
    assert!(t.stop().0.success());
}

/// The article's three clients, each with its own message for one cause.
#[test]
fn curl_wget_and_nc_hit_the_exhausted_range() {
    let ns = Netns::new("tools", RANGE);
    let mut t = trace(&[]);
    let holder = Client::start(
        &ns,
        "--hold listen 127.0.0.1 7100 fill 127.0.0.1 7100 4",
        Some("holding"),
    );
    let tool = |args: &[&str]| {
        let out = ns
            .cmd(args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (rc, err) = tool(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:7100/"]);
    assert_eq!(rc, Some(7), "{err}");
    assert!(err.contains("Couldn't connect to server"), "{err}");
    let (rc, err) = tool(&[
        "busybox",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:7100/",
    ]);
    assert_eq!(rc, Some(1), "{err}");
    assert!(
        err.contains(
            "wget: can't connect to remote host (127.0.0.1): Cannot assign requested address"
        ),
        "{err}"
    );
    // Debian's busybox nc has no bind option: it fails in connect().
    let (rc, err) = tool(&["busybox", "nc", "127.0.0.1", "7100"]);
    assert_eq!(rc, Some(1), "{err}");
    assert!(err.contains("nc: can't connect to remote host"), "{err}");
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 3, &mut all);
    assert_eq!(evs.len(), 3, "{evs:?}");
    let comms: Vec<&str> = evs.iter().map(|e| e["comm"].as_str().unwrap()).collect();
    assert_eq!(comms, vec!["curl", "busybox", "busybox"]);
    for ev in &evs {
        assert_eq!(ev["kind"], "connect", "{ev}");
        assert_eq!(ev["errno"], "EADDRNOTAVAIL", "{ev}");
        assert_eq!(ev["daddr"], "127.0.0.1", "{ev}");
        assert_eq!(ev["dport"], 7100, "{ev}");
        assert_eq!(ev["port_range"], serde_json::json!([RANGE.0, RANGE.1]));
    }
    holder.finish();
    assert!(t.stop().0.success());
}

#[test]
fn filters_select_events() {
    let ns = Netns::new("filt", RANGE);
    let mut by_errno = trace(&["--errno", "EADDRINUSE", "--comm", "pwclient"]);
    let mut by_dport = trace(&["--dport", "7100"]);
    client_once(&ns, "listen 127.0.0.1 7100 listen 127.0.0.1 7101 fill 127.0.0.1 7100 4 connect 127.0.0.1 7100 connect 127.0.0.1 7101 bind 127.0.0.1 7100",
    );
    let mut all = vec![];
    let e = by_errno.events_in(ns.inode, 1, &mut all);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["kind"], "bind");
    let mut all = vec![];
    let d = by_dport.events_in(ns.inode, 1, &mut all);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["kind"].as_str(), d[0]["dport"].as_u64()),
        (Some("connect"), Some(7100))
    );
    assert!(by_errno.stop().0.success());
    assert!(by_dport.stop().0.success());
}

#[test]
fn reader_closing_stdout_exits_zero_quietly() {
    // `portwatch trace --json | head -1`
    use std::io::BufRead;
    let ns = Netns::new("head", RANGE);
    let mut t = Tracer::start_with(&["trace", "--json"], false);
    let mut out = std::io::BufReader::new(t.child.stdout.take().unwrap());
    client_once(&ns, "listen 127.0.0.1 7100 bind 127.0.0.1 7100");
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"kind\":\"bind\""), "{first}");
    // Close the read end of the pipe, as head does, then make more events.
    drop(out);
    for _ in 0..3 {
        client_once(&ns, "listen 127.0.0.1 7101 bind 127.0.0.1 7101");
    }
    let (st, stderr) = t.wait();
    assert_eq!(st.code(), Some(0), "{stderr:?}");
    let after: Vec<&String> = stderr
        .iter()
        .skip_while(|l| !l.contains("attached;"))
        .skip(1)
        .collect();
    assert!(
        after.is_empty(),
        "nothing on stderr after attaching: {after:?}"
    );
}

#[test]
fn sigint_and_sigterm_leave_no_program_loaded() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = trace(&[]);
        let ids = prog_ids_of(t.pid());
        // Two programs per hook on fexit and kprobe; on tracepoints an enter
        // program per hook and one exit program for both, or the exit
        // program alone where it reads the saved registers; and the
        // sysctl-write watch. More would mean a backend that failed halfway
        // left programs loaded.
        let (on_tracepoints, exit_only) = {
            let errs = t.stderr.lock().unwrap();
            let on = |h: &str, what: &str| {
                errs.iter()
                    .any(|l| l.contains(&format!("{h} hook: tracepoint on")) && l.contains(what))
            };
            (
                ["connect", "bind"].iter().all(|h| on(h, "")),
                ["connect", "bind"]
                    .iter()
                    .all(|h| on(h, "(arguments from the saved registers)")),
            )
        };
        let want = match (on_tracepoints, exit_only) {
            (true, true) => 1 + 1,
            (true, false) => 3 + 1,
            _ => 4 + 1,
        };
        assert_eq!(
            ids.len(),
            want,
            "portwatch's programs while it runs: {ids:?}"
        );
        assert!(
            ids.iter().all(|&id| prog_exists(id)),
            "bpftool sees them: {ids:?}"
        );
        t.signal(sig);
        let mut t = t;
        let (st, stderr) = t.wait();
        assert_eq!(st.code(), Some(0), "signal {sig}: {stderr:?}");
        let left: Vec<u64> = ids.iter().copied().filter(|&id| prog_exists(id)).collect();
        assert!(
            left.is_empty(),
            "programs still loaded after exit: {left:?}"
        );
    }
}

/// Whether `bpftool prog show id ID` finds the program.
fn prog_exists(id: u64) -> bool {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("No such file"),
        "bpftool: {err}"
    );
    out.status.success()
}

/// Ids of the BPF programs a process holds, from its fds' fdinfo.
fn prog_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = vec![];
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(info) = std::fs::read_to_string(e.path()) {
            if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")) {
                ids.push(id.trim().parse().unwrap());
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["trace", "--errno", "ENOENT"][..],
        &["trace", "--backend", "uprobe"],
        &["trace", "--dport", "x"],
        &["trace", "--cri-endpoint", "bogus://x"],
        &["serve", "--cri-endpoint", "tcp://127.0.0.1:2376"],
        &["nosuch"],
    ] {
        let out = Command::new(portwatch_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error:"),
            "{args:?}"
        );
    }
    // crictl's variable is read like the flag, and refused like it.
    for cmd in ["trace", "top"] {
        let out = Command::new(portwatch_bin())
            .arg(cmd)
            .env("CONTAINER_RUNTIME_ENDPOINT", "npipe:////./pipe/containerd")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error:") && err.contains("\"npipe\""), "{err}");
    }
}

#[test]
fn not_root_is_one_sentence_and_exit_1() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(portwatch_bin())
        .args(["trace"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("must run as root"), "{err}");
}

#[test]
fn forced_backend_the_kernel_lacks_is_exit_1() {
    require_root();
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let missing = if !kprobes { "kprobe" } else { "" };
    if missing.is_empty() {
        // A kernel with every backend: each forced one must attach.
        for b in ["fexit", "kprobe", "tracepoint"] {
            let t = Tracer::start(&["trace", "--json", "--backend", b]);
            assert!(t.stop().0.success(), "{b}");
        }
        return;
    }
    let out = Command::new(portwatch_bin())
        .args(["trace", "--backend", missing])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--backend {missing} is not available")),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("portwatch: --backend"))
            .count(),
        1,
        "{err}"
    );
}

/// Each hook's backend is named at start-up. PORTWATCH_TEST_EXPECT_AUTO
/// (set by the VM stage, whose kernels offer every backend) runs without
/// `--backend` and demands that choice for both hooks.
#[test]
fn startup_names_the_backend_of_each_hook() {
    let expect = std::env::var("PORTWATCH_TEST_EXPECT_AUTO").ok();
    let t = match &expect {
        Some(_) => Tracer::start(&["trace", "--json"]),
        None => trace(&[]),
    };
    let (st, stderr) = t.stop();
    assert!(st.success());
    for hook in ["connect hook: ", "bind hook: "] {
        let line = stderr
            .iter()
            .find(|l| l.contains(hook))
            .unwrap_or_else(|| panic!("{hook}: {stderr:?}"));
        let allowed: Vec<&str> = match &expect {
            Some(b) => vec![b.as_str()],
            None => vec!["fexit", "kprobe", "tracepoint"],
        };
        assert!(
            allowed
                .iter()
                .any(|b| line.contains(&format!("{hook}{b} on "))),
            "{line}"
        );
    }
}

/// A fresh machine has no tracefs mounted; portwatch mounts it and says so.
/// Run in a private mount namespace so the host's mounts are untouched.
#[test]
fn mounts_tracefs_when_missing() {
    require_root();
    let script = format!(
        "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
         if grep -q ' tracefs ' /proc/self/mounts; then echo still-mounted; exit 9; fi; \
         exec {} trace --json --backend tracepoint",
        portwatch_bin().display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut v = vec![];
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let attached = l.contains("attached;");
            v.push(l);
            if attached {
                break;
            }
        }
        v
    })
    .join()
    .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == "portwatch: tracefs was not mounted; mounted it at /sys/kernel/tracing"),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().contains("attached;"), "{lines:?}");
    assert_eq!(st.code(), Some(0));
}

/// The ring's data pages are mapped once, so a record that runs past the
/// end of the area is read in two pieces: 200 failures through a one-page
/// ring (several laps of it, records straddling its end) all come out,
/// whole, none lost.
#[test]
fn records_wrapping_a_small_ring_come_out_whole() {
    let ns = Netns::new("wrap", RANGE);
    let mut t = trace(&["--ringbuf-size", "4"]);
    let mut all = vec![];
    for round in 1..=10 {
        // 20 records (about 2 KiB) at a time: the ring never fills.
        let out = client_once(
            &ns,
            "listen 127.0.0.1 7100 fill 127.0.0.1 7100 4 connect 127.0.0.1 7100 20",
        );
        assert_eq!(out.iter().filter(|l| *l == "err 99").count(), 20);
        let mine = t.events_in(ns.inode, 20 * round, &mut all);
        assert_eq!(mine.len(), 20 * round, "round {round}");
        // This round's client made the last 20, in order.
        let evs = &mine[20 * (round - 1)..];
        let pid = evs[0]["pid"].as_u64().unwrap() as u32;
        for ev in evs {
            assert_common(ev, "connect", "EADDRNOTAVAIL", pid, "pwclient", &ns, RANGE);
            assert_eq!(ev["daddr"], "127.0.0.1", "{ev}");
            assert_eq!(ev["dport"], 7100, "{ev}");
        }
    }
    assert!(!all.iter().any(|v| v["kind"] == "lost"), "{all:?}");
    let (st, _) = t.stop();
    assert!(st.success());
}

/// Ring buffer overflow is counted and reported, never silent: a stopped
/// tracer with a one-page ring buffer misses most of a 200-failure storm,
/// and the `lost` records account for them.
#[test]
fn lost_events_are_reported() {
    let ns = Netns::new("lost", RANGE);
    let mut t = trace(&["--ringbuf-size", "4"]);
    t.signal(libc::SIGSTOP);
    let out = client_once(
        &ns,
        "listen 127.0.0.1 7100 fill 127.0.0.1 7100 4 connect 127.0.0.1 7100 200",
    );
    assert_eq!(out.iter().filter(|l| *l == "err 99").count(), 200);
    t.signal(libc::SIGCONT);
    let mut all = vec![];
    // Wait for at least one lost record (reported every 0.5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !all.iter().any(|v: &Value| v["kind"] == "lost") && std::time::Instant::now() < deadline {
        t.events_in(ns.inode, 0, &mut all);
    }
    let mine = all
        .iter()
        .filter(|v| v["netns"].as_u64() == Some(ns.inode))
        .count();
    let lost: u64 = all
        .iter()
        .filter(|v| v["kind"] == "lost")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert!(
        lost > 0 && mine < 200,
        "a 4 KiB ring buffer cannot hold 200 events: got {mine}, lost {lost}"
    );
    // Other tests' failures may share the buffer, so at least: every one of
    // ours is either delivered or counted.
    assert!(
        mine as u64 + lost >= 200,
        "delivered {mine} + lost {lost} < 200"
    );
    let (st, stderr) = t.stop();
    assert!(st.success());
    assert!(
        stderr.iter().any(|l| l.contains("events lost")),
        "{stderr:?}"
    );
}
