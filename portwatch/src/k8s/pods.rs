//! Pod identity from the cgroup: cgroup v2 id -> cgroup path (the id is the
//! inode of the cgroup's directory under the cgroup2 mount) -> Kubernetes pod
//! uid and container id, parsed from the path kubelet and the runtime chose.
//!
//! Names (namespace, pod, container) come from the container runtime over
//! CRI (`cri`), filled in later by the enrich stage; until then, and with no
//! runtime reachable, they stay null.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

/// A pod process as its cgroup path shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// From the CRI look-up; null when the runtime did not say.
    pub namespace: Option<String>,
    /// From the CRI look-up; null when the runtime did not say.
    pub name: Option<String>,
    /// The pod's uid, with dashes (as the API server shows it).
    pub uid: String,
    /// From the CRI look-up; null when the runtime did not say (and for a
    /// process in the pod's own cgroup).
    pub container: Option<String>,
    /// The container id (64 hex), null for a process in the pod's own cgroup.
    pub container_id: Option<String>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id: 64 hex digits.
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && is_hex(s)).then(|| s.to_ascii_lowercase())
}

/// A pod uid: a UUID (8-4-4-4-12 hex) or, for static pods, 32 hex digits.
fn pod_uid(s: &str) -> Option<String> {
    let ok = match s.len() {
        32 => is_hex(s),
        36 => s.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && s.split('-').all(is_hex),
        _ => false,
    };
    ok.then(|| s.to_ascii_lowercase())
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`.
fn systemd_scope(c: &str) -> Option<String> {
    let inner = c.strip_suffix(".scope")?;
    ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|p| inner.strip_prefix(p))
        .and_then(container_id)
}

/// `kubepods[-burstable|-besteffort]-pod<uid with _>.slice` under the QoS
/// slice `qos` ("" for guaranteed) -> the uid.
fn systemd_pod_slice(c: &str, qos: &str) -> Option<String> {
    let inner = c.strip_suffix(".slice")?;
    let prefix = if qos.is_empty() {
        "kubepods-pod".to_string()
    } else {
        format!("kubepods-{qos}-pod")
    };
    pod_uid(&inner.strip_prefix(&prefix)?.replace('_', "-"))
}

/// `kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>`: containerd
/// with a systemd-style parent but the cgroupfs driver.
fn colon_form(c: &str) -> Option<Pod> {
    let mut parts = c.splitn(3, ':');
    let (slice, runtime, id) = (parts.next()?, parts.next()?, parts.next()?);
    if !["cri-containerd", "crio", "docker"].contains(&runtime) {
        return None;
    }
    let id = container_id(id)?;
    let uid = ["besteffort", "burstable", ""]
        .iter()
        .find_map(|q| systemd_pod_slice(slice, q))?;
    Some(Pod::new(uid, Some(id)))
}

impl Pod {
    fn new(uid: String, container_id: Option<String>) -> Pod {
        Pod {
            namespace: None,
            name: None,
            uid,
            container: None,
            container_id,
        }
    }

    /// "namespace/name" when known, else the first 8 characters of the uid.
    pub fn short(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => self.uid.chars().take(8).collect(),
        }
    }
}

/// The pod a cgroup path (as in /proc/PID/cgroup, from the cgroup2 root)
/// belongs to; None for anything that is not a Kubernetes pod cgroup.
/// Cgroups below the container's (a container's own sub-cgroups) still
/// belong to it.
pub fn parse_kube_path(path: &str) -> Option<Pod> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if let Some(p) = comps.iter().find_map(|c| colon_form(c)) {
        return Some(p);
    }
    // The kubepods root may sit below another cgroup (nested runtimes).
    let start = comps
        .iter()
        .position(|c| *c == "kubepods" || *c == "kubepods.slice")?;
    let rest = &comps[start + 1..];
    if comps[start] == "kubepods" {
        // cgroupfs driver: kubepods[/burstable|/besteffort]/pod<uid>/<id>
        let rest = match rest.first() {
            Some(&"burstable") | Some(&"besteffort") => &rest[1..],
            _ => rest,
        };
        let uid = pod_uid(rest.first()?.strip_prefix("pod")?)?;
        let cid = match rest.get(1) {
            None => None,
            // CRI-O and docker under cgroupfs may prefix the id.
            Some(c) => Some(
                ["crio-", "docker-", "cri-containerd-"]
                    .iter()
                    .find_map(|p| c.strip_prefix(p))
                    .map_or_else(|| container_id(c), container_id)?,
            ),
        };
        Some(Pod::new(uid, cid))
    } else {
        // systemd driver: kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<rt>-<id>.scope
        let (qos, rest) = match rest.first() {
            Some(&"kubepods-burstable.slice") => ("burstable", &rest[1..]),
            Some(&"kubepods-besteffort.slice") => ("besteffort", &rest[1..]),
            _ => ("", rest),
        };
        let uid = systemd_pod_slice(rest.first()?, qos)?;
        let cid = match rest.get(1) {
            None => None,
            Some(c) => Some(systemd_scope(c)?),
        };
        Some(Pod::new(uid, cid))
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // An octal escape is at most \377 (one byte).
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point in a mountinfo text: the mount of the hierarchy's
/// root (root field `/`), first one wins.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let f: Vec<&str> = pre.split_whitespace().collect();
        if fstype == "cgroup2" && f.get(3) == Some(&"/") {
            Some(PathBuf::from(unescape(f.get(4)?)))
        } else {
            None
        }
    })
}

/// Where this process sees the cgroup2 hierarchy's root (None: no cgroup2
/// mount).
pub fn cgroup2_root() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| cgroup2_mount(&m))
}

/// At most this many id -> path entries are kept.
const CACHE_MAX: usize = 16_384;
/// A walk of the hierarchy on a miss runs at most this often.
const WALK_EVERY: Duration = Duration::from_secs(1);

/// cgroup v2 id -> path, cached; a miss tries the event's /proc/PID/cgroup
/// (checked against the id) and then, at most once a second, a walk of the
/// hierarchy.
pub struct CgroupResolver {
    root: Option<PathBuf>,
    cache: HashMap<u64, String>,
    last_walk: Option<Instant>,
    pub walks: u64,
}

impl CgroupResolver {
    /// The cgroup2 mount from /proc/self/mountinfo (None: no cgroup2 here).
    pub fn new() -> CgroupResolver {
        CgroupResolver::with_root(cgroup2_root())
    }

    pub fn with_root(root: Option<PathBuf>) -> CgroupResolver {
        CgroupResolver {
            root,
            cache: HashMap::new(),
            last_walk: None,
            walks: 0,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn insert(&mut self, id: u64, path: String) {
        if self.cache.len() >= CACHE_MAX && !self.cache.contains_key(&id) {
            self.cache.clear();
        }
        self.cache.insert(id, path);
    }

    /// The path of cgroup `id` ("/" for the root, "/a/b" below it), or None.
    /// `pids` are tried first through /proc/PID/cgroup.
    pub fn resolve(&mut self, id: u64, pids: &[u32]) -> Option<String> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        let root = self.root.clone()?;
        for pid in pids {
            if let Some(p) = proc_cgroup(*pid) {
                if fs::metadata(root.join(p.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id) {
                    self.insert(id, p.clone());
                    return Some(p);
                }
            }
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < WALK_EVERY) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        let mut found = None;
        let mut stack = vec![(root.clone(), "/".to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(md) = fs::metadata(&dir) else { continue };
            if md.ino() == id {
                found = Some(rel.clone());
            }
            if self.cache.len() < CACHE_MAX {
                self.cache.insert(md.ino(), rel.clone());
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let sub = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), sub));
                }
            }
        }
        if let Some(p) = &found {
            self.insert(id, p.clone());
        }
        found
    }
}

/// The pod process `pid` belongs to, from its cgroup path (names null).
pub fn of_pid(pid: u32) -> Option<Pod> {
    parse_kube_path(&proc_cgroup(pid)?)
}

/// The cgroup v2 path in /proc/PID/cgroup (the `0::` line).
pub fn proc_cgroup(pid: u32) -> Option<String> {
    cgroup_v2_path(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The cgroup v2 path in the text of a /proc/PID/cgroup (the `0::` line).
pub(crate) fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "0f5e5e8a_1b2c_4d3e_8f90_a1b2c3d4e5f6";
    const CID: &str = "4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

    fn pod(cid: Option<&str>) -> Option<Pod> {
        Some(Pod::new(UID.into(), cid.map(str::to_string)))
    }

    #[test]
    fn systemd_driver_every_qos_and_runtime() {
        for qos in ["burstable", "besteffort"] {
            for rt in ["cri-containerd", "crio", "docker"] {
                let p = format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice/{rt}-{CID}.scope"
                );
                assert_eq!(parse_kube_path(&p), pod(Some(CID)), "{p}");
            }
            let p = format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice");
            assert_eq!(parse_kube_path(&p), pod(None), "{p}");
        }
        // Guaranteed: directly under kubepods.slice.
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope");
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
        // A container's own sub-cgroup is still the container.
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/init.scope");
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
        // Nested below another cgroup (kind, a node in a container).
        let p = format!("/system.slice/docker-x.scope/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope");
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
    }

    #[test]
    fn cgroupfs_driver_every_qos() {
        for qos in ["/burstable", "/besteffort", ""] {
            let p = format!("/kubepods{qos}/pod{UID}/{CID}");
            assert_eq!(parse_kube_path(&p), pod(Some(CID)), "{p}");
            let p = format!("/kubepods{qos}/pod{UID}");
            assert_eq!(parse_kube_path(&p), pod(None), "{p}");
            let p = format!("/kubepods{qos}/pod{UID}/crio-{CID}");
            assert_eq!(parse_kube_path(&p), pod(Some(CID)), "{p}");
        }
        // Upper-case hex is normalised.
        let p = format!("/kubepods/pod{}/{}", UID.to_uppercase(), CID.to_uppercase());
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
        // Static pods: a 32-hex uid.
        let p = format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{CID}");
        assert_eq!(
            parse_kube_path(&p).map(|p| p.uid),
            Some("0123456789abcdef0123456789abcdef".into())
        );
    }

    #[test]
    fn containerd_colon_form() {
        for qos in ["besteffort-", "burstable-", ""] {
            let p = format!("/kubepods-{qos}pod{UID_}.slice:cri-containerd:{CID}");
            assert_eq!(parse_kube_path(&p), pod(Some(CID)), "{p}");
        }
        let p = format!("/kubepods-besteffort-pod{UID_}.slice:crio:{CID}");
        assert_eq!(parse_kube_path(&p), pod(Some(CID)));
        let p = format!("/kubepods-besteffort-pod{UID_}.slice:runc:{CID}");
        assert_eq!(parse_kube_path(&p), None);
        let p = format!(
            "/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{}",
            &CID[..63]
        );
        assert_eq!(parse_kube_path(&p), None);
    }

    #[test]
    fn host_and_malformed_paths_are_not_pods() {
        for p in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/podabc/kubepods",
            "/docker/4c5f1e2d3b4a",
            "/process_api/472a0ee1801e9d090aceb228cdf3f5ab",
        ] {
            assert_eq!(parse_kube_path(p), None, "{p}");
        }
        let bad = [
            // uid malformed
            format!("/kubepods/burstable/pod{}/{CID}", &UID[..35]),
            format!("/kubepods/burstable/pod{}x/{CID}", &UID[..35]),
            format!("/kubepods/burstable/pod{UID_}/{CID}"),
            // container id too short / not hex
            format!("/kubepods/burstable/pod{UID}/{}", &CID[..12]),
            format!("/kubepods/burstable/pod{UID}/{}g", &CID[..63]),
            // QoS slice and pod slice disagree
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"),
            // unknown runtime scope
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/runc-{CID}.scope"),
            // missing .scope / .slice
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}"),
            format!("/kubepods.slice/kubepods-pod{UID_}/crio-{CID}.scope"),
        ];
        for p in &bad {
            assert_eq!(parse_kube_path(p), None, "{p}");
        }
    }

    /// Arbitrary strings never panic; known paths with junk spliced in
    /// either parse to the right pod or to nothing, never a wrong one.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: Vec<char> = "/:_-.abcdef0123456789podkubes\\ é\0".chars().collect();
        let base = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope");
        for _ in 0..20_000 {
            let n = (next() % 120) as usize;
            let s: String = (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse_kube_path(&s);
            let mut m: Vec<char> = base.chars().collect();
            let at = (next() % m.len() as u64) as usize;
            m[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            let m: String = m.into_iter().collect();
            if let Some(p) = parse_kube_path(&m) {
                // Whatever parses is what the path says, not a guess.
                assert_eq!(p.uid.len(), 36, "{m}");
                let cid = p.container_id.as_deref().unwrap();
                assert_eq!(cid.len(), 64, "{m}");
                let lower = m.to_ascii_lowercase();
                assert!(lower.replace('_', "-").contains(&p.uid), "{m}");
                assert!(lower.contains(cid), "{m}");
            }
            let _ = cgroup2_mount(&s);
        }
    }

    /// Generated paths of every known layout, with random uids (UUID or
    /// static-pod 32 hex, random case) and ids, under random parents and with
    /// random sub-cgroups below the container: each parses to exactly its
    /// uid and id.
    #[test]
    fn generated_known_layouts_parse_exactly() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let hex = |n: usize, next: &mut dyn FnMut() -> u64| -> String {
            (0..n)
                .map(|_| b"0123456789abcdefABCDEF"[(next() % 22) as usize] as char)
                .collect()
        };
        for i in 0..5_000 {
            let uid = if next() % 4 == 0 {
                hex(32, &mut next)
            } else {
                [8, 4, 4, 4, 12].map(|n| hex(n, &mut next)).join("-")
            };
            let cid = hex(64, &mut next);
            let own = next() % 5 == 0; // the pod's own cgroup
            let qos = ["burstable", "besteffort", ""][(next() % 3) as usize];
            let rt = ["cri-containerd", "crio", "docker"][(next() % 3) as usize];
            let u_ = uid.replace('-', "_");
            let path = match next() % 3 {
                0 => {
                    let q = if qos.is_empty() {
                        String::new()
                    } else {
                        format!("/{qos}")
                    };
                    let prefix = ["", "crio-", "docker-", "cri-containerd-"][(next() % 4) as usize];
                    let c = if own {
                        String::new()
                    } else {
                        format!("/{prefix}{cid}")
                    };
                    format!("/kubepods{q}/pod{uid}{c}")
                }
                1 => {
                    let (qs, pp) = if qos.is_empty() {
                        (String::new(), "kubepods-pod".to_string())
                    } else {
                        (
                            format!("/kubepods-{qos}.slice"),
                            format!("kubepods-{qos}-pod"),
                        )
                    };
                    let c = if own {
                        String::new()
                    } else {
                        format!("/{rt}-{cid}.scope")
                    };
                    format!("/kubepods.slice{qs}/{pp}{u_}.slice{c}")
                }
                _ => {
                    if own {
                        continue; // the colon form always names a container
                    }
                    let q = if qos.is_empty() {
                        String::new()
                    } else {
                        format!("{qos}-")
                    };
                    format!("/kubepods-{q}pod{u_}.slice:{rt}:{cid}")
                }
            };
            let parent = ["", "/system.slice/kubelet.service", "/a/b/c"][(next() % 3) as usize];
            let below = if own || next() % 2 == 0 {
                ""
            } else {
                "/init.scope"
            };
            let full = format!("{parent}{path}{below}");
            let p = parse_kube_path(&full).unwrap_or_else(|| panic!("case {i}: {full}"));
            assert_eq!(p.uid, uid.to_ascii_lowercase(), "{full}");
            let want = (!own).then(|| cid.to_ascii_lowercase());
            assert_eq!(p.container_id, want, "{full}");
            assert!(p.name.is_none() && p.namespace.is_none() && p.container.is_none());
        }
    }

    #[test]
    fn mountinfo_hybrid_and_pure() {
        let hybrid = "25 31 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        // A bind mount of a sub-cgroup is not the root; escapes are undone.
        let sub = "50 23 0:26 /kubepods /mnt/x rw - cgroup2 cgroup2 rw\n\
51 23 0:26 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(sub), Some(PathBuf::from("/mnt/with space")));
        assert_eq!(
            cgroup2_mount("42 31 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
        // Past \377 is no byte: taken as written (it overflowed before).
        assert_eq!(
            cgroup2_mount("51 23 0:26 / /mnt/x\\600\\377 rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/mnt/x\\600\u{FFFD}"))
        );
        assert_eq!(
            cgroup2_mount("\0 \0 \0 / \\600 - cgroup2"),
            Some("\\600".into())
        );
    }

    #[test]
    fn short_names() {
        let mut p = Pod::new(UID.into(), None);
        assert_eq!(p.short(), "0f5e5e8a");
        p.namespace = Some("default".into());
        p.name = Some("web-1".into());
        assert_eq!(p.short(), "default/web-1");
    }

    /// The running machine: our own cgroup resolves by id, through
    /// /proc/self/cgroup and through a walk alike; the walk is rate-limited.
    #[test]
    fn resolves_own_cgroup_on_this_machine() {
        let mut r = CgroupResolver::new();
        let Some(root) = r.root().map(Path::to_path_buf) else {
            panic!("no cgroup2 mount on this machine");
        };
        let own = proc_cgroup(std::process::id()).expect("0:: line");
        let id = fs::metadata(root.join(own.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(r.resolve(id, &[std::process::id()]), Some(own.clone()));
        assert_eq!(r.walks, 0, "found through /proc, no walk");
        let mut w = CgroupResolver::new();
        assert_eq!(w.resolve(id, &[]), Some(own.clone()));
        assert_eq!(w.walks, 1);
        let root_id = fs::metadata(&root).unwrap().ino();
        assert_eq!(
            w.resolve(root_id, &[]),
            Some("/".into()),
            "filled by the walk"
        );
        assert_eq!(w.resolve(u64::MAX, &[]), None);
        assert_eq!(w.walks, 1, "a second miss within the second does not walk");
    }
}
