//! `portwatch check` against real network namespaces, sysctls and sockets.
//!
//! The node checks apply to the netns portwatch runs in, so the NodePort
//! test runs portwatch inside its test netns (`ip netns exec`), which then
//! stands for a node. Every sysctl written here is written inside a netns
//! the test made.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

struct Run {
    code: Option<i32>,
    findings: Vec<Value>,
    summary: Value,
    stderr: String,
}

fn parse(out: std::process::Output) -> Run {
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut v: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = v
        .pop()
        .unwrap_or_else(|| panic!("no output ({}): {stderr}", out.status));
    assert_eq!(summary["kind"], "summary", "{summary}");
    assert_eq!(summary["netns_sockets_unreadable"], 0, "{summary} {stderr}");
    assert_eq!(summary["schema"], 3, "{summary}");
    for f in &v {
        assert_eq!(f["kind"], "finding", "{f}");
        assert_eq!(f["schema"], 3, "{f}");
        assert!(f["pod"].is_null(), "{f}");
        assert!(
            ["info", "warning", "critical"].contains(&f["severity"].as_str().unwrap()),
            "{f}"
        );
    }
    Run {
        code: out.status.code(),
        findings: v,
        summary,
        stderr,
    }
}

/// `portwatch check --json --netns <ns>`, run from the host.
fn check_from_host(ns: &Netns) -> Run {
    require_root();
    let out = Command::new(portwatch_bin())
        .args([
            "check",
            "--json",
            "--netns",
            &format!("/run/netns/{}", ns.name),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    parse(out)
}

/// `portwatch check --netns <ns>` run inside `ns`: `ns` is the node.
fn check_as_node(ns: &Netns, json: bool) -> std::process::Output {
    common::check_as_node(ns, json, &[])
}

fn of<'a>(r: &'a Run, check: &str) -> Vec<&'a Value> {
    r.findings.iter().filter(|f| f["check"] == check).collect()
}

fn read_in(ns: &Netns, key: &str) -> String {
    let out = ns
        .cmd("cat")
        .arg(format!("/proc/sys/{key}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run_fix(ns: &Netns, fix: &str) {
    ns.sh(fix);
}

/// Range 1024-65535 and no reservation: a connect() may take a NodePort.
/// The printed fix, run in that netns, makes the finding go away.
#[test]
fn nodeport_overlap_found_and_fixed() {
    let ns = Netns::new("knp", (1024, 65535));
    assert_eq!(read_in(&ns, "net/ipv4/ip_local_reserved_ports"), "");
    let r = parse(check_as_node(&ns, true));
    assert_eq!(r.code, Some(3), "{:?} {}", r.findings, r.stderr);
    let f = of(&r, "nodeport_overlap");
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    let f = f[0];
    assert_eq!(f["severity"], "critical", "{f}");
    assert_eq!(f["netns"], ns.inode, "{f}");
    assert_eq!(f["where"], "node", "{f}");
    assert_eq!(
        f["evidence"],
        json!({"port_range": [1024, 65535], "guarded": "30000-32767", "reserved": "",
               "uncovered": "30000-32767", "uncovered_count": 2768}),
        "{f}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert_eq!(
        fix,
        "sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767"
    );
    assert_eq!(r.summary["critical"], 1, "{}", r.summary);
    assert_eq!(r.summary["netns_checked"], 1, "{}", r.summary);
    assert_eq!(r.summary["exit"], 3, "{}", r.summary);

    // The table says the same, fix included.
    let out = check_as_node(&ns, false);
    assert_eq!(out.status.code(), Some(3));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("SEVERITY  CHECK"), "{table}");
    assert!(
        table.contains(&format!("critical  nodeport_overlap  {} node", ns.inode)),
        "{table}"
    );
    assert!(
        table.contains("overlaps the guarded ports 30000-32767 and 2768 of them"),
        "{table}"
    );
    assert!(table.contains(&format!("    fix: {fix}\n")), "{table}");
    assert!(
        table.contains("checked 1 network namespace: 1 critical, 0 warning, 0 info"),
        "{table}"
    );

    run_fix(&ns, fix);
    assert_eq!(
        read_in(&ns, "net/ipv4/ip_local_reserved_ports"),
        "30000-32767"
    );
    let r = parse(check_as_node(&ns, true));
    assert!(of(&r, "nodeport_overlap").is_empty(), "{:?}", r.findings);
    assert_eq!(r.code, Some(0), "{:?} {}", r.findings, r.stderr);
    assert_eq!(r.summary["exit"], 0);
}

/// A reservation that was there before survives the fix.
#[test]
fn nodeport_fix_keeps_an_existing_reservation() {
    let ns = Netns::new("knpr", (1024, 65535));
    ns.sysctl("net/ipv4/ip_local_reserved_ports", "8080,31000-31010");
    let r = parse(check_as_node(&ns, true));
    assert_eq!(r.code, Some(3));
    let f = of(&r, "nodeport_overlap");
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert_eq!(f[0]["evidence"]["reserved"], "8080,31000-31010");
    assert_eq!(f[0]["evidence"]["uncovered"], "30000-30999,31011-32767");
    assert_eq!(f[0]["evidence"]["uncovered_count"], 2768 - 11);
    let fix = f[0]["fix"].as_str().unwrap();
    assert_eq!(
        fix,
        "sysctl -w net.ipv4.ip_local_reserved_ports=8080,30000-32767"
    );
    run_fix(&ns, fix);
    assert_eq!(
        read_in(&ns, "net/ipv4/ip_local_reserved_ports"),
        "8080,30000-32767"
    );
    let r = parse(check_as_node(&ns, true));
    assert_eq!(r.code, Some(0), "{:?}", r.findings);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
}

/// 6 ports, one reserved: 5 usable; 4 connections toward one destination
/// are 80%, a warning, with holders. Widening with the fix clears it.
#[test]
fn port_pressure_at_four_of_five_usable() {
    let ns = Netns::new("kpp", (42000, 42005));
    ns.sysctl("net/ipv4/ip_local_reserved_ports", "42005");
    let h = Client::start(
        &ns,
        "--hold listen 127.0.0.1 7100 fill 127.0.0.1 7100 4",
        Some("holding"),
    );
    let r = check_from_host(&ns);
    assert_eq!(r.code, Some(3), "{:?} {}", r.findings, r.stderr);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(f["check"], "port_pressure", "{f}");
    assert_eq!(f["severity"], "warning", "{f}");
    assert_eq!(f["netns"], ns.inode, "{f}");
    assert_eq!(f["where"], format!("/run/netns/{}", ns.name), "{f}");
    assert_eq!(
        f["evidence"],
        json!({"daddr": "127.0.0.1", "dport": 7100, "in_use": 4, "usable": 5,
               "port_range": [42000, 42005], "reserved": "42005",
               "states": {"ESTABLISHED": 4},
               "holders": [{"pid": h.pid, "comm": "pwclient", "pod": null, "count": 4}]}),
        "{f}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert_eq!(
        fix,
        format!(
            "ip netns exec {} sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"",
            ns.name
        )
    );
    // The fix is written for the host's shell.
    host_sh(fix);
    let r = check_from_host(&ns);
    assert_eq!(r.code, Some(0), "{:?}", r.findings);
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    h.finish();
}

/// TIME_WAIT (closed from the client side) is most of the usage: the
/// finding reports the netns's tcp_tw_reuse and the command to turn it on.
#[test]
fn time_wait_heavy_reports_tw_reuse() {
    let ns = Netns::new("ktw", (42000, 42005));
    ns.sysctl("net/ipv4/ip_local_reserved_ports", "42005");
    ns.sysctl("net/ipv4/tcp_tw_reuse", "0");
    // TIME_WAIT outlives the client: nothing holds these ports but the kernel.
    let out = client_once(&ns, "listen 127.0.0.1 7100 timewait 127.0.0.1 7100 5");
    assert_eq!(out, vec!["timewait 5"]);
    let r = check_from_host(&ns);
    assert_eq!(r.code, Some(3), "{:?}", r.findings);
    let p = of(&r, "port_pressure");
    assert_eq!(p.len(), 1, "{:?}", r.findings);
    assert_eq!(p[0]["severity"], "critical", "5 of 5: {}", p[0]);
    assert_eq!(p[0]["evidence"]["states"], json!({"TIME_WAIT": 5}));
    assert_eq!(p[0]["evidence"]["holders"], json!([]));
    let tw = of(&r, "time_wait_heavy");
    assert_eq!(tw.len(), 1, "{:?}", r.findings);
    assert_eq!(tw[0]["severity"], "warning");
    assert_eq!(
        tw[0]["evidence"],
        json!({"daddr": "127.0.0.1", "dport": 7100, "time_wait": 5, "in_use": 5, "tcp_tw_reuse": 0})
    );
    let fix = tw[0]["fix"].as_str().unwrap();
    assert_eq!(
        fix,
        format!(
            "ip netns exec {} sysctl -w net.ipv4.tcp_tw_reuse=1",
            ns.name
        )
    );
    host_sh(fix);
    assert_eq!(read_in(&ns, "net/ipv4/tcp_tw_reuse"), "1");
    let r = check_from_host(&ns);
    let tw = of(&r, "time_wait_heavy");
    assert_eq!(tw[0]["evidence"]["tcp_tw_reuse"], 1, "{:?}", r.findings);
    assert!(
        tw[0]["fix"].is_null(),
        "nothing left to switch on: {}",
        tw[0]
    );
}

/// Both ends even: info only, so the exit code stays 0.
#[test]
fn range_parity_is_info_and_exit_0() {
    let ns = Netns::new("kpar", (41000, 41004));
    let r = check_from_host(&ns);
    assert_eq!(r.code, Some(0), "{:?}", r.findings);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(f["check"], "range_parity");
    assert_eq!(f["severity"], "info");
    assert_eq!(f["evidence"], json!({"port_range": [41000, 41004]}));
    assert_eq!(r.summary["info"], 1);
    assert_eq!(r.summary["exit"], 0);
    run_fix(&ns, f["fix"].as_str().unwrap());
    assert_eq!(read_in(&ns, "net/ipv4/ip_local_port_range"), "41000\t41003");
    assert!(check_from_host(&ns).findings.is_empty());
}

/// Without --netns every netns of the host is audited: bind-mounted ones
/// (/run/netns) and those only a process holds (/proc/PID/ns/net).
#[test]
fn whole_host_finds_named_and_process_only_netns() {
    let named = Netns::new("kall", (41000, 41004));
    // A netns no name points at: only its process (sleep) holds it.
    let mut anon = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "echo '43000 43010' > /proc/sys/net/ipv4/ip_local_port_range && exec sleep 60",
        ])
        .spawn()
        .unwrap();
    let anon_path = format!("/proc/{}/ns/net", anon.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let anon_ino = loop {
        // Wait until sh has set the range and exec'd sleep.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", anon.id())).unwrap_or_default();
        if comm.trim() == "sleep" {
            break std::fs::metadata(&anon_path).map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            });
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unshare never reached sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    .unwrap();
    let out = Command::new(portwatch_bin())
        .args(["check", "--json"])
        .output()
        .unwrap();
    let r = parse(out);
    let _ = anon.kill();
    let _ = anon.wait();
    // Other tests' netns come and go meanwhile: no assertion on the exit code.
    assert!(matches!(r.code, Some(0) | Some(3)), "{}", r.stderr);
    assert!(
        r.summary["netns_checked"].as_u64().unwrap() >= 3,
        "{}",
        r.summary
    );
    let parity = of(&r, "range_parity");
    let n = parity
        .iter()
        .find(|f| f["netns"] == named.inode)
        .unwrap_or_else(|| panic!("named netns missing: {parity:?}"));
    assert_eq!(n["where"], format!("/run/netns/{}", named.name));
    let a = parity
        .iter()
        .find(|f| f["netns"] == anon_ino)
        .unwrap_or_else(|| panic!("process-only netns missing: {parity:?}"));
    assert_eq!(a["where"], format!("pid {} (sleep)", anon.id()));
    assert_eq!(
        a["fix"],
        format!(
            "nsenter --net=/proc/{}/ns/net sysctl -w net.ipv4.ip_local_port_range=\"43000 43009\"",
            anon.id()
        )
    );
}

#[test]
fn errors_exit_1_and_bad_arguments_exit_2() {
    require_root();
    let out = Command::new(portwatch_bin())
        .args(["check", "--netns", "/nonexistent/ns"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--netns /nonexistent/ns"), "{err}");
    // A file that is not a namespace.
    let out = Command::new(portwatch_bin())
        .args(["check", "--netns", "/etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    for args in [
        &["check", "--nodeport-range", "32767-30000"][..],
        &["check", "--nodeport-range", "x"],
        &["check", "--frobnicate"],
    ] {
        let out = Command::new(portwatch_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
