//! `portwatch serve` as root, for real: the agent runs with its HTTP side on
//! loopback, a real Prometheus (Debian's) scrapes it, failures are provoked
//! in a test netns, and the numbers are read back through Prometheus' own
//! query API and compared with what was provoked and with `ss`.

mod common;

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{prometheus::Prometheus, *};
use serde_json::Value;

/// GET `url` with curl and `opts` (TLS options), `secs` at most: status
/// code and body; code 0 when no HTTP answer came (refused handshake,
/// closed connection, time-out).
fn curl(opts: &[String], url: &str, secs: u32) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", &secs.to_string(), "-w", "\n%{http_code}"])
        .args(opts)
        .arg(url)
        .output()
        .expect("curl (cargo xtask setup installs it)");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// curl's options to trust `ca` and show `client`'s certificate.
fn curl_tls(ca: &Cert, client: Option<&Cert>) -> Vec<String> {
    let mut v = vec!["--cacert".to_string(), ca.crt()];
    if let Some(c) = client {
        v.extend(["--cert".into(), c.crt(), "--key".into(), c.key()]);
    }
    v
}

/// A certificate and its key, made with openssl under a test directory.
struct Cert {
    dir: PathBuf,
    name: String,
}

impl Cert {
    fn crt(&self) -> String {
        self.dir
            .join(format!("{}.crt", self.name))
            .display()
            .to_string()
    }
    fn key(&self) -> String {
        self.dir
            .join(format!("{}.key", self.name))
            .display()
            .to_string()
    }
}

fn openssl(dir: &PathBuf, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory of test certificates (P-256 keys: quick to make).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("pw-pki-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    /// A self-signed CA.
    fn ca(&self, name: &str) -> Cert {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        Cert {
            dir: self.dir.clone(),
            name: name.into(),
        }
    }

    /// A certificate signed by `ca`, for 127.0.0.1, as server and client.
    fn leaf(&self, name: &str, ca: &Cert) -> Cert {
        fs::write(
            self.dir.join(format!("{name}.ext")),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &ca.crt(),
                "-CAkey",
                &ca.key(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        Cert {
            dir: self.dir.clone(),
            name: name.into(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `portwatch serve` on a free loopback port, ready (every probe attached).
struct Serve {
    tracer: Tracer,
    port: u16,
    /// How curl reaches it: `http`, or `https` with `tls` (its options).
    scheme: &'static str,
    tls: Vec<String>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        Self::start_with(extra, "http", vec![])
    }

    /// Over TLS with `server`'s certificate; curl trusts `ca` and shows the
    /// client certificate `client` (when given).
    fn start_tls(
        extra: &[&str],
        server: &Cert,
        client_ca: Option<&Cert>,
        ca: &Cert,
        client: Option<&Cert>,
    ) -> Serve {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--tls-cert".into(),
            server.crt(),
            "--tls-key".into(),
            server.key(),
        ]);
        if let Some(c) = client_ca {
            args.extend(["--tls-client-ca".into(), c.crt()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(&args, "https", curl_tls(ca, client))
    }

    fn start_with(extra: &[&str], scheme: &'static str, tls: Vec<String>) -> Serve {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let tracer = Tracer::start(&args);
        let s = Serve {
            tracer,
            port,
            scheme,
            tls,
        };
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

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    fn get(&self, path: &str) -> (u16, String) {
        curl(&self.tls, &self.url(path), 5)
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

/// Tests that provoke failures and count them take turns: each serve sees
/// every failure of the machine, and a netns's inode can be reused by the
/// next test's netns.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counting_alone() -> std::sync::MutexGuard<'static, ()> {
    COUNTING.lock().unwrap_or_else(|e| e.into_inner())
}

const RANGE: (u16, u16) = (40000, 40003); // 4 ports: even, so exactly 4 connects fit
const FAILS: u32 = 3;

#[test]
fn prometheus_sees_exactly_the_failures_provoked_and_the_ports_ss_sees() {
    require_root();
    let _alone = counting_alone();
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
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
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

/// Mutual TLS: a real Prometheus with a client certificate from the CA
/// serve trusts scrapes the exact failure count; no certificate, one from
/// another CA, and plain HTTP are refused; a rotated server certificate is
/// used by the next connection without a restart.
#[test]
fn prometheus_scrapes_over_mutual_tls_and_the_rest_is_refused() {
    require_root();
    let _alone = counting_alone();
    let pki = Pki::new("mtls");
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    let server = pki.leaf("server", &ca);
    let client = pki.leaf("client", &ca);
    let intruder = pki.leaf("intruder", &other);
    let serve = Serve::start_tls(
        &["--scan-interval", "1s"],
        &server,
        Some(&ca),
        &ca,
        Some(&client),
    );
    let prom = Prometheus::start_with(
        serve.port,
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
            ca.crt(),
            client.crt(),
            client.key()
        ),
    );
    prom.wait_value("up{job=\"portwatch\"}", 1.0);
    let sel = r#"kind="connect",errno="EADDRNOTAVAIL",cause="ports_exhausted",namespace="",pod="""#;
    let failures = format!("portwatch_failures_total{{{sel}}}");
    let before = prom.query(&failures).first().map_or(0.0, |r| r.1);
    let ns = Netns::new("tls", RANGE);
    let holder = Client::start(
        &ns,
        &format!(
            "--hold listen 127.0.0.1 8080 fill 127.0.0.1 8080 4 connect 127.0.0.1 8080 {FAILS}"
        ),
        Some("holding"),
    );
    prom.wait_value(&failures, before + FAILS as f64);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(prom.query(&failures)[0].1, before + FAILS as f64);
    holder.finish();

    let url = serve.url("/metrics");
    let (code, body) = curl(&curl_tls(&ca, Some(&client)), &url, 3);
    assert_eq!(code, 200, "the CA's client: {body}");
    for (who, opts) in [
        ("no client certificate", curl_tls(&ca, None)),
        ("another CA's certificate", curl_tls(&ca, Some(&intruder))),
    ] {
        let (code, body) = curl(&opts, &url, 3);
        assert_eq!(code, 0, "{who} got an answer: {code} {body}");
    }
    let (code, _) = curl(&[], &format!("http://127.0.0.1:{}/metrics", serve.port), 3);
    assert_eq!(code, 0, "plain HTTP on the TLS port");

    // Rotation, as a mounted Secret does it: the files are replaced; the
    // next connection gets the new certificate (from a new CA here).
    let ca2 = pki.ca("ca2");
    let server2 = pki.leaf("server2", &ca2);
    for (from, to) in [(server2.crt(), server.crt()), (server2.key(), server.key())] {
        let tmp = format!("{to}.new");
        fs::copy(&from, &tmp).unwrap();
        fs::rename(&tmp, &to).unwrap();
    }
    let (code, _) = curl(&curl_tls(&ca2, Some(&client)), &url, 3);
    assert_eq!(code, 200, "the rotated certificate is served");
    let (code, _) = curl(&curl_tls(&ca, Some(&client)), &url, 3);
    assert_eq!(code, 0, "the old certificate is not served any more");
    let errs = serve.tracer.stderr.lock().unwrap().clone();
    assert!(
        errs.iter().any(|l| l.contains("TLS files changed on disk")),
        "{errs:?}"
    );
}

/// A bad certificate or key is a start-up error: one sentence, exit 1.
#[test]
fn unreadable_tls_files_are_a_clear_error() {
    require_root();
    let pki = Pki::new("bad");
    let ca = pki.ca("ca");
    let server = pki.leaf("server", &ca);
    let other = pki.leaf("other", &ca);
    for (args, says) in [
        (
            vec![
                "--tls-cert",
                "/nonexistent.crt",
                "--tls-key",
                "/nonexistent.key",
            ],
            "--tls-cert /nonexistent.crt",
        ),
        (
            vec!["--tls-cert", &server.crt(), "--tls-key", &other.key()],
            "do not make a pair",
        ),
    ] {
        let out = Command::new(portwatch_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A key without its certificate is a bad argument.
    let out = Command::new(portwatch_bin())
        .args(["serve", "--tls-key", &server.key()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// 500 idle connections and a client that sends half a header: /metrics
/// still answers within a second, memory and fds stay bounded, and the
/// header time-out closes the silent ones.
#[test]
fn idle_and_slow_clients_do_not_lock_prometheus_out() {
    require_root();
    let serve = Serve::start(&["--http-header-timeout", "3s"]);
    let pid = serve.tracer.pid();
    assert_eq!(serve.get("/metrics").0, 200);
    let (rss0, fds0) = (status_kb(pid, "VmRSS"), fds_of(pid));
    let addr = format!("127.0.0.1:{}", serve.port);
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut slow = TcpStream::connect(&addr).unwrap();
    let t_slow = Instant::now();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = curl(&[], &serve.url("/metrics"), 1);
        let took = t.elapsed();
        assert_eq!(code, 200, "/metrics with 500 idle connections open");
        assert!(body.contains("portwatch_build_info"), "{body}");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    let (rss1, fds1) = (status_kb(pid, "VmRSS"), fds_of(pid));
    eprintln!("with 500 idle + 1 slow client: RSS {rss0} -> {rss1} kB, fds {fds0} -> {fds1}");
    assert!(rss1 < rss0 + 16 * 1024, "RSS grew from {rss0} to {rss1} kB");
    assert!(
        fds1 <= fds0 + 128 + 4,
        "fds {fds0} -> {fds1}: more than --max-connections"
    );
    // The silent and the slow are closed at the header time-out.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    // 3 s, give or take the sweep's quarter second and a loaded machine.
    let closed_after = t_slow.elapsed();
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds_of(pid) > fds0 + 2 {
        assert!(
            Instant::now() < deadline,
            "fds {} after the header time-out",
            fds_of(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
}
