//! Which process holds a socket: socket inode -> pid and comm, through the
//! `socket:[INODE]` links under /proc/PID/fd (what `ss -p` does).
//!
//! Processes inside the socket's netns are looked at first; the rest of the
//! host only for inodes still unresolved (a socket made in one netns and
//! passed to, or kept by, a process that has moved on). The map of one netns
//! is kept for a second, so a burst of look-ups costs one /proc walk.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::host::netns::{netns_of, pids};

const CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// Its pod (uid and container id from its cgroup; names are filled in
    /// later where the event's own pod is the same).
    pub pod: Option<crate::k8s::pods::Pod>,
}

/// Socket inode -> its process.
type OwnerMap = HashMap<u32, Owner>;

#[derive(Default)]
pub struct Holders {
    /// netns inode -> (when scanned, every socket inode of its processes).
    cache: Mutex<HashMap<u32, (Instant, OwnerMap)>>,
}

pub fn comm_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// The socket inodes among `pid`'s open files.
fn socket_inodes(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| parse_socket_link(std::fs::read_link(e.path()).ok()?.to_str()?))
        .collect()
}

/// The inode in an fd link's target, when it is a socket (`socket:[4242]`).
pub(crate) fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Adds the sockets of `pid` to `map` (the lowest pid keeps a shared socket).
fn add_process(pid: u32, map: &mut HashMap<u32, Owner>, want: Option<&HashSet<u32>>) {
    let inodes = socket_inodes(pid);
    if inodes.is_empty() {
        return;
    }
    let mut who = None;
    for ino in inodes {
        if want.is_some_and(|w| !w.contains(&ino)) || map.contains_key(&ino) {
            continue;
        }
        let (comm, pod) = who.get_or_insert_with(|| {
            (
                comm_of(pid).unwrap_or_default(),
                crate::k8s::pods::of_pid(pid),
            )
        });
        map.insert(
            ino,
            Owner {
                pid,
                comm: comm.clone(),
                pod: pod.clone(),
            },
        );
    }
}

impl Holders {
    pub fn new() -> Holders {
        Holders::default()
    }

    /// Owners of the wanted socket inodes of netns `netns` (inode 0, a
    /// socket without a file, is never anyone's). Inodes whose process is
    /// gone are simply absent.
    pub fn resolve(&self, netns: Option<u32>, wanted: &HashSet<u32>) -> HashMap<u32, Owner> {
        let wanted: HashSet<u32> = wanted.iter().copied().filter(|&i| i != 0).collect();
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return out;
        }
        let all_pids = pids();
        let ns_map = match netns {
            Some(ns) => self.netns_map(ns, &all_pids, &wanted),
            None => HashMap::new(),
        };
        for i in &wanted {
            if let Some(o) = ns_map.get(i) {
                out.insert(*i, o.clone());
            }
        }
        let missing: HashSet<u32> = wanted
            .difference(&out.keys().copied().collect())
            .copied()
            .collect();
        if missing.is_empty() {
            return out;
        }
        // The rest of the host, for what the netns's own processes lack.
        let mut rest = HashMap::new();
        for &pid in &all_pids {
            if netns.is_some() && netns_of(pid) == netns {
                continue;
            }
            add_process(pid, &mut rest, Some(&missing));
            if rest.len() == missing.len() {
                break;
            }
        }
        out.extend(rest);
        out
    }

    fn netns_map(&self, ns: u32, all_pids: &[u32], wanted: &HashSet<u32>) -> HashMap<u32, Owner> {
        if let Some((t, m)) = self.cache.lock().unwrap().get(&ns) {
            if t.elapsed() < CACHE_TTL && wanted.iter().all(|i| m.contains_key(i)) {
                return m.clone();
            }
        }
        let mut m = HashMap::new();
        for &pid in all_pids {
            if netns_of(pid) == Some(ns) {
                add_process(pid, &mut m, None);
            }
        }
        let mut c = self.cache.lock().unwrap();
        if c.len() > 256 {
            c.retain(|_, (t, _)| t.elapsed() < CACHE_TTL);
        }
        c.insert(ns, (Instant::now(), m.clone()));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::TcpListener, os::unix::fs::MetadataExt};

    #[test]
    fn finds_this_processes_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino() as u32;
        let ns = netns_of(std::process::id());
        assert!(ns.is_some());
        let h = Holders::new();
        let want: HashSet<u32> = [ino, 0].into();
        let got = h.resolve(ns, &want);
        assert_eq!(got.len(), 1, "{got:?}");
        let o = &got[&ino];
        assert_eq!(o.pid, std::process::id());
        assert_eq!(Some(o.comm.clone()), comm_of(o.pid));
        // Without the netns, the whole host is searched.
        assert_eq!(h.resolve(None, &want)[&ino].pid, std::process::id());
        // An inode no process has.
        assert!(h.resolve(ns, &[u32::MAX].into()).is_empty());
    }
}
