//! pwbench: the tight loops `cargo xtask bench` times. Raw libc calls, no
//! allocation and no output inside the timed loop; one result line at the end.
//!
//! ```text
//! pwbench getppid N          N getppid() calls (an unrelated, cheap syscall)
//! pwbench connect PORT N     listener on 127.0.0.1:PORT in this process, then N times:
//!                            socket, SO_LINGER 0, connect, accept, close, close
//! pwbench storm PORT FILL N  listener, FILL connects that must succeed (held), then
//!                            N times: socket, connect (must fail), close
//! pwbench spread PORT DESTS FILL N
//!                            DESTS listeners on PORT, PORT+1, ...; FILL held connects
//!                            to each; then N failing connects, round-robin over them
//! pwbench startup MARKER HOLD_MS CMD [ARG...]
//!                            runs CMD with stdout and stderr on a pseudo-terminal (so a
//!                            C tool's stdio is line-buffered, as in a terminal), until a
//!                            line containing MARKER; reads its VmHWM, lets it run
//!                            HOLD_MS more, reads VmHWM again, then SIGINT
//! ```
//! startup prints `op=startup ready_ns=T hwm_ready_kb=A hwm_kb=B lines=L rc=R`:
//! T from just before fork+exec to the marker line, B the peak RSS after the hold.
//! Result: `op=NAME n=N ns=TOTAL ns_per_op=X cpu_ns=C wait_ns=W errors=E last_errno=K`:
//! over the timed loop, `cpu_ns` is this process's user+system CPU time and `wait_ns`
//! the time it waited on a run queue (other processes on its CPU); `errors`
//! counts iterations that did not go as the mode expects (storm: any errno other
//! than EADDRNOTAVAIL). getppid and connect run a short untimed warm-up first;
//! storm does not, since every attempt there is an event a tracer must report.
//! Run it inside a test netns, pinned with taskset.

use std::{
    mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn sockaddr(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

const SA_LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn tcp_socket() -> i32 {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn connect(fd: i32, sa: &libc::sockaddr_in) -> Result<(), i32> {
    let rc = unsafe { libc::connect(fd, sa as *const _ as *const libc::sockaddr, SA_LEN) };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn listener(sa: &libc::sockaddr_in) -> i32 {
    let fd = tcp_socket();
    let one: i32 = 1;
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const i32 as *const _,
            4,
        );
        assert_eq!(
            libc::bind(fd, sa as *const _ as *const libc::sockaddr, SA_LEN),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::listen(fd, 1024), 0);
    }
    fd
}

/// One connect+accept+close round trip. SO_LINGER 0 closes with a reset, so
/// no TIME_WAIT piles up across the many thousand iterations of a run.
#[inline(always)]
fn round_trip(l: i32, sa: &libc::sockaddr_in, linger: &libc::linger) -> Result<(), i32> {
    let fd = tcp_socket();
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            linger as *const _ as *const _,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    let r = connect(fd, sa);
    if r.is_ok() {
        let a = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
        unsafe { libc::close(fd) };
        if a >= 0 {
            unsafe { libc::close(a) };
        }
    } else {
        unsafe { libc::close(fd) };
    }
    r
}

/// One failing attempt; Ok(errno) when it failed as expected.
#[inline(always)]
fn failing_attempt(sa: &libc::sockaddr_in) -> Result<i32, i32> {
    let fd = tcp_socket();
    let r = connect(fd, sa);
    unsafe { libc::close(fd) };
    match r {
        Err(e) if e == libc::EADDRNOTAVAIL => Ok(e),
        Err(e) => Err(e),
        Ok(()) => Err(0),
    }
}

/// The timed storm loop: `n` failing attempts toward `dest(i)`, counting
/// those that did not fail with EADDRNOTAVAIL. Returns the meter reading.
#[inline(always)]
fn failing_loop<'a>(
    n: u64,
    dest: impl Fn(u64) -> &'a libc::sockaddr_in,
    errors: &mut u64,
    last_errno: &mut i32,
) -> (u128, u128, u128) {
    let m = Meter::start();
    for i in 0..n {
        match failing_attempt(dest(i)) {
            Ok(e) => *last_errno = e,
            Err(e) => {
                *errors += 1;
                *last_errno = e;
            }
        }
    }
    m.stop()
}

/// User + system CPU time of this process, in ns.
fn cpu_ns() -> u128 {
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u128 * 1_000_000_000 + t.tv_usec as u128 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Time this process spent runnable but waiting for a CPU (schedstat field 2),
/// in ns: what other processes took from it. 0 without schedstats.
fn wait_ns() -> u128 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Wall time, CPU time and run-queue wait since `start`.
struct Meter {
    t: Instant,
    cpu: u128,
    wait: u128,
}

impl Meter {
    fn start() -> Meter {
        let (cpu, wait) = (cpu_ns(), wait_ns());
        Meter {
            t: Instant::now(),
            cpu,
            wait,
        }
    }

    /// (wall ns, cpu ns, wait ns)
    fn stop(self) -> (u128, u128, u128) {
        let ns = self.t.elapsed().as_nanos();
        (ns, cpu_ns() - self.cpu, wait_ns() - self.wait)
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("missing or bad {what}; see the header of pwbench.rs"))
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert!(
            libc::grantpt(m) == 0 && libc::unlockpt(m) == 0,
            "grantpt/unlockpt"
        );
        let mut name = [0 as libc::c_char; 128];
        assert!(
            libc::ptsname_r(m, name.as_mut_ptr(), name.len()) == 0,
            "ptsname_r"
        );
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(
            s >= 0,
            "open pty slave: {}",
            std::io::Error::last_os_error()
        );
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    }
}

/// Lines read off a pty master.
struct Lines {
    fd: OwnedFd,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    /// The next line, or None at `deadline` or once every writer is gone
    /// (a pty master reads EIO then).
    fn next(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&l).trim_end().to_string());
            }
            if self.eof {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    chunk.as_mut_ptr() as *mut _,
                    chunk.len(),
                )
            };
            if n <= 0 {
                self.eof = true;
            } else {
                self.buf.extend_from_slice(&chunk[..n as usize]);
            }
        }
    }
}

fn status_kb(pid: u32, key: &str) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|r| r.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(-1)
}

/// `pwbench startup MARKER HOLD_MS CMD [ARG...]`: see the header.
fn startup(args: &[String]) -> ! {
    let marker = args.get(1).expect("missing MARKER");
    let hold: u64 = arg(args, 2, "HOLD_MS");
    let cmd = args
        .get(3..)
        .filter(|c| !c.is_empty())
        .expect("missing CMD");
    let (master, slave) = pty();
    let t0 = Instant::now();
    let mut child = {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        c.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", cmd[0]))
        // The Command, holding our copies of the slave, is dropped here.
    };
    let mut lines = Lines {
        fd: master,
        buf: vec![],
        eof: false,
    };
    let pid = child.id();
    let mut seen = 0u64;
    let mut ready = None;
    while ready.is_none() {
        match lines.next(t0 + Duration::from_secs(120)) {
            Some(l) => {
                seen += 1;
                eprintln!("{l}");
                if l.contains(marker.as_str()) {
                    ready = Some(t0.elapsed());
                }
            }
            None => break,
        }
    }
    let hwm_ready = status_kb(pid, "VmHWM");
    let until = Instant::now() + Duration::from_millis(hold);
    while lines.next(until).is_some() {
        seen += 1;
    }
    let hwm = status_kb(pid, "VmHWM");
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    while lines
        .next(Instant::now() + Duration::from_secs(30))
        .is_some()
    {}
    if child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(100));
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
    }
    let rc = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
    println!(
        "op=startup ready_ns={} hwm_ready_kb={hwm_ready} hwm_kb={hwm} lines={seen} rc={rc}",
        ready.map_or(-1, |d| d.as_nanos() as i64)
    );
    std::process::exit(if ready.is_some() { 0 } else { 1 })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    if mode == "startup" {
        startup(&args);
    }
    let mut errors = 0u64;
    let mut last_errno = 0;
    let (n, (ns, cpu, wait)) = match mode {
        "getppid" => {
            let n: u64 = arg(&args, 1, "N");
            for _ in 0..n / 10 {
                unsafe { libc::getppid() };
            }
            let m = Meter::start();
            for _ in 0..n {
                // black_box: the call must happen every time.
                std::hint::black_box(unsafe { libc::getppid() });
            }
            (n, m.stop())
        }
        "connect" => {
            let port: u16 = arg(&args, 1, "PORT");
            let n: u64 = arg(&args, 2, "N");
            let sa = sockaddr(port);
            let l = listener(&sa);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            for _ in 0..(n / 10).max(100) {
                let _ = round_trip(l, &sa, &linger);
            }
            let m = Meter::start();
            for _ in 0..n {
                if let Err(e) = round_trip(l, &sa, &linger) {
                    errors += 1;
                    last_errno = e;
                }
            }
            (n, m.stop())
        }
        "storm" => {
            let port: u16 = arg(&args, 1, "PORT");
            let fill: u64 = arg(&args, 2, "FILL");
            let n: u64 = arg(&args, 3, "N");
            let sa = sockaddr(port);
            let _l = listener(&sa);
            let mut held = Vec::new();
            for i in 0..fill {
                let fd = tcp_socket();
                connect(fd, &sa).unwrap_or_else(|e| panic!("fill connect {i}: errno {e}"));
                held.push(fd);
            }
            (n, failing_loop(n, |_| &sa, &mut errors, &mut last_errno))
        }
        "spread" => {
            let port: u16 = arg(&args, 1, "PORT");
            let dests: u16 = arg(&args, 2, "DESTS");
            let fill: u64 = arg(&args, 3, "FILL");
            let n: u64 = arg(&args, 4, "N");
            let sas: Vec<_> = (0..dests).map(|d| sockaddr(port + d)).collect();
            let _ls: Vec<_> = sas.iter().map(listener).collect();
            let mut held = Vec::new();
            for sa in &sas {
                for i in 0..fill {
                    let fd = tcp_socket();
                    connect(fd, sa).unwrap_or_else(|e| panic!("fill connect {i}: errno {e}"));
                    held.push(fd);
                }
            }
            let pick = |i: u64| &sas[(i % dests as u64) as usize];
            (n, failing_loop(n, pick, &mut errors, &mut last_errno))
        }
        _ => {
            eprintln!(
                "usage: pwbench getppid N | connect PORT N | storm PORT FILL N | spread PORT DESTS FILL N | startup MARKER HOLD_MS CMD [ARG...]"
            );
            std::process::exit(2);
        }
    };
    println!(
        "op={mode} n={n} ns={ns} ns_per_op={:.1} cpu_ns={cpu} wait_ns={wait} errors={errors} last_errno={last_errno}",
        ns as f64 / n.max(1) as f64
    );
}
