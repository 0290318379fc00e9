//! `portwatch serve` as root, for real: the agent runs with its HTTP side on
//! loopback, a real Prometheus (Debian's) scrapes it, failures are provoked
//! in a test netns, and the numbers are read back through Prometheus' own
//! query API and compared with what was provoked and with `ss`.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A port free on loopback now (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl (cargo xtask setup installs it)");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `portwatch serve` on a free loopback port, ready (every probe attached).
struct Serve {
    tracer: Tracer,
    port: u16,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let tracer = Tracer::start(&args);
        let s = Serve { tracer, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = s.get("/readyz");
            if code == 200 {
                assert_eq!(body.trim(), "ready");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "serve never got ready ({code} {body:?}): {:?}",
                s.tracer.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    /// The sample lines of `/metrics` whose name is `name` and whose labels
    /// include every `want` (`key="value"`).
    fn samples(&self, name: &str, want: &[String]) -> Vec<(String, f64)> {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
            .map(|l| {
                let (series, v) = l.rsplit_once(' ').unwrap();
                (series.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    /// Waits until a scan has run after now (scans are counted).
    fn wait_scan(&self) {
        let count = || {
            let (_, body) = self.get("/metrics");
            body.lines()
                .find_map(|l| l.strip_prefix("portwatch_scans_total "))
                .map(|v| v.trim().parse::<f64>().unwrap())
                .unwrap_or(0.0)
        };
        let start = count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() < start + 2.0 {
            assert!(Instant::now() < deadline, "no scan in 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Debian's Prometheus on loopback, scraping `target` every second, with
/// its data in a temporary directory.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let bin = "/usr/bin/prometheus";
        assert!(
            fs::metadata(bin).is_ok(),
            "{bin} missing: the serve tests scrape with a real Prometheus (cargo xtask setup installs Debian's prometheus)"
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pw-prom-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("prometheus.yml");
        fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: portwatch\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&format!("http://127.0.0.1:{port}/-/ready")).0 != 200 {
            assert!(Instant::now() < deadline, "Prometheus not ready in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The instant vector of `query`, as (labels, value) pairs.
    fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .args(["--data-urlencode", &format!("query={query}")])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{query}: {e}: {:?}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{query}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// The one value of `query`, once it equals `want` (None: still absent),
    /// waiting up to 30 s for the scrapes to catch up.
    fn wait_value(&self, query: &str, want: f64) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(query);
            if r.len() == 1 && r[0].1 == want {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{query}: wanted {want}, Prometheus says {r:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Client sockets in `ns` toward `dst:dport` whose local port is in
/// `range`, as `ss` counts them (every state but LISTEN).
fn ss_in_use(ns: &Netns, dport: u16, range: (u16, u16)) -> u32 {
    let out = ns
        .cmd("ss")
        .args(["-Htan", &format!("dport = :{dport}")])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sport: u16 = f[3].rsplit_once(':').unwrap().1.parse().unwrap();
            f[0] != "LISTEN" && (range.0..=range.1).contains(&sport)
        })
        .count() as u32
}

const RANGE: (u16, u16) = (40000, 40003); // 4 ports: even, so exactly 4 connects fit
const FAILS: u32 = 3;

#[test]
fn prometheus_sees_exactly_the_failures_provoked_and_the_ports_ss_sees() {
    require_root();
    let mut serve = Serve::start(&["--scan-interval", "1s", "--check-interval", "2s"]);
    let prom = Prometheus::start(serve.port);
    prom.wait_value("up{job=\"portwatch\"}", 1.0);
    let sel = r#"kind="connect",errno="EADDRNOTAVAIL",cause="ports_exhausted",namespace="",pod="""#;
    let failures = format!("portwatch_failures_total{{{sel}}}");
    // Failures from elsewhere on the node would count too: start from what
    // Prometheus holds now (nothing, on a quiet node).
    let before = prom.query(&failures).first().map_or(0.0, |r| r.1);

    let ns = Netns::new("serve", RANGE);
    let holder = Client::start(
        &ns,
        &format!(
            "--hold listen 127.0.0.1 8080 fill 127.0.0.1 8080 4 connect 127.0.0.1 8080 {FAILS}"
        ),
        Some("holding"),
    );
    let r = prom.wait_value(&failures, before + FAILS as f64);
    assert_eq!(r[0].0["job"], "portwatch");
    // Exactly: a few scrapes later it has not grown past what was provoked.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prom.query(&failures)[0].1, before + FAILS as f64);
    // The JSON lines on stdout are the same events.
    let mut all = vec![];
    let evs = serve.tracer.events_in(ns.inode, FAILS as usize, &mut all);
    assert_eq!(evs.len(), FAILS as usize, "{evs:?}");
    assert!(evs.iter().all(|e| e["errno"] == "EADDRNOTAVAIL"), "{evs:?}");

    // Ports in use toward 127.0.0.1:8080 and usable in that netns: what ss
    // shows, through Prometheus.
    let want = ss_in_use(&ns, 8080, RANGE);
    assert_eq!(want, 4, "the client holds the whole range");
    let ino = ns.inode;
    let r = prom.wait_value(
        &format!(
            r#"portwatch_ephemeral_ports_in_use{{netns="{ino}",daddr="127.0.0.1",dport="8080"}}"#
        ),
        want as f64,
    );
    // Not a pod: namespace="" and pod="", which Prometheus stores as absent.
    assert!(
        r[0].0["namespace"].is_null() && r[0].0["pod"].is_null(),
        "{r:?}"
    );
    prom.wait_value(
        &format!(r#"portwatch_ephemeral_ports_usable{{netns="{ino}"}}"#),
        4.0,
    );
    prom.wait_value(
        &format!(
            r#"portwatch_ephemeral_ports_in_use{{netns="{ino}",daddr="127.0.0.1",dport="8080"}} / on(netns) group_left portwatch_ephemeral_ports_usable{{netns="{ino}"}}"#
        ),
        1.0,
    );
    // The check sees that netns's range used up.
    let f = prom.query(r#"portwatch_check_findings{check="port_pressure"}"#);
    assert!(!f.is_empty(), "no port_pressure finding: {f:?}");
    // Releasing the ports shows on the next scans.
    holder.finish();
    prom.wait_value(
        &format!(r#"absent(portwatch_ephemeral_ports_in_use{{netns="{ino}",dport="8080"}})"#),
        1.0,
    );

    let b = prom.wait_value(r#"portwatch_build_info"#, 1.0);
    assert_eq!(b[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b[0].0["backend"], serve.tracer.backend_of("connect"));
}

/// 1,000 destinations from one netns: the in-use series stay at
/// --max-destinations for it, the most used first.
#[test]
fn in_use_series_are_bounded_with_a_thousand_destinations() {
    require_root();
    const RANGE: (u16, u16) = (41000, 42999); // 2,000 ports (even)
    let ns = Netns::new("card", RANGE);
    // 10 listeners, 100 loopback addresses each: 1,000 destinations, one
    // connection each, and 5 more toward one of them (the top one).
    let mut args = String::from("--hold");
    for p in 0..10 {
        args += &format!(" listen 0.0.0.0 {}", 9000 + p);
    }
    for a in 0..100 {
        for p in 0..10 {
            args += &format!(" fill 127.0.{}.{} {} 1", a / 50 + 1, a % 50 + 1, 9000 + p);
        }
    }
    args += " fill 127.0.1.1 9000 5";
    let _c = Client::start(&ns, &args, Some("holding"));
    let serve = Serve::start(&["--scan-interval", "1s", "--max-destinations", "7"]);
    serve.wait_scan();
    let netns = format!("netns=\"{}\"", ns.inode);
    let s = serve.samples(
        "portwatch_ephemeral_ports_in_use",
        std::slice::from_ref(&netns),
    );
    assert_eq!(s.len(), 7, "{s:?}");
    let top: Vec<_> = s.iter().filter(|(_, v)| *v == 6.0).collect();
    assert_eq!(top.len(), 1, "{s:?}");
    assert!(
        top[0].0.contains(r#"daddr="127.0.1.1",dport="9000""#),
        "{s:?}"
    );
    assert_eq!(s.iter().filter(|(_, v)| *v == 1.0).count(), 6, "{s:?}");
    let u = serve.samples("portwatch_ephemeral_ports_usable", &[netns]);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].1, 2000.0);
}

/// Names of the BPF maps process `pid` holds (fdinfo's map_id, named by
/// bpftool), sorted.
fn map_names_of(pid: u32) -> Vec<String> {
    let mut ids = vec![];
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        if let Ok(info) = fs::read_to_string(e.path()) {
            if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) {
                ids.push(id.trim().parse::<u64>().unwrap());
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut names: Vec<String> = ids
        .iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "id", &id.to_string()])
                .output()
                .expect("bpftool (cargo xtask setup installs it)");
            assert!(out.status.success(), "bpftool map show id {id}");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["name"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    names.sort();
    names
}

/// serve runs trace's and nodeport-steal's pipelines, each with its own
/// object: every map of each exists once (LOST once per object), plus one
/// map of globals per object.
#[test]
fn serve_loads_each_object_once() {
    use portwatch_common::maps;
    require_root();
    let serve = Serve::start(&[]);
    let mut want: Vec<String> = maps::FAILURES
        .iter()
        .chain(maps::STEAL)
        .chain(&[".rodata", ".rodata"])
        .map(|m| m.to_string())
        .collect();
    want.sort();
    assert_eq!(map_names_of(serve.tracer.pid()), want);
}

/// SIGTERM: detach, flush, exit 0 well within Kubernetes' 2 s budget.
#[test]
fn sigterm_exits_zero_within_two_seconds() {
    require_root();
    let serve = Serve::start(&[]);
    let (code, _) = serve.get("/healthz");
    assert_eq!(code, 200);
    let mut t = serve.tracer;
    let start = Instant::now();
    t.signal(libc::SIGTERM);
    let (st, _) = t.wait();
    let took = start.elapsed();
    assert!(st.success(), "serve exited {st} on SIGTERM");
    assert!(took < Duration::from_secs(2), "serve took {took:?} to stop");
}

/// A port already taken: one clear sentence and exit 1, no half start.
#[test]
fn listen_port_in_use_is_a_clear_error() {
    require_root();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let out = Command::new(portwatch_bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (--listen)")),
        "{err}"
    );
}
