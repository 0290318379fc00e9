//! A containerd of the test's own, driven through the CRI gRPC API: private
//! config (root, state and socket under a temp dir; CRI plugin with the
//! cgroupfs driver), a busybox-static image built here (no registry), pod
//! sandboxes with a running container. It runs in a private mount
//! namespace with a tmpfs over /run (its shims put their sockets under
//! /run/containerd whatever the config says), so nothing of the machine's
//! own /run/containerd is touched; the namespace outlives restarts of
//! containerd itself (`restart`), so the shims stay reachable.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use serde_json::json;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{cgroup2_root, require_root, Client, Netns};

/// The image every sandbox and container runs (busybox-static, sleeping).
pub const IMAGE: &str = "pw.local/busybox:1";

pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: `cargo xtask setup` installs containerd and runc (Debian packages containerd, runc)");
}

pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Moves `file` into the layout's blobs under its digest; (digest, size).
pub fn blob(layout: &Path, file: &Path) -> (String, u64) {
    let d = sha256(file);
    let size = fs::metadata(file).unwrap().len();
    fs::rename(file, layout.join("blobs/sha256").join(&d)).unwrap();
    (format!("sha256:{d}"), size)
}

/// An OCI image layout tarball holding busybox-static as /bin/busybox,
/// named IMAGE, whose entrypoint sleeps (it serves as the sandbox image too).
/// `tar -C dir -cf out names...`.
pub fn tar(dir: &Path, out: &Path, names: &[&str]) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(names)
        .status()
        .unwrap();
    assert!(st.success(), "tar of {}", dir.display());
}

pub fn build_image(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is not installed (cargo xtask setup installs it)"
    );
    let rootfs = dir.join("rootfs");
    let layout = dir.join("layout");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let layer = dir.join("layer.tar");
    tar(&rootfs, &layer, &["bin"]);
    let layer_digest = format!("sha256:{}", sha256(&layer));
    let (layer_blob, layer_size) = blob(&layout, &layer);
    assert_eq!(
        layer_blob, layer_digest,
        "an uncompressed layer is its own diff id"
    );
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox", "sleep", "1000000"],
            "Env": ["PATH=/bin"]
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let cfg = dir.join("config.json");
    fs::write(&cfg, config.to_string()).unwrap();
    let (cfg_digest, cfg_size) = blob(&layout, &cfg);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_blob, "size": layer_size}]
    });
    let man = dir.join("manifest.json");
    fs::write(&man, manifest.to_string()).unwrap();
    let (man_digest, man_size) = blob(&layout, &man);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": man_digest, "size": man_size,
                       "annotations": {"io.containerd.image.name": IMAGE,
                                       "org.opencontainers.image.ref.name": "1"}}]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tarball = dir.join("image.tar");
    tar(&layout, &tarball, &["oci-layout", "index.json", "blobs"]);
    tarball
}

/// Every cgroup hierarchy's mount point (v1 controllers and cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            let fs = post.split_whitespace().next()?;
            ((fs == "cgroup" || fs == "cgroup2") && f[3] == "/").then(|| PathBuf::from(f[4]))
        })
        .collect()
}

/// rmdir `dir` and everything below it, deepest first (cgroup directories
/// hold only pseudo-files, which go with their directory).
pub fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("rmdir {}: {e}", dir.display());
        }
    }
}

pub async fn cri_client(sock: &Path) -> Result<RuntimeServiceClient<Channel>, String> {
    let p = sock.to_path_buf();
    let ch = Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut c = RuntimeServiceClient::new(ch);
    c.version(VersionRequest {
        version: "v1".into(),
    })
    .await
    .map_err(|e| format!("{e}"))?;
    Ok(c)
}

/// containerd, private to this test; everything it made goes on drop.
pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Child,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    sandboxes: Vec<String>,
    /// Pod cgroups (`/kubepods/burstable/pod<uid>`) to remove, with all
    /// below them, in every hierarchy.
    pods: Vec<String>,
    /// The kubepods levels that existed before containerd ran, in any
    /// hierarchy: left alone.
    preexisting: Vec<PathBuf>,
}

/// The levels above pods that the runtime makes, deepest first.
const LEVELS: [&str; 2] = ["kubepods/burstable", "kubepods"];

impl Containerd {
    pub fn start() -> Containerd {
        require_root();
        let containerd = tool("containerd");
        tool("runc");
        tool("containerd-shim-runc-v2");
        let dir = std::env::temp_dir().join(format!("pw-cri-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock");
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # This machine's root lacks CAP_SYS_RESOURCE: a negative oom_score_adj
  # (containerd asks -998 for sandboxes) makes runc fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # PID 1 is not systemd here: the cgroupfs driver.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni"
"#
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let preexisting: Vec<PathBuf> = cgroup_mounts()
            .iter()
            .flat_map(|m| LEVELS.map(|l| m.join(l)))
            .filter(|p| p.exists())
            .collect();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        // A private mount namespace with its own /run: the shims' sockets
        // (always under /run/containerd/s) stay out of the machine's /run.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            // containerd runs again whenever it stops (a restart), unless
            // `pause` holds it or `stop` ends the loop.
            .arg(format!(
                "mount -t tmpfs pw-cri-run /run && while [ ! -e '{d}/stop' ]; do '{}' --config '{d}/config.toml'; while [ -e '{d}/pause' ]; do sleep 0.1; done; done",
                containerd.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut c = Containerd {
            dir,
            sock,
            child,
            rt,
            client: None,
            sandboxes: vec![],
            pods: vec![],
            preexisting,
        };
        let t0 = Instant::now();
        let client = loop {
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("containerd exited {st}: {}", c.log());
            }
            if c.sock.exists() {
                if let Ok(cl) = c.rt.block_on(cri_client(&c.sock)) {
                    break cl;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "containerd's CRI did not answer in 20 s: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("containerd answered CRI after {:?}", t0.elapsed());
        c.client = Some(client);
        c
    }

    /// The containerd process itself (the loop around it is `child`).
    pub fn daemon_pid(&self) -> Option<i32> {
        let config = format!("{}/config.toml", self.dir.display());
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            (comm.trim() == "containerd" && String::from_utf8_lossy(&cmd).contains(&config))
                .then_some(pid)
        })
    }

    /// Stops containerd (SIGTERM), keeps it down for `down`, starts it
    /// again and waits until its CRI answers. Pods and their shims live on.
    pub fn restart(&mut self, down: Duration) {
        fs::write(self.dir.join("pause"), "").unwrap();
        let pid = self.daemon_pid().expect("containerd runs");
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.daemon_pid() == Some(pid) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "containerd did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.client = None;
        std::thread::sleep(down);
        fs::remove_file(self.dir.join("pause")).unwrap();
        let t0 = Instant::now();
        let client = loop {
            if let Ok(cl) = self.rt.block_on(cri_client(&self.sock)) {
                break cl;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "containerd's CRI did not answer after its restart: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.client = Some(client);
    }

    /// Stops and removes a sandbox run by `run_pod` for `uid`, and its
    /// cgroup directories in every hierarchy.
    pub fn remove_pod(&mut self, sandbox: &str, uid: &str) {
        let mut client = self.client();
        let id = sandbox.to_string();
        self.rt
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}: {}", self.log()));
        self.rt
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }))
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}: {}", self.log()));
        self.sandboxes.retain(|s| s != sandbox);
        let parent = format!("/kubepods/burstable/pod{uid}");
        for m in cgroup_mounts() {
            rmdir_tree(&m.join(parent.trim_start_matches('/')));
        }
        self.pods.retain(|p| *p != parent);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) {
        let out = Command::new(tool("ctr"))
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn client(&mut self) -> RuntimeServiceClient<Channel> {
        self.client.clone().unwrap()
    }

    /// A host-network pod sandbox under /kubepods/burstable/pod<uid> and one
    /// running container in it: (sandbox id, container id).
    pub fn run_pod(&mut self, uid: &str, names: (&str, &str, &str)) -> (String, String) {
        let (pod_namespace, pod_name, container_name) = names;
        let parent = format!("/kubepods/burstable/pod{uid}");
        let node_ns = |pid| NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        let logs = self.dir.join("pod-logs");
        fs::create_dir_all(&logs).unwrap();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod_name.into(),
                uid: uid.into(),
                namespace: pod_namespace.into(),
                attempt: 0,
            }),
            // Host network: no hostname may be set.
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(node_ns(NamespaceMode::Container as i32)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client();
        let t0 = Instant::now();
        let sandbox = self
            .rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}: {}", self.log()))
            .into_inner()
            .pod_sandbox_id;
        eprintln!("RunPodSandbox took {:?}", t0.elapsed());
        self.sandboxes.push(sandbox.clone());
        let container = self
            .rt
            .block_on(client.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: container_name.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: vec!["/bin/busybox".into(), "sleep".into(), "1000000".into()],
                    log_path: "client.log".into(),
                    linux: Some(LinuxContainerConfig {
                        security_context: Some(LinuxContainerSecurityContext {
                            namespace_options: Some(node_ns(NamespaceMode::Container as i32)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}: {}", self.log()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(StartContainerRequest {
                container_id: container.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer: {e}: {}", self.log()));
        self.pods.push(parent);
        assert!(
            cgroup2_root()
                .join(format!("kubepods/burstable/pod{uid}/{container}"))
                .is_dir(),
            "the container's cgroup v2 directory"
        );
        (sandbox, container)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut client) = self.client.take() {
            for s in std::mem::take(&mut self.sandboxes) {
                let (stop, rm) = self.rt.block_on(async {
                    let limit = Duration::from_secs(10);
                    let stop = tokio::time::timeout(
                        limit,
                        client.stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: s.clone(),
                        }),
                    )
                    .await;
                    let rm = tokio::time::timeout(
                        limit,
                        client.remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: s.clone(),
                        }),
                    )
                    .await;
                    (stop, rm)
                });
                if !matches!(stop, Ok(Ok(_))) || !matches!(rm, Ok(Ok(_))) {
                    eprintln!("removing sandbox {s}: stop {stop:?}, remove {rm:?}");
                }
            }
        }
        let _ = fs::write(self.dir.join("stop"), "");
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shims outlive containerd: ours carry our socket's address.
        let sock = self.sock.display().to_string();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("containerd-shim") && cmd.contains(&sock) {
                eprintln!("killing leftover shim {pid}: {cmd}");
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        for m in cgroup_mounts() {
            for p in &self.pods {
                rmdir_tree(&m.join(p.trim_start_matches('/')));
            }
            for l in LEVELS {
                let p = m.join(l);
                if !self.preexisting.contains(&p) {
                    // Not recursive: whatever else is in there stays.
                    if let Err(e) = fs::remove_dir(&p) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            eprintln!("rmdir {}: {e}", p.display());
                        }
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A pwclient in `ns` moved into cgroup `path` (relative to the cgroup2
/// root) before it fills the range and fails `fails` times; it holds its
/// sockets until finished.
pub fn failing_client_in(ns: &Netns, path: &str, fails: usize) -> Client {
    let mut c = Client::start(
        ns,
        &format!(
            "--wait --hold listen 127.0.0.1 7100 connect 127.0.0.1 7100 {}",
            4 + fails
        ),
        None,
    );
    let dir = cgroup2_root().join(path.trim_start_matches('/'));
    fs::write(dir.join("cgroup.procs"), c.pid.to_string())
        .unwrap_or_else(|e| panic!("moving {} into {}: {e}", c.pid, dir.display()));
    let now = fs::read_to_string(format!("/proc/{}/cgroup", c.pid)).unwrap();
    assert!(now.lines().any(|l| l == format!("0::{path}")), "{now}");
    c.go();
    let out = c.wait_line("holding");
    assert_eq!(
        out.iter().filter(|l| *l == "err 99").count(),
        fails,
        "{out:?}"
    );
    c
}
