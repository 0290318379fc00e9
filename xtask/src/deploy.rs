//! The deployment half of `cargo xtask test` (deploy/kubernetes/):
//!
//! 1. the alert rules: `promtool check rules` and `promtool test rules`;
//! 2. the manifests against Kubernetes' own schemas (kubernetes-validate,
//!    pinned, in a venv under the cache), for several Kubernetes versions;
//! 3. the image (`cargo xtask image`) run under podman with exactly what the
//!    DaemonSet says (capabilities, host paths, host network and PID
//!    namespace, read-only root, seccomp), read from the manifest itself:
//!    it must report a failure provoked in a netns outside the container and
//!    export that netns's ports; then once per capability, without it: a
//!    one-sentence error naming it and a non-zero exit.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{cache_dir, image, output, run, show, workspace_root};

/// apt packages: promtool comes with Debian's prometheus; podman builds
/// and runs the image, with runc (crun refuses this machine's hybrid
/// cgroups).
/// containerd's `ctr` imports the archive as a node without a registry would.
pub const PKGS: &[&str] = &["prometheus", "podman", "runc", "python3-venv", "containerd"];

/// kubernetes-validate and everything it imports, pinned (PyPI); it carries
/// the schemas of Kubernetes 1.25 to 1.37, so validation is offline.
const PY_PKGS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "attrs==26.1.0",
    "importlib_resources==7.1.0",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "packaging==26.3",
    "PyYAML==6.0.3",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "typing_extensions==4.16.0",
];
/// Kubernetes versions the manifests are validated against: the oldest
/// still common, a middle one, and the newest the package knows.
const K8S_VERSIONS: &[&str] = &["1.29", "1.31", "1.37"];

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn venv() -> PathBuf {
    cache_dir().join("kubernetes-validate-1.37.0")
}

/// The venv with kubernetes-validate (and PyYAML, which the podman test
/// uses to read the manifest); pip's downloads stay in the cache too.
pub fn setup_python() -> Result<()> {
    let v = venv();
    let kv = v.join("bin/kubernetes-validate");
    if output(Command::new(&kv).arg("--version")).is_some_and(|s| s.contains("1.37.0")) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(&v);
    run(Command::new("python3").arg("-m").arg("venv").arg(&v))?;
    run(Command::new(v.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--cache-dir",
        ])
        .arg(cache_dir().join("pip"))
        .args(PY_PKGS))?;
    ensure!(
        output(Command::new(&kv).arg("--version")).is_some(),
        "{} does not run after installing it",
        kv.display()
    );
    Ok(())
}

/// The manifests `kubectl apply -f deploy/kubernetes/` takes: every YAML
/// file directly in the folder but the Prometheus rule file.
fn manifests() -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(deploy_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "prometheus-rules.yaml"))
        .collect();
    v.sort();
    ensure!(!v.is_empty(), "no manifest in {}", deploy_dir().display());
    Ok(v)
}

/// Every document of a YAML file, as JSON (through the venv's PyYAML).
fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .context("running the venv's python")?;
    ensure!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout)?)
}

pub fn test() -> Result<()> {
    let t0 = Instant::now();
    rules()?;
    let t1 = Instant::now();
    validate()?;
    let t2 = Instant::now();
    let bin = crate::build(true)?;
    let img = image::build(&bin)?;
    ctr_import(&img)?;
    let t3 = Instant::now();
    podman(&img)?;
    eprintln!(
        "xtask: deploy tests passed: rules {:.1} s, manifests {:.1} s, image {:.1} s, podman {:.1} s",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        t3.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `ctr -n k8s.io images import` of the archive, into a containerd of the
/// test's own (private root, state and socket; stopped after): the image
/// must come out under the name the DaemonSet runs.
fn ctr_import(img: &image::Image) -> Result<()> {
    let dir = workspace_root().join("target/deploy-containerd");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let sock = dir.join("containerd.sock");
    fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
            dir.join("root").display(),
            dir.join("state").display(),
            sock.display()
        ),
    )?;
    let log = fs::File::create(dir.join("containerd.log"))?;
    let mut daemon = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting containerd")?;
    let res = (|| -> Result<()> {
        let ctr = || {
            let mut c = Command::new("ctr");
            c.arg("--address")
                .arg(&sock)
                .args(["--namespace", "k8s.io"]);
            c
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while output(ctr().arg("version")).is_none() {
            ensure!(
                Instant::now() < deadline,
                "containerd did not answer in 20 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
        run(ctr().args(["images", "import"]).arg(&img.archive))?;
        let list = output(ctr().args(["images", "list", "--quiet"])).unwrap_or_default();
        let ds = DaemonSet::read()?;
        ensure!(
            list.lines().any(|l| l == ds.image),
            "containerd lists {list:?} after the import, not {}",
            ds.image
        );
        eprintln!("xtask: containerd imported the archive as {}", ds.image);
        Ok(())
    })();
    // SAFETY: kill takes no pointers; the pid is our own child's, not yet
    // waited for.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = fs::remove_dir_all(dir.join("root"));
    res
}

fn rules() -> Result<()> {
    let dir = deploy_dir();
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("prometheus-rules.yaml")))?;
    run(Command::new("promtool")
        .current_dir(dir.join("tests"))
        .args(["test", "rules", "prometheus-rules.test.yaml"]))
}

fn validate() -> Result<()> {
    let kv = venv().join("bin/kubernetes-validate");
    for m in manifests()? {
        for v in K8S_VERSIONS {
            run(Command::new(&kv)
                .args(["--strict", "--quiet", "--kubernetes-version", v])
                .arg(&m))?;
        }
    }
    // The validator is strict for real: one unknown field in the DaemonSet's
    // container makes it fail.
    let ds = daemonset_file()?;
    let text = fs::read_to_string(&ds)?;
    let broken = text.replacen("          imagePullPolicy:", "          imagePulPolicy:", 1);
    ensure!(
        broken != text,
        "no imagePullPolicy line in {}",
        ds.display()
    );
    let tmp = workspace_root().join("target/deploy-broken.yaml");
    fs::write(&tmp, broken)?;
    let st = Command::new(&kv)
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            K8S_VERSIONS[0],
        ])
        .arg(&tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(
        !st.success(),
        "kubernetes-validate accepted an unknown field"
    );
    eprintln!("xtask: kubernetes-validate rejects an unknown field, as it should");
    prometheus_rule_wrap()?;

    // What the image, the Service and the scrape annotations must agree on.
    let spec = DaemonSet::read()?;
    let version = image::workspace_version()?;
    ensure!(
        spec.image == format!("{}:{version}", image::REPO),
        "the DaemonSet runs {} but the workspace version is {version}",
        spec.image
    );
    ensure!(
        spec.args.iter().any(|a| a == "--listen=:9477"),
        "the DaemonSet does not listen on :9477: {:?}",
        spec.args
    );
    let svc = all_docs()?
        .into_iter()
        .find(|d| d["kind"] == "Service")
        .context("no Service in deploy/kubernetes/")?;
    let port = &svc["spec"]["ports"][0];
    ensure!(
        port["name"] == "metrics" && port["port"] == 9477,
        "the Service's port is not `metrics` 9477: {port}"
    );
    ensure!(
        svc["metadata"]["annotations"]["prometheus.io/port"] == "9477",
        "the Service's prometheus.io/port annotation is not 9477"
    );
    Ok(())
}

/// README's step 3 for the Prometheus Operator: the rule file wrapped into
/// a PrometheusRule (its `groups:` indented under `spec:`), piped to kubectl.
const PROMETHEUS_RULE_WRAP: &str = "{ printf 'apiVersion: monitoring.coreos.com/v1\\nkind: PrometheusRule\\nmetadata:\\n  name: portwatch\\n  namespace: portwatch\\nspec:\\n'; sed 's/^/  /' deploy/kubernetes/prometheus-rules.yaml; }";

/// The wrap gives a PrometheusRule whose spec.groups are the rule file's
/// groups, and README shows it as tested here.
fn prometheus_rule_wrap() -> Result<()> {
    let out = Command::new("sh")
        .current_dir(workspace_root())
        .arg("-c")
        .arg(PROMETHEUS_RULE_WRAP)
        .output()?;
    ensure!(out.status.success(), "the PrometheusRule wrap failed");
    let tmp = workspace_root().join("target/deploy-prometheusrule.yaml");
    fs::write(&tmp, &out.stdout)?;
    let wrapped = yaml_docs(&tmp)?;
    let plain = yaml_docs(&deploy_dir().join("prometheus-rules.yaml"))?;
    ensure!(
        wrapped.len() == 1
            && wrapped[0]["kind"] == "PrometheusRule"
            && wrapped[0]["spec"]["groups"] == plain[0]["groups"],
        "the PrometheusRule wrap does not carry the rule file's groups"
    );
    let readme = fs::read_to_string(workspace_root().join("README.md"))?;
    ensure!(
        readme.contains(PROMETHEUS_RULE_WRAP),
        "README does not show the PrometheusRule wrap the test checks"
    );
    Ok(())
}

fn all_docs() -> Result<Vec<Value>> {
    let mut v = vec![];
    for m in manifests()? {
        v.extend(yaml_docs(&m)?);
    }
    Ok(v)
}

fn daemonset_file() -> Result<PathBuf> {
    for m in manifests()? {
        if yaml_docs(&m)?.iter().any(|d| d["kind"] == "DaemonSet") {
            return Ok(m);
        }
    }
    bail!("no DaemonSet in deploy/kubernetes/")
}

/// A hostPath volume mounted into the container.
#[derive(Debug)]
struct HostMount {
    host: String,
    container: String,
    read_only: bool,
    kind: String,
}

/// What the podman run takes from the DaemonSet.
#[derive(Debug)]
struct DaemonSet {
    image: String,
    args: Vec<String>,
    caps: Vec<String>,
    drop_all: bool,
    host_network: bool,
    host_pid: bool,
    read_only_root: bool,
    run_as_root: bool,
    seccomp: String,
    mounts: Vec<HostMount>,
}

impl DaemonSet {
    fn read() -> Result<DaemonSet> {
        let doc = all_docs()?
            .into_iter()
            .find(|d| d["kind"] == "DaemonSet")
            .context("no DaemonSet in deploy/kubernetes/")?;
        Self::from_doc(&doc)
    }

    fn from_doc(doc: &Value) -> Result<DaemonSet> {
        let pod = &doc["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().context("no containers")?;
        ensure!(containers.len() == 1, "expected one container");
        let c = &containers[0];
        let sc = &c["securityContext"];
        ensure!(
            sc["privileged"] != true,
            "the DaemonSet's container is privileged"
        );
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut volumes = BTreeMap::new();
        for v in pod["volumes"].as_array().into_iter().flatten() {
            if let (Some(name), Some(path)) = (v["name"].as_str(), v["hostPath"]["path"].as_str()) {
                let kind = v["hostPath"]["type"].as_str().unwrap_or("").to_string();
                volumes.insert(name.to_string(), (path.to_string(), kind));
            }
        }
        let mut mounts = vec![];
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().context("volumeMount without a name")?;
            let (host, kind) = volumes
                .get(name)
                .with_context(|| format!("volume {name} is no hostPath"))?
                .clone();
            mounts.push(HostMount {
                host,
                container: m["mountPath"].as_str().context("no mountPath")?.to_string(),
                read_only: m["readOnly"] == true,
                kind,
            });
        }
        Ok(DaemonSet {
            image: c["image"].as_str().context("no image")?.to_string(),
            args: strings(&c["args"]),
            caps: strings(&sc["capabilities"]["add"]),
            drop_all: strings(&sc["capabilities"]["drop"]) == ["ALL"],
            host_network: pod["hostNetwork"] == true,
            host_pid: pod["hostPID"] == true,
            read_only_root: sc["readOnlyRootFilesystem"] == true,
            run_as_root: sc["runAsUser"] == 0,
            seccomp: sc["seccompProfile"]["type"]
                .as_str()
                .unwrap_or("Unconfined")
                .to_string(),
            mounts,
        })
    }

    /// `podman run` options that give the container what a kubelet would,
    /// with the capabilities `caps`.
    fn podman_args(&self, caps: &[String]) -> Result<Vec<String>> {
        let mut a: Vec<String> = vec![
            "--runtime".into(),
            "runc".into(),
            // This machine's root may not raise these (no CAP_SYS_RESOURCE).
            "--ulimit".into(),
            "nofile=1024:1024".into(),
            "--ulimit".into(),
            "nproc=1024:1024".into(),
        ];
        ensure!(
            self.host_network && self.host_pid,
            "expected hostNetwork and hostPID"
        );
        a.extend(["--network", "host", "--pid", "host"].map(String::from));
        ensure!(self.drop_all, "expected capabilities.drop [ALL]");
        a.extend(["--cap-drop".into(), "ALL".into()]);
        for c in caps {
            a.extend(["--cap-add".into(), c.clone()]);
        }
        if self.read_only_root {
            a.push("--read-only".into());
        }
        if self.run_as_root {
            a.extend(["--user".into(), "0".into()]);
        }
        match self.seccomp.as_str() {
            // podman's own default profile is its RuntimeDefault.
            "RuntimeDefault" => {}
            "Unconfined" => a.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
            other => bail!("seccompProfile {other}: not handled by the podman test"),
        }
        for m in &self.mounts {
            let host = Path::new(&m.host);
            match m.kind.as_str() {
                "DirectoryOrCreate" => fs::create_dir_all(host)?,
                "Directory" | "" => ensure!(
                    host.is_dir(),
                    "hostPath {} (type Directory) does not exist on this machine",
                    m.host
                ),
                other => bail!("hostPath type {other}: not handled by the podman test"),
            }
            let ro = if m.read_only { ":ro" } else { "" };
            a.extend(["--volume".into(), format!("{}:{}{ro}", m.host, m.container)]);
        }
        Ok(a)
    }

    /// The container's arguments, with the listen address moved to
    /// loopback (test traffic stays on loopback) and faster timers.
    fn args_for_test(&self, port: u16) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a.starts_with("--listen") {
                    format!("--listen=127.0.0.1:{port}")
                } else if a.starts_with("--scan-interval") {
                    "--scan-interval=1s".into()
                } else if a.starts_with("--check-interval") {
                    "--check-interval=2s".into()
                } else {
                    a.clone()
                }
            })
            .collect()
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get(url: &str) -> Option<(u16, String)> {
    let s = output(Command::new("curl").args(["-s", "-m", "3", "-w", "\n%{http_code}", url]))?;
    let (body, code) = s.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// The lines a child writes, read on a thread of their own.
fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// A test netns, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(range: (u16, u16)) -> Result<Netns> {
        let name = format!("pwdeploy-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        // Even-sized: the kernel's pairwise port scan makes odd sizes flaky.
        run(Command::new("ip")
            .args(["netns", "exec", &ns.0, "sh", "-c"])
            .arg(format!(
                "echo '{} {}' > /proc/sys/net/ipv4/ip_local_port_range",
                range.0, range.1
            )))?;
        Ok(ns)
    }

    fn inode(&self) -> Result<u64> {
        Ok(fs::metadata(format!("/run/netns/{}", self.0))?.ino())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A container started by the test, removed on drop.
struct Container {
    name: String,
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Container {
    fn start(img: &image::Image, ds: &DaemonSet, caps: &[String], port: u16) -> Result<Container> {
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

    fn stderr_so_far(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits for the exit (up to `limit`); its status code.
    fn wait(&mut self, limit: Duration) -> Result<Option<i32>> {
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

fn pwclient() -> Result<PathBuf> {
    let p = workspace_root().join("target/debug/examples/pwclient");
    if !p.exists() {
        run(crate::cargo().args(["build", "--package", "portwatch", "--example", "pwclient"]))?;
    }
    Ok(p)
}

/// The value of the first sample line of `metrics` that has all of `want`
/// in it.
fn sample(metrics: &str, name: &str, want: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn podman(img: &image::Image) -> Result<()> {
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

    let ns = Netns::new((41000, 41003))?;
    let ino = ns.inode()?;
    // 4 connects take the 4 ports; the next 2 fail with EADDRNOTAVAIL. The
    // client holds its sockets until its stdin closes.
    let mut cl = Command::new("ip")
        .args(["netns", "exec", &ns.0])
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
            if v["netns"].as_u64() == Some(ino) {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "kind": "DaemonSet",
            "spec": {"template": {"spec": {
                "hostNetwork": true,
                "hostPID": true,
                "containers": [{
                    "name": "portwatch",
                    "image": "localhost/portwatch:0.1.0",
                    "args": ["serve", "--listen=:9477", "--scan-interval=10s", "--max-destinations=20"],
                    "securityContext": {
                        "runAsUser": 0,
                        "readOnlyRootFilesystem": true,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "NET_ADMIN"]}
                    },
                    "volumeMounts": [
                        {"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": true},
                        {"name": "tmp", "mountPath": "/x"}
                    ]
                }],
                "volumes": [
                    {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
                    {"name": "tmp", "hostPath": {"path": "/tmp"}}
                ]
            }}}
        })
    }

    #[test]
    fn podman_options_come_from_the_daemonset() {
        let ds = DaemonSet::from_doc(&doc()).unwrap();
        assert_eq!(ds.caps, ["SYS_ADMIN", "NET_ADMIN"]);
        let a = ds.podman_args(&ds.caps).unwrap().join(" ");
        assert!(a.contains("--network host --pid host --cap-drop ALL --cap-add SYS_ADMIN --cap-add NET_ADMIN --read-only --user 0"), "{a}");
        assert!(
            a.contains("--volume /sys/fs/cgroup:/sys/fs/cgroup:ro --volume /tmp:/x"),
            "{a}"
        );
        assert!(!a.contains("privileged") && !a.contains("seccomp"), "{a}");
        assert_eq!(
            ds.args_for_test(1234),
            [
                "serve",
                "--listen=127.0.0.1:1234",
                "--scan-interval=1s",
                "--max-destinations=20"
            ]
        );
    }

    #[test]
    fn a_privileged_daemonset_is_refused() {
        let mut d = doc();
        d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
            json!(true);
        assert!(DaemonSet::from_doc(&d).is_err());
    }

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
