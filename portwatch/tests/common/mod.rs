//! Harness for the privileged integration tests: real network namespaces,
//! the real portwatch binary, real clients. Needs root; fails loudly without.
#![allow(dead_code)]

pub mod cgroups;
pub mod containerd;
pub mod prometheus;

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn portwatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_portwatch"))
}

/// `portwatch check --netns /run/netns/NAME ARGS` run inside `ns`, so that
/// `ns` is the node's netns to it (`--json` when `json`).
pub fn check_as_node(ns: &Netns, json: bool, args: &[&str]) -> std::process::Output {
    let path = format!("/run/netns/{}", ns.name);
    let mut all = vec!["check", "--netns", &path];
    all.extend_from_slice(args);
    if json {
        all.push("--json");
    }
    ns.cmd(portwatch_bin())
        .args(all)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `cargo test` builds examples next to the binaries' directory.
pub fn pwclient_bin() -> PathBuf {
    let p = portwatch_bin().parent().unwrap().join("examples/pwclient");
    assert!(
        p.exists(),
        "{} missing: run the tests through cargo test (which builds examples)",
        p.display()
    );
    p
}

pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests load BPF programs and create network namespaces: run them as root (cargo xtask test does)"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub use xtask::testkit::lines_of;

/// A port free on loopback now (the OS picks it).
pub fn free_port() -> u16 {
    xtask::testkit::free_port().expect("a free loopback port")
}

/// GET `url` with curl (5 s at most): status code and body (0 and "" when
/// curl got no answer).
pub fn http_get(url: &str) -> (u16, String) {
    xtask::testkit::http_get(url, 5).unwrap_or((0, String::new()))
}

/// Runs `cmd` with `sh -c` on the host (a printed fix that enters a netns
/// itself, say); panics with its stderr if it fails.
pub fn host_sh(cmd: &str) {
    sh_checked(Command::new("sh"), cmd);
}

fn sh_checked(mut sh: Command, cmd: &str) {
    let out = sh.args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made for one test, deleted on drop (the test kit's,
/// with asserts).
pub struct Netns(xtask::testkit::Netns);

impl std::ops::Deref for Netns {
    type Target = xtask::testkit::Netns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    /// A netns with `lo` up and `ip_local_port_range` set to `lo..=hi`
    /// (keep the size even: the kernel's pairwise scan makes odd sizes flaky).
    pub fn new(tag: &str, range: (u16, u16)) -> Netns {
        require_root();
        let name = format!(
            "pwt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Netns(xtask::testkit::Netns::add(&name, range).unwrap_or_else(|e| panic!("{e:#}")))
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.0
            .sysctl(key, value)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs `cmd` with `sh -c` inside this netns; panics with its stderr if it fails.
    pub fn sh(&self, cmd: &str) {
        self.0.sh(cmd).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// A running pwclient; its sockets live until it is dropped.
pub struct Client {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
}

impl Client {
    /// Starts `pwclient args` in `ns` and waits for `ready` on its stdout
    /// (None: don't wait).
    /// `args` is pwclient's command line, split on whitespace.
    pub fn start(ns: &Netns, args: &str, ready: Option<&str>) -> Client {
        let mut child = ns
            .cmd(pwclient_bin())
            .args(args.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let rx = lines_of(child.stdout.take().unwrap());
        let pid = child.id(); // `ip netns exec` execs the program: same pid.
        let mut c = Client {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            pid,
        };
        if let Some(r) = ready {
            c.wait_line(r);
        }
        c
    }

    /// Lines until one equals `want`; returns those before it.
    pub fn wait_line(&mut self, want: &str) -> Vec<String> {
        let mut seen = vec![];
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l == want => return seen,
                Ok(l) => seen.push(l),
                Err(_) => panic!("pwclient never printed {want:?}; got {seen:?}"),
            }
        }
    }

    pub fn go(&mut self) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"go\n").unwrap();
        s.flush().unwrap();
    }

    /// Closes stdin (releases held sockets) and waits; returns all output.
    pub fn finish(mut self) -> Vec<String> {
        self.stdin.take();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "pwclient failed: {st}");
        self.lines.try_iter().collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs pwclient to completion in `ns`; returns its output lines.
pub fn client_once(ns: &Netns, args: &str) -> Vec<String> {
    let out = ns
        .cmd(pwclient_bin())
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pwclient {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A running `portwatch trace`.
pub struct Tracer {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Starts `portwatch args...` and waits until it says it is attached.
    pub fn start(args: &[&str]) -> Tracer {
        Self::start_with(args, true)
    }

    /// `portwatch args...` with `envs` added to its environment.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Tracer {
        let mut c = Command::new(portwatch_bin());
        c.args(args).envs(envs.iter().copied());
        Self::start_cmd(c, true)
    }

    /// With `read_stdout` false, `child.stdout` is left to the test.
    pub fn start_with(args: &[&str], read_stdout: bool) -> Tracer {
        let mut c = Command::new(portwatch_bin());
        c.args(args);
        Self::start_cmd(c, read_stdout)
    }

    /// `portwatch args...` run inside `ns` (as a node agent runs in the
    /// node's netns).
    pub fn start_in(ns: &Netns, args: &[&str]) -> Tracer {
        let mut c = ns.cmd(portwatch_bin());
        c.args(args);
        Self::start_cmd(c, true)
    }

    /// `portwatch args...` moved into the cgroup `dir` (a directory of the
    /// cgroup2 mount) and then given a cgroup namespace of its own there,
    /// as a container with a private cgroupns runs (`unshare -C`, done here
    /// between fork and exec so that the VM guests, whose busybox `unshare`
    /// has no `-C`, run it too): other processes' /proc/PID/cgroup read
    /// relative to `dir`, and the cgroup2 mount's root is `/..`-escaped.
    pub fn start_in_cgroupns(dir: &std::path::Path, args: &[&str]) -> Tracer {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let mut c = Command::new(portwatch_bin());
        c.args(args);
        // SAFETY: between fork and exec only open, write, close and unshare,
        // on memory prepared before the fork.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writer itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(e);
                }
                if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t = Self::start_cmd(c, true);
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
        assert_ne!(
            ns(&t.pid().to_string()),
            ns("self"),
            "portwatch runs in a cgroup namespace of its own"
        );
        t
    }

    /// The text of `file` as read from inside this process's cgroup
    /// namespace (`cat`, after setns into it).
    pub fn read_in_cgroupns(&self, file: &str) -> String {
        use std::os::unix::process::CommandExt as _;
        let ns = std::fs::File::open(format!("/proc/{}/ns/cgroup", self.pid())).unwrap();
        let mut c = Command::new("cat");
        c.arg(file);
        // SAFETY: setns on an fd opened before the fork.
        unsafe {
            use std::os::fd::AsRawFd as _;
            let fd = ns.as_raw_fd();
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWCGROUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "cat {file}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs portwatch (under podman, say) and whose stderr
    /// is portwatch's.
    pub fn start_command(cmd: Command) -> Tracer {
        Self::start_cmd(cmd, true)
    }

    fn start_cmd(mut cmd: Command, read_stdout: bool) -> Tracer {
        require_root();
        // serve attaches trace and nodeport-steal side by side, each saying
        // "attached;" when it is: it is ready once it says both are.
        let serve = cmd.get_args().any(|a| a == "serve");
        let ready = if serve {
            "every probe attached; ready"
        } else {
            "attached;"
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = xtask::testkit::watch_stderr(&mut child, Some(ready));
        let rx = if read_stdout {
            lines_of(child.stdout.take().unwrap())
        } else {
            mpsc::channel().1 // nothing will come: the test reads stdout itself
        };
        if let Err(e) = err.wait_ready(&mut child, Duration::from_secs(60)) {
            let _ = child.kill();
            panic!("portwatch did not attach: {e:#}");
        }
        Tracer {
            child,
            lines: rx,
            stderr: err.lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The backend portwatch said at start-up it attached `hook` with.
    pub fn backend_of(&self, hook: &str) -> String {
        let errs = self.stderr.lock().unwrap();
        let tag = format!("{hook} hook: ");
        errs.iter()
            .find_map(|l| {
                let rest = &l[l.find(&tag)? + tag.len()..];
                Some(rest.split_whitespace().next()?.to_string())
            })
            .unwrap_or_else(|| panic!("no {tag:?} line at start-up: {errs:?}"))
    }

    /// JSON events seen so far in netns `inode`, waiting until `n` have
    /// arrived (or 10 s), then a little longer to catch any extra ones.
    /// Failures and lost records only: the `sysctl_write` records of the
    /// same stream (a test netns's range is written after the tracer
    /// started) are tests/sysctl.rs's business.
    pub fn events_in(&mut self, inode: u64, n: usize, all: &mut Vec<Value>) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mine = |all: &Vec<Value>| {
            all.iter()
                .filter(|v| v["netns"].as_u64() == Some(inode) && v["kind"] != "sysctl_write")
                .cloned()
                .collect::<Vec<_>>()
        };
        while mine(all).len() < n && Instant::now() < deadline {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                all.push(
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")),
                );
            }
        }
        // Anything that would be wrongly extra arrives with the rest.
        let settle = Instant::now() + Duration::from_millis(500);
        while Instant::now() < settle {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                all.push(serde_json::from_str(&l).unwrap());
            }
        }
        mine(all)
    }

    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGINT, then the exit status (within 10 s).
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGINT);
        self.wait()
    }

    pub fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (st, self.stderr.lock().unwrap().clone());
            }
            assert!(
                Instant::now() < deadline,
                "portwatch did not exit within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the fields every event carries.
pub fn assert_common(
    ev: &Value,
    kind: &str,
    errno: &str,
    pid: u32,
    comm: &str,
    ns: &Netns,
    range: (u16, u16),
) {
    assert_eq!(ev["schema"], 3, "{ev}");
    assert_eq!(ev["kind"], kind, "{ev}");
    assert_eq!(ev["errno"], errno, "{ev}");
    let ret = if errno == "EADDRNOTAVAIL" { -99 } else { -98 };
    assert_eq!(ev["ret"], ret, "{ev}");
    assert_eq!(ev["pid"], pid, "{ev}");
    assert_eq!(ev["tid"], pid, "single-threaded client: {ev}");
    assert_eq!(ev["comm"], comm, "{ev}");
    assert_eq!(ev["uid"], 0, "{ev}");
    assert_eq!(ev["netns"], ns.inode, "{ev}");
    assert_eq!(
        ev["port_range"],
        serde_json::json!([range.0, range.1]),
        "{ev}"
    );
    assert!(ev["cgroup_id"].as_u64().is_some(), "{ev}");
    assert!(
        ["fexit", "kprobe", "tracepoint"].contains(&ev["probe"].as_str().unwrap()),
        "{ev}"
    );
    // The tests' processes are host processes: no pod; their cgroup path is
    // known wherever cgroup2 is mounted (the VM guests may have none).
    assert!(ev["pod"].is_null(), "{ev}");
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - cgroup2 ");
    if cgroup2 {
        assert!(
            ev["cgroup"].as_str().is_some_and(|c| c.starts_with('/')),
            "{ev}"
        );
    } else {
        assert!(ev["cgroup"].is_null(), "{ev}");
    }
    // Every event says why it failed, and whether its detail is complete.
    assert!(ev["cause"].is_string(), "{ev}");
    assert!(ev["detail"].is_object(), "{ev}");
    assert!(ev["detail_complete"].is_boolean(), "{ev}");
    let t = ev["time"].as_str().unwrap();
    assert_eq!(t.len(), 27, "RFC 3339 with microseconds: {t}");
    assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
}

/// Where the cgroup2 hierarchy is mounted (pure v2 or hybrid).
pub fn cgroup2_root() -> PathBuf {
    xtask::testkit::cgroup2_root().expect("a cgroup2 mount (pure v2 or hybrid)")
}

/// Makes `n` namespaces, `at_once` at a time, each failing `fails` times
/// toward 127.0.0.1:`port`; returns the failures the clients saw (err 99).
/// Half are held by their client alone (`unshare -n`), half also by a bind
/// mount under /run/netns (`ip netns add`, as CNI makes pod namespaces)
/// that is deleted once the client is done. Each lives half a second after
/// its failures, long enough for portwatch to look at it.
pub fn churn_netns(n: usize, at_once: usize, fails: usize, port: u16) -> usize {
    let inner = format!(
        "echo '41000 41001' > /proc/sys/net/ipv4/ip_local_port_range && ip link set lo up && \
         {} listen 127.0.0.1 {port} fill 127.0.0.1 {port} 2 connect 127.0.0.1 {port} {fails} && sleep 0.5",
        pwclient_bin().display()
    );
    let mut failed = 0;
    let mut made = 0;
    while made < n {
        let batch = (n - made).min(at_once);
        let children: Vec<_> = (made..made + batch)
            .map(|i| {
                let mut c = Command::new("sh");
                if i % 2 == 0 {
                    c.args(["-c", &format!("exec unshare -n sh -c \"{inner}\"")]);
                } else {
                    let name = format!("pwc-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
                    c.args([
                        "-c",
                        &format!(
                            "ip netns add {name} && ip netns exec {name} sh -c \"{inner}\"; rc=$?; ip netns del {name}; exit $rc"
                        ),
                    ]);
                }
                c.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("sh")
            })
            .collect();
        made += batch;
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let s = String::from_utf8_lossy(&out.stdout);
            failed += s.lines().filter(|l| *l == "err 99").count();
        }
    }
    failed
}

/// The `net:[INO]` links among `pid`'s open files.
pub fn netns_fds(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let l = std::fs::read_link(e.path()).ok()?;
            l.to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Namespaces some process or bind mount holds (what is alive without
/// portwatch's handles).
pub fn held_namespaces() -> std::collections::HashSet<u32> {
    let mut held: std::collections::HashSet<u32> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - nsfs "))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(l) = std::fs::read_link(e.path().join("ns/net")) {
            if let Some(i) = l
                .to_str()
                .and_then(|s| s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok())
            {
                held.insert(i);
            }
        }
    }
    held
}

/// `pid`'s handles on namespaces nothing else holds: the pins.
pub fn pinned_by(pid: u32) -> Vec<u32> {
    let held = held_namespaces();
    netns_fds(pid)
        .into_iter()
        .filter(|i| !held.contains(i))
        .collect()
}
