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
    sync::{Arc, Mutex, OnceLock},
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

/// A cgroup path as this process's cgroup namespace shows it (the `0::`
/// line of /proc/PID/cgroup, the root field of a cgroup2 mount in
/// mountinfo): `ups` levels above the namespace's root (the leading `..`s),
/// then down `comps`. In the host's namespace `ups` is always 0 and the path
/// is the hierarchy's own; in a private one (a container's) the kernel
/// writes a cgroup outside the namespace as `/../../kubepods/...`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NsPath {
    pub ups: usize,
    pub comps: Vec<String>,
}

impl NsPath {
    /// Normalised: empty and `.` components dropped, `..` cancels the
    /// component before it or, with none left, climbs above the root.
    /// None unless absolute.
    pub fn parse(s: &str) -> Option<NsPath> {
        let mut p = NsPath::default();
        for c in s.strip_prefix('/')?.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if p.comps.pop().is_none() {
                        p.ups += 1;
                    }
                }
                c => p.comps.push(c.to_string()),
            }
        }
        Some(p)
    }

    /// The namespace's root itself, or one of its ancestors.
    fn is_above_root(&self) -> bool {
        self.comps.is_empty()
    }
}

/// A cgroup2 mount: where it is, and which cgroup is its root (as this
/// process's cgroup namespace writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub point: PathBuf,
    pub root: NsPath,
}

/// Every cgroup2 mount in a mountinfo text, in order (escapes undone).
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = pre.split_whitespace().collect();
            Some(Cgroup2Mount {
                root: NsPath::parse(&unescape(f.get(3)?))?,
                point: PathBuf::from(unescape(f.get(4)?)),
            })
        })
        .collect()
}

/// The cgroup2 mount that shows the most of the hierarchy: of the mounts
/// whose root is this namespace's root or above it, the highest (most
/// `..`s in its root field); the first of equals wins. In the host's
/// namespace that is the first mount of the hierarchy's root (root `/`), as
/// always; in a private namespace, the host's tree bind-mounted in (root
/// `/../..`) rather than the namespace's own (root `/`). A mount of a
/// sub-cgroup (root `/kubepods`) shows only part of the tree: never chosen.
pub fn choose_cgroup2(mountinfo: &str) -> Option<Cgroup2Mount> {
    let mut best: Option<Cgroup2Mount> = None;
    for m in cgroup2_mounts(mountinfo) {
        if m.root.is_above_root() && best.as_ref().is_none_or(|b| m.root.ups > b.root.ups) {
            best = Some(m);
        }
    }
    best
}

/// The chosen cgroup2 mount's mount point (see `choose_cgroup2`).
#[cfg(test)]
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    choose_cgroup2(mountinfo).map(|m| m.point)
}

/// Where this process sees the cgroup2 hierarchy's root, or in a private
/// cgroup namespace the highest part of it mounted (None: no cgroup2
/// mount).
pub fn cgroup2_root() -> Option<PathBuf> {
    view().map(|v| v.point().to_path_buf())
}

/// How many directories the search for the namespace's root may visit.
const SEARCH_MAX: usize = 1 << 16;

/// The cgroup2 mount this process uses, and how the paths its cgroup
/// namespace shows map onto it. Every path portwatch reports is relative to
/// the mount's root: the hierarchy's own path when the mount is the
/// hierarchy's root (the host's namespace, or the host's tree mounted into
/// a container), whatever namespace /proc shows it in.
#[derive(Debug)]
pub struct Cgroup2View {
    mount: Cgroup2Mount,
    /// The namespace root's path below the mount's root (`mount.root.ups`
    /// names), once found; when last looked for.
    ns_root: Mutex<(Option<Vec<String>>, Option<Instant>)>,
}

impl Cgroup2View {
    pub fn new(mount: Cgroup2Mount) -> Cgroup2View {
        let known = (mount.root.ups == 0).then(Vec::new);
        Cgroup2View {
            mount,
            ns_root: Mutex::new((known, None)),
        }
    }

    /// With the namespace root's names known already (tests, fuzzing).
    #[cfg(test)]
    pub(crate) fn with_ns_root(mount: Cgroup2Mount, names: Vec<String>) -> Cgroup2View {
        assert_eq!(names.len(), mount.root.ups);
        Cgroup2View {
            mount,
            ns_root: Mutex::new((Some(names), None)),
        }
    }

    pub fn point(&self) -> &Path {
        &self.mount.point
    }

    pub fn mount(&self) -> &Cgroup2Mount {
        &self.mount
    }

    /// The path below the mount's root ("/" for the root, "/a/b" below it)
    /// of a cgroup path as this namespace shows it (`0::` of
    /// /proc/PID/cgroup); None when the mount does not show that cgroup.
    /// The host's namespace, mount root `/`: the path itself.
    pub fn translate(&self, ns_path: &str) -> Option<String> {
        let p = NsPath::parse(ns_path)?;
        let m = &self.mount.root;
        let comps: Vec<String> = if p.ups == m.ups {
            p.comps.strip_prefix(m.comps.as_slice())?.to_vec()
        } else if p.ups < m.ups && m.comps.is_empty() {
            // Below an ancestor of the namespace's root the mount shows:
            // its names come first.
            let names = self.ns_root()?;
            let mut c = names.get(..m.ups - p.ups)?.to_vec();
            c.extend(p.comps);
            c
        } else {
            return None;
        };
        Some(format!("/{}", comps.join("/")))
    }

    /// The namespace root's path below the mount's root: found once, by
    /// finding this process's own cgroup among the directories that deep
    /// (retried at most once a second while not found).
    fn ns_root(&self) -> Option<Vec<String>> {
        let mut g = self.ns_root.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.is_none() && g.1.is_none_or(|t| t.elapsed() >= WALK_EVERY) {
            g.1 = Some(Instant::now());
            let pid = std::process::id();
            g.0 = proc_cgroup(pid)
                .and_then(|own| NsPath::parse(&own))
                .filter(|own| own.ups == 0)
                .and_then(|own| {
                    find_ns_root(&self.mount.point, self.mount.root.ups, &own.comps, pid)
                });
        }
        g.0.clone()
    }
}

/// The directory `depth` levels below `point` under which this process's
/// cgroup (`own`, from its namespace's root) holds `pid`: the names down to
/// it. A breadth-first look at most `SEARCH_MAX` directories deep.
pub fn find_ns_root(point: &Path, depth: usize, own: &[String], pid: u32) -> Option<Vec<String>> {
    let mut level: Vec<(PathBuf, Vec<String>)> = vec![(point.to_path_buf(), vec![])];
    let mut seen = 0usize;
    for _ in 0..depth {
        let mut next = vec![];
        for (dir, names) in &level {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                seen += 1;
                if seen > SEARCH_MAX {
                    return None;
                }
                let mut n = names.clone();
                n.push(e.file_name().to_string_lossy().into_owned());
                next.push((e.path(), n));
            }
        }
        level = next;
    }
    let want = pid.to_string();
    level.into_iter().find_map(|(dir, names)| {
        let procs =
            fs::read_to_string(own.iter().fold(dir, |d, c| d.join(c)).join("cgroup.procs")).ok()?;
        procs.lines().any(|l| l == want).then_some(names)
    })
}

/// This process's cgroup2 view, from /proc/self/mountinfo once (None: no
/// cgroup2 mount).
pub fn view() -> Option<Arc<Cgroup2View>> {
    static VIEW: OnceLock<Option<Arc<Cgroup2View>>> = OnceLock::new();
    VIEW.get_or_init(|| {
        fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| choose_cgroup2(&m))
            .map(|m| Arc::new(Cgroup2View::new(m)))
    })
    .clone()
}

/// Whether this process's cgroup namespace is not PID 1's (with the node's
/// PID namespace, the host's): None when that cannot be read.
pub fn private_cgroupns() -> Option<bool> {
    let own = fs::read_link("/proc/self/ns/cgroup").ok()?;
    let init = fs::read_link("/proc/1/ns/cgroup").ok()?;
    Some(own != init)
}

/// At most this many id -> path entries are kept.
const CACHE_MAX: usize = 16_384;
/// A walk of the hierarchy on a miss runs at most this often.
const WALK_EVERY: Duration = Duration::from_secs(1);

/// cgroup v2 id -> path, cached; a miss tries the event's /proc/PID/cgroup
/// (checked against the id) and then, at most once a second, a walk of the
/// hierarchy.
pub struct CgroupResolver {
    view: Option<Arc<Cgroup2View>>,
    cache: HashMap<u64, String>,
    last_walk: Option<Instant>,
    pub walks: u64,
}

impl CgroupResolver {
    /// The cgroup2 mount from /proc/self/mountinfo (None: no cgroup2 here).
    pub fn new() -> CgroupResolver {
        CgroupResolver::with_view(view())
    }

    pub fn with_view(view: Option<Arc<Cgroup2View>>) -> CgroupResolver {
        CgroupResolver {
            view,
            cache: HashMap::new(),
            last_walk: None,
            walks: 0,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.view.as_deref().map(Cgroup2View::point)
    }

    pub fn view(&self) -> Option<&Cgroup2View> {
        self.view.as_deref()
    }

    /// Where paths come from, for start-up's note: the mount, and in a
    /// private cgroup namespace how it sits (or why pods outside it cannot
    /// be seen).
    pub fn describe(&self) -> Option<String> {
        let v = self.view()?;
        let m = v.mount();
        let at = m.point.display();
        Some(if m.root.ups > 0 {
            format!(
                "{at} (this process's cgroup namespace is private; that mount's root is {} from here, so paths are translated to it and reported from its root)",
                std::iter::repeat_n("/..", m.root.ups).collect::<String>()
            )
        } else if private_cgroupns() == Some(true) {
            format!(
                "{at}, WARNING: this process's cgroup namespace is private and that mount shows only its own subtree: pods outside it stay unresolved (mount the node's cgroup2 tree, e.g. hostPath /sys/fs/cgroup, read-only)"
            )
        } else {
            at.to_string()
        })
    }

    fn insert(&mut self, id: u64, path: String) {
        if self.cache.len() >= CACHE_MAX && !self.cache.contains_key(&id) {
            self.cache.clear();
        }
        self.cache.insert(id, path);
    }

    /// The path of cgroup `id` below the mount's root ("/" for the root,
    /// "/a/b" below it), or None. `pids` are tried first through
    /// /proc/PID/cgroup (translated from this namespace's view to the
    /// mount's); the walk of the mounted tree finds the rest.
    pub fn resolve(&mut self, id: u64, pids: &[u32]) -> Option<String> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        let view = self.view.clone()?;
        let root = view.point().to_path_buf();
        for pid in pids {
            if let Some(p) = proc_cgroup(*pid).and_then(|p| view.translate(&p)) {
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

/// The pod process `pid` belongs to, from its cgroup path (names null):
/// the path below the cgroup2 mount's root, or as /proc shows it when that
/// mount does not show it.
pub fn of_pid(pid: u32) -> Option<Pod> {
    let raw = proc_cgroup(pid)?;
    let path = view().and_then(|v| v.translate(&raw)).unwrap_or(raw);
    parse_kube_path(&path)
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

    /// mountinfo as a process in a private cgroup namespace reads it: as
    /// read here after `unshare -C` from /pwexp/a/agent (hybrid host), and
    /// as a container with a private cgroupns whose own cgroup2 mount has
    /// the host's tree bind-mounted over it shows it (pure v2).
    const PRIVATE_HYBRID: &str =
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
35 31 0:32 /../.. /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
41 31 0:38 /../../.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    const PRIVATE_PODMAN: &str =
        "700 690 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n\
712 700 0:26 /../.. /sys/fs/cgroup ro,relatime master:4 - cgroup2 cgroup2 rw,nsdelegate\n\
713 690 0:26 /../../kubepods /host/kubepods ro - cgroup2 cgroup2 rw\n";

    fn mount(point: &str, root: &str) -> Cgroup2Mount {
        Cgroup2Mount {
            point: point.into(),
            root: NsPath::parse(root).unwrap(),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ns_paths_normalise_dots_and_count_escapes() {
        let p = |ups, c: &[&str]| {
            Some(NsPath {
                ups,
                comps: names(c),
            })
        };
        assert_eq!(NsPath::parse("/"), p(0, &[]));
        assert_eq!(
            NsPath::parse("/kubepods/pod1/c"),
            p(0, &["kubepods", "pod1", "c"])
        );
        assert_eq!(
            NsPath::parse("/../../kubepods/burstable"),
            p(2, &["kubepods", "burstable"])
        );
        assert_eq!(NsPath::parse("/.."), p(1, &[]));
        assert_eq!(NsPath::parse("/a/../../b"), p(1, &["b"]));
        assert_eq!(NsPath::parse("/a/./b//c/.."), p(0, &["a", "b"]));
        assert_eq!(NsPath::parse("/a/b/../../.."), p(1, &[]));
        // A name that only looks like dots is a name.
        assert_eq!(NsPath::parse("/.../..x"), p(0, &["...", "..x"]));
        assert_eq!(NsPath::parse(""), None);
        assert_eq!(NsPath::parse("../a"), None);
    }

    #[test]
    fn mountinfo_private_namespace_picks_the_highest_mount() {
        assert_eq!(
            choose_cgroup2(PRIVATE_HYBRID),
            Some(mount("/sys/fs/cgroup/unified", "/../../.."))
        );
        // The host's tree over the container's own: the one that shows it all.
        assert_eq!(
            choose_cgroup2(PRIVATE_PODMAN),
            Some(mount("/sys/fs/cgroup", "/../.."))
        );
        assert_eq!(cgroup2_mounts(PRIVATE_PODMAN).len(), 3);
        // Only the namespace's own tree: that one (it shows our subtree).
        let own = "700 690 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(choose_cgroup2(own), Some(mount("/sys/fs/cgroup", "/")));
        // First of equals; a sub-cgroup's mount (root below an escape) never.
        let two = "1 0 0:26 /.. /a rw - cgroup2 cgroup2 rw\n\
2 0 0:26 /../x /b rw - cgroup2 cgroup2 rw\n\
3 0 0:26 /.. /c rw - cgroup2 cgroup2 rw\n";
        assert_eq!(choose_cgroup2(two), Some(mount("/a", "/..")));
        assert_eq!(
            cgroup2_mount("2 0 0:26 /../x /b rw - cgroup2 cgroup2 rw\n"),
            None
        );
        // Escapes in the root field and the mount point are undone.
        let esc = "9 0 0:26 /../my\\040dir/.. /mnt/c\\040g rw - cgroup2 cgroup2 rw\n";
        assert_eq!(choose_cgroup2(esc), Some(mount("/mnt/c g", "/..")));
        // A root that is not a path is not a mount we can use.
        assert_eq!(
            choose_cgroup2("9 0 0:26 x /mnt rw - cgroup2 cgroup2 rw\n"),
            None
        );
    }

    #[test]
    fn host_paths_translate_to_themselves() {
        let v = Cgroup2View::new(mount("/sys/fs/cgroup", "/"));
        for p in [
            "/",
            "/kubepods/burstable/pod1/c",
            "/system.slice/containerd.service",
        ] {
            assert_eq!(v.translate(p).as_deref(), Some(p));
        }
        // Nothing is above the host's root.
        assert_eq!(v.translate("/../x"), None);
        assert_eq!(v.translate("x"), None);
    }

    #[test]
    fn private_namespace_paths_translate_to_the_mounts_root() {
        let kube = format!("/kubepods/burstable/pod{UID}/{CID}");
        // The agent at /kubepods/besteffort/podA/ctr (4 levels down), the
        // host's tree mounted (root /../../../..).
        let v = Cgroup2View::with_ns_root(
            mount("/sys/fs/cgroup", "/../../../.."),
            names(&["kubepods", "besteffort", "podA", "ctr"]),
        );
        // Another QoS class: the escape reaches the hierarchy's root.
        assert_eq!(
            v.translate(&format!("/../../../..{kube}")).as_deref(),
            Some(kube.as_str())
        );
        assert_eq!(
            v.translate(&format!("/../../..{}", &kube["/kubepods".len()..]))
                .as_deref(),
            Some(kube.as_str())
        );
        // Another pod of the same QoS class, and the agent's own pod.
        assert_eq!(
            v.translate(&format!("/../../pod{UID}/{CID}")).as_deref(),
            Some(format!("/kubepods/besteffort/pod{UID}/{CID}").as_str())
        );
        assert_eq!(
            v.translate("/../other").as_deref(),
            Some("/kubepods/besteffort/podA/other")
        );
        // The agent itself, and below it.
        assert_eq!(
            v.translate("/").as_deref(),
            Some("/kubepods/besteffort/podA/ctr")
        );
        assert_eq!(
            v.translate("/sub").as_deref(),
            Some("/kubepods/besteffort/podA/ctr/sub")
        );
        assert_eq!(v.translate("/../../../../").as_deref(), Some("/"));
        // Above the mount: not shown.
        assert_eq!(v.translate("/../../../../.."), None);
        // What the parser then makes of it: the pod, as on the host.
        let t = v.translate(&format!("/../../../..{kube}")).unwrap();
        assert_eq!(parse_kube_path(&t), pod(Some(CID)));

        // A mount of the namespace's own tree only (root /): paths outside
        // it are not shown.
        let own = Cgroup2View::new(mount("/sys/fs/cgroup", "/"));
        assert_eq!(own.translate(&format!("/../..{kube}")), None);
        assert_eq!(own.translate("/sub").as_deref(), Some("/sub"));

        // A mount of a sub-cgroup (root /../x): only what is below it.
        let sub = Cgroup2View::new(mount("/host/kubepods", "/../../kubepods"));
        assert_eq!(
            sub.translate(&format!("/../..{kube}")).as_deref(),
            Some(&kube["/kubepods".len()..])
        );
        assert_eq!(sub.translate("/../../system.slice"), None);
        assert_eq!(sub.translate("/x"), None);
    }

    /// The namespace's root found by where our own pid is, in a tree laid
    /// out as the cgroup2 mount is (directories holding `cgroup.procs`).
    #[test]
    fn namespace_root_found_by_own_pid() {
        let t = std::env::temp_dir().join(format!("pw-nsroot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        for d in [
            "kubepods/besteffort/podA/ctr/sub",
            "kubepods/besteffort/podB/ctr",
            "system.slice/x/y/z",
        ] {
            fs::create_dir_all(t.join(d)).unwrap();
        }
        fs::write(
            t.join("kubepods/besteffort/podB/ctr/cgroup.procs"),
            "1\n99\n",
        )
        .unwrap();
        fs::write(
            t.join("kubepods/besteffort/podA/ctr/sub/cgroup.procs"),
            "7\n42\n",
        )
        .unwrap();
        let own = names(&["sub"]);
        assert_eq!(
            find_ns_root(&t, 4, &own, 42),
            Some(names(&["kubepods", "besteffort", "podA", "ctr"]))
        );
        assert_eq!(find_ns_root(&t, 4, &own, 4), None, "4 is not 42");
        assert_eq!(
            find_ns_root(&t, 4, &[], 99),
            Some(names(&["kubepods", "besteffort", "podB", "ctr"]))
        );
        assert_eq!(find_ns_root(&t, 3, &[], 99), None);
        fs::remove_dir_all(&t).unwrap();
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
