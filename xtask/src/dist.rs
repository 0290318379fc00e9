//! `cargo xtask dist`: the release tarball for nodes without build tools —
//! the binary (eBPF objects embedded), shell completions (bash, zsh, fish)
//! and a man page per command, all generated from the binary's own clap
//! definitions (`portwatch generate`).
//!
//! Its test unpacks the tarball into an empty root that holds only the
//! tarball's files and the libraries `ldd` names, and runs the binary there
//! (chroot, private mount and network namespaces): `--version`, `check`, and
//! `trace` seeing a real failure provoked in a test netns.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use xtask::testkit::{lines_of, watch_stderr, Netns};

use crate::{image::workspace_version, rootfs, run, workspace_root};

/// Where each file goes inside the tarball's top directory.
const BIN: &str = "bin/portwatch";
const BASH: &str = "share/bash-completion/completions/portwatch";
const ZSH: &str = "share/zsh/site-functions/_portwatch";
const FISH: &str = "share/fish/vendor_completions.d/portwatch.fish";
const MAN: &str = "share/man/man1";

pub struct Dist {
    pub tarball: PathBuf,
    /// The tarball's top directory name (portwatch-VERSION-x86_64-linux).
    pub top: String,
}

/// Builds the tarball from the release binary `bin`, under target/dist/.
pub fn build(bin: &Path) -> Result<Dist> {
    let version = workspace_version()?;
    let top = format!("portwatch-{version}-{}-linux", std::env::consts::ARCH);
    let dir = workspace_root().join("target/dist");
    let stage = dir.join(&top);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("bin"))?;
    let dst = stage.join(BIN);
    fs::copy(bin, &dst).with_context(|| format!("copying {}", bin.display()))?;
    run(Command::new("strip").arg("--strip-debug").arg(&dst))?;
    for (shell, at) in [("bash", BASH), ("zsh", ZSH), ("fish", FISH)] {
        let out = Command::new(&dst)
            .args(["generate", "completions", shell])
            .output()
            .with_context(|| format!("{} generate completions {shell}", dst.display()))?;
        ensure!(
            out.status.success() && !out.stdout.is_empty(),
            "generating the {shell} completions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = stage.join(at);
        fs::create_dir_all(p.parent().unwrap())?;
        fs::write(&p, out.stdout)?;
    }
    run(Command::new(&dst)
        .args(["generate", "man"])
        .arg(stage.join(MAN)))?;
    fs::copy(workspace_root().join("README.md"), stage.join("README.md"))?;
    let tarball = dir.join(format!("{top}.tar.gz"));
    run(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .args(["--owner=0", "--group=0", "-czf"])
        .arg(&tarball)
        .arg(&top))?;
    fs::remove_dir_all(&stage)?;
    eprintln!(
        "xtask: dist: {} ({} KiB)",
        tarball.display(),
        fs::metadata(&tarball)?.len() / 1024
    );
    Ok(Dist { tarball, top })
}

/// The files a tarball holds, as `tar -tzf` lists them.
fn listing(tarball: &Path) -> Result<Vec<String>> {
    let out = Command::new("tar").arg("-tzf").arg(tarball).output()?;
    ensure!(out.status.success(), "tar -tzf {}", tarball.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Unpacks the tarball into an empty root with only the libraries `ldd`
/// names for its binary, and runs that binary there.
pub fn test(dist: &Dist, pwclient: &Path) -> Result<()> {
    let t0 = Instant::now();
    let files = listing(&dist.tarball)?;
    let want = |p: &str| format!("{}/{p}", dist.top);
    for p in [BIN, BASH, ZSH, FISH] {
        ensure!(
            files.contains(&want(p)),
            "{p} missing from the tarball: {files:?}"
        );
    }
    for cmd in ["", "-trace", "-check", "-top", "-nodeport-steal", "-serve"] {
        let page = want(&format!("{MAN}/portwatch{cmd}.1"));
        ensure!(files.contains(&page), "{page} missing: {files:?}");
    }

    let root = workspace_root().join("target/dist/root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--strip-components=1", "-xzf"])
        .arg(&dist.tarball))?;
    let bin = root.join(BIN);
    for lib in rootfs::libraries_of(&bin)? {
        rootfs::put(&root, &lib, &lib)?;
    }
    for d in ["proc", "sys", "run", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    // Nothing else is in the root: no shell, no libc beyond ldd's list.
    ensure!(!root.join("bin/sh").exists() && !root.join("usr/bin").exists());
    run(Command::new("bash").arg("-n").arg(root.join(BASH)))?;

    let version = chrooted(&root, &["--version"]).output()?;
    let v = String::from_utf8_lossy(&version.stdout);
    ensure!(
        version.status.success() && v.trim() == format!("portwatch {}", workspace_version()?),
        "portwatch --version in the bare root: {v:?} {}",
        String::from_utf8_lossy(&version.stderr)
    );

    // check, one-shot: 0 (nothing at warning) or 3 (a finding), not an error.
    let check = chrooted(&root, &["check", "--json"]).output()?;
    let code = check.status.code();
    ensure!(
        matches!(code, Some(0) | Some(3)),
        "portwatch check in the bare root exited {code:?}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let first = String::from_utf8_lossy(&check.stdout);
    let first = first.lines().next().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(first)
        .with_context(|| format!("check --json's first line: {first:?}"))?;

    // trace: a real failure in a test netns, seen from the bare root.
    let mut tracer = chrooted(&root, &["trace", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = watch_stderr(&mut tracer, Some("attached;"));
    let lines = lines_of(tracer.stdout.take().unwrap());
    let res = (|| -> Result<()> {
        err.wait_ready(&mut tracer, Duration::from_secs(30))?;
        let ns = Netns::add(&format!("pwdist-{}", std::process::id()), (41000, 41001))?;
        let out = ns
            .cmd(pwclient)
            .args("listen 127.0.0.1 7100 fill 127.0.0.1 7100 2 connect 127.0.0.1 7100 1".split(' '))
            .output()?;
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("err 99"),
            "the client did not fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(l) = lines.recv_timeout(left) else {
                bail!(
                    "no event from the bare root's trace in 10 s: {:?}",
                    err.lines.lock().unwrap()
                );
            };
            let v: serde_json::Value = serde_json::from_str(&l)?;
            // A failure (writing the netns's range makes a sysctl_write
            // record there first).
            if v["netns"] == ns.inode && v["kind"] != "sysctl_write" {
                ensure!(v["errno"] == "EADDRNOTAVAIL", "{v}");
                eprintln!("xtask: dist: the bare root's trace saw {l}");
                return Ok(());
            }
        }
    })();
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let st = tracer.wait()?;
    res?;
    ensure!(st.success(), "trace in the bare root ended with {st}");
    fs::remove_dir_all(&root)?;
    eprintln!(
        "xtask: dist: the tarball's binary ran in a root with only its files and libraries ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `portwatch ARGS` chrooted into `root`, in private mount (with /proc and
/// /sys of the host) and network namespaces... except trace, which must
/// see the host's netns events: the network namespace is private only for
/// `check` (it audits its own namespace, the "node" there).
fn chrooted(root: &Path, args: &[&str]) -> Command {
    let r = root.display();
    let net = if args.first() == Some(&"check") {
        "--net"
    } else {
        ""
    };
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private"]);
    if !net.is_empty() {
        c.arg(net);
    }
    c.args([
        "sh",
        "-c",
        &format!(
            "mount -t proc proc {r}/proc && mount --rbind /sys {r}/sys && exec chroot {r} /bin/portwatch {}",
            quoted.join(" ")
        ),
    ]);
    c
}
