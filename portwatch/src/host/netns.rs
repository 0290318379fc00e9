//! Reading per-network-namespace sysctls by netns inode.
//!
//! An event names its netns by inode. To read that netns's
//! `ip_local_port_range`, portwatch needs a handle on the namespace (from the
//! event's task, a bind mount under /run/netns, or any process in it) and a
//! thread that enters it: /proc/sys/net shows the netns of the reading thread.
//!
//! An open handle keeps a namespace alive in the kernel (its devices, its
//! sockets' memory) after its pod is gone. So the cache of handles is swept
//! every `sweep_every`: a handle whose namespace no process and no bind mount
//! holds any more is closed. And it is bounded well below the process's
//! `RLIMIT_NOFILE`, evicting the least recently used handle when full.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How often cached handles are checked against the live namespaces when
/// the owner does not say otherwise (`serve` sweeps every scan interval).
pub const DEFAULT_SWEEP: Duration = Duration::from_secs(10);
/// The most handles one cache keeps, whatever the fd limit.
const MAX_HANDLES: usize = 1024;
/// How long a full /proc scan that missed an inode is believed.
const MISS_TTL: Duration = Duration::from_secs(5);

/// How many handles a cache may keep under an fd limit of `nofile`: a
/// quarter of it (the rest is for sockets, netlink, the ring buffers, CRI
/// and look-ups), at least 8, at most `MAX_HANDLES`.
pub fn cap_for(nofile: u64) -> usize {
    (nofile / 4).clamp(8, MAX_HANDLES as u64) as usize
}

/// The soft `RLIMIT_NOFILE` of this process (1024 when unreadable).
pub fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

struct Cached {
    file: File,
    used: Instant,
}

pub struct NetnsHandles {
    self_ino: Option<u32>,
    handles: HashMap<u32, Cached>,
    /// When a full /proc scan last failed to find an inode.
    missed: HashMap<u32, Instant>,
    cap: usize,
    sweep_every: Duration,
    last_sweep: Instant,
}

fn ns_ino(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The inode in a namespace link's target (`net:[4026531840]`).
pub fn parse_ns_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The netns inode of a bind mount, from one line of /proc/PID/mountinfo
/// (`... 4026532305 /run/netns/x rw shared:5 - nsfs nsfs rw`: the root field
/// of an nsfs mount is the namespace link).
pub fn parse_nsfs_mount(line: &str) -> Option<u32> {
    let (head, tail) = line.split_once(" - ")?;
    if tail.split_whitespace().next()? != "nsfs" {
        return None;
    }
    parse_ns_link(head.split_whitespace().nth(3)?)
}

/// Every pid in /proc, in order.
pub fn pids() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The netns inode of process `pid` (None: gone, or not ours to see).
pub fn netns_of(pid: u32) -> Option<u32> {
    parse_ns_link(
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()?
            .to_str()?,
    )
}

/// Which of `wanted` some process or bind mount (in portwatch's mount
/// namespace) still holds. Stops reading /proc once all are found.
pub fn held_among(wanted: &HashSet<u32>) -> HashSet<u32> {
    let mut held = HashSet::new();
    if wanted.is_empty() {
        return held;
    }
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        held.extend(
            mi.lines()
                .filter_map(parse_nsfs_mount)
                .filter(|i| wanted.contains(i)),
        );
    }
    for pid in pids() {
        if held.len() == wanted.len() {
            break;
        }
        if let Some(i) = netns_of(pid).filter(|i| wanted.contains(i)) {
            held.insert(i);
        }
    }
    held
}

impl Default for NetnsHandles {
    fn default() -> Self {
        Self::new()
    }
}

impl NetnsHandles {
    pub fn new() -> NetnsHandles {
        Self::with(DEFAULT_SWEEP, cap_for(nofile_limit()))
    }

    /// A cache swept every `sweep_every`, holding at most `cap` handles.
    pub fn with(sweep_every: Duration, cap: usize) -> NetnsHandles {
        NetnsHandles {
            self_ino: ns_ino(Path::new("/proc/thread-self/ns/net")),
            handles: HashMap::new(),
            missed: HashMap::new(),
            cap: cap.max(1),
            sweep_every,
            last_sweep: Instant::now(),
        }
    }

    pub fn is_own(&self, ino: u32) -> bool {
        self.self_ino == Some(ino)
    }

    /// Handles held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.handles.len()
    }

    /// Closes the handles of namespaces nothing but this cache holds any
    /// more, when a sweep is due. Cheap when it is not: call it often.
    pub fn sweep_if_due(&mut self) {
        if self.last_sweep.elapsed() >= self.sweep_every {
            self.sweep();
        }
    }

    /// Closes the handles of namespaces no process or bind mount holds.
    pub fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        self.missed.retain(|_, t| t.elapsed() < MISS_TTL);
        let cached: HashSet<u32> = self.handles.keys().copied().collect();
        let held = held_among(&cached);
        self.handles.retain(|ino, _| held.contains(ino));
        if self.handles.len() < cached.len() {
            log::debug!(
                "netns: closed {} handles on namespaces gone, {} kept",
                cached.len() - self.handles.len(),
                self.handles.len()
            );
        }
    }

    /// A handle on netns `ino`, looked for through the given pids first.
    pub fn get(&mut self, ino: u32, pids: &[u32]) -> Option<&File> {
        self.sweep_if_due();
        if !self.handles.contains_key(&ino) {
            let f = self.find(ino, pids)?;
            if self.handles.len() >= self.cap {
                // Full: the least recently used handle goes.
                if let Some(old) = self
                    .handles
                    .iter()
                    .min_by_key(|(_, c)| c.used)
                    .map(|(i, _)| *i)
                {
                    self.handles.remove(&old);
                }
            }
            self.handles.insert(
                ino,
                Cached {
                    file: f,
                    used: Instant::now(),
                },
            );
        }
        let e = self.handles.get_mut(&ino)?;
        e.used = Instant::now();
        Some(&e.file)
    }

    /// A handle of its own (dup) on netns `ino`, for another thread.
    pub fn dup(&mut self, ino: u32, pids: &[u32]) -> Option<File> {
        self.get(ino, pids)?.try_clone().ok()
    }

    fn open_if(path: &Path, ino: u32) -> Option<File> {
        let f = File::open(path).ok()?;
        (f.metadata().ok()?.ino() as u32 == ino).then_some(f)
    }

    fn find(&mut self, ino: u32, pids: &[u32]) -> Option<File> {
        for pid in pids {
            if let Some(f) = Self::open_if(Path::new(&format!("/proc/{pid}/ns/net")), ino) {
                return Some(f);
            }
        }
        for dir in ["/run/netns", "/var/run/netns"] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if let Some(f) = Self::open_if(&e.path(), ino) {
                        return Some(f);
                    }
                }
            }
        }
        // Last resort: any process in that netns. Rate-limited per inode.
        if let Some(t) = self.missed.get(&ino) {
            if t.elapsed() < MISS_TTL {
                return None;
            }
        }
        for pid in self::pids() {
            if netns_of(pid) == Some(ino) {
                if let Some(f) = Self::open_if(Path::new(&format!("/proc/{pid}/ns/net")), ino) {
                    return Some(f);
                }
            }
        }
        self.missed.insert(ino, Instant::now());
        None
    }
}

/// Runs `f` on a short-lived thread that has entered the netns behind `ns`:
/// setns changes only the calling thread, and this one runs nothing else.
/// Sockets `f` creates belong to that netns; files under /proc/sys/net show it.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> Result<T> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            // SAFETY: `fd` belongs to `ns`, open for the whole scope; setns
            // changes only this thread, which runs nothing else.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| bail!("netns thread panicked"))
    })
}

/// Reads several files under /proc/sys inside the netns behind `ns` (None:
/// portwatch's own), with one setns for all of them.
pub fn read_sysctls(ns: Option<&File>, paths: &[&str]) -> Result<Vec<String>> {
    let read = || -> Result<Vec<String>> {
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {p}")))
            .collect()
    };
    match ns {
        None => read(),
        Some(ns) => run_in(ns, read)?,
    }
}

/// The netns inode behind a path like /proc/PID/ns/net or /run/netns/NAME.
pub fn ino_of(path: &Path) -> Option<u32> {
    ns_ino(path)
}

/// portwatch's own netns inode.
pub fn own_ino() -> Option<u32> {
    ns_ino(Path::new("/proc/thread-self/ns/net"))
}

/// Parses `ip_local_port_range` ("32768\t60999\n").
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u16>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("41000 41003"), Some((41000, 41003)));
        assert_eq!(parse_port_range("5 4"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("x 2"), None);
        assert_eq!(parse_port_range(""), None);
        assert_eq!(parse_port_range("1 70000"), None);
    }

    #[test]
    fn own_netns_is_found_and_readable() {
        let mut h = NetnsHandles::new();
        let ino = ns_ino(Path::new("/proc/self/ns/net")).unwrap();
        assert!(h.is_own(ino));
        let me = std::process::id();
        let f = h.get(ino, &[me]).expect("own netns handle");
        let s = read_sysctls(Some(f), &["/proc/sys/net/ipv4/ip_local_port_range"]).unwrap();
        assert!(parse_port_range(&s[0]).is_some(), "{s:?}");
        assert!(h.get(1, &[me]).is_none(), "inode 1 is no netns");
    }
    #[test]
    fn parses_namespace_links_and_nsfs_mounts() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
        assert_eq!(parse_ns_link("net:[4026531840"), None);
        let l = "1179 29 0:4 net:[4026532305] /run/netns/pw rw shared:599 - nsfs nsfs rw";
        assert_eq!(parse_nsfs_mount(l), Some(4026532305));
        // Optional fields before the separator, several of them.
        let l =
            "88 29 0:4 net:[4026532400] /var/run/netns/cni-1 rw shared:5 master:1 - nsfs nsfs rw";
        assert_eq!(parse_nsfs_mount(l), Some(4026532400));
        // Another namespace type, another filesystem, a torn line.
        let l = "90 29 0:4 mnt:[4026532401] /run/x rw - nsfs nsfs rw";
        assert_eq!(parse_nsfs_mount(l), None);
        let l = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw";
        assert_eq!(parse_nsfs_mount(l), None);
        assert_eq!(parse_nsfs_mount("1179 29 0:4 net:[4026532305]"), None);
        assert_eq!(parse_nsfs_mount(""), None);
    }

    #[test]
    fn the_cache_stays_well_below_the_fd_limit() {
        assert_eq!(cap_for(1024), 256);
        assert_eq!(cap_for(20), 8);
        assert_eq!(cap_for(1 << 20), MAX_HANDLES);
        assert!(cap_for(nofile_limit()) as u64 <= nofile_limit() / 4 + 8);
    }

    /// A netns held only by a process: cached while the process lives,
    /// closed by the first sweep after it has exited (and the cache's own
    /// handle is then the namespace's last reference).
    #[test]
    fn a_sweep_closes_handles_of_namespaces_nothing_else_holds() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root (unshare -n): run it through cargo xtask test"
        );
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .expect("unshare");
        let pid = child.id();
        // unshare execs sleep once the namespace is made.
        let me = netns_of(std::process::id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ino = loop {
            match netns_of(pid) {
                Some(i)
                    if i != me
                        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == "sleep") =>
                {
                    break i
                }
                _ => assert!(Instant::now() < deadline, "no netns of its own"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut h = NetnsHandles::with(Duration::from_secs(3600), 4);
        assert!(h.get(ino, &[pid]).is_some());
        let own = netns_of(std::process::id()).unwrap();
        assert!(h.get(own, &[std::process::id()]).is_some());
        h.sweep();
        assert_eq!(h.len(), 2, "both still held by a process");
        // Full: the least recently used handle goes, not all of them.
        let mut one = NetnsHandles::with(Duration::from_secs(3600), 1);
        assert!(one.get(ino, &[pid]).is_some());
        assert!(one.get(own, &[]).is_some());
        assert_eq!(one.handles.keys().collect::<Vec<_>>(), vec![&own]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(held_among(&HashSet::from([ino, own])), HashSet::from([own]));
        h.sweep();
        assert_eq!(h.len(), 1, "the dead namespace's handle is closed");
        assert!(h.get(ino, &[pid]).is_none(), "and it cannot be found again");
        assert!(h.get(own, &[]).is_some());
    }
}
