//! What `portwatch serve` costs to start: exec -> `/readyz` 200, and its
//! memory once it has scanned a node's worth of network namespaces.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use xtask::testkit::{free_port, Netns};

use super::{
    machine::*,
    stats::{median, mib_cell, ms_range_cell, Target},
    TRACER_CPU, TRACER_NICE,
};

/// Namespaces made before serve's memory is read, and how long it is
/// given to scan them (two scans at `--scan-interval 1s`).
pub(crate) const SERVE_NETNS: usize = 20;
const SCAN_WAIT: Duration = Duration::from_millis(2_500);
pub(crate) const SERVE_STARTUP_LIMIT_MS: f64 = 100.0;
pub(crate) const SERVE_RSS_LIMIT_MIB: f64 = 25.0;

pub(crate) struct ServeRun {
    pub ready_ms: f64,
    /// VmHWM and VmRSS after the scan of `SERVE_NETNS` namespaces.
    pub hwm_kb: Option<u64>,
    pub rss_kb: Option<u64>,
}

/// The status code of `GET /readyz`, if serve answered.
fn readyz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// One start of `serve` (trace and the netns scan on, the default), timed
/// from just before exec to the first `/readyz` 200, then its memory
/// after `SERVE_NETNS` fresh namespaces were scanned.
pub(crate) fn serve_run(pw: &Path, tag: &str) -> Result<ServeRun> {
    let port = free_port()?;
    let mut cmd = Command::new(pw);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--scan-interval",
        "1s",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    pin_before_exec(&mut cmd, TRACER_CPU, TRACER_NICE);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting portwatch serve")?;
    let pid = child.id();
    let ready = loop {
        if readyz(port) == Some(200) {
            break t0.elapsed();
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!("portwatch serve exited before it was ready: {st}");
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            bail!("portwatch serve not ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let made = (0..SERVE_NETNS)
        .map(|i| Netns::add(&format!("pwbench-sv-{tag}-{i}"), (40000, 40999)))
        .collect::<Result<Vec<_>>>();
    std::thread::sleep(SCAN_WAIT);
    let (hwm_kb, rss_kb) = (status_kb(pid, "VmHWM"), status_kb(pid, "VmRSS"));
    // SAFETY: signals our own child, which has not been waited for yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = child.wait()?;
    drop(made?);
    if !st.success() {
        bail!("portwatch serve exited with {st} on SIGTERM");
    }
    Ok(ServeRun {
        ready_ms: ready.as_secs_f64() * 1e3,
        hwm_kb,
        rss_kb,
    })
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The rows of the serve table and its two targets.
pub(crate) fn serve_markdown(runs: &[ServeRun]) -> String {
    let ms: Vec<f64> = runs.iter().map(|r| r.ready_ms).collect();
    let hwm = runs.iter().filter_map(|r| r.hwm_kb).max();
    let rss = runs.iter().filter_map(|r| r.rss_kb).max();
    let mut o = vec![
        format!(
            "`portwatch serve --scan-interval 1s` ({} starts; trace, nodeport-steal and the netns scan on, as in the DaemonSet):",
            runs.len()
        ),
        String::new(),
        "| measure | serve |".to_string(),
        "|---|---:|".to_string(),
    ];
    o.push(format!(
        "| start-up, exec -> `/readyz` 200: median (min–max) | {} |",
        ms_range_cell(&ms, 0)
    ));
    o.push(format!(
        "| peak RSS (VmHWM) after scanning {SERVE_NETNS} new netns, largest | {} |",
        mib_cell(hwm)
    ));
    o.push(format!("| RSS (VmRSS) then, largest | {} |", mib_cell(rss)));
    o.push(String::new());
    o.push("| target | limit | measured | result |".into());
    o.push("|---|---|---:|---|".into());
    for t in serve_targets(runs) {
        o.push(format!(
            "| {} | {} | {} | {} |",
            t.name, t.limit, t.measured, t.verdict
        ));
    }
    o.join("\n")
}

/// serve's two targets: start-up to `/readyz` and memory after a scan.
pub(crate) fn serve_targets(runs: &[ServeRun]) -> Vec<Target> {
    let ms: Vec<f64> = runs.iter().map(|r| r.ready_ms).collect();
    let hwm = runs.iter().filter_map(|r| r.hwm_kb).max();
    let target =
        |name: String, limit: String, v: Option<f64>, max: f64, unit: &str, d: usize| Target {
            name,
            limit,
            measured: v.map_or("–".into(), |v| format!("{v:.d$} {unit}")),
            met: v.map(|v| v <= max),
            verdict: match v {
                None => "not measured".to_string(),
                Some(v) if v <= max => "met".to_string(),
                Some(v) => format!("missed by {:.1} {unit}", v - max),
            },
        };
    vec![
        target(
            "serve start-up, exec -> `/readyz` 200 (median)".into(),
            format!("≤ {SERVE_STARTUP_LIMIT_MS:.0} ms"),
            median(&ms),
            SERVE_STARTUP_LIMIT_MS,
            "ms",
            0,
        ),
        target(
            format!("serve peak RSS after a scan of {SERVE_NETNS} netns"),
            format!("≤ {SERVE_RSS_LIMIT_MIB:.0} MiB"),
            hwm.map(mib),
            SERVE_RSS_LIMIT_MIB,
            "MiB",
            1,
        ),
    ]
}

pub(crate) fn serve_json(runs: &[ServeRun]) -> Value {
    json!(runs
        .iter()
        .map(|r| json!({"ready_ms": r.ready_ms, "hwm_kb": r.hwm_kb, "rss_kb": r.rss_kb}))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_the_median_the_largest_peak_and_the_verdicts() {
        let runs = [
            ServeRun {
                ready_ms: 80.0,
                hwm_kb: Some(20 * 1024),
                rss_kb: Some(18 * 1024),
            },
            ServeRun {
                ready_ms: 140.0,
                hwm_kb: Some(30 * 1024),
                rss_kb: Some(19 * 1024),
            },
            ServeRun {
                ready_ms: 120.0,
                hwm_kb: None,
                rss_kb: None,
            },
        ];
        let md = serve_markdown(&runs);
        assert!(md.contains("| 120 ms (80–140, n=3) |"), "{md}");
        assert!(md.contains("| 30.0 MiB |"), "{md}");
        assert!(
            md.contains("| ≤ 100 ms | 120 ms | missed by 20.0 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| ≤ 25 MiB | 30.0 MiB | missed by 5.0 MiB |"),
            "{md}"
        );
        let ok = [ServeRun {
            ready_ms: 50.0,
            hwm_kb: Some(10 * 1024),
            rss_kb: Some(9 * 1024),
        }];
        assert_eq!(serve_markdown(&ok).matches("| met |").count(), 2);
    }
}
