//! Network namespaces that come and go, as pods do on a node: `serve`,
//! `trace` and `top` count every failure made in them, and none of them
//! keeps a namespace alive after its last process has gone.
//!
//! Each namespace here is made by `unshare -n` and held only by the client
//! that fails in it: once the client exits, an open handle in portwatch would
//! be the namespace's last reference (its devices and sockets stay in the
//! kernel for as long as portwatch runs). A test binary of its own, so no
//! other test's failures run at the same time.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Namespaces made and gone, `AT_ONCE` at a time.
const NETNS: usize = 300;
const AT_ONCE: usize = 25;
/// Failing connects in each (its range: 2 ports, both held).
const FAILS: usize = 40;
/// The destination port of every failure here, and of nothing else.
const PORT: u16 = 7933;
/// serve's --scan-interval: handles on gone namespaces close within it.
const SCAN: Duration = Duration::from_secs(1);
/// How often trace and top close them (they have no scan interval).
const SWEEP: Duration = Duration::from_secs(10);

/// `churn_netns` with this test's sizes.
fn churn(n: usize) -> usize {
    churn_netns(n, AT_ONCE, FAILS, PORT)
}

fn metrics(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sum of every sample of `name` whose labels contain `with`.
fn sum(body: &str, name: &str, with: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Failures counted plus records reported lost, as /metrics says now.
fn counted(port: u16) -> f64 {
    let m = metrics(port);
    sum(&m, "portwatch_failures_total", "errno=\"EADDRNOTAVAIL\"")
        + sum(&m, "portwatch_events_lost_total", "")
}

/// Connect failures toward PORT among the JSON lines `t` printed so far
/// (plus records it reported lost).
fn json_failures(t: &mut Tracer, seen: &mut usize) {
    while let Some(l) = t.next_line(Duration::from_millis(50)) {
        let Ok(v) = serde_json::from_str::<Value>(&l) else {
            continue;
        };
        if v["kind"] == "connect" && v["dport"] == PORT && v["errno"] == "EADDRNOTAVAIL" {
            *seen += 1;
        } else if v["kind"] == "lost" {
            *seen += v["count"].as_u64().unwrap() as usize;
        }
    }
}

/// Waits until `pid` holds no namespace that nothing else holds and (with
/// `warm`) its fd count is back to that (give or take the odd HTTP or
/// netlink socket).
fn wait_released(what: &str, pid: u32, warm: Option<usize>, within: Duration) {
    let t0 = Instant::now();
    loop {
        let pins = pinned_by(pid);
        let n = fd_count(pid);
        if pins.is_empty() && warm.is_none_or(|w| n <= w + 2) {
            eprintln!(
                "{what}: {n} fds (warm-up: {warm:?}), no pinned netns, {:?} after the churn",
                t0.elapsed()
            );
            return;
        }
        assert!(
            t0.elapsed() < within,
            "{what}: {} netns still pinned and {n} fds (warm-up: {warm:?}) {:?} after the churn: {:?}",
            pins.len(),
            t0.elapsed(),
            &pins[..pins.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn namespaces_that_go_away_are_counted_and_not_kept_alive() {
    require_root();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let scan = format!("{}s", SCAN.as_secs());
    let mut serve = Tracer::start(&[
        "serve",
        "--listen",
        &listen,
        "--scan-interval",
        &scan,
        "--check-interval",
        "3s",
    ]);
    let mut trace = Tracer::start(&["trace", "--json"]);
    let top = Tracer::start(&["top", "--json", "--interval", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metrics(port).contains("portwatch_build_info") {
        assert!(Instant::now() < deadline, "serve never answered /metrics");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Warm-up: a few namespaces, so every lazily opened socket and file is
    // open, then their handles closed.
    let (mut seen_serve, mut seen_trace) = (0, 0);
    let base = counted(port);
    let warm_fails = churn(AT_ONCE);
    assert_eq!(warm_fails, AT_ONCE * FAILS);
    let wait_counted = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = counted(port);
            if c >= want {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "serve counted {c}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_counted(base + warm_fails as f64);
    let pids = [
        ("serve", serve.pid(), SCAN),
        ("trace", trace.pid(), SWEEP),
        ("top", top.pid(), SWEEP),
    ];
    for (what, pid, every) in pids {
        wait_released(what, pid, None, every * 2 + Duration::from_secs(2));
    }
    // The warm level: settled after two more scans.
    std::thread::sleep(SCAN * 2);
    let warm: Vec<usize> = pids.iter().map(|p| fd_count(p.1)).collect();

    // The churn: 300 namespaces, each failing 40 times and gone.
    let t0 = Instant::now();
    let fails = churn(NETNS);
    eprintln!(
        "churn: {NETNS} netns, {fails} failures in {:?}",
        t0.elapsed()
    );
    assert_eq!(fails, NETNS * FAILS);
    let total = base + (warm_fails + fails) as f64;
    let got = wait_counted(total);
    // Exactly: nothing counted twice, nothing else counted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counted(port), got);
    assert_eq!(
        got, total,
        "serve: every failure counted (or reported lost)"
    );
    let churned = Instant::now();
    for ((what, pid, every), warm) in pids.iter().zip(&warm) {
        let left = (*every * 2 + Duration::from_secs(1)).saturating_sub(churned.elapsed());
        wait_released(what, *pid, Some(*warm), left);
    }

    // The JSON lines: the same failures, on serve's stdout and trace's.
    json_failures(&mut serve, &mut seen_serve);
    json_failures(&mut trace, &mut seen_trace);
    let want = AT_ONCE * FAILS + fails;
    assert_eq!(seen_serve, want, "serve's JSON lines");
    assert_eq!(seen_trace, want, "trace's JSON lines");

    for t in [serve, trace, top] {
        let (st, _) = t.stop();
        assert!(st.success(), "{st}");
    }
}
