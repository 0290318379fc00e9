//! The network namespaces of the host, found and read from inside: its
//! sysctls through a thread that has entered it, its sockets through
//! sock_diag opened there. What `check` audits and `serve` scans.

use std::{
    collections::HashSet,
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::host::{
    holders::comm_of,
    ipvs, netns,
    ports::PortSet,
    sockdiag::{self, PortFilter, Sock},
    sysctl::read_ports,
};

/// A network namespace to audit.
pub struct Target {
    pub ino: u32,
    /// None: portwatch's own (the node's).
    pub handle: Option<File>,
    pub place: String,
    /// What to put before a command to run it in this netns ("" for the node).
    pub enter: String,
    pub is_node: bool,
    /// A process in this netns, when one was seen (tells whose pod it is).
    pub pid: Option<u32>,
}

/// What was read from one netns.
pub struct NsState {
    pub range: (u16, u16),
    pub reserved: PortSet,
    pub tw_reuse: Option<u32>,
    /// TCP sockets with a local port in the range (Err: the table could
    /// not be read, so the socket checks are not made).
    pub socks: Result<Vec<Sock>, String>,
}

fn enter_prefix(path: &Path) -> String {
    let s = path.display().to_string();
    for dir in ["/run/netns/", "/var/run/netns/"] {
        if let Some(name) = s.strip_prefix(dir) {
            if !name.contains('/') {
                return format!("ip netns exec {name} ");
            }
        }
    }
    format!("nsenter --net={s} ")
}

fn open_ns(path: &Path) -> Result<(File, u32)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ino = f.metadata()?.ino() as u32;
    // Make sure it is a network namespace (setns would refuse it later anyway).
    let magic = {
        // SAFETY: statfs is plain C data, for which all zeroes is valid.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `f` is an open file for the call's duration and `st` a
        // writable statfs.
        let ok = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), &mut st) } == 0;
        ok.then_some(st.f_type as i64)
    };
    const NSFS_MAGIC: i64 = 0x6e736673;
    if magic != Some(NSFS_MAGIC) {
        bail!("{} is not a namespace file", path.display());
    }
    Ok((f, ino))
}

/// The targets: those named with `--netns`, or the node's netns and every
/// other one on the host (bind mounts under /run/netns, then /proc/*/ns/net).
pub fn discover(specs: &[String]) -> Result<Vec<Target>> {
    let own = netns::own_ino().context("reading portwatch's own netns")?;
    let mut out: Vec<Target> = vec![];
    let mut seen = HashSet::new();
    if !specs.is_empty() {
        for s in specs {
            let path = match s.parse::<u32>() {
                Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
                Err(_) => PathBuf::from(s),
            };
            let (f, ino) = open_ns(&path).with_context(|| format!("--netns {s}"))?;
            if !seen.insert(ino) {
                continue;
            }
            let is_node = ino == own;
            out.push(Target {
                ino,
                handle: (!is_node).then_some(f),
                place: if is_node {
                    "node".into()
                } else {
                    path.display().to_string()
                },
                enter: if is_node {
                    String::new()
                } else {
                    enter_prefix(&path)
                },
                is_node,
                pid: s.parse().ok(),
            });
        }
        return Ok(out);
    }
    seen.insert(own);
    out.push(Target {
        ino: own,
        handle: None,
        place: "node".into(),
        enter: String::new(),
        is_node: true,
        pid: Some(std::process::id()),
    });
    let mut named: Vec<PathBuf> = vec![];
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            named.extend(rd.flatten().map(|e| e.path()));
        }
    }
    named.sort();
    for p in named {
        if let Ok((f, ino)) = open_ns(&p) {
            if seen.insert(ino) {
                out.push(Target {
                    ino,
                    handle: Some(f),
                    place: p.display().to_string(),
                    enter: enter_prefix(&p),
                    is_node: false,
                    pid: None,
                });
            }
        }
    }
    for pid in netns::pids() {
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Some(ino) = netns::ino_of(&p) else {
            continue;
        };
        if seen.contains(&ino) {
            // A named netns (CNI's /run/netns/cni-…) gets the first pid
            // seen in it: through it, the pod it belongs to.
            if let Some(t) = out.iter_mut().find(|t| t.ino == ino && t.pid.is_none()) {
                t.pid = Some(pid);
            }
            continue;
        }
        // A process may exit between the two looks: skip it then.
        if let Ok((f, ino2)) = open_ns(&p) {
            if ino2 == ino && seen.insert(ino) {
                out.push(Target {
                    ino,
                    handle: Some(f),
                    place: format!("pid {pid} ({})", comm_of(pid).unwrap_or_default()),
                    enter: enter_prefix(&p),
                    is_node: false,
                    pid: Some(pid),
                });
            }
        }
    }
    Ok(out)
}

pub fn read_state(t: &Target) -> Result<NsState> {
    let p = read_ports(t.handle.as_ref(), true)
        .with_context(|| format!("sysctls of netns {} ({})", t.ino, t.place))?;
    let range = p.range.map_err(|e| anyhow!("{e} in netns {}", t.ino))?;
    let reserved = p.reserved.map_err(|e| anyhow!("{e} in netns {}", t.ino))?;
    let tw_reuse = p.tw_reuse;
    let socks = sockdiag::dump_in(
        t.handle.as_ref(),
        libc::IPPROTO_TCP as u8,
        PortFilter::SportRange(range.0, range.1),
    )
    .map_err(|e| format!("socket table of netns {} ({}): {e:#}", t.ino, t.place));
    Ok(NsState {
        range,
        reserved,
        tw_reuse,
        socks,
    })
}

/// Ports of IPVS virtual services, where the kernel has IPVS (in the node
/// netns, the one portwatch runs in).
pub fn ipvs_ports() -> Option<PortSet> {
    let services = ipvs::read_services().ok()??;
    Some(PortSet::from_ranges(
        services.iter().map(|s| (s.port, s.port)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_prefixes() {
        assert_eq!(
            enter_prefix(Path::new("/run/netns/ab")),
            "ip netns exec ab "
        );
        assert_eq!(
            enter_prefix(Path::new("/proc/12/ns/net")),
            "nsenter --net=/proc/12/ns/net "
        );
    }
}
