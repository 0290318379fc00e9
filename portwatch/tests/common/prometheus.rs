//! Debian's Prometheus 2.42 on loopback, as the tests' scraper.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{free_port, http_get};

/// Debian's Prometheus on loopback, scraping `target` every second, with
/// its data in a temporary directory.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: u16) -> Prometheus {
        Self::start_with(target, "")
    }

    /// `scrape` is added to the portwatch job (e.g. `scheme` and `tls_config`).
    pub fn start_with(target: u16, scrape: &str) -> Prometheus {
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
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: portwatch\n{scrape}    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
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
    pub fn query(&self, query: &str) -> Vec<(Value, f64)> {
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
    pub fn wait_value(&self, query: &str, want: f64) -> Vec<(Value, f64)> {
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
