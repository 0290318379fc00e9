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

use crate::{
    apt_install, cache_dir, cargo, missing_packages, output, rootfs::*, run, show, workspace_root,
};

mod guest;
mod initramfs;
mod kernel;

pub use guest::*;
pub(crate) use initramfs::GuestRoot;
use initramfs::*;
use kernel::*;
pub(crate) use kernel::{find_vmlinuz, unpack_kernel};

/// A Debian kernel the suite runs on. Pinned: a build the mirror stops
/// serving makes `vm-test` say which ones it serves instead.
pub struct Kernel {
    pub name: &'static str,
    /// The guest's time in the last runs, roughly: the slowest boot first,
    /// so that with fewer cores than guests the last one to start is short.
    pub est_secs: u32,
    pub package: &'static str,
    /// Where apt finds the package: the machine's own sources, or (for a
    /// release the machine does not follow) Debian's archive through a
    /// private apt configuration, leaving the machine's apt alone.
    pub archive: Archive,
    /// apt-cache pattern for the builds of this line, listed when the
    /// pinned one is not served any more.
    pub served: &'static str,
}

pub enum Archive {
    /// The machine's own apt sources (Debian 12: 6.1 and 6.12).
    Machine,
    /// `deb` lines of a private sources file (Debian 11: 5.10).
    Private(&'static [&'static str]),
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.12",
        est_secs: 250,
        package: "linux-image-6.12.101+deb12-cloud-amd64",
        archive: Archive::Machine,
        served: "^linux-image-6\\.12\\..*-cloud-amd64$",
    },
    Kernel {
        name: "6.1",
        est_secs: 330,
        package: "linux-image-6.1.0-56-cloud-amd64",
        archive: Archive::Machine,
        served: "^linux-image-6\\.1\\.0-.*-cloud-amd64$",
    },
    // Debian 11: no module BTF (IPVS is read from /proc/net/ip_vs_conn),
    // `tcp_retransmit_skb` without `family`, `ip_vs_in` for `ip_vs_in_hook`.
    Kernel {
        name: "5.10",
        est_secs: 310,
        package: "linux-image-5.10.0-46-cloud-amd64",
        archive: Archive::Private(&[
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main",
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main",
        ]),
        served: "^linux-image-5\\.10\\.0-.*-cloud-amd64$",
    },
];

/// What building and booting the guests needs on the host.
pub(crate) const VM_PKGS: &[&str] = &[
    "qemu-system-x86",
    "cpio",
    "kmod",
    "xz-utils",
    "busybox-static",
    "iproute2",
    "bpftool",
    "ipvsadm",
    "nftables",
    // kube-proxy's IPVS-mode layout: its ipsets and iptables chains.
    "ipset",
    "iptables",
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
    // What kube-proxy in IPVS mode sets up on a node: the kube-ipvs0
    // dummy, its ipsets, and its iptables-nft chains (mark, masquerade,
    // set and address-type matches through nft_compat).
    "dummy",
    "ip_set_hash_ipport",
    "ip_set_bitmap_port",
    "xt_set",
    "nft_compat",
    "nft_chain_nat",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_tcpudp",
    "xt_comment",
];

/// Loaded where the kernel builds them as modules; later kernels have them
/// inside another (nft_counter joined nf_tables after 5.10, and
/// iptables-nft puts a counter in every rule).
const MODULES_WHERE_SPLIT: &[&str] = &["nft_counter"];

pub const BACKENDS: &[&str] = &["fexit", "kprobe", "tracepoint"];

/// What `trace` without `--backend` must pick on every guest kernel (all
/// of them offer fexit).
pub(crate) const AUTO_PICKS: &str = "fexit";

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
    "/usr/sbin/ipset",
    "/usr/sbin/xtables-nft-multi",
];

/// Names a multi-call host program answers to in the guest.
const TOOL_LINKS: &[(&str, &str)] = &[("/usr/sbin/iptables", "xtables-nft-multi")];

/// iptables extensions (loaded with dlopen, so `ldd` does not name them)
/// for kube-proxy's rules.
const XTABLES_EXTENSIONS: &[&str] = &[
    "libxt_standard.so",
    "libxt_tcp.so",
    "libxt_mark.so",
    "libxt_MARK.so",
    "libxt_MASQUERADE.so",
    "libxt_set.so",
    "libxt_addrtype.so",
    "libxt_comment.so",
];

/// Where Debian keeps the iptables extensions.
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Test binaries that honour PORTWATCH_TEST_BACKEND run once per backend;
/// the others run once.
const PER_BACKEND: &[&str] = &["trace", "cause"];

/// Test binaries that need what only the host has, and test nothing
/// kernel-specific beyond what `trace` already proves on every backend:
/// serve (a real Prometheus), cri (a real containerd), top (`ss`), churn
/// (300 namespaces: minutes under TCG, and nothing kernel-specific), soak
/// (a real containerd, Prometheus, minutes).
const HOST_ONLY: &[&str] = &["serve", "cri", "top", "churn", "soak"];

/// One guest's time limit; a hung kernel must not hang CI. A guest took
/// 4 to 6 minutes on its own core in the last runs, and up to 11 on a
/// machine busy with other builds.
const GUEST_TIMEOUT: Duration = Duration::from_secs(18 * 60);

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

    let mut prepared = vec![];
    for k in kernels {
        let kdir = unpack_kernel(k)?;
        let dir = out_root.join(k.name);
        let initrd = build_initramfs(k, &kdir, &payload, &dir, extra)?;
        prepared.push((*k, find_vmlinuz(&kdir)?, initrd, dir));
    }
    // One vCPU per guest and one guest per core: a third guest on two
    // cores would slow all of them. The slowest start first; the next
    // starts when a core frees up.
    prepared.sort_by_key(|(k, ..)| std::cmp::Reverse(k.est_secs));
    let parallel = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, prepared.len().max(1));
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        prepared
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let (tx, rx) = mpsc::channel();
    let mut handles = vec![];
    for _ in 0..parallel {
        let (tx, queue) = (tx.clone(), queue.clone());
        handles.push(std::thread::spawn(move || loop {
            let next = queue.lock().unwrap().pop_front();
            let Some((k, vmlinuz, initrd, dir)) = next else {
                break;
            };
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
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "xtask: vm-test: {p} passed, {f} failed in {} kernel(s), {wall:.0} s, {parallel} guest(s) at a time (console logs in {})",
        reports.len(),
        out_root.display()
    );
    // docs/kernels.md holds the matrix of a whole run: every kernel, every
    // test. A run of some kernels or some tests leaves it alone.
    let doc = workspace_root().join("docs/kernels.md");
    if kernels.len() == KERNELS.len() && extra.is_empty() {
        let body = doc_section(
            &reports,
            &failed,
            &RunInfo {
                date: &crate::bench::date_utc(),
                machine: &crate::bench::machine(),
                wall_secs: wall,
                parallel,
            },
        );
        let text =
            fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
        fs::write(
            &doc,
            crate::bench::replace_between(&text, DOC_BEGIN, DOC_END, &body),
        )?;
        println!(
            "xtask: vm-test: wrote the generated section of {}{}",
            doc.display(),
            if failed.is_empty() {
                ""
            } else {
                " (failures marked)"
            }
        );
    } else {
        println!(
            "xtask: vm-test: {} not rewritten (only a whole run of every kernel and test writes it)",
            doc.display()
        );
    }
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
