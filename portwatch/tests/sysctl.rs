//! Writes of the port sysctls, for real: processes in test network
//! namespaces write `ip_local_port_range` and friends (with `sysctl -w`, as
//! the incident's initContainer did, or straight into /proc/sys), and
//! `portwatch trace --json` must report each write once, with its writer,
//! its pod (a kubelet-named cgroup the test makes), its netns and its
//! verdict; reads must report nothing. Only the test namespaces' own
//! sysctls are ever written; a test netns stands in for the node through
//! `PORTWATCH_NODE_NETNS`.

mod common;

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{cgroups::Cgroups, *};
use serde_json::Value;

const RANGE: (u16, u16) = (40000, 40003);

fn trace_env(extra: &[&str], envs: &[(&str, &str)]) -> Tracer {
    let mut args = vec!["trace", "--json"];
    args.extend_from_slice(extra);
    let t = Tracer::start_env(&args, envs);
    let errs = t.stderr.lock().unwrap().clone();
    assert!(
        errs.iter()
            .any(|l| l.contains("sysctl writes: cgroup/sysctl on the cgroup2 root")),
        "start-up must say the sysctl watch attached: {errs:?}"
    );
    t
}

fn trace() -> Tracer {
    trace_env(&[], &[])
}

/// Runs `script` with `sh -c` in `ns`, as a host process; panics if it fails.
fn sh_in(ns: &Netns, script: &str) -> std::process::Output {
    let out = ns.cmd("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_in(ns: &Netns, key: &str) -> String {
    let out = sh_in(ns, &format!("cat /proc/sys/{}", key.replace('.', "/")));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sysctl_write records of netns `ns`, waiting until `n` have come
/// (or `limit`), then half a second more for any extra. Every line read
/// lands in `all`.
fn writes_in(
    t: &mut Tracer,
    ns: &Netns,
    n: usize,
    limit: Duration,
    all: &mut Vec<Value>,
) -> Vec<Value> {
    let is_mine = |v: &Value| v["kind"] == "sysctl_write" && v["netns"].as_u64() == Some(ns.inode);
    let mut count = all.iter().filter(|v| is_mine(v)).count();
    let mut take = |l: String, count: &mut usize| {
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        *count += usize::from(is_mine(&v));
        all.push(v);
    };
    let deadline = Instant::now() + limit;
    while count < n && Instant::now() < deadline {
        if let Some(l) = t.next_line(Duration::from_millis(100)) {
            take(l, &mut count);
        }
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Some(l) = t.next_line(Duration::from_millis(50)) {
            take(l, &mut count);
        }
    }
    all.iter().filter(|v| is_mine(v)).cloned().collect()
}

/// GET /metrics over a plain TCP connection (the VM guests have no curl).
fn get_metrics(addr: &str) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp
}

/// What every sysctl_write record carries.
fn assert_write(v: &Value, name: &str, old: &str, new: &str, ns: &Netns) {
    assert_eq!(v["schema"], 1, "{v}");
    assert_eq!(v["kind"], "sysctl_write", "{v}");
    assert_eq!(v["name"], name, "{v}");
    assert_eq!(v["old"], old, "{v}");
    assert_eq!(v["new"], new, "{v}");
    assert_eq!(v["old_truncated"], false, "{v}");
    assert_eq!(v["new_truncated"], false, "{v}");
    assert_eq!(v["netns"], ns.inode, "{v}");
    assert_eq!(v["uid"], 0, "{v}");
    assert!(v["cgroup_id"].as_u64().is_some_and(|c| c > 0), "{v}");
    assert_eq!(v["refused"], false, "{v}");
    let t = v["time"].as_str().unwrap();
    assert_eq!(t.len(), 27, "RFC 3339 with microseconds: {t}");
}

/// The incident, in a pod's own netns: a process in a kubelet-named pod
/// cgroup runs `sysctl -w net.ipv4.ip_local_port_range="1024 65535"`.
/// The record names the writer, its pod and container (from the cgroup
/// path), its netns, the old and new value; widening a pod's own range
/// exposes no NodePort (that is the node's business), so the verdict is ok.
#[test]
fn a_pod_widening_its_range_is_reported_with_its_pod() {
    let ns = Netns::new("sxpod", RANGE);
    let mut cgs = Cgroups::new();
    let p = std::process::id();
    let uid = format!("{p:08x}-5157-4c7a-9d2e-0123456789ab");
    let cid = format!("{p:08x}{}", "5c7e1d00".repeat(7));
    assert_eq!(cid.len(), 64);
    let path = cgs.make(&format!("kubepods/burstable/pod{uid}/{cid}"));
    let mut t = trace();
    // The writer waits on stdin until the test has moved it into the pod's
    // cgroup (`ip netns exec` remounts /sys: it cannot move itself).
    let mut child = ns
        .cmd("sh")
        .args([
            "-c",
            "read go && exec sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id(); // `ip netns exec` and `exec` keep the pid.
    let cgid = cgs.enter(&path, pid);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read_in(&ns, "net.ipv4.ip_local_port_range"), "1024 65535");

    let mut all = vec![];
    let evs = writes_in(&mut t, &ns, 1, Duration::from_secs(10), &mut all);
    assert_eq!(evs.len(), 1, "exactly the one write: {evs:?}");
    let v = &evs[0];
    assert_write(
        v,
        "net.ipv4.ip_local_port_range",
        "40000 40003",
        "1024 65535",
        &ns,
    );
    assert_eq!(v["pid"], pid, "{v}");
    assert_eq!(v["tid"], pid, "{v}");
    assert_eq!(v["comm"], "sysctl", "{v}");
    assert_eq!(v["cgroup_id"], cgid, "{v}");
    assert_eq!(v["cgroup"], path.as_str(), "{v}");
    assert_eq!(v["pod"]["uid"], uid.as_str(), "{v}");
    assert_eq!(v["pod"]["container_id"], cid.as_str(), "{v}");
    assert_eq!(v["node_netns"], false, "{v}");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["usable"], serde_json::json!([4, 64512]), "{v}");
}

/// One host process writes a sequence into its netns, reading in between:
/// each write is one record, in order, with the verdict its values earn;
/// the reads (`cat`, `sysctl` without -w) make none.
#[test]
fn each_write_gets_its_verdict_and_reads_report_nothing() {
    let ns = Netns::new("sxseq", RANGE);
    let mut t = trace();
    let f = |k: &str| format!("/proc/sys/net/ipv4/{k}");
    let script = format!(
        "set -e
         echo '40000 40001' > {r}; cat {r} >/dev/null
         echo '40000 40010' > {r}; sysctl net.ipv4.ip_local_port_range >/dev/null
         echo '41000 41003' > {r}; cat {r} {rp} {tw} {up} >/dev/null
         echo '8080,41000' > {rp}
         echo '41000' > {rp}
         echo 1 > {tw}
         echo 2048 > {up}
         cat {up} >/dev/null; sysctl -a >/dev/null 2>&1 || true",
        r = f("ip_local_port_range"),
        rp = f("ip_local_reserved_ports"),
        tw = f("tcp_tw_reuse"),
        up = f("ip_unprivileged_port_start"),
    );
    let mut child = ns.cmd("sh").args(["-c", &script]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let mut all = vec![];
    let evs = writes_in(&mut t, &ns, 7, Duration::from_secs(10), &mut all);
    let got: Vec<(&str, &str, &str, &str)> = evs
        .iter()
        .map(|v| {
            assert_eq!(v["pid"], pid, "{v}");
            assert_eq!(v["comm"], "sh", "{v}");
            assert_eq!(v["refused"], false, "{v}");
            assert_eq!(v["node_netns"], false, "{v}");
            assert!(v["pod"].is_null(), "a host process: {v}");
            (
                v["name"].as_str().unwrap(),
                v["old"].as_str().unwrap(),
                v["new"].as_str().unwrap(),
                v["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    let tw_old = evs.get(5).map(|v| v["old"].as_str().unwrap().to_string());
    let up_old = evs.get(6).map(|v| v["old"].as_str().unwrap().to_string());
    assert_eq!(
        got,
        vec![
            (
                "net.ipv4.ip_local_port_range",
                "40000 40003",
                "40000 40001",
                "narrows_range"
            ),
            (
                "net.ipv4.ip_local_port_range",
                "40000 40001",
                "40000 40010",
                "parity"
            ),
            (
                "net.ipv4.ip_local_port_range",
                "40000 40010",
                "41000 41003",
                "narrows_range"
            ),
            ("net.ipv4.ip_local_reserved_ports", "", "8080,41000", "ok"),
            (
                "net.ipv4.ip_local_reserved_ports",
                "8080,41000",
                "41000",
                "removes_reservation"
            ),
            (
                "net.ipv4.tcp_tw_reuse",
                tw_old.as_deref().unwrap(),
                "1",
                "ok"
            ),
            (
                "net.ipv4.ip_unprivileged_port_start",
                up_old.as_deref().unwrap(),
                "2048",
                "ok"
            ),
        ],
        "every write once, in order, and no record for a read: {evs:?}"
    );
    assert_eq!(evs[0]["usable"], serde_json::json!([4, 2]));
    assert_eq!(evs[1]["usable"], serde_json::json!([2, 11]));
    assert_eq!(evs[4]["removed"], "8080");
    // The values the kernel applied are the ones reported as new.
    assert_eq!(read_in(&ns, "net.ipv4.ip_local_port_range"), "41000 41003");
    assert_eq!(read_in(&ns, "net.ipv4.ip_local_reserved_ports"), "41000");
}

/// With a test netns standing in for the node (`PORTWATCH_NODE_NETNS`),
/// widening its range over the NodePorts is `creates_nodeport_overlap`,
/// naming the exposed ports; so is emptying the reservation that covered
/// them. The same write in another netns is a pod's business: ok.
#[test]
fn widening_the_node_range_over_the_nodeports_is_an_overlap() {
    let node = Netns::new("sxnode", (32768, 60999));
    let pod = Netns::new("sxother", (32768, 60999));
    let node_path = format!("/run/netns/{}", node.name);
    let mut t = trace_env(&[], &[("PORTWATCH_NODE_NETNS", &node_path)]);
    let cmd = "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" >/dev/null";
    sh_in(&node, cmd);
    sh_in(&pod, cmd);
    sh_in(
        &node,
        "echo 30000-32767 > /proc/sys/net/ipv4/ip_local_reserved_ports",
    );
    sh_in(
        &node,
        "echo 8080 > /proc/sys/net/ipv4/ip_local_reserved_ports",
    );
    let mut all = vec![];
    let n = writes_in(&mut t, &node, 3, Duration::from_secs(10), &mut all);
    let p = writes_in(&mut t, &pod, 1, Duration::from_secs(10), &mut all);
    assert_eq!((n.len(), p.len()), (3, 1), "{n:?} {p:?}");
    assert_write(
        &n[0],
        "net.ipv4.ip_local_port_range",
        "32768 60999",
        "1024 65535",
        &node,
    );
    assert_eq!(n[0]["node_netns"], true);
    assert_eq!(n[0]["verdict"], "creates_nodeport_overlap", "{}", n[0]);
    assert_eq!(n[0]["exposed"], "30000-32767");
    assert_eq!(n[0]["usable"], serde_json::json!([28232, 64512]));
    assert_eq!(n[0]["comm"], "sysctl");
    // Reserving the NodePorts is the fix: ok. Taking them out again,
    // with the wide range in place, exposes them again.
    assert_eq!(n[1]["verdict"], "ok", "{}", n[1]);
    assert_eq!(n[2]["verdict"], "creates_nodeport_overlap", "{}", n[2]);
    assert_eq!(n[2]["removed"], "30000-32767");
    assert_write(
        &p[0],
        "net.ipv4.ip_local_port_range",
        "32768 60999",
        "1024 65535",
        &pod,
    );
    assert_eq!(p[0]["node_netns"], false);
    assert_eq!(p[0]["verdict"], "ok", "{}", p[0]);
    let (st, _) = t.stop();
    assert!(st.success());
}

/// The table: one line per write, and its hint.
#[test]
fn the_table_shows_a_write_and_its_hint() {
    let node = Netns::new("sxtab", (32768, 60999));
    let node_path = format!("/run/netns/{}", node.name);
    let mut t = Tracer::start_env(&["trace"], &[("PORTWATCH_NODE_NETNS", &node_path)]);
    sh_in(
        &node,
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" >/dev/null",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = vec![];
    while Instant::now() < deadline
        && !lines
            .iter()
            .any(|l: &String| l.contains("\u{2514}") && l.contains("NodePort overlap"))
    {
        if let Some(l) = t.next_line(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    let i = lines
        .iter()
        .position(|l| {
            l.contains("net.ipv4.ip_local_port_range") && l.contains(&node.inode.to_string())
        })
        .unwrap_or_else(|| panic!("no line for the write: {lines:?}"));
    let row = &lines[i];
    assert!(
        row.contains(" sysctl  net.ipv4.ip_local_port_range \"32768 60999\" -> \"1024 65535\""),
        "{row}"
    );
    assert!(row.contains("(node)"), "{row}");
    let hint = &lines[i + 1];
    assert!(
        hint.contains("creates a NodePort overlap in the node's netns")
            && hint.ends_with("sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767"),
        "{hint}"
    );
}

/// A burst of 10,000 writes: every one is a record or counted lost. One
/// tracer keeps up; a stopped one with a 64 KiB ring cannot, and its
/// `lost` records make up the difference.
#[test]
fn a_burst_of_writes_is_counted_whole() {
    const N: usize = 10_000;
    let ns = Netns::new("sxburst", RANGE);
    let mut live = trace();
    let mut stopped = trace_env(&["--ringbuf-size", "64"], &[]);
    stopped.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    sh_in(
        &ns,
        &format!(
            "i=0; while [ $i -lt {N} ]; do echo $((i % 3)) > /proc/sys/net/ipv4/tcp_tw_reuse; i=$((i + 1)); done"
        ),
    );
    let took = t0.elapsed();
    stopped.signal(libc::SIGCONT);
    let mut all = vec![];
    let got = writes_in(&mut live, &ns, N, Duration::from_secs(120), &mut all);
    let lost_of = |all: &[Value]| -> u64 {
        all.iter()
            .filter(|v| v["kind"] == "lost")
            .map(|v| v["count"].as_u64().unwrap())
            .sum()
    };
    let lost = lost_of(&all);
    assert!(
        got.len() <= N,
        "one record per write at most: {}",
        got.len()
    );
    assert!(
        got.len() as u64 + lost >= N as u64,
        "delivered {} + lost {lost} < {N}",
        got.len()
    );
    // Each record is one of the burst's writes, with the value written.
    assert!(got
        .iter()
        .all(|v| v["name"] == "net.ipv4.tcp_tw_reuse" && v["verdict"] == "ok"));
    let mut all2 = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while lost_of(&all2) == 0 && Instant::now() < deadline {
        writes_in(&mut stopped, &ns, 0, Duration::ZERO, &mut all2);
    }
    let got2 = writes_in(&mut stopped, &ns, N, Duration::from_secs(2), &mut all2).len();
    let lost2 = lost_of(&all2);
    assert!(
        lost2 > 0 && got2 < N,
        "a 64 KiB ring cannot hold {N} records of 312 bytes: got {got2}, lost {lost2}"
    );
    assert!(
        got2 as u64 + lost2 >= N as u64,
        "stopped tracer: delivered {got2} + lost {lost2} < {N}"
    );
    eprintln!(
        "burst: {N} writes in {took:?}; live tracer: {} delivered, {lost} lost; stopped one: {got2} delivered, {lost2} lost",
        got.len()
    );
}

/// `serve --guard-port-range`, with a test netns standing in for the node:
/// `sysctl -w` widening the node's range over the NodePorts gets EPERM and
/// the range stays; a narrowing write there goes through; the same wide
/// write in another netns goes through (a pod's own netns is never
/// refused). Under a wide range shielded by the reservation, writes of the
/// reservation that drop the NodePorts get EPERM too. serve prints each write as a JSON line (`refused` true for the
/// one refused) and counts them in `portwatch_sysctl_writes_total`.
#[test]
fn serve_guard_refuses_only_the_node_overlap() {
    let node = Netns::new("sxguard", (32768, 60999));
    let pod = Netns::new("sxgpod", (32768, 60999));
    let node_path = format!("/run/netns/{}", node.name);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut t = Tracer::start_env(
        &["serve", "--listen", &listen, "--guard-port-range"],
        &[("PORTWATCH_NODE_NETNS", &node_path)],
    );
    let errs = t.stderr.lock().unwrap().clone();
    assert!(
        errs.iter().any(|l| l.contains("guarding the node's netns")),
        "{errs:?}"
    );
    let wide = "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"";
    let refused = node.cmd("sh").args(["-c", wide]).output().unwrap();
    assert!(!refused.status.success(), "the node's write must fail");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Operation not permitted"),
        "EPERM: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        read_in(&node, "net.ipv4.ip_local_port_range"),
        "32768 60999"
    );
    sh_in(
        &node,
        "echo '40000 40001' > /proc/sys/net/ipv4/ip_local_port_range",
    );
    assert_eq!(
        read_in(&node, "net.ipv4.ip_local_port_range"),
        "40000 40001"
    );
    sh_in(&pod, &format!("{wide} >/dev/null"));
    assert_eq!(read_in(&pod, "net.ipv4.ip_local_port_range"), "1024 65535");

    let mut all = vec![];
    let n = writes_in(&mut t, &node, 2, Duration::from_secs(10), &mut all);
    let p = writes_in(&mut t, &pod, 1, Duration::from_secs(10), &mut all);
    assert_eq!((n.len(), p.len()), (2, 1), "{n:?} {p:?}");
    assert_eq!(n[0]["new"], "1024 65535");
    assert_eq!(n[0]["refused"], true, "{}", n[0]);
    assert_eq!(n[0]["verdict"], "creates_nodeport_overlap", "{}", n[0]);
    assert_eq!(n[0]["comm"], "sysctl");
    assert_eq!(n[1]["new"], "40000 40001");
    assert_eq!(n[1]["refused"], false, "{}", n[1]);
    assert_eq!(n[1]["verdict"], "narrows_range", "{}", n[1]);
    assert_eq!(p[0]["refused"], false, "{}", p[0]);
    assert_eq!(p[0]["verdict"], "ok", "{}", p[0]);

    let body = get_metrics(&listen);
    let count = |verdict: &str, refused: bool| -> u64 {
        let head = format!(
            "portwatch_sysctl_writes_total{{name=\"net.ipv4.ip_local_port_range\",verdict=\"{verdict}\",namespace=\"\",pod=\"\",refused=\"{refused}\"}} "
        );
        body.lines()
            .find_map(|l| l.strip_prefix(&head)?.parse().ok())
            .unwrap_or(0)
    };
    // Other tests write in other netns meanwhile: at least ours.
    assert!(count("creates_nodeport_overlap", true) >= 1, "{body}");
    assert!(count("narrows_range", false) >= 1, "{body}");
    assert!(count("ok", false) >= 1, "{body}");

    // Reserving the NodePorts first makes the wide range safe: the guard
    // follows the node's reservation (refreshed before the write's record
    // goes out, so waiting for the record is waiting for the guard).
    sh_in(
        &node,
        "echo 30000-32767 > /proc/sys/net/ipv4/ip_local_reserved_ports",
    );
    assert_eq!(
        writes_in(&mut t, &node, 3, Duration::from_secs(10), &mut all).len(),
        3
    );
    sh_in(&node, &format!("{wide} >/dev/null"));
    assert_eq!(read_in(&node, "net.ipv4.ip_local_port_range"), "1024 65535");
    // Under the wide range the reservation is what shields the NodePorts:
    // emptying it is refused, and so is a list that holds them only in
    // pieces (the guard wants each shielded span in one item: it refuses
    // more, never less); one that keeps them in one item goes through.
    // Narrowing a range goes through.
    let clear = node
        .cmd("sh")
        .args(["-c", "echo > /proc/sys/net/ipv4/ip_local_reserved_ports"])
        .output()
        .unwrap();
    assert!(
        !clear.status.success(),
        "emptying the reservation must fail"
    );
    assert_eq!(
        read_in(&node, "net.ipv4.ip_local_reserved_ports"),
        "30000-32767"
    );
    let pieces = node
        .cmd("sh")
        .args([
            "-c",
            "echo 30000-31000,31001-32767 > /proc/sys/net/ipv4/ip_local_reserved_ports",
        ])
        .output()
        .unwrap();
    assert!(!pieces.status.success(), "pieces are refused");
    sh_in(
        &node,
        "echo 8080,30000-32767 > /proc/sys/net/ipv4/ip_local_reserved_ports",
    );
    assert_eq!(
        read_in(&node, "net.ipv4.ip_local_reserved_ports"),
        "8080,30000-32767"
    );
    sh_in(
        &node,
        "echo '1024 65533' > /proc/sys/net/ipv4/ip_local_port_range",
    );
    assert_eq!(read_in(&node, "net.ipv4.ip_local_port_range"), "1024 65533");
    let n = writes_in(&mut t, &node, 8, Duration::from_secs(10), &mut all);
    let seen: Vec<(&str, &str, bool)> = n[2..]
        .iter()
        .map(|v| {
            (
                v["new"].as_str().unwrap(),
                v["verdict"].as_str().unwrap(),
                v["refused"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("30000-32767", "ok", false),
            ("1024 65535", "ok", false),
            ("", "creates_nodeport_overlap", true),
            ("30000-31000,31001-32767", "ok", true),
            ("8080,30000-32767", "ok", false),
            ("1024 65533", "narrows_range", false),
        ],
        "{n:?}"
    );
    let (st, _) = t.stop();
    assert!(st.success());
}

/// A fresh directory of this test process's own.
fn tempfile_dir(name: &str) -> String {
    let d = std::env::temp_dir().join(format!("portwatch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

/// `check` names who made a finding's setting: `serve` keeps the last
/// writes per netns in its state directory, and `check` (run in the netns
/// standing in for the node) puts the last write of the range on the
/// nodeport_overlap finding, writer, pod and values, in JSON and in the
/// table. A later write serve does not see makes that write stale
/// (`current` false); a netns with no write gets null.
#[test]
fn check_names_the_last_writer_serve_saw() {
    let node = Netns::new("sxlast", (32768, 60999));
    let other = Netns::new("sxlast2", (1024, 65535));
    let state = tempfile_dir("sxlast");
    let file = format!("{state}/sysctl-writes.jsonl");
    let mut cgs = Cgroups::new();
    let p = std::process::id();
    let uid = format!("{p:08x}-1a57-4c7a-9d2e-0123456789ab");
    let cid = format!("{p:08x}{}", "1a57e1d0".repeat(7));
    let path = cgs.make(&format!("kubepods/besteffort/pod{uid}/{cid}"));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut t = Tracer::start_env(&["serve", "--listen", &listen, "--state-dir", &state], &[]);

    let mut child = node
        .cmd("sh")
        .args([
            "-c",
            "read go && exec sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    cgs.enter(&path, pid);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let mut all = vec![];
    assert_eq!(
        writes_in(&mut t, &node, 1, Duration::from_secs(10), &mut all).len(),
        1
    );
    // serve saves at most once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&file).is_ok_and(|s| s.contains(&uid)) {
        assert!(Instant::now() < deadline, "{file} never named the write");
        std::thread::sleep(Duration::from_millis(100));
    }

    let check = |ns: &Netns, json: bool| check_as_node(ns, json, &["--writes-file", &file]);
    let findings = |ns: &Netns| -> Vec<Value> {
        let out = check(ns, true);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let v = findings(&node);
    let f = v.iter().find(|f| f["check"] == "nodeport_overlap").unwrap();
    let w = &f["last_write"];
    assert_eq!(w["name"], "net.ipv4.ip_local_port_range", "{f}");
    assert_eq!(w["old"], "32768 60999", "{f}");
    assert_eq!(w["new"], "1024 65535", "{f}");
    assert_eq!(w["pid"], pid, "{f}");
    assert_eq!(w["comm"], "sysctl", "{f}");
    assert_eq!(w["pod"]["uid"], uid.as_str(), "{f}");
    assert_eq!(w["pod"]["container_id"], cid.as_str(), "{f}");
    assert_eq!(w["netns"], node.inode, "{f}");
    assert_eq!(
        w["verdict"], "ok",
        "a pod-netns write as serve judged it: {f}"
    );
    assert_eq!(w["current"], true, "{f}");
    assert_eq!(v.last().unwrap()["last_writes"], file.as_str());
    let table = String::from_utf8(check(&node, false).stdout).unwrap();
    assert!(
        table.contains(&format!(
            "    last write: {} sysctl (pid {pid}, pod {uid}) net.ipv4.ip_local_port_range: \"32768 60999\" -> \"1024 65535\"\n",
            w["time"].as_str().unwrap()
        )),
        "{table}"
    );
    // A netns nobody wrote in: its findings name no writer.
    let v = findings(&other);
    let f = v.iter().find(|f| f["check"] == "nodeport_overlap").unwrap();
    assert_eq!(f["last_write"], Value::Null, "{f}");

    // Changed behind serve's back: the write is still the last one seen,
    // and no longer what the netns holds.
    let (st, _) = t.stop();
    assert!(st.success());
    sh_in(
        &node,
        "echo '1024 65533' > /proc/sys/net/ipv4/ip_local_port_range",
    );
    let v = findings(&node);
    let f = v.iter().find(|f| f["check"] == "nodeport_overlap").unwrap();
    assert_eq!(f["last_write"]["new"], "1024 65535", "{f}");
    assert_eq!(f["last_write"]["current"], false, "{f}");
    let table = String::from_utf8(check(&node, false).stdout).unwrap();
    assert!(
        table.contains("(changed since by a write portwatch did not see)"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&state);
}
