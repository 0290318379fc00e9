//! Developer tasks: `cargo xtask setup | build | run | test | fuzz`.
//!
//! Everything comes from Debian packages and crates.io, pinned, and every
//! step checks before it acts, so a second `setup` takes about a second.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::{
    env,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod deploy;
mod dist;
mod image;
mod rootfs;
mod vm;

/// What building portwatch needs, and nothing more: Debian's rustc ships the
/// library source `-Z build-std=core` needs, and k8s-cri generates its gRPC
/// bindings with protoc at build time. `build`, `run` and `image` install
/// only these (on a node in an incident, nothing else is touched).
const BUILD_PKGS: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "protobuf-compiler",
];
/// What the tests drive: namespaces, the article's clients, bpftool for
/// checking that nothing stays loaded, setpriv for the non-root case.
/// Installed only by `test`, `deploy-test`, `vm-test` and `bench`; every
/// runtime among them runs in the tests with a private config and socket.
const TEST_PKGS: &[&str] = &[
    "iproute2",
    "curl",
    "busybox-static",
    "bpftool",
    "util-linux",
    "nftables",
    // The serve tests scrape portwatch with a real Prometheus; promtool
    // checks the alert rules.
    "prometheus",
    // The cri test runs real pod sandboxes (containerd's CRI plugin, runc)
    // and imports its image with ctr (in the containerd package).
    "containerd",
    "runc",
    // The cri test also runs portwatch under podman with a private cgroup
    // namespace.
    "podman",
];
/// What `cargo xtask image` needs on top of the build: podman builds the
/// image (no registry, no daemon).
const IMAGE_PKGS: &[&str] = &["podman", "runc"];

/// What a task installs before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// The toolchain: `build`, `run`.
    Build,
    /// The toolchain and podman: `image`.
    Image,
    /// Everything the tests drive: `setup`, `test`, `deploy-test`,
    /// `vm-test`, `bench`.
    Tests,
}

impl Need {
    fn packages(self) -> Vec<&'static str> {
        let mut v: Vec<&str> = BUILD_PKGS.to_vec();
        match self {
            Need::Build => {}
            Need::Image => v.extend(IMAGE_PKGS),
            Need::Tests => {
                v.extend(TEST_PKGS);
                v.extend(deploy::PKGS);
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_LIB: &str = "/usr/lib/x86_64-linux-gnu/libLLVM.so.22.1";
/// Name under which Debian's compiler is registered with rustup.
const EBPF_TOOLCHAIN: &str = "debian-1.96";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain (Debian rustc + rust-src, bpf-linker) and the
    /// test tools (build and run install only the toolchain).
    Setup,
    /// Build the release binary at target/release/portwatch (eBPF object embedded).
    Build {
        /// Debug build instead.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build, and run portwatch as root: `cargo xtask run -- trace --json`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build and run every test: unit and privileged integration
    /// tests on this kernel, then the VM stage (`vm-test --kernel all`).
    Test {
        /// Only this machine's kernel, no VM stage (for quick iterations;
        /// CI runs everything).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels under qemu and run the integration tests inside,
    /// once per backend (fexit, kprobe, tracepoint).
    VmTest {
        /// 6.12, 6.1 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Extra arguments for the test binaries inside the guest (e.g. a
        /// test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the deployment tests: alert rules (promtool), manifests
    /// (kubernetes-validate), the image under podman with the DaemonSet's
    /// capabilities (part of `test`).
    DeployTest,
    /// The release tarball for nodes without build tools: binary (eBPF
    /// embedded), bash/zsh/fish completions and man pages, in target/dist/.
    Dist,
    /// Build the DaemonSet's OCI image (localhost/portwatch:<version>) with
    /// podman, no registry, and save it to target/image/portwatch-<version>.oci.tar.
    Image,
    /// Fuzz the parsers of bytes from outside the process for longer than
    /// `test` does (2 s each): every target, or one. A failing input is
    /// written to target/fuzz-crashes/<target>/ and printed.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60.0)]
        secs: f64,
        /// The generator's seed (default: from the clock; the run prints it).
        #[arg(long)]
        seed: Option<u64>,
        /// One target (e.g. btf, kube_path, sockdiag_reply); default: all.
        target: Option<String>,
    },
    /// Measure what `portwatch trace` costs (vs no tracer and bpftrace): success
    /// path, failure storm, start-up, RSS. Markdown on stdout, JSON in target/bench/.
    Bench {
        /// Fewer rounds and smaller loops (about a minute).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON results (default target/bench/results.json,
        /// with --vm target/bench/vm-results.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Instead: the cost on a production kernel (fexit, kprobe,
        /// tracepoint vs no tracer; start-up and RSS vs libbpf-tools'
        /// tcpconnect) in one boot of the Debian 6.12 guest under qemu with
        /// -icount (instruction counts). Also rewrites its section of
        /// docs/benchmarks.md.
        #[arg(long)]
        vm: bool,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("portwatch")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there (a fresh
/// machine has none); `why` says who needs it.
fn ensure_tracefs(why: &str) -> Result<()> {
    const TRACEFS_MAGIC: i64 = 0x74726163;
    // SAFETY: statfs is plain C data, for which all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let p = c"/sys/kernel/tracing";
    // SAFETY: `p` is NUL-terminated and `st` writable, both live for the call.
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } == 0 && st.f_type as i64 == TRACEFS_MAGIC {
        return Ok(());
    }
    eprintln!("xtask: tracefs is not mounted; mounting it at /sys/kernel/tracing ({why})");
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let st = cmd
        .status()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !st.success() {
        bail!("{} failed: {st}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// With `sudo` in front when not root (apt, the tests and portwatch need root).
fn privileged(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(prog)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(prog);
        c
    }
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let st = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]));
            !st.is_some_and(|s| s.contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

fn apt_install(pkgs: &[String]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    run(privileged("apt-get").args(["update", "-qq"]))?;
    run(privileged("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// Installs what `need` asks for (each step checks before it acts).
fn setup(need: Need) -> Result<()> {
    let t0 = Instant::now();
    apt_install(&missing_packages(&need.packages()))?;
    if need == Need::Tests {
        deploy::setup_python()?;
    }

    // rustup runs the eBPF build through `rustup run <toolchain> cargo`.
    if let Some(list) = output(Command::new("rustup").args(["toolchain", "list"])) {
        if !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(EBPF_TOOLCHAIN))
        {
            run(Command::new("rustup").args(["toolchain", "link", EBPF_TOOLCHAIN, "/usr"]))?;
        }
    }

    let linker = cargo_home().join("bin/bpf-linker");
    let have = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        if !Path::new(LLVM_LIB).exists() {
            bail!("{LLVM_LIB} is missing: Debian's rustc-web should have brought LLVM 22");
        }
        // bpf-linker links against LLVM_PREFIX/lib/libLLVM.so: point it at
        // the LLVM 22 that Debian's rustc itself uses.
        let prefix = cache_dir().join("llvm-22");
        std::fs::create_dir_all(prefix.join("lib"))?;
        let so = prefix.join("lib/libLLVM.so");
        if std::fs::read_link(&so).ok().as_deref() != Some(Path::new(LLVM_LIB)) {
            let _ = std::fs::remove_file(&so);
            std::os::unix::fs::symlink(LLVM_LIB, &so)?;
        }
        run(Command::new("/usr/bin/cargo")
            .env("LLVM_PREFIX", &prefix)
            .env("CARGO_HOME", cargo_home())
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"]))?;
    }
    eprintln!("xtask: setup done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo` with what the eBPF build needs in its environment.
fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c.env("RUSTC_BOOTSTRAP", "1");
    c.env("PORTWATCH_EBPF_TOOLCHAIN", EBPF_TOOLCHAIN);
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = vec![bin];
    paths.extend(env::split_paths(&path));
    c.env("PATH", env::join_paths(paths).unwrap());
    c
}

fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "portwatch"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    let bin = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("portwatch");
    eprintln!("xtask: built {}", bin.display());
    Ok(bin)
}

fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the integration tests load BPF programs and make network namespaces: run `cargo xtask test` as root");
    }
    // Unit tests of every host crate, then portwatch's own (unit and
    // integration); `cargo test` builds the pwclient example they drive.
    let mut c = cargo();
    c.args([
        "test",
        "--package",
        "portwatch-common",
        "--package",
        "xtask",
        "--package",
        "portwatch",
    ]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    eprintln!("xtask: $ {}", show(&c));
    let (st, totals) = run_counting(c)?;
    // One closing line for the whole run, whichever test binary ran last.
    println!("xtask: {} passed, {} failed", totals.passed, totals.failed);
    if !st.success() || totals.failed > 0 {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// Runs `cargo test` as `c` says, its stdout passed through and its
/// libtest result lines summed.
fn run_counting(mut c: Command) -> Result<(std::process::ExitStatus, Totals)> {
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    Ok((child.wait()?, totals))
}

/// The fuzz targets (portwatch/src/fuzz/targets.rs), `secs` each, with the
/// generator seeded by `seed`.
fn fuzz(secs: f64, seed: u64, target: Option<&str>) -> Result<()> {
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("--secs {secs}: expected seconds, e.g. 60 or 0.5");
    }
    let mut c = cargo();
    c.args(["test", "--package", "portwatch", "--lib", "--"]);
    match target {
        Some(t) => c.args([format!("fuzz::targets::{t}").as_str(), "--exact"]),
        None => c.arg("fuzz::targets::"),
    };
    c.arg("--nocapture");
    c.env("PORTWATCH_FUZZ_SECS", secs.to_string());
    c.env("PORTWATCH_FUZZ_SEED", format!("{seed:#x}"));
    // Error values' backtraces (anyhow captures one per error when
    // RUST_BACKTRACE is set) would cost some parsers 30x their speed;
    // panics keep theirs.
    c.env("RUST_LIB_BACKTRACE", "0");
    eprintln!(
        "xtask: $ {} (seed {seed:#x}, {secs} s per target)",
        show(&c)
    );
    let (st, totals) = run_counting(c)?;
    if !st.success() || totals.failed > 0 {
        bail!("fuzzing found a failing input (above; saved under target/fuzz-crashes/)");
    }
    if totals.passed == 0 {
        bail!(
            "no fuzz target {:?}: see TARGETS in portwatch/src/fuzz/targets.rs",
            target.unwrap_or("")
        );
    }
    Ok(())
}

/// Sums libtest's `test result: ok. N passed; M failed; ...` lines.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut w = part.split_whitespace().rev();
            match (w.next(), w.next()) {
                (Some("passed"), Some(n)) => self.passed += n.parse::<u64>().unwrap_or(0),
                (Some("failed"), Some(n)) => self.failed += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup(Need::Tests),
        Cmd::Build { debug } => {
            setup(Need::Build)?;
            build(!debug).map(|_| ())
        }
        Cmd::Run { args } => {
            setup(Need::Build)?;
            let bin = build(true)?;
            let st = privileged(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Test { host_only, args } => {
            setup(Need::Tests)?;
            test(&args)?;
            // The manifests, the alert rules, the image under podman.
            deploy::test()?;
            if host_only {
                return Ok(());
            }
            vm::vm_test(&vm::select("all")?, &[])
        }
        Cmd::DeployTest => {
            setup(Need::Tests)?;
            if !is_root() {
                bail!("the podman test runs a privileged container and makes a network namespace: run it as root");
            }
            deploy::test()
        }
        Cmd::Dist => {
            setup(Need::Build)?;
            let bin = build(true)?;
            let d = dist::build(&bin)?;
            println!("{}", d.tarball.display());
            Ok(())
        }
        Cmd::Image => {
            setup(Need::Image)?;
            let bin = build(true)?;
            let img = image::build(&bin)?;
            println!("{} {}", img.tag, img.archive.display());
            Ok(())
        }
        Cmd::Fuzz { secs, seed, target } => {
            setup(Need::Build)?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            fuzz(secs, seed, target.as_deref())
        }
        Cmd::Bench { quick, out, vm } => bench::bench(bench::Opts { quick, vm, out }),
        Cmd::VmTest { kernel, args } => {
            setup(Need::Tests)?;
            vm::vm_test(&vm::select(&kernel)?, &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Need, Totals};

    /// Building and running portwatch on a node installs the toolchain and
    /// never a container runtime, a monitoring stack or test tools.
    #[test]
    fn build_and_run_install_only_the_toolchain() {
        let build = Need::Build.packages();
        assert_eq!(
            build,
            [
                "cargo-web",
                "protobuf-compiler",
                "rust-web-src",
                "rustc-web"
            ]
        );
        let image = Need::Image.packages();
        let tests = Need::Tests.packages();
        for tool in [
            "containerd",
            "runc",
            "podman",
            "prometheus",
            "nftables",
            "crun",
            "cri-o",
        ] {
            assert!(!build.contains(&tool), "{tool}");
        }
        assert!(!image.contains(&"containerd") && !image.contains(&"prometheus"));
        for p in &build {
            assert!(image.contains(p) && tests.contains(p), "{p}");
        }
        for tool in [
            "containerd",
            "runc",
            "podman",
            "prometheus",
            "nftables",
            "curl",
        ] {
            assert!(tests.contains(&tool), "{tool}");
        }
    }

    #[test]
    fn sums_libtest_results() {
        let mut t = Totals::default();
        t.add("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.17s");
        t.add("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add("test foo ... ok");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 20,
                failed: 2
            }
        );
    }
}
