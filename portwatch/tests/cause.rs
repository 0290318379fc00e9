//! Every cause of `portwatch trace`, provoked for real in test network
//! namespaces and asserted on the event: `cause`, `detail` (socket table and
//! holders read the moment it failed) and `detail_complete`.
//!
//! PORTWATCH_TEST_BACKEND=fexit|kprobe|tracepoint forces a backend, as in
//! tests/trace.rs: the causes must be right on each.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

const RANGE: (u16, u16) = (41000, 41003); // 4 ports: even, so exactly 4 connects fit

/// `portwatch trace --json` with a budget generous enough that a loaded
/// CI machine still gets complete detail (the budget itself is tested below).
fn trace(extra: &[&str]) -> Tracer {
    let mut args = vec!["trace".to_string(), "--json".into()];
    if !extra.iter().any(|a| a.starts_with("--detail-budget")) {
        args.extend(["--detail-budget".into(), "5s".into()]);
    }
    if let Ok(b) = std::env::var("PORTWATCH_TEST_BACKEND") {
        if !b.is_empty() {
            args.extend(["--backend".into(), b]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn one_event(t: &mut Tracer, ns: &Netns) -> Value {
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 1, &mut all);
    assert_eq!(evs.len(), 1, "{evs:?}");
    evs.into_iter().next().unwrap()
}

/// A process holding `fill` connections toward 127.0.0.1:7100 (or `addr`).
fn holder(ns: &Netns, addr: &str, fill: usize) -> Client {
    Client::start(
        ns,
        &format!("--hold listen {addr} 7100 fill {addr} 7100 {fill}"),
        Some("holding"),
    )
}

fn exhausted(addr: &str, family: &str) {
    let ns = Netns::new("cexh", RANGE);
    let mut t = trace(&[]);
    let h = holder(&ns, addr, 4);
    // Another process makes the failing connect.
    let out = client_once(&ns, &format!("connect {addr} 7100"));
    assert_eq!(out, vec!["err 99"]);
    let ev = one_event(&mut t, &ns);
    let pid = ev["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid, h.pid, "the failing client is not the holder");
    assert_common(&ev, "connect", "EADDRNOTAVAIL", pid, "pwclient", &ns, RANGE);
    assert_eq!(ev["family"], family, "{ev}");
    assert_eq!(ev["cause"], "ports_exhausted", "{ev}");
    assert_eq!(
        ev["detail"],
        json!({
            "range": [RANGE.0, RANGE.1],
            "reserved": "",
            "usable": 4,
            "in_use": 4,
            "states": {"ESTABLISHED": 4},
            "holders": [{"pid": h.pid, "comm": "pwclient", "pod": null, "count": 4}],
        }),
        "{ev}"
    );
    assert_eq!(ev["detail_complete"], true, "{ev}");
    assert!(ev.get("requested_port").is_none(), "connect: {ev}");
    h.finish();
    assert!(t.stop().0.success());
}

#[test]
fn ports_exhausted_names_the_holder_ipv4() {
    exhausted("127.0.0.1", "ipv4");
}

#[test]
fn ports_exhausted_names_the_holder_ipv6() {
    exhausted("::1", "ipv6");
}

/// Connections closed from the client side sit in TIME_WAIT, hold their
/// port (tcp_tw_reuse 0) and show in `states`; they have no holder.
#[test]
fn ports_exhausted_counts_time_wait() {
    let ns = Netns::new("ctw", RANGE);
    ns.sysctl("net/ipv4/tcp_tw_reuse", "0");
    let mut t = trace(&[]);
    let h = Client::start(
        &ns,
        "--hold listen 127.0.0.1 7100 timewait 127.0.0.1 7100 2 fill 127.0.0.1 7100 2",
        Some("holding"),
    );
    let out = client_once(&ns, "connect 127.0.0.1 7100");
    assert_eq!(out, vec!["err 99"]);
    let ev = one_event(&mut t, &ns);
    assert_eq!(ev["cause"], "ports_exhausted", "{ev}");
    let d = &ev["detail"];
    assert_eq!(d["in_use"], 4, "{ev}");
    assert_eq!(
        d["states"],
        json!({"ESTABLISHED": 2, "TIME_WAIT": 2}),
        "{ev}"
    );
    assert_eq!(
        d["holders"],
        json!([{"pid": h.pid, "comm": "pwclient", "pod": null, "count": 2}]),
        "TIME_WAIT sockets belong to no process: {ev}"
    );
    assert_eq!(ev["detail_complete"], true, "{ev}");
    h.finish();
    assert!(t.stop().0.success());
}

/// Two SO_REUSEADDR sockets bound to one port: the second connect to the
/// same destination collides with the first one's 4-tuple. Only the
/// socket's own bound port tells this from exhaustion. Just before, an
/// exhaustion toward the same destination had its own look-up: the
/// collision must not be described from that older snapshot.
#[test]
fn tuple_in_use_with_two_reuseaddr_sockets() {
    let ns = Netns::new("ctup", RANGE);
    let mut t = trace(&[]);
    let h = holder(&ns, "127.0.0.1", 4);
    assert_eq!(client_once(&ns, "connect 127.0.0.1 7100"), vec!["err 99"]);
    let mut c = Client::start(&ns, "--hold reuse 127.0.0.1 7100 41500", None);
    let out = c.wait_line("holding");
    assert_eq!(out, vec!["ok 41500", "err 99"]);
    let mut all = vec![];
    let evs = t.events_in(ns.inode, 2, &mut all);
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert_eq!(evs[0]["cause"], "ports_exhausted", "{}", evs[0]);
    let ev = &evs[1];
    assert_common(
        ev,
        "connect",
        "EADDRNOTAVAIL",
        c.pid,
        "pwclient",
        &ns,
        RANGE,
    );
    assert_eq!(ev["cause"], "tuple_in_use", "{ev}");
    assert_eq!(ev["sport"], 41500, "the socket's bound port: {ev}");
    assert_eq!(
        ev["detail"],
        json!({
            "sport": 41500,
            "states": {"ESTABLISHED": 1},
            "holders": [{"pid": c.pid, "comm": "pwclient", "pod": null, "count": 1}],
        }),
        "{ev}"
    );
    assert_eq!(ev["detail_complete"], true, "{ev}");
    c.finish();
    h.finish();
    assert!(t.stop().0.success());
}

/// An explicit port another process listens on: that process is the holder.
#[test]
fn port_in_use_names_the_listener() {
    let ns = Netns::new("cpiu", RANGE);
    let mut t = trace(&[]);
    let l = Client::start(&ns, "--hold listen 127.0.0.1 7200", Some("holding"));
    let out = client_once(&ns, "bind 127.0.0.1 7200");
    assert_eq!(out, vec!["err 98"]);
    let ev = one_event(&mut t, &ns);
    let pid = ev["pid"].as_u64().unwrap() as u32;
    assert_common(&ev, "bind", "EADDRINUSE", pid, "pwclient", &ns, RANGE);
    assert_eq!(ev["cause"], "port_in_use", "{ev}");
    assert_eq!(ev["requested_addr"], "127.0.0.1", "{ev}");
    assert_eq!(ev["requested_port"], 7200, "{ev}");
    assert_eq!(
        ev["detail"],
        json!({
            "port": 7200,
            "holders": [{"pid": l.pid, "comm": "pwclient", "pod": null, "state": "LISTEN",
                         "local": "127.0.0.1:7200", "count": 1}],
        }),
        "{ev}"
    );
    assert_eq!(ev["detail_complete"], true, "{ev}");
    l.finish();
    assert!(t.stop().0.success());
}

/// busybox `nc -l` binds port 0 before it listens: with every range port
/// held, autobind has nothing to give ("nc: bind: Address already in use").
#[test]
fn busybox_nc_autobind_exhausted() {
    let ns = Netns::new("cnc", RANGE);
    let mut t = trace(&[]);
    let h = holder(&ns, "127.0.0.1", 4);
    let out = ns
        .cmd("busybox")
        .args(["nc", "-l"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nc: bind: Address already in use"), "{err}");
    let ev = one_event(&mut t, &ns);
    let pid = ev["pid"].as_u64().unwrap() as u32;
    assert_common(&ev, "bind", "EADDRINUSE", pid, "busybox", &ns, RANGE);
    assert_eq!(ev["cause"], "bind_ports_exhausted", "{ev}");
    assert_eq!(ev["requested_addr"], "::", "{ev}");
    assert_eq!(ev["requested_port"], 0, "{ev}");
    assert_eq!(ev["detail"]["in_use"], 4, "{ev}");
    assert_eq!(ev["detail"]["usable"], 4, "{ev}");
    assert_eq!(ev["detail"]["states"], json!({"ESTABLISHED": 4}), "{ev}");
    assert_eq!(
        ev["detail"]["holders"],
        json!([{"pid": h.pid, "comm": "pwclient", "pod": null, "count": 4}]),
        "{ev}"
    );
    assert_eq!(ev["detail_complete"], true, "{ev}");
    h.finish();
    assert!(t.stop().0.success());
}

#[test]
fn address_not_local() {
    let ns = Netns::new("cnl", RANGE);
    let mut t = trace(&[]);
    let out = client_once(&ns, "bind 192.0.2.1 7300");
    assert_eq!(out, vec!["err 99"]);
    let ev = one_event(&mut t, &ns);
    let pid = ev["pid"].as_u64().unwrap() as u32;
    assert_common(&ev, "bind", "EADDRNOTAVAIL", pid, "pwclient", &ns, RANGE);
    assert_eq!(ev["cause"], "addr_not_local", "{ev}");
    assert_eq!(ev["requested_addr"], "192.0.2.1", "{ev}");
    assert_eq!(ev["requested_port"], 7300, "{ev}");
    assert_eq!(ev["detail"], json!({"addr": "192.0.2.1"}), "{ev}");
    assert_eq!(ev["detail_complete"], true, "{ev}");
    assert!(t.stop().0.success());
}

/// The cause comes from the kernel's evidence alone; the detail waits at
/// most the budget. Budget 0 and --no-detail send the event at once, cause
/// right, detail marked incomplete (range and usable known, the rest null).
#[test]
fn no_budget_or_no_detail_still_names_the_cause() {
    let ns = Netns::new("cbud", RANGE);
    let mut zero = trace(&["--detail-budget", "0"]);
    let mut none = trace(&["--no-detail"]);
    let h = holder(&ns, "127.0.0.1", 4);
    let out = client_once(&ns, "connect 127.0.0.1 7100");
    assert_eq!(out, vec!["err 99"]);
    for t in [&mut zero, &mut none] {
        let ev = one_event(t, &ns);
        assert_eq!(ev["cause"], "ports_exhausted", "{ev}");
        assert_eq!(ev["detail_complete"], false, "{ev}");
        assert_eq!(ev["detail"]["usable"], 4, "{ev}");
        assert!(ev["detail"]["in_use"].is_null(), "{ev}");
        assert!(ev["detail"]["holders"].is_null(), "{ev}");
    }
    h.finish();
    assert!(zero.stop().0.success());
    assert!(none.stop().0.success());
}

/// The table: the line under each event states the cause and the fix.
#[test]
fn table_hint_states_cause_and_fix() {
    let ns = Netns::new("ctab", RANGE);
    let mut args = vec!["trace", "--detail-budget", "5s"];
    let backend = std::env::var("PORTWATCH_TEST_BACKEND").unwrap_or_default();
    if !backend.is_empty() {
        args.extend(["--backend", backend.as_str()]);
    }
    let mut t = Tracer::start(&args);
    let h = holder(&ns, "127.0.0.1", 4);
    let out = client_once(
        &ns,
        "connect 127.0.0.1 7100 bind 127.0.0.1 7100 bind 192.0.2.1 7300",
    );
    assert_eq!(out, vec!["err 99", "err 98", "err 99"]);
    let ns_col = format!(" {} ", ns.inode);
    let mut lines: Vec<String> = vec![];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Other tests' netns share the stream: wait for this netns's three
    // events and the hint line under the last of them.
    loop {
        let mine: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains(&ns_col))
            .collect();
        if mine.len() >= 3 && mine[2] + 1 < lines.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:#?}");
        if let Some(l) = t.next_line(std::time::Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    // A hint is written together with its event: the very next line.
    let hint_after = |a: &str, b: &str| -> String {
        let i = lines
            .iter()
            .position(|l| l.contains(&ns_col) && l.contains(a) && l.contains(b))
            .unwrap_or_else(|| panic!("{a} {b}: {lines:#?}"));
        lines[i + 1].clone()
    };
    let h1 = hint_after(" connect ", "EADDRNOTAVAIL");
    assert!(h1.contains("\u{2514} ports exhausted: every usable port of ip_local_port_range 41000-41003 (4 ports) is taken toward 127.0.0.1:7100"), "{h1}");
    assert!(
        h1.contains(&format!(
            "4 sockets hold them (4 ESTABLISHED), held by pwclient (pid {}) 4",
            h.pid
        )),
        "{h1}"
    );
    assert!(h1.contains("Fix: reuse connections"), "{h1}");
    let h2 = hint_after(" bind ", "EADDRINUSE");
    assert!(
        h2.contains("\u{2514} port in use: port 7100 (127.0.0.1:7100) is taken by pwclient"),
        "{h2}"
    );
    assert!(
        h2.contains(&format!("(pid {}, LISTEN 127.0.0.1:7100)", h.pid)),
        "{h2}"
    );
    assert!(
        h2.contains("Fix: stop the holder or bind another port"),
        "{h2}"
    );
    let h3 = hint_after(" bind ", "EADDRNOTAVAIL");
    assert!(h3.contains("\u{2514} address not local: 192.0.2.1 is not configured in this network namespace. Fix:"), "{h3}");
    assert!(h3.contains("IP_FREEBIND"), "{h3}");
    h.finish();
    assert!(t.stop().0.success());
}
