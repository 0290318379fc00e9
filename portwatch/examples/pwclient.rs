//! pwclient: the workload portwatch's integration tests provoke failures
//! with. Real sockets, real errnos; one line on stdout per attempt.
//!
//! ```text
//! pwclient [--wait] [--hold] STEP...
//!   listen ADDR PORT           listen (SO_REUSEADDR) and keep the listener
//!   fill ADDR PORT N           N connects that must succeed, kept open
//!   connect ADDR PORT [N]      N connect attempts (default 1): "ok SPORT" / "err ERRNO"
//!   bind ADDR PORT             one bind() attempt:               "ok PORT" / "err ERRNO"
//!   timeout ADDR PORT          a connect that times out (full accept queue, 1 SYN retry)
//!   timewait ADDR PORT N       N connections to an earlier `listen`, each accepted and
//!                              closed by this (client) side first: N TIME_WAIT sockets
//!   reuse ADDR PORT SPORT      two SO_REUSEADDR sockets bound to ADDR:SPORT connect to
//!                              ADDR:PORT: "ok SPORT" for the first, then the second's
//!                              "ok SPORT" / "err ERRNO" (same 4-tuple: 99)
//!   fastopen ADDR PORT         a TCP Fast Open connect: sendto(MSG_FASTOPEN), no connect()
//!   uring-connect ADDR PORT    a connect submitted through io_uring (IORING_OP_CONNECT)
//!   from ADDR PORT             later connects bind to ADDR:PORT first (SO_REUSEADDR,
//!                              closed with SO_LINGER 0 so the port is free again at once)
//! --syncnt N: connects give up after N SYN retransmissions (TCP_SYNCNT).
//! --wait: read one line from stdin before the first step (lets a test start
//!         a tracer filtered on this pid first).
//! --hold: after the last step print "holding" and keep every socket until
//!         stdin closes.
//! ```
//! Run it inside a test network namespace (`ip netns exec`).

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    mem,
    net::{IpAddr, SocketAddr},
};

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn socket(addr: &SocketAddr) -> i32 {
    let fam = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = unsafe { libc::socket(fam, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32) {
    let rc = unsafe { libc::setsockopt(fd, level, opt, &v as *const i32 as *const _, 4) };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

fn local_port(fd: i32) -> u16 {
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    unsafe { libc::getsockname(fd, &mut ss as *mut _ as *mut libc::sockaddr, &mut len) };
    // sin_port and sin6_port sit at the same offset.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    u16::from_be(sin.sin_port)
}

/// A syscall's return value as Ok or the errno it set.
fn check(rc: i32) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn do_connect(fd: i32, addr: &SocketAddr) -> Result<(), i32> {
    let (ss, len) = sockaddr(addr);
    check(unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) })
}

fn do_bind(fd: i32, addr: &SocketAddr) -> Result<(), i32> {
    let (ss, len) = sockaddr(addr);
    check(unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) })
}

fn listen(addr: &SocketAddr, backlog: i32) -> i32 {
    let fd = socket(addr);
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    do_bind(fd, addr).unwrap_or_else(|e| panic!("listen bind {addr}: errno {e}"));
    assert_eq!(unsafe { libc::listen(fd, backlog) }, 0);
    fd
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut wait = false;
    let mut hold = false;
    let mut syncnt = None;
    while let Some(a) = args.first() {
        match a.as_str() {
            "--wait" => wait = true,
            "--hold" => hold = true,
            "--syncnt" => {
                args.remove(0);
                syncnt = Some(
                    args.first()
                        .and_then(|n| n.parse::<i32>().ok())
                        .expect("--syncnt N"),
                );
            }
            _ => break,
        }
        args.remove(0);
    }
    let mut from: Option<SocketAddr> = None;
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        writeln!(o, "{s}").unwrap();
        o.flush().unwrap();
    };
    if wait {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).unwrap();
    }
    let mut keep: Vec<i32> = vec![];
    let mut listeners: HashMap<SocketAddr, i32> = HashMap::new();
    let mut i = 0;
    while i < args.len() {
        let step = args[i].as_str();
        let ip: IpAddr = args.get(i + 1).and_then(|s| s.parse().ok()).expect("ADDR");
        let port: u16 = args.get(i + 2).and_then(|s| s.parse().ok()).expect("PORT");
        let addr = SocketAddr::new(ip, port);
        i += 3;
        let mut count = || -> usize {
            match args.get(i).and_then(|s| s.parse().ok()) {
                Some(n) => {
                    i += 1;
                    n
                }
                None => 1,
            }
        };
        match step {
            "listen" => {
                let fd = listen(&addr, 128);
                listeners.insert(addr, fd);
                keep.push(fd);
            }
            "fill" => {
                for _ in 0..count() {
                    let fd = socket(&addr);
                    do_connect(fd, &addr)
                        .unwrap_or_else(|e| panic!("fill connect {addr}: errno {e}"));
                    keep.push(fd);
                }
                say("filled".into());
            }
            "from" => from = Some(addr),
            "connect" => {
                for _ in 0..count() {
                    let fd = socket(&addr);
                    if let Some(n) = syncnt {
                        set_int(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, n);
                    }
                    if let Some(src) = &from {
                        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
                        let lg = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        unsafe {
                            libc::setsockopt(
                                fd,
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                &lg as *const _ as *const _,
                                mem::size_of::<libc::linger>() as u32,
                            )
                        };
                        do_bind(fd, src).unwrap_or_else(|e| panic!("bind {src}: errno {e}"));
                    }
                    match do_connect(fd, &addr) {
                        Ok(()) => {
                            say(format!("ok {}", local_port(fd)));
                            keep.push(fd);
                        }
                        Err(e) => {
                            say(format!("err {e}"));
                            unsafe { libc::close(fd) };
                        }
                    }
                }
            }
            "bind" => {
                let fd = socket(&addr);
                match do_bind(fd, &addr) {
                    Ok(()) => {
                        say(format!("ok {}", local_port(fd)));
                        keep.push(fd);
                    }
                    Err(e) => say(format!("err {e}")),
                }
            }
            "timeout" => {
                // Accept queue of one, filled and never accepted, and no
                // SYN cookies in the test netns: the next SYN is dropped.
                let l = listen(&addr, 0);
                let first = socket(&addr);
                do_connect(first, &addr).expect("first connect");
                let fd = socket(&addr);
                set_int(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 1);
                match do_connect(fd, &addr) {
                    Ok(()) => say("ok".into()),
                    Err(e) => say(format!("err {e}")),
                }
                keep.extend([l, first, fd]);
            }
            "fastopen" => {
                // The connect happens inside sendto(): the connect()
                // syscall tracepoints never see it.
                let fd = socket(&addr);
                let (ss, len) = sockaddr(&addr);
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        b"x".as_ptr() as *const _,
                        1,
                        libc::MSG_FASTOPEN,
                        &ss as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                match check(if rc < 0 { -1 } else { 0 }) {
                    Ok(()) => {
                        say(format!("ok {}", local_port(fd)));
                        keep.push(fd);
                    }
                    Err(e) => say(format!("err {e}")),
                }
            }
            "uring-connect" => {
                let fd = socket(&addr);
                match uring::connect(fd, &addr) {
                    Ok(()) => {
                        say(format!("ok {}", local_port(fd)));
                        keep.push(fd);
                    }
                    Err(e) => say(format!("err {e}")),
                }
            }
            "timewait" => {
                let l = *listeners
                    .get(&addr)
                    .unwrap_or_else(|| panic!("timewait {addr}: no earlier listen on it"));
                let n = count();
                for _ in 0..n {
                    let fd = socket(&addr);
                    do_connect(fd, &addr)
                        .unwrap_or_else(|e| panic!("timewait connect {addr}: errno {e}"));
                    let srv =
                        unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
                    assert!(srv >= 0, "accept: {}", std::io::Error::last_os_error());
                    // The side that closes first ends in TIME_WAIT: the client.
                    unsafe { libc::close(fd) };
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    unsafe { libc::close(srv) };
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                say(format!("timewait {n}"));
            }
            "reuse" => {
                let sport: u16 = count().try_into().expect("SPORT");
                let local = SocketAddr::new(ip, sport);
                for _ in 0..2 {
                    let fd = socket(&addr);
                    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
                    do_bind(fd, &local).unwrap_or_else(|e| panic!("reuse bind {local}: errno {e}"));
                    match do_connect(fd, &addr) {
                        Ok(()) => say(format!("ok {}", local_port(fd))),
                        Err(e) => say(format!("err {e}")),
                    }
                    keep.push(fd);
                }
            }
            s => panic!("unknown step {s}"),
        }
    }
    if hold {
        say("holding".into());
        let mut sink = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    }
    drop(keep);
}

/// Just enough io_uring, on raw syscalls, for one IORING_OP_CONNECT: the
/// kernel runs the connect from io_uring_enter(), never from connect().
mod uring {
    use std::net::SocketAddr;

    #[repr(C)]
    #[derive(Default)]
    struct SqOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        flags: u32,
        dropped: u32,
        array: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct CqOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        overflow: u32,
        cqes: u32,
        flags: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: SqOffsets,
        cq_off: CqOffsets,
    }

    #[repr(C)]
    struct Sqe {
        opcode: u8,
        flags: u8,
        ioprio: u16,
        fd: i32,
        off: u64,
        addr: u64,
        len: u32,
        op_flags: u32,
        user_data: u64,
        buf_index: u16,
        personality: u16,
        splice_fd_in: i32,
        addr3: u64,
        pad: u64,
    }

    #[repr(C)]
    struct Cqe {
        user_data: u64,
        res: i32,
        flags: u32,
    }

    const IORING_OP_CONNECT: u8 = 16;
    const IORING_ENTER_GETEVENTS: u32 = 1;
    const OFF_SQ_RING: i64 = 0;
    const OFF_CQ_RING: i64 = 0x800_0000;
    const OFF_SQES: i64 = 0x1000_0000;

    fn map(fd: i32, len: usize, off: i64) -> Result<*mut u8, i32> {
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            Err(super::errno())
        } else {
            Ok(p as *mut u8)
        }
    }

    /// Ok, or the errno the connect completed with.
    pub fn connect(sock: i32, addr: &SocketAddr) -> Result<(), i32> {
        let (ss, len) = super::sockaddr(addr);
        let mut p = Params::default();
        let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut p as *mut Params) };
        assert!(
            ring >= 0,
            "io_uring_setup: {} (io_uring disabled on this kernel?)",
            std::io::Error::last_os_error()
        );
        let ring = ring as i32;
        let sq_len = p.sq_off.array as usize + 4 * p.sq_entries as usize;
        let cq_len = p.cq_off.cqes as usize + std::mem::size_of::<Cqe>() * p.cq_entries as usize;
        let sq = map(ring, sq_len, OFF_SQ_RING).expect("mmap sq ring");
        let cq = map(ring, cq_len, OFF_CQ_RING).expect("mmap cq ring");
        let sqes = map(ring, std::mem::size_of::<Sqe>(), OFF_SQES).expect("mmap sqes") as *mut Sqe;
        unsafe {
            sqes.write(Sqe {
                opcode: IORING_OP_CONNECT,
                flags: 0,
                ioprio: 0,
                fd: sock,
                off: len as u64,
                addr: &ss as *const _ as u64,
                len: 0,
                op_flags: 0,
                user_data: 7,
                buf_index: 0,
                personality: 0,
                splice_fd_in: 0,
                addr3: 0,
                pad: 0,
            });
            let tail = sq.add(p.sq_off.tail as usize) as *mut u32;
            let mask = *(sq.add(p.sq_off.ring_mask as usize) as *const u32);
            let t = tail.read_volatile();
            *(sq.add(p.sq_off.array as usize) as *mut u32).add((t & mask) as usize) = 0;
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            tail.write_volatile(t + 1);
            let rc = libc::syscall(
                libc::SYS_io_uring_enter,
                ring,
                1u32,
                1u32,
                IORING_ENTER_GETEVENTS,
                std::ptr::null::<u8>(),
                0usize,
            );
            assert!(
                rc >= 0,
                "io_uring_enter: {}",
                std::io::Error::last_os_error()
            );
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let head = *(cq.add(p.cq_off.head as usize) as *const u32);
            let cmask = *(cq.add(p.cq_off.ring_mask as usize) as *const u32);
            let cqe = &*(cq.add(p.cq_off.cqes as usize) as *const Cqe).add((head & cmask) as usize);
            assert_eq!(cqe.user_data, 7);
            let res = cqe.res;
            libc::close(ring);
            if res < 0 {
                Err(-res)
            } else {
                Ok(())
            }
        }
    }
}
