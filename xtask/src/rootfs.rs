//! Filling a root file system (a guest's initramfs, the image): files at
//! their paths, with the shared libraries `ldd` names.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::run;

/// Copies `src` to `root` + `at` (an initramfs or image root), following
/// symlinks: the tree has no /lib -> /usr/lib links of its own.
pub(crate) fn put(root: &Path, src: &Path, at: &Path) -> Result<()> {
    let dst = root.join(at.strip_prefix("/").unwrap_or(at));
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// A copy without debug info: the guest boots from RAM.
pub(crate) fn put_stripped(root: &Path, src: &Path, at: &Path) -> Result<()> {
    put(root, src, at)?;
    let dst = root.join(at.strip_prefix("/").unwrap_or(at));
    run(Command::new("strip").arg("--strip-debug").arg(&dst))
}

/// The shared libraries (and the loader) a dynamically linked program needs.
pub(crate) fn libraries_of(prog: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") {
        return Ok(vec![]);
    }
    let mut libs = vec![];
    for l in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match l.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}
