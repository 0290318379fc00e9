//! `cargo xtask vm-test`: the integration tests inside real Debian kernels
//! under qemu (TCG), once per backend, for the probe paths this machine's
//! kernel lacks (fexit, kprobe) and the IPVS module.
//!
//! Per kernel: the pinned Debian package is fetched with `apt-get download`
//! (cached), unpacked, and booted with an initramfs holding busybox-static,
//! Debian's `ip` and `bpftool`, the release test binaries at the paths they
//! were built for, the shared libraries `ldd` names, and the kernel modules
//! the tests need. The guest's `/init` runs the suite per backend and reports
//! over the serial console; the host parses that and fails on any failure,
//! a crash, or a time-out.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{apt_install, cache_dir, cargo, missing_packages, output, run, show, workspace_root};

/// A Debian kernel the suite runs on. Pinned: a build the mirror stops
/// serving makes `vm-test` say which ones it serves instead.
pub struct Kernel {
    pub name: &'static str,
    pub package: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.101+deb12-cloud-amd64",
    },
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-cloud-amd64",
    },
];

/// What building and booting the guests needs on the host.
const VM_PKGS: &[&str] = &[
    "qemu-system-x86",
    "cpio",
    "kmod",
    "xz-utils",
    "busybox-static",
    "iproute2",
    "bpftool",
    "ipvsadm",
    "nftables",
];

/// Modules loaded in the guest (with their dependencies, found by modinfo).
/// A real node's kernel loads sch_ingress (the clsact qdisc), cls_bpf and
/// tcp_diag (the socket table `ss` and portwatch's holder look-ups read)
/// on demand through modprobe; the guest has no modprobe, so they come first.
const MODULES: &[&str] = &[
    "veth",
    "ip_vs",
    "ip_vs_rr",
    "nf_tables",
    "sch_ingress",
    "cls_bpf",
    "tcp_diag",
];

pub const BACKENDS: &[&str] = &["fexit", "kprobe", "tracepoint"];

/// Integration tests that need host tools the guest does not carry (curl,
/// setpriv, util-linux unshare); everything else in the test binaries runs.
const SKIP: &[&str] = &[
    "curl_wget_and_nc_hit_the_exhausted_range",
    "not_root_is_one_sentence_and_exit_1",
    "mounts_tracefs_when_missing",
];

/// busybox applets the guest's `/init` and the tests use. Not `ip`: busybox's
/// has no netns support, Debian's is copied in. Not `sh` either: busybox's
/// shell runs its own applets before PATH, so `sh -c "ip netns exec ..."`
/// (check's printed fixes) would get busybox's `ip`; Debian's dash is /bin/sh.
const APPLETS: &[&str] = &[
    "mount", "umount", "mkdir", "cat", "echo", "insmod", "poweroff", "uname", "sleep", "ls",
    "grep", "rm", "true", "false", "env", "kill", "ps", "head", "tail", "dmesg", "sysctl", "tr",
    "unshare", "nc", "seq", "wc", "cut", "xargs", "chmod",
];

/// Host programs copied into the guest with their libraries.
const HOST_TOOLS: &[&str] = &[
    "/sbin/ip",
    "/usr/sbin/bpftool",
    "/usr/sbin/ipvsadm",
    "/usr/sbin/nft",
    "/bin/dash",
];

/// Test binaries that honour PORTWATCH_TEST_BACKEND run once per backend;
/// the others run once.
const PER_BACKEND: &[&str] = &["trace", "cause"];

/// Test binaries that need what only the host has, and test nothing
/// kernel-specific beyond what `trace` already proves on every backend:
/// serve (a real Prometheus), cri (a real containerd), top (`ss`), churn
/// (300 namespaces: minutes under TCG, and nothing kernel-specific).
const HOST_ONLY: &[&str] = &["serve", "cri", "top", "churn"];

/// One guest's time limit; a hung kernel must not hang CI.
const GUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

pub fn vm_cache() -> PathBuf {
    std::env::var_os("PORTWATCH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("vm"))
}

pub fn select(which: &str) -> Result<Vec<&'static Kernel>> {
    if which == "all" {
        return Ok(KERNELS.iter().collect());
    }
    match KERNELS.iter().find(|k| k.name == which) {
        Some(k) => Ok(vec![k]),
        None => bail!(
            "unknown kernel {which:?}: choose one of {}, or all",
            KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The test binaries and what they run, as built for the host.
struct Payload {
    tests: Vec<PathBuf>,
    /// Files the tests find at build-time paths (portwatch, examples).
    fixed: Vec<PathBuf>,
}

pub fn vm_test(kernels: &[&'static Kernel], extra: &[String]) -> Result<()> {
    let t0 = Instant::now();
    apt_install(&missing_packages(VM_PKGS))?;
    let payload = build_payload()?;
    let out_root = workspace_root().join("target/vm");
    fs::create_dir_all(&out_root)?;

    // Guests run side by side, one vCPU each: two cores, two kernels.
    let mut prepared = vec![];
    for k in kernels {
        let kdir = unpack_kernel(k)?;
        let dir = out_root.join(k.name);
        let initrd = build_initramfs(k, &kdir, &payload, &dir, extra)?;
        prepared.push((*k, kdir, initrd, dir));
    }
    let (tx, rx) = mpsc::channel();
    let mut handles = vec![];
    for (k, kdir, initrd, dir) in prepared {
        let tx = tx.clone();
        let vmlinuz = find_vmlinuz(&kdir)?;
        handles.push(std::thread::spawn(move || {
            let r = boot(k, &vmlinuz, &initrd, &dir);
            let _ = tx.send((k.name, r));
        }));
    }
    drop(tx);
    let mut results: Vec<(&str, Result<GuestReport>)> = rx.iter().collect();
    for h in handles {
        let _ = h.join();
    }
    results.sort_by_key(|(n, _)| KERNELS.iter().position(|k| k.name == *n));

    let mut failed = vec![];
    let mut reports = vec![];
    for (name, r) in results {
        match r {
            Ok(rep) => {
                if let Some(why) = rep.failure() {
                    failed.push(format!("{name}: {why}"));
                }
                reports.push((name, rep));
            }
            Err(e) => failed.push(format!("{name}: {e:#}")),
        }
    }
    let matrix = matrix(&reports);
    println!("\n{matrix}");
    fs::write(out_root.join("matrix.md"), &matrix)?;
    let (p, f) = reports
        .iter()
        .fold((0, 0), |(p, f), (_, r)| (p + r.passed(), f + r.failed()));
    println!(
        "xtask: vm-test: {p} passed, {f} failed in {} kernel(s), {:.0} s (console logs in {})",
        reports.len(),
        t0.elapsed().as_secs_f64(),
        out_root.display()
    );
    if !failed.is_empty() {
        bail!("vm-test failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// Builds the integration tests (release: the guests run under emulation)
/// and finds their executables.
fn build_payload() -> Result<Payload> {
    let mut c = cargo();
    c.args([
        "test",
        "--release",
        "--package",
        "portwatch",
        // With the tests that need the guests' kernels (IPVS).
        "--features",
        "vm-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("xtask: $ {}", show(&c));
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut tests = vec![];
    let mut bin = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        if kinds.iter().any(|k| k == "test") && v["profile"]["test"] == true {
            if v["target"]["src_path"]
                .as_str()
                .is_some_and(|p| p.contains("/tests/"))
            {
                tests.push(PathBuf::from(exe));
            }
        } else if kinds.iter().any(|k| k == "bin")
            && v["target"]["name"] == "portwatch"
            && v["profile"]["test"] == false
        {
            bin = Some(PathBuf::from(exe));
        }
    }
    let bin = bin.context("cargo did not report the portwatch binary")?;
    let pwclient = bin.parent().unwrap().join("examples/pwclient");
    if !pwclient.exists() {
        bail!("{} was not built", pwclient.display());
    }
    if tests.is_empty() {
        bail!("cargo reported no integration test binary");
    }
    Ok(Payload {
        tests,
        fixed: vec![bin, pwclient],
    })
}

fn deb_path(k: &Kernel) -> Result<Option<PathBuf>> {
    let dir = vm_cache().join("debs");
    fs::create_dir_all(&dir)?;
    for e in fs::read_dir(&dir)? {
        let p = e?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{}_", k.package)) && name.ends_with(".deb") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The kernel package, downloaded once into the cache and unpacked there.
fn unpack_kernel(k: &Kernel) -> Result<PathBuf> {
    let dest = vm_cache().join("kernels").join(k.package);
    if dest.join(".unpacked").exists() {
        return Ok(dest);
    }
    let deb = match deb_path(k)? {
        Some(p) => p,
        None => {
            let dir = vm_cache().join("debs");
            let st = Command::new("apt-get")
                .args(["download", k.package])
                .current_dir(&dir)
                .status()
                .context("running apt-get download")?;
            if !st.success() {
                let flavour = if k.name == "6.1" {
                    "^linux-image-6\\.1\\.0-.*-cloud-amd64$"
                } else {
                    "^linux-image-6\\.12\\..*-cloud-amd64$"
                };
                let avail =
                    output(Command::new("apt-cache").args(["search", "--names-only", flavour]))
                        .unwrap_or_default();
                bail!(
                    "the pinned kernel {} is not served any more; pin one of these in xtask/src/vm.rs:\n{avail}",
                    k.package
                );
            }
            deb_path(k)?.context("apt-get download left no .deb")?
        }
    };
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))?;
    fs::write(dest.join(".unpacked"), "")?;
    Ok(dest)
}

fn find_vmlinuz(kdir: &Path) -> Result<PathBuf> {
    for e in fs::read_dir(kdir.join("boot"))? {
        let p = e?.path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("vmlinuz-")
        {
            return Ok(p);
        }
    }
    bail!("no vmlinuz in {}", kdir.join("boot").display())
}

/// Every `.ko` / `.ko.xz` of the kernel, by module name (`-` and `_` alike).
fn module_index(kdir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut idx = BTreeMap::new();
    let mut stack = vec![kdir.join("lib/modules")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(m) = name
                .strip_suffix(".ko.xz")
                .or_else(|| name.strip_suffix(".ko"))
            {
                idx.insert(m.replace('-', "_"), p);
            }
        }
    }
    Ok(idx)
}

/// Decompresses (if needed) one module into `dir`, returns its path there.
fn stage_module(src: &Path, name: &str, dir: &Path) -> Result<PathBuf> {
    let dst = dir.join(format!("{name}.ko"));
    if src.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .args(["-dc"])
            .arg(src)
            .output()
            .context("running xz")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", src.display());
        }
        fs::write(&dst, out.stdout)?;
    } else {
        fs::copy(src, &dst)?;
    }
    Ok(dst)
}

/// Modules in load order: dependencies first.
fn modules_in_order(idx: &BTreeMap<String, PathBuf>, dir: &Path) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        idx: &BTreeMap<String, PathBuf>,
        dir: &Path,
        done: &mut Vec<String>,
    ) -> Result<()> {
        let m = m.replace('-', "_");
        if done.contains(&m) {
            return Ok(());
        }
        let src = idx
            .get(&m)
            .with_context(|| format!("module {m} is not in the kernel package"))?;
        let staged = stage_module(src, &m, dir)?;
        let deps = output(Command::new("modinfo").args(["-F", "depends"]).arg(&staged))
            .with_context(|| format!("modinfo {}", staged.display()))?;
        for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
            visit(d, idx, dir, done)?;
        }
        done.push(m);
        Ok(())
    }
    let mut done = vec![];
    for m in MODULES {
        visit(m, idx, dir, &mut done)?;
    }
    Ok(done)
}

/// Copies `src` to `root` + `at` (an initramfs or image root), following
/// symlinks: the tree has no /lib -> /usr/lib links of its own.
pub(crate) fn put(root: &Path, src: &Path, at: &Path) -> Result<()> {
    let dst = root.join(at.strip_prefix("/").unwrap_or(at));
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// A copy without debug info: the guest boots from RAM.
fn put_stripped(root: &Path, src: &Path, at: &Path) -> Result<()> {
    put(root, src, at)?;
    let dst = root.join(at.strip_prefix("/").unwrap_or(at));
    run(Command::new("strip").arg("--strip-debug").arg(&dst))
}

/// The shared libraries (and the loader) a dynamically linked program needs.
pub(crate) fn libraries_of(prog: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(vec![]);
    }
    let mut libs = vec![];
    for l in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn build_initramfs(
    k: &Kernel,
    kdir: &Path,
    payload: &Payload,
    dir: &Path,
    extra: &[String],
) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "lib/modules",
        "pw",
        "etc",
        "var",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    put(&root, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    std::os::unix::fs::symlink("dash", root.join("bin/sh"))?;
    // Enough of /etc for programs that look users up.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    let mut dynamic: Vec<PathBuf> = vec![];
    for src in HOST_TOOLS {
        put(&root, Path::new(src), Path::new(src))?;
        dynamic.push(PathBuf::from(src));
    }
    for f in &payload.fixed {
        put_stripped(&root, f, f)?;
        dynamic.push(f.clone());
    }
    let mut test_names = vec![];
    for t in &payload.tests {
        // trace-0123abcd -> /pw/trace
        let stem = t.file_name().unwrap().to_string_lossy();
        let name = stem.rsplit_once('-').map_or(&*stem, |(n, _)| n).to_string();
        if HOST_ONLY.contains(&name.as_str()) {
            continue;
        }
        put_stripped(&root, t, &Path::new("/pw").join(&name))?;
        dynamic.push(t.clone());
        test_names.push(name);
    }
    for prog in &dynamic {
        for lib in libraries_of(prog)? {
            if !root.join(lib.strip_prefix("/").unwrap()).exists() {
                put(&root, &lib, &lib)?;
            }
        }
    }

    let mods = modules_in_order(&module_index(kdir)?, &root.join("lib/modules"))?;
    let init = guest_init(k, &mods, &test_names, extra);
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;

    // newc cpio, uncompressed: the kernel unpacks it faster than it gunzips.
    let initrd = dir.join("initramfs.cpio");
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . -print0 | cpio --null --quiet -o -H newc -R 0:0 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()?;
    if !list.success() {
        bail!("building {} failed", initrd.display());
    }
    let mb = fs::metadata(&initrd)?.len() as f64 / (1 << 20) as f64;
    eprintln!(
        "xtask: {} initramfs {:.1} MiB, modules: {}",
        k.name,
        mb,
        mods.join(" ")
    );
    Ok(initrd)
}

/// The guest's PID 1: mounts, modules, then every test binary once per
/// backend, then the automatic choice, each framed by marker lines.
fn guest_init(k: &Kernel, mods: &[String], tests: &[String], extra: &[String]) -> String {
    let skips: String = SKIP.iter().map(|s| format!(" --skip {s}")).collect();
    let extra = extra.join(" ");
    let mut s = String::new();
    s += "#!/bin/sh\n";
    s += "export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root RUST_BACKTRACE=1\n";
    s += "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n";
    // No tmpfs over /tmp: the initramfs (already in RAM) may carry the
    // test binaries there, at the paths they were built for (a checkout
    // under /tmp, as CI's clean clone is).
    s += "chmod 1777 /tmp; mount -t tmpfs run /run; mkdir -p /run/netns /root\n";
    s += "mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf\n";
    for m in mods {
        s += &format!("insmod /lib/modules/{m}.ko || echo PWVM-FAIL module {m}\n");
    }
    s += "/sbin/ip link set lo up\n";
    s += &format!("echo PWVM-KERNEL {} $(uname -r)\n", k.name);
    s += "echo PWVM-BTF $(ls /sys/kernel/btf | tr '\\n' ' ' 2>/dev/null)\n";
    for t in tests {
        if PER_BACKEND.contains(&t.as_str()) {
            for b in BACKENDS {
                s += &format!("echo PWVM-BEGIN {t} {b}\n");
                s += &format!(
                    "PORTWATCH_TEST_BACKEND={b} /pw/{t} --test-threads=1{skips} {extra} 2>&1\n"
                );
                s += &format!("echo PWVM-END {t} {b} rc=$?\n");
            }
        } else {
            s += &format!("echo PWVM-BEGIN {t} any\n");
            s += &format!("/pw/{t} --test-threads=1 --show-output{skips} {extra} 2>&1\n");
            s += &format!("echo PWVM-END {t} any rc=$?\n");
        }
    }
    // The automatic choice on a kernel that offers everything is fexit.
    s += "echo PWVM-BEGIN trace auto\n";
    s += "PORTWATCH_TEST_EXPECT_AUTO=fexit /pw/trace --test-threads=1 --exact startup_names_the_backend_of_each_hook 2>&1\n";
    s += "echo PWVM-END trace auto rc=$?\n";
    s += "echo PWVM-DONE\n";
    s += "poweroff -f\n";
    s
}

/// What one guest reported.
#[derive(Default, Debug)]
pub struct GuestReport {
    /// (test binary, backend) -> libtest's outcome per test, and the rc.
    pub runs: BTreeMap<(String, String), Run>,
    pub done: bool,
    pub problems: Vec<String>,
}

#[derive(Default, Debug)]
pub struct Run {
    pub tests: Vec<(String, bool)>,
    pub rc: Option<i32>,
}

impl GuestReport {
    /// Feeds one console line.
    pub fn line(&mut self, cur: &mut Option<(String, String)>, l: &str) {
        let l = l.trim_end_matches('\r');
        if let Some(rest) = l.strip_prefix("PWVM-BEGIN ") {
            let mut w = rest.split_whitespace();
            let key = (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            );
            self.runs.entry(key.clone()).or_default();
            *cur = Some(key);
        } else if let Some(rest) = l.strip_prefix("PWVM-END ") {
            let mut w = rest.split_whitespace();
            let key = (
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            );
            let rc = w
                .next()
                .and_then(|r| r.strip_prefix("rc="))
                .and_then(|r| r.parse().ok());
            self.runs.entry(key).or_default().rc = rc;
            *cur = None;
        } else if l.starts_with("PWVM-DONE") {
            self.done = true;
        } else if let Some(rest) = l.strip_prefix("PWVM-FAIL ") {
            self.problems.push(rest.to_string());
        } else if let (Some(key), Some(rest)) = (cur.as_ref(), l.strip_prefix("test ")) {
            // "test name ... ok" / "test name ... FAILED"
            if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
                let ok = match outcome.trim() {
                    "ok" => true,
                    "FAILED" => false,
                    _ => return,
                };
                self.runs
                    .get_mut(key)
                    .unwrap()
                    .tests
                    .push((name.to_string(), ok));
            }
        }
    }

    pub fn passed(&self) -> usize {
        self.runs
            .values()
            .flat_map(|r| &r.tests)
            .filter(|t| t.1)
            .count()
    }

    pub fn failed(&self) -> usize {
        self.runs
            .values()
            .flat_map(|r| &r.tests)
            .filter(|t| !t.1)
            .count()
    }

    /// Why this guest's run counts as failed, if it does.
    pub fn failure(&self) -> Option<String> {
        if !self.problems.is_empty() {
            return Some(self.problems.join("; "));
        }
        if !self.done {
            return Some(
                "the guest did not finish (crash or time-out; see its console log)".into(),
            );
        }
        for ((t, b), r) in &self.runs {
            if r.tests.is_empty() {
                return Some(format!("{t} on {b}: no test ran"));
            }
            let bad: Vec<_> = r
                .tests
                .iter()
                .filter(|x| !x.1)
                .map(|x| x.0.as_str())
                .collect();
            if !bad.is_empty() {
                return Some(format!("{t} on {b}: failed {}", bad.join(", ")));
            }
            if r.rc != Some(0) {
                return Some(format!("{t} on {b}: exit {:?}", r.rc));
            }
        }
        if self.runs.is_empty() {
            return Some("no test run reported".into());
        }
        None
    }
}

fn boot(k: &Kernel, vmlinuz: &Path, initrd: &Path, dir: &Path) -> Result<GuestReport> {
    let log_path = dir.join("console.log");
    let mut log = fs::File::create(&log_path)?;
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "1"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("xtask: {}: $ {}", k.name, show(&c));
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut rep = GuestReport::default();
    let mut cur = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => {
                writeln!(log, "{l}")?;
                println!("[{}] {l}", k.name);
                rep.line(&mut cur, &l);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if t0.elapsed() > GUEST_TIMEOUT {
                    let _ = child.kill();
                    rep.problems
                        .push(format!("timed out after {} s", GUEST_TIMEOUT.as_secs()));
                    break;
                }
            }
        }
    }
    let _ = child.wait();
    eprintln!(
        "xtask: {}: guest ran {:.0} s, {} passed, {} failed",
        k.name,
        t0.elapsed().as_secs_f64(),
        rep.passed(),
        rep.failed()
    );
    Ok(rep)
}

/// Which hook a test exercises, from its name.
fn hook_of(test: &str) -> Option<&'static str> {
    if test.contains("connect") {
        Some("connect")
    } else if test.contains("bind") {
        Some("bind")
    } else {
        None
    }
}

fn cell<'a>(tests: impl Iterator<Item = &'a (String, bool)>) -> String {
    let (mut n, mut p) = (0, 0);
    for t in tests {
        n += 1;
        p += t.1 as usize;
    }
    if n == 0 {
        "-".to_string()
    } else if p == n {
        format!("pass ({p})")
    } else {
        format!("FAIL ({}/{n})", n - p)
    }
}

/// kernel x backend x hook: pass/fail counts from the tests that exercise
/// it (every per-backend test binary together), then the automatic choice
/// and the binaries that run once (nodeport-steal with IPVS, check).
pub fn matrix(reports: &[(&str, GuestReport)]) -> String {
    let mut s = String::from(
        "| kernel | backend | connect hook | bind hook | all tests |\n|---|---|---|---|---|\n",
    );
    for (k, rep) in reports {
        fn runs_of<'a>(
            rep: &'a GuestReport,
            b: &'a str,
        ) -> impl Iterator<Item = (&'a (String, String), &'a Run)> + 'a {
            rep.runs.iter().filter(move |((_, rb), _)| rb == b)
        }
        let of = |b: &'static str| runs_of(rep, b);
        for b in BACKENDS {
            if of(b).next().is_none() {
                continue;
            }
            let tests = || of(b).flat_map(|(_, r)| r.tests.iter());
            s += &format!(
                "| {k} | {b} | {} | {} | {} |\n",
                cell(tests().filter(|t| hook_of(&t.0) == Some("connect"))),
                cell(tests().filter(|t| hook_of(&t.0) == Some("bind"))),
                cell(tests())
            );
        }
        for ((bin, _), r) in of("auto") {
            s += &format!(
                "| {k} | auto | - | - | {bin}: picks fexit: {} |\n",
                cell(r.tests.iter())
            );
        }
        for ((bin, _), r) in of("any") {
            s += &format!("| {k} | - | - | - | {bin}: {} |\n", cell(r.tests.iter()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> GuestReport {
        let mut r = GuestReport::default();
        let mut cur = None;
        for l in lines {
            r.line(&mut cur, l);
        }
        r
    }

    #[test]
    fn a_clean_run_passes_and_a_failure_or_crash_does_not() {
        let ok = [
            "PWVM-BEGIN trace fexit",
            "test connect_exhaustion_ipv4 ... ok",
            "test bind_port_in_use_ipv4 ... ok\r",
            "PWVM-END trace fexit rc=0",
            "PWVM-DONE",
        ];
        let r = feed(&ok);
        assert_eq!(r.failure(), None);
        assert_eq!((r.passed(), r.failed()), (2, 0));

        let mut bad = ok.to_vec();
        bad[2] = "test bind_port_in_use_ipv4 ... FAILED";
        bad[3] = "PWVM-END trace fexit rc=101";
        let r = feed(&bad);
        assert!(r.failure().unwrap().contains("bind_port_in_use_ipv4"));
        let m = matrix(&[("6.1", r)]);
        assert!(
            m.contains("| 6.1 | fexit | pass (1) | FAIL (1/1) | FAIL (1/2) |"),
            "{m}"
        );

        // No PWVM-DONE: the guest crashed or hung.
        assert!(feed(&ok[..4]).failure().unwrap().contains("did not finish"));
        // A run in which no test ran is not a pass.
        let r = feed(&[
            "PWVM-BEGIN trace kprobe",
            "PWVM-END trace kprobe rc=0",
            "PWVM-DONE",
        ]);
        assert!(r.failure().unwrap().contains("no test ran"));
        // A test line outside a run is ignored, a module failure is not.
        let r = feed(&["test x ... ok", "PWVM-FAIL module veth", "PWVM-DONE"]);
        assert!(r.failure().unwrap().contains("veth"));
    }
}
