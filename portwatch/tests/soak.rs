//! A soak of `portwatch serve` under the churn of a real node, for about a
//! minute and a half: 500 network namespaces made and gone, 50 pods that
//! come and go through a real containerd over CRI, containerd stopped and
//! started again half-way, failure bursts that overflow the ring buffer
//! (serve stopped with SIGSTOP while 60,000 connects fail), and Debian's
//! Prometheus scraping every second throughout.
//!
//! Asserted: serve never exits or panics, `/readyz` answers 200 whenever it
//! is asked (except while serve is stopped on purpose); every failure
//! provoked is counted in `portwatch_failures_total` or in
//! `portwatch_events_lost_total`, exactly; pods made after the runtime's
//! restart get their names; RSS and open fds after the churn are within
//! 10 % of their level after the warm-up; no fd pins a gone namespace; the
//! gauges of gone pods and namespaces are dropped within two scans.
//!
//! Host-only (a real containerd), and a binary of its own: no other test's
//! failures run at the same time.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{containerd::*, prometheus::Prometheus, *};

const POD_NAMESPACE: &str = "pw-soak";
/// Pods made and removed, one after the other.
const PODS: usize = 50;
/// Failures in each pod (its container's client, in a 4-port range).
const POD_FAILS: usize = 3;
/// Namespaces made and gone with each pod, failing NETNS_FAILS times each.
const NETNS_PER_POD: usize = 10;
const NETNS_FAILS: usize = 4;
const CHURN_PORT: u16 = 7934;
/// Failures in one burst while serve is stopped: more than its ring
/// buffer (4 MiB) holds.
const BURST: usize = 60_000;
const SCAN: &str = "1s";

fn metrics(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics")).1
}

/// The sum of every sample of `name` whose labels contain all of `with`.
fn sum(body: &str, name: &str, with: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Failures counted plus records reported lost, as /metrics says now.
fn counted(port: u16) -> f64 {
    let m = metrics(port);
    sum(&m, "portwatch_failures_total", &["errno=\"EADDRNOTAVAIL\""])
        + sum(&m, "portwatch_events_lost_total", &[])
}

fn wait_counted(port: u16, want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = counted(port);
        if c == want {
            return;
        }
        assert!(
            c < want,
            "{what}: counted {c}, more than the {want} provoked"
        );
        assert!(
            Instant::now() < deadline,
            "{what}: counted {c} of the {want} provoked"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Stops serve, makes BURST connects fail in a fresh netns, lets serve go
/// on: its ring buffer overflows. Returns the failures provoked.
fn burst(serve_pid: u32, readyz_paused: &AtomicBool) -> usize {
    let ns = Netns::new("burst", (44000, 44001));
    readyz_paused.store(true, Ordering::SeqCst);
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(serve_pid as i32, libc::SIGSTOP) };
    let out = client_once(
        &ns,
        &format!("listen 127.0.0.1 7300 fill 127.0.0.1 7300 2 connect 127.0.0.1 7300 {BURST}"),
    );
    // SAFETY: as above.
    unsafe { libc::kill(serve_pid as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(500));
    readyz_paused.store(false, Ordering::SeqCst);
    out.iter().filter(|l| *l == "err 99").count()
}

/// One pod: made through CRI, its container's client fails POD_FAILS
/// times in a netns of its own; once serve has counted them (`counted`
/// reaches `want + POD_FAILS`), the pod is removed.
fn pod_round(cd: &mut Containerd, i: usize, port: u16, want: f64) -> usize {
    let uid = format!("{:08x}-50a6-4abc-8def-{:012x}", std::process::id(), i);
    let name = format!("soak-{i}");
    let (sandbox, cid) = cd.run_pod(&uid, (POD_NAMESPACE, &name, "client"));
    let ns = Netns::new("soakpod", (43000, 43003));
    let c = failing_client_in(
        &ns,
        &format!("/kubepods/burstable/pod{uid}/{cid}"),
        POD_FAILS,
    );
    c.finish();
    drop(ns);
    wait_counted(port, want + POD_FAILS as f64, &format!("pod soak-{i}"));
    cd.remove_pod(&sandbox, &uid);
    POD_FAILS
}

#[test]
fn serve_holds_up_under_a_node_s_churn() {
    require_root();
    let t_all = Instant::now();
    let mut cd = Containerd::start();
    let image = build_image(&cd.dir);
    cd.ctr(&["images", "import", image.to_str().unwrap()]);
    let sock = format!("unix://{}", cd.sock.display());

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serve = Tracer::start_with(
        &[
            "serve",
            "--listen",
            &listen,
            "--scan-interval",
            SCAN,
            "--check-interval",
            "5s",
            "--cri-endpoint",
            &sock,
            "--detail-budget",
            "500ms",
        ],
        false,
    );
    let pid = serve.pid();
    // Its JSON lines (every failure, a hundred thousand of them) are read
    // and dropped: a full pipe would stop serve.
    let mut out = serve.child.stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let prom = Prometheus::start(port);
    prom.wait_value("up{job=\"portwatch\"}", 1.0);

    // /readyz, asked twice a second from start to end.
    let paused = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(Mutex::new(Vec::<String>::new()));
    let poller = {
        let (paused, done, not_ready) = (paused.clone(), done.clone(), not_ready.clone());
        std::thread::spawn(move || {
            let mut asked = 0;
            while !done.load(Ordering::SeqCst) {
                if !paused.load(Ordering::SeqCst) {
                    let (code, body) = http_get(&format!("http://127.0.0.1:{port}/readyz"));
                    // A stop may begin between the check and the request.
                    if code != 200 && !paused.load(Ordering::SeqCst) {
                        not_ready.lock().unwrap().push(format!("{code} {body:?}"));
                    }
                    asked += 1;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            asked
        })
    };

    // Warm-up: a little of everything, so every buffer and cache has met
    // its load once.
    let base = counted(port);
    let mut provoked = 0;
    provoked += churn_netns(25, 25, NETNS_FAILS, CHURN_PORT);
    provoked += pod_round(&mut cd, 1000, port, base + provoked as f64);
    // Twice: the second burst finds the first one's buffers (the
    // allocator's arenas reach their level by then).
    provoked += burst(pid, &paused);
    provoked += burst(pid, &paused);
    wait_counted(port, base + provoked as f64, "warm-up");
    std::thread::sleep(Duration::from_secs(3));
    let (rss_warm, fds_warm) = (status_kb(pid, "VmRSS"), fd_count(pid));
    eprintln!("after the warm-up: RSS {rss_warm} kB, {fds_warm} fds, {provoked} failures");

    // The churn.
    let t0 = Instant::now();
    let mut restarted_at = None;
    for i in 0..PODS {
        provoked += pod_round(&mut cd, i, port, base + provoked as f64);
        provoked += churn_netns(NETNS_PER_POD, NETNS_PER_POD, NETNS_FAILS, CHURN_PORT);
        if i == PODS / 2 {
            let t = Instant::now();
            cd.restart(Duration::from_secs(3));
            eprintln!("containerd down and up again in {:?}", t.elapsed());
            restarted_at = Some(i);
        }
        if i == 10 || i == 40 {
            provoked += burst(pid, &paused);
        }
    }
    eprintln!(
        "churn: {PODS} pods, {} netns, 2 bursts, a runtime restart in {:?}",
        PODS * NETNS_PER_POD,
        t0.elapsed()
    );
    wait_counted(port, base + provoked as f64, "after the churn");
    let m = metrics(port);
    let lost = sum(&m, "portwatch_events_lost_total", &[]);
    eprintln!("{provoked} failures provoked: counted or lost ({lost} lost)");
    assert!(lost > 0.0, "the bursts overflowed no ring buffer");

    // Names, before the restart and after it.
    let restarted = restarted_at.unwrap();
    for i in [restarted - 1, restarted + 1, PODS - 1] {
        let pod = format!("pod=\"soak-{i}\"");
        let n = sum(
            &m,
            "portwatch_failures_total",
            &[&format!("namespace=\"{POD_NAMESPACE}\""), &pod],
        );
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("portwatch_failures_total{") && !l.contains("pod=\"\""))
            .collect();
        assert_eq!(
            n, POD_FAILS as f64,
            "failures of soak-{i} under its name: {lines:#?}"
        );
    }

    // The gauges of gone pods and netns: dropped within two scans.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let held = held_namespaces();
        let m = metrics(port);
        let stale: Vec<&str> = m
            .lines()
            .filter(|l| {
                l.starts_with("portwatch_ephemeral_ports_usable{")
                    || l.starts_with("portwatch_ephemeral_ports_in_use{")
            })
            .filter(|l| {
                l.split("netns=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next()?.parse::<u32>().ok())
                    .is_some_and(|ino| !held.contains(&ino))
            })
            .collect();
        let pods: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("portwatch_ephemeral_ports_") && l.contains("pod=\"soak-"))
            .collect();
        if stale.is_empty() && pods.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gauges of gone netns or pods still exported: {stale:?} {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Memory and descriptors back near the warm-up level, nothing pinned.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut rss, mut fds);
    loop {
        (rss, fds) = (status_kb(pid, "VmRSS"), fd_count(pid));
        let pins = pinned_by(pid);
        if fds <= fds_warm + fds_warm / 10 && pins.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fds {fds_warm} -> {fds}, pinned netns {pins:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("after the churn: RSS {rss} kB ({rss_warm} after warm-up), {fds} fds ({fds_warm})");
    assert!(
        rss <= rss_warm + rss_warm / 10,
        "RSS grew from {rss_warm} kB to {rss} kB"
    );

    done.store(true, Ordering::SeqCst);
    let asked = poller.join().unwrap();
    let bad = not_ready.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "/readyz was not 200 {} of {asked} times: {bad:?}",
        bad.len()
    );
    let errs = serve.stderr.lock().unwrap().clone();
    assert!(
        !errs.iter().any(|l| l.contains("panicked")),
        "serve panicked: {errs:?}"
    );
    let (st, _) = serve.stop();
    assert!(st.success(), "serve: {st}");
    drop(prom);
    drop(cd);
    eprintln!(
        "soak: {:?} in all, /readyz asked {asked} times",
        t_all.elapsed()
    );
}
