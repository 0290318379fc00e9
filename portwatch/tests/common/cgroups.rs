//! cgroup v2 directories with the names kubelet and the runtimes give
//! pods, made by a test under a private parent of the cgroup2 mount
//! (`/portwatch-test-PID-N/`), so that a real `/kubepods` another test or a
//! runtime uses is never touched; the pod parser finds `kubepods` below any
//! parent, as on nested nodes.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use super::{cgroup2_root, require_root};

static CG_SEQ: AtomicU32 = AtomicU32::new(0);

/// The directories one test made, removed (deepest first) on drop, after
/// the processes in them have exited.
pub struct Cgroups {
    pub root: PathBuf,
    /// The private parent, relative to the cgroup2 root ("/portwatch-test-…").
    pub base: String,
    made: Vec<PathBuf>,
}

impl Cgroups {
    pub fn new() -> Cgroups {
        require_root();
        let base = format!(
            "/portwatch-test-{}-{}",
            std::process::id(),
            CG_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut c = Cgroups {
            root: cgroup2_root(),
            base,
            made: vec![],
        };
        let b = c.base.clone();
        c.mkdir(&b);
        c
    }

    /// Makes `rel` (below the private parent) and each missing parent;
    /// returns its path from the cgroup2 root.
    pub fn make(&mut self, rel: &str) -> String {
        let mut path = self.base.clone();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            path = format!("{path}/{comp}");
            self.mkdir(&path);
        }
        path
    }

    fn mkdir(&mut self, path: &str) {
        let dir = self.root.join(path.trim_start_matches('/'));
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            self.made.push(dir);
        }
    }

    /// Moves `pid` into cgroup `path` and returns the cgroup's id (inode).
    pub fn enter(&self, path: &str, pid: u32) -> u64 {
        let dir = self.root.join(path.trim_start_matches('/'));
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", dir.display()));
        let now = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(now.lines().any(|l| l == format!("0::{path}")), "{now}");
        fs::metadata(&dir).unwrap().ino()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.made.iter().rev() {
            if let Err(e) = fs::remove_dir(d) {
                eprintln!("rmdir {}: {e}", d.display());
            }
        }
    }
}
