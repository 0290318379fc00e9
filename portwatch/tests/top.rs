//! `portwatch top` on a real failing workload, as root: clients in test
//! network namespaces fill a narrowed `ip_local_port_range` and fail; top's
//! failure counts must equal the failures provoked, and its ports in use
//! (and percentage) for each failing destination must equal what `ss`,
//! run inside the same netns, shows.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const RANGE: (u16, u16) = (41000, 41003); // 4 ports: even, so exactly 4 connects fit
const RANGE2: (u16, u16) = (42000, 42003);

fn backend_args() -> Vec<String> {
    match std::env::var("PORTWATCH_TEST_BACKEND") {
        Ok(b) if !b.is_empty() => vec!["--backend".into(), b],
        _ => vec![],
    }
}

fn top(extra: &[&str]) -> Tracer {
    let mut args = vec!["top".to_string(), "--interval".into(), "1s".into()];
    args.extend(backend_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Sockets `ss -Htan` shows inside `ns` toward `peer` (as ss prints it:
/// `127.0.0.1:7100`, `[::1]:7300`), in any state but LISTEN, with a local
/// port in `range`.
fn ss_in_use(ns: &Netns, peer: &str, range: (u16, u16)) -> u32 {
    let out = ns
        .cmd("ss")
        .arg("-Htan")
        .output()
        .unwrap_or_else(|e| panic!("ss: {e} (package iproute2)"));
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut n = 0;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() >= 5, "unexpected ss line {l:?}");
        let (state, local, remote) = (f[0], f[3], f[4]);
        let lport: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
        if state != "LISTEN" && remote == peer && (range.0..=range.1).contains(&lport) {
            n += 1;
        }
    }
    n
}

/// Rounded as top rounds: one decimal.
fn percent(in_use: u32, usable: u32) -> f64 {
    (in_use as f64 * 1000.0 / usable as f64).round() / 10.0
}

/// A row's identity: (netns, kind, errno, destination as ss prints it).
type RowId = (u64, String, String, String);

fn row_id(r: &Value) -> RowId {
    let dest = match (r["daddr"].as_str(), r["dport"].as_u64()) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => "-".into(),
    };
    (
        r["netns"].as_u64().unwrap_or(0),
        r["kind"].as_str().unwrap().into(),
        r["errno"].as_str().unwrap().into(),
        dest,
    )
}

/// What a row must show: its total, and for a connect row the ports in use
/// expected toward it, from which netns, out of which range.
type Want<'a> = (u64, Option<(u32, &'a Netns, (u16, u16))>);

fn id(ns: &Netns, kind: &str, errno: &str, dest: &str) -> RowId {
    (ns.inode, kind.into(), errno.into(), dest.into())
}

#[test]
fn top_counts_failures_and_ports_in_use_like_ss() {
    let ns1 = Netns::new("top", RANGE);
    let ns2 = Netns::new("top2", RANGE2);
    let mut t = top(&["--json"]);

    // ns1: the range used up toward 127.0.0.1:7100 (2 connects fail) and
    // toward [::1]:7300 (1 fails), and a bind() on the listener's port.
    let mut a = Client::start(
        &ns1,
        "--hold listen 127.0.0.1 7100 connect 127.0.0.1 7100 6 \
         listen ::1 7300 connect ::1 7300 5 bind 127.0.0.1 7100",
        None,
    );
    let out = a.wait_line("holding");
    let count = |out: &[String], l: &str| out.iter().filter(|x| *x == l).count();
    assert_eq!(
        out.iter().filter(|l| l.starts_with("ok ")).count(),
        8,
        "{out:?}"
    );
    assert_eq!(count(&out, "err 99"), 3, "{out:?}");
    assert_eq!(count(&out, "err 98"), 1, "{out:?}");
    // ns2: one port of four in use toward 127.0.0.1:7200 (a 4-tuple
    // collision, not an exhausted range): 25 %.
    let mut b = Client::start(
        &ns2,
        "--hold listen 127.0.0.1 7200 reuse 127.0.0.1 7200 42001",
        None,
    );
    let out2 = b.wait_line("holding");
    assert_eq!(out2, ["ok 42001", "err 99"]);

    let want: HashMap<RowId, Want> = HashMap::from([
        (
            id(&ns1, "connect", "EADDRNOTAVAIL", "127.0.0.1:7100"),
            (2, Some((4, &ns1, RANGE))),
        ),
        (
            id(&ns1, "connect", "EADDRNOTAVAIL", "[::1]:7300"),
            (1, Some((4, &ns1, RANGE))),
        ),
        (id(&ns1, "bind", "EADDRINUSE", "-"), (1, None)),
        (
            id(&ns2, "connect", "EADDRNOTAVAIL", "127.0.0.1:7200"),
            (1, Some((1, &ns2, RANGE2))),
        ),
    ]);
    let ours = |r: &Value| [ns1.inode, ns2.inode].contains(&r["netns"].as_u64().unwrap_or(0));

    // Summaries until one has every row at its total, with its usage.
    let mut summaries: Vec<Value> = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        assert!(
            Instant::now() < deadline,
            "no summary with every failure in 20 s: {summaries:#?}\nstderr: {:?}",
            t.stderr.lock().unwrap()
        );
        let Some(l) = t.next_line(Duration::from_millis(200)) else {
            continue;
        };
        let s: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        assert_eq!(s["schema"], 1, "{s}");
        assert_eq!(s["kind"], "summary", "{s}");
        assert_eq!(s["interval_ms"], 1000, "{s}");
        assert_eq!(s["final"], false, "{s}");
        summaries.push(s.clone());
        let rows: Vec<&Value> = s["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| ours(r))
            .collect();
        let done = want.iter().all(|(k, (total, usage))| {
            rows.iter().any(|r| {
                row_id(r) == *k && r["total"] == *total && (usage.is_none() || r["in_use"].is_u64())
            })
        });
        if done {
            break s;
        }
    };

    // Nothing changes while the clients hold their sockets: ss now sees
    // what top sampled.
    let rows: Vec<&Value> = last["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ours(r))
        .collect();
    assert_eq!(
        rows.len(),
        want.len(),
        "exactly the rows provoked: {rows:#?}"
    );
    for r in &rows {
        let k = row_id(r);
        let (total, usage) = want.get(&k).unwrap_or_else(|| panic!("unexpected row {r}"));
        assert_eq!(r["total"], *total, "{r}");
        assert_eq!(r["pod"], "host", "{r}");
        assert!(r["uid"].is_null() && r["namespace"].is_null(), "{r}");
        assert_eq!(r["comm"], "pwclient", "{r}");
        let pid = if k.0 == ns1.inode { a.pid } else { b.pid };
        assert_eq!(r["pid"], pid, "{r}");
        let by_cause: u64 = r["causes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_cause, *total, "every failure has its cause: {r}");
        // The per-interval counts add up to the total.
        let counted: u64 = summaries
            .iter()
            .flat_map(|s| s["rows"].as_array().unwrap().iter())
            .filter(|x| row_id(x) == k)
            .map(|x| x["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, *total, "{k:?}: {summaries:#?}");
        match usage {
            None => {
                for f in ["in_use", "usable", "range", "percent", "usage_error"] {
                    assert!(r[f].is_null(), "bind rows have no destination: {r}");
                }
            }
            Some((expect, ns, range)) => {
                let size = (range.1 - range.0 + 1) as u32;
                let ss = ss_in_use(ns, &k.3, *range);
                assert_eq!(ss, *expect, "the workload holds what it should ({k:?})");
                assert_eq!(r["in_use"], ss, "top vs ss for {k:?}: {r}");
                assert_eq!(r["usable"], size, "{r}");
                assert_eq!(r["range"], serde_json::json!([range.0, range.1]), "{r}");
                assert_eq!(r["percent"].as_f64(), Some(percent(ss, size)), "{r}");
                assert!(r["usage_error"].is_null(), "{r}");
            }
        }
    }
    // Failures per errno, per netns, as provoked.
    let per_errno = |ns: &Netns, errno: &str| -> u64 {
        rows.iter()
            .filter(|r| r["netns"] == ns.inode && r["errno"] == errno)
            .map(|r| r["total"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(per_errno(&ns1, "EADDRNOTAVAIL"), 3);
    assert_eq!(per_errno(&ns1, "EADDRINUSE"), 1);
    assert_eq!(per_errno(&ns2, "EADDRNOTAVAIL"), 1);
    assert_eq!(per_errno(&ns2, "EADDRINUSE"), 0);

    // SIGINT: one last summary, marked final, with the same totals.
    t.signal(libc::SIGINT);
    let fin = loop {
        let l = t
            .next_line(Duration::from_secs(10))
            .expect("a final summary after SIGINT");
        let s: Value = serde_json::from_str(&l).unwrap();
        if s["final"] == true {
            break s;
        }
    };
    for (k, (total, _)) in &want {
        let r = fin["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| row_id(r) == *k)
            .unwrap_or_else(|| panic!("{k:?} missing from the final summary: {fin}"));
        assert_eq!(r["total"], *total, "{r}");
    }
    let (st, _) = t.wait();
    assert!(st.success(), "{st}");
    drop((a, b));
}

/// Without --json and with stdout not a terminal: plain blocks, one per
/// interval, separated by a blank line, no escape codes; the failing
/// destination's row shows its ports in use against the range.
#[test]
fn top_table_on_a_pipe() {
    let ns = Netns::new("toptab", RANGE);
    let mut t = top(&[]);
    let mut c = Client::start(
        &ns,
        "--hold listen 127.0.0.1 7100 connect 127.0.0.1 7100 5",
        None,
    );
    let out = c.wait_line("holding");
    assert_eq!(out.last().map(String::as_str), Some("err 99"), "{out:?}");
    let inode = ns.inode.to_string();
    let mut lines: Vec<String> = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        assert!(
            Instant::now() < deadline,
            "no row for netns {inode}: {lines:#?}"
        );
        let Some(l) = t.next_line(Duration::from_millis(200)) else {
            continue;
        };
        lines.push(l.clone());
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) == Some(&inode.as_str()) && f.contains(&"127.0.0.1:7100") {
            break f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        }
    };
    assert_eq!(
        row,
        [
            "host",
            inode.as_str(),
            "connect",
            "EADDRNOTAVAIL",
            "127.0.0.1:7100",
            "1",
            "1",
            "4/4",
            "100.0%",
            row[9].as_str(),
        ],
        "{lines:#?}"
    );
    assert_eq!(ss_in_use(&ns, "127.0.0.1:7100", RANGE), 4);
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:#?}");
    assert!(lines[0].starts_with("portwatch top  "), "{lines:#?}");
    for (i, l) in lines.iter().enumerate() {
        if l.is_empty() {
            if let Some(next) = lines.get(i + 1) {
                assert!(next.starts_with("portwatch top  "), "{lines:#?}");
            }
        }
        if l.starts_with("portwatch top  ") {
            assert!(i == 0 || lines[i - 1].is_empty(), "{lines:#?}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("POD ") && l.contains("USE%")),
        "{lines:#?}"
    );
    drop(c);
    let (st, _) = t.stop();
    assert!(st.success(), "{st}");
}
