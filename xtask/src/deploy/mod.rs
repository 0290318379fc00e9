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
//!    one-sentence error naming it and a non-zero exit;
//! 4. the release tarball (`cargo xtask dist`): its binary run in a root
//!    holding only the tarball's files and the libraries `ldd` names.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

use crate::{cache_dir, image, output, run, show, workspace_root};

mod manifests;
mod podman;

use manifests::*;
use podman::*;

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
    let t4 = Instant::now();
    // The tarball: its binary in a root with nothing but its own files.
    crate::dist::test(&crate::dist::build(&bin)?, &pwclient()?)?;
    eprintln!(
        "xtask: deploy tests passed: rules {:.1} s, manifests {:.1} s, image {:.1} s, podman {:.1} s, tarball {:.1} s",
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        (t4 - t3).as_secs_f64(),
        t4.elapsed().as_secs_f64()
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
