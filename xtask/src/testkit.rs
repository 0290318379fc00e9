//! Fixtures shared by portwatch's integration tests, `cargo xtask bench` and
//! the deploy test: test network namespaces, loopback ports and HTTP, the
//! lines of a child process, and where cgroup2 is mounted.
//!
//! Everything here returns errors instead of panicking; the integration
//! tests' harness (`portwatch/tests/common`) wraps it in asserts.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A port free on loopback now (the kernel picks it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GET `url` with curl (at most `timeout_s`): the status code and the body;
/// None when curl could not run or printed no status.
pub fn http_get(url: &str, timeout_s: u32) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            &timeout_s.to_string(),
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// The lines a child writes, read on a thread of their own.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// A child's stderr, collected line by line on a thread of its own.
pub struct Stderr {
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The instant of each line that contained the ready marker.
    pub ready: mpsc::Receiver<Instant>,
}

/// Takes `child`'s (piped) stderr and collects it; lines containing `ready`
/// are also signalled with the instant they were read.
pub fn watch_stderr(child: &mut Child, ready: Option<&'static str>) -> Stderr {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr piped");
    let l2 = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if ready.is_some_and(|r| line.contains(r)) {
                let _ = tx.send(Instant::now());
            }
            l2.lock().unwrap().push(line);
        }
    });
    Stderr { lines, ready: rx }
}

impl Stderr {
    /// Waits for the ready line; fails when `child` exits first or nothing
    /// comes within `limit` (the child is then left to the caller).
    pub fn wait_ready(&self, child: &mut Child, limit: Duration) -> Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(at) = self.ready.recv_timeout(Duration::from_millis(20)) {
                return Ok(at);
            }
            if let Some(st) = child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                bail!(
                    "exited {st} before it was ready: {:?}",
                    self.lines.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready within {limit:?}: {:?}",
                    self.lines.lock().unwrap()
                );
            }
        }
    }
}

/// Runs `cmd`; its stderr in the error when it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace made for a test or a bench run (`ip netns add`),
/// with `lo` up and its own `ip_local_port_range`; deleted on drop.
pub struct Netns {
    pub name: String,
    /// Its inode: what portwatch's events name it by.
    pub inode: u64,
}

impl Netns {
    /// Makes netns `name` (deleting a stale one of that name first) with
    /// `ip_local_port_range` set to `lo..=hi`. Keep the size even: the
    /// kernel's pairwise port scan makes odd sizes flaky.
    pub fn add(name: &str, range: (u16, u16)) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_quiet(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            inode: std::fs::metadata(format!("/run/netns/{name}"))
                .with_context(|| format!("netns {name}"))?
                .ino(),
            name: name.to_string(),
        };
        run_quiet(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        ns.sysctl(
            "net/ipv4/ip_local_port_range",
            &format!("{} {}", range.0, range.1),
        )?;
        Ok(ns)
    }

    /// Writes `value` to /proc/sys/`key` inside this netns only.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run_quiet(
            self.cmd("sh")
                .args(["-c", &format!("echo '{value}' > /proc/sys/{key}")]),
        )
    }

    /// Runs `script` with `sh -c` inside this netns.
    pub fn sh(&self, script: &str) -> Result<()> {
        run_quiet(self.cmd("sh").args(["-c", script]))
    }

    /// A command run inside this netns (`ip netns exec` execs it: the child's
    /// pid is the program's).
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Where the cgroup2 hierarchy is mounted (pure v2, or the unified mount of
/// a hybrid host).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let f: Vec<&str> = pre.split_whitespace().collect();
        (post.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(f[4]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        // Another process may take the port in between: one of a few tries
        // must bind.
        let bound = (0..5).any(|_| {
            let p = free_port().unwrap();
            p > 0 && TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        assert!(bound);
    }

    #[test]
    fn stderr_lines_are_collected_and_the_ready_line_signalled() {
        let mut child = Command::new("sh")
            .args(["-c", "echo one >&2; echo 'now ready' >&2; sleep 5"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = watch_stderr(&mut child, Some("ready"));
        err.wait_ready(&mut child, Duration::from_secs(5)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(err.lines.lock().unwrap()[0], "one");
        let mut quick = Command::new("sh")
            .args(["-c", "echo bye >&2"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = watch_stderr(&mut quick, Some("ready"));
        let e = err
            .wait_ready(&mut quick, Duration::from_secs(5))
            .unwrap_err();
        assert!(format!("{e}").contains("before it was ready"), "{e}");
    }
}
