//! Reading per-network-namespace sysctls by netns inode.
//!
//! An event names its netns by inode. To read that netns's
//! `ip_local_port_range`, portwatch needs a handle on the namespace (from the
//! event's task, a bind mount under /run/netns, or any process in it) and a
//! thread that enters it: /proc/sys/net shows the netns of the reading thread.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How long a netns handle stays cached without use.
const HANDLE_TTL: Duration = Duration::from_secs(300);
const MAX_HANDLES: usize = 1024;

pub struct NetnsHandles {
    self_ino: Option<u32>,
    handles: HashMap<u32, (File, Instant)>,
    /// When a full /proc scan last failed to find an inode.
    missed: HashMap<u32, Instant>,
}

fn ns_ino(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

impl Default for NetnsHandles {
    fn default() -> Self {
        Self::new()
    }
}

impl NetnsHandles {
    pub fn new() -> NetnsHandles {
        NetnsHandles {
            self_ino: ns_ino(Path::new("/proc/thread-self/ns/net")),
            handles: HashMap::new(),
            missed: HashMap::new(),
        }
    }

    pub fn is_own(&self, ino: u32) -> bool {
        self.self_ino == Some(ino)
    }

    /// A handle on netns `ino`, looked for through the given pids first.
    pub fn get(&mut self, ino: u32, pids: &[u32]) -> Option<&File> {
        if !self.handles.contains_key(&ino) {
            let f = self.find(ino, pids)?;
            if self.handles.len() >= MAX_HANDLES {
                let now = Instant::now();
                self.handles
                    .retain(|_, (_, t)| now.duration_since(*t) < HANDLE_TTL);
                if self.handles.len() >= MAX_HANDLES {
                    self.handles.clear();
                }
            }
            self.handles.insert(ino, (f, Instant::now()));
        }
        let e = self.handles.get_mut(&ino)?;
        e.1 = Instant::now();
        Some(&e.0)
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
            if t.elapsed() < Duration::from_secs(5) {
                return None;
            }
        }
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let p = e.path().join("ns/net");
                if ns_ino(&p) == Some(ino) {
                    if let Some(f) = Self::open_if(&p, ino) {
                        return Some(f);
                    }
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
}
