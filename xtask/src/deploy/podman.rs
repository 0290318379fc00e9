//! The image under podman with exactly what the DaemonSet grants, against a
//! failure provoked in a netns outside the container.

use super::*;
use xtask::testkit::{self, free_port, lines_of, Netns};

/// GET `url` (3 s at most): the status code and the body.
fn http_get(url: &str) -> Option<(u16, String)> {
    testkit::http_get(url, 3)
}

/// A container started by the test, removed on drop.
pub(crate) struct Container {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) stdout: mpsc::Receiver<String>,
    pub(crate) stderr: mpsc::Receiver<String>,
}

impl Container {
    pub(crate) fn start(
        img: &image::Image,
        ds: &DaemonSet,
        caps: &[String],
        port: u16,
    ) -> Result<Container> {
        let name = format!("portwatch-test-{}-{port}", std::process::id());
        let mut c = Command::new("podman");
        c.args(["run", "--rm", "--name", &name])
            .args(ds.podman_args(caps)?)
            .arg(&img.tag)
            .args(ds.args_for_test(port));
        eprintln!("xtask: $ {}", show(&c));
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running podman")?;
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Ok(Container {
            name,
            child,
            stdout,
            stderr,
        })
    }

    pub(crate) fn stderr_so_far(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits for the exit (up to `limit`); its status code.
    pub(crate) fn wait(&mut self, limit: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!("container {} did not exit within {limit:?}", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "2", &self.name])
                .output();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn pwclient() -> Result<PathBuf> {
    let p = workspace_root().join("target/debug/examples/pwclient");
    if !p.exists() {
        run(crate::cargo().args(["build", "--package", "portwatch", "--example", "pwclient"]))?;
    }
    Ok(p)
}

/// The value of the first sample line of `metrics` that has all of `want`
/// in it.
pub(crate) fn sample(metrics: &str, name: &str, want: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub(crate) fn podman(img: &image::Image) -> Result<()> {
    let ds = DaemonSet::read()?;
    ensure!(!ds.caps.is_empty(), "the DaemonSet adds no capability");
    eprintln!(
        "xtask: podman test: the DaemonSet's capabilities {:?}, host paths {:?}",
        ds.caps,
        ds.mounts
            .iter()
            .map(|m| format!(
                "{}:{}{}",
                m.host,
                m.container,
                if m.read_only { ":ro" } else { "" }
            ))
            .collect::<Vec<_>>()
    );
    // A node has tracefs mounted; the DaemonSet mounts it from the host.
    crate::ensure_tracefs("the DaemonSet mounts it from the node")?;
    let client = pwclient()?;

    // 1. Exactly the DaemonSet's set: a failure provoked outside the
    //    container shows up on its stdout and in its metrics.
    let t0 = Instant::now();
    let port = free_port()?;
    let mut c = Container::start(img, &ds, &ds.caps, port)?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_get(&format!("{url}/readyz")).is_some_and(|(code, _)| code == 200) {
            break;
        }
        if let Some(st) = c.child.try_wait()? {
            bail!(
                "the container exited ({st}) before it was ready: {:?}",
                c.stderr_so_far()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "the container was not ready in 60 s: {:?}",
            c.stderr_so_far()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let ready = t0.elapsed();

    // Even-sized: the kernel's pairwise port scan makes odd sizes flaky.
    let ns = Netns::add(&format!("pwdeploy-{}", std::process::id()), (41000, 41003))?;
    let ino = ns.inode;
    // 4 connects take the 4 ports; the next 2 fail with EADDRNOTAVAIL. The
    // client holds its sockets until its stdin closes.
    let mut cl = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&client)
        .args(
            "--hold listen 127.0.0.1 7100 fill 127.0.0.1 7100 4 connect 127.0.0.1 7100 2"
                .split(' '),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pwclient")?;
    let cl_out = lines_of(cl.stdout.take().unwrap());
    let mut said = vec![];
    while said.last().map(String::as_str) != Some("holding") {
        match cl_out.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => said.push(l),
            Err(_) => bail!("pwclient did not hold its sockets: {said:?}"),
        }
    }
    ensure!(
        said == ["filled", "err 99", "err 99", "holding"],
        "pwclient: {said:?}"
    );

    let mut events = vec![];
    let deadline = Instant::now() + Duration::from_secs(15);
    while events.len() < 2 && Instant::now() < deadline {
        if let Ok(l) = c.stdout.recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&l)
                .with_context(|| format!("the container's stdout is not JSON lines: {l:?}"))?;
            // Failures only: writing the netns's range makes a
            // sysctl_write record there too.
            if v["netns"].as_u64() == Some(ino) && v["kind"] != "sysctl_write" {
                events.push(v);
            }
        }
    }
    ensure!(
        events.len() == 2,
        "expected 2 events from netns {ino} on the container's stdout, got {events:?}; stderr: {:?}",
        c.stderr_so_far()
    );
    for e in &events {
        ensure!(
            e["kind"] == "connect"
                && e["errno"] == "EADDRNOTAVAIL"
                && e["ret"] == -99
                && e["comm"] == "pwclient"
                && e["daddr"] == "127.0.0.1"
                && e["dport"] == 7100,
            "unexpected event: {e}"
        );
    }

    // The scan enters the netns (CAP_SYS_ADMIN) found through the client's
    // /proc/PID/ns/net (CAP_SYS_PTRACE): 4 of 4 ports in use toward 7100.
    let netns_label = format!("netns=\"{ino}\"");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((200, body)) = http_get(&format!("{url}/metrics")) {
            let usable = sample(&body, "portwatch_ephemeral_ports_usable", &[&netns_label]);
            let in_use = sample(
                &body,
                "portwatch_ephemeral_ports_in_use",
                &[&netns_label, "daddr=\"127.0.0.1\"", "dport=\"7100\""],
            );
            let failures = sample(
                &body,
                "portwatch_failures_total",
                &["kind=\"connect\"", "errno=\"EADDRNOTAVAIL\""],
            );
            if usable == Some(4.0) && in_use == Some(4.0) && failures.is_some_and(|f| f >= 2.0) {
                break;
            }
            last = body;
        }
        ensure!(
            Instant::now() < deadline,
            "/metrics never showed netns {ino} with 4 of 4 ports in use toward 127.0.0.1:7100 and the 2 failures:\n{last}"
        );
        thread::sleep(Duration::from_millis(300));
    }
    drop(cl.stdin.take());
    let _ = cl.wait();
    drop(ns);

    // SIGTERM, as the kubelet stops a pod: exit 0.
    let t_stop = Instant::now();
    run(Command::new("podman").args(["kill", "--signal", "TERM", &c.name]))?;
    let code = c.wait(Duration::from_secs(10))?;
    ensure!(
        code == Some(0),
        "the container exited {code:?} on SIGTERM: {:?}",
        c.stderr_so_far()
    );
    eprintln!(
        "xtask: podman: with {:?} the container was ready in {:.1} s, reported both failures in netns {ino} and its 4/4 ports, and stopped on SIGTERM with 0 in {:.1} s",
        ds.caps,
        ready.as_secs_f64(),
        t_stop.elapsed().as_secs_f64()
    );

    // 2. One capability less, each in turn: one sentence naming it, exit 1.
    for missing in &ds.caps {
        let fewer: Vec<String> = ds.caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut c = Container::start(img, &ds, &fewer, free_port()?)?;
        let code = c.wait(Duration::from_secs(30))?;
        let err: Vec<String> = c.stderr.try_iter().collect();
        let said: Vec<&String> = err.iter().filter(|l| l.starts_with("portwatch:")).collect();
        ensure!(
            code.is_some_and(|c| c != 0),
            "without {missing} the container exited {code:?}: {err:?}"
        );
        ensure!(
            said.len() == 1 && said[0].contains(&format!("lacks CAP_{missing} (")),
            "without {missing}: expected one sentence naming CAP_{missing}, got {err:?}"
        );
        eprintln!(
            "xtask: podman: without {missing}: exit {}, {:?}",
            code.unwrap(),
            said[0]
        );
    }

    // 3. The incident path: `kubectl debug node/NODE -it --profile=sysadmin
    //    --image=IMAGE -- portwatch trace` runs the image privileged in the
    //    node's PID and network namespaces with `portwatch trace` as its
    //    command (found on the image's PATH). No tracefs inside: portwatch
    //    mounts it itself.
    incident_path(img, &client)
}

/// The image as `kubectl debug node/... --profile=sysadmin -- portwatch
/// trace --json` runs it: a real failure in a netns shows up on stdout.
fn incident_path(img: &image::Image, client: &Path) -> Result<()> {
    let t0 = Instant::now();
    let name = format!("portwatch-debug-{}", std::process::id());
    let mut c = Command::new("podman");
    c.args(["run", "--rm", "--name", &name, "--runtime", "runc"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args([
            "--privileged",
            "--pid",
            "host",
            "--network",
            "host",
            "--ipc",
            "host",
        ])
        .args(["--entrypoint", r#"["portwatch","trace","--json"]"#])
        .arg(&img.tag);
    eprintln!("xtask: $ {}", show(&c));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running podman")?;
    let err = xtask::testkit::watch_stderr(&mut child, Some("attached;"));
    let out = lines_of(child.stdout.take().unwrap());
    let res = (|| -> Result<String> {
        err.wait_ready(&mut child, Duration::from_secs(60))?;
        let ns = Netns::add(&format!("pwdebug-{}", std::process::id()), (41000, 41001))?;
        let said = ns
            .cmd(client)
            .args("listen 127.0.0.1 7100 fill 127.0.0.1 7100 2 connect 127.0.0.1 7100 1".split(' '))
            .output()?;
        ensure!(
            String::from_utf8_lossy(&said.stdout).contains("err 99"),
            "pwclient did not fail: {}",
            String::from_utf8_lossy(&said.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = out.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!(
                    "no event from netns {} on the debug container's stdout in 15 s: {:?}",
                    ns.inode,
                    err.lines.lock().unwrap()
                )
            })?;
            let v: Value = serde_json::from_str(&l)?;
            if v["netns"] == ns.inode && v["kind"] != "sysctl_write" {
                ensure!(
                    v["errno"] == "EADDRNOTAVAIL" && v["comm"] == "pwclient",
                    "{v}"
                );
                return Ok(l);
            }
        }
    })();
    let _ = Command::new("podman")
        .args(["kill", "--signal", "INT", &name])
        .output();
    let st = child.wait()?;
    let ev = res?;
    ensure!(st.success(), "the debug container ended with {st}");
    let lines = err.lines.lock().unwrap();
    let tracefs = lines.iter().find(|l| l.contains("tracefs"));
    eprintln!(
        "xtask: podman: as kubectl debug --profile=sysadmin runs it ({}), the image's trace saw {ev} ({:.1} s)",
        tracefs.map_or("tracefs was there", |l| l.as_str()),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_labels() {
        let m = "# HELP x\nportwatch_ephemeral_ports_usable{namespace=\"\",pod=\"\",netns=\"7\"} 4\nportwatch_ephemeral_ports_usable{namespace=\"\",pod=\"\",netns=\"8\"} 28232\n";
        assert_eq!(
            sample(m, "portwatch_ephemeral_ports_usable", &["netns=\"8\""]),
            Some(28232.0)
        );
        assert_eq!(
            sample(m, "portwatch_ephemeral_ports_usable", &["netns=\"9\""]),
            None
        );
    }
}
