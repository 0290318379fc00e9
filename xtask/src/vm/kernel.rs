//! The pinned Debian kernel packages: fetched once into the cache, unpacked,
//! and their modules staged in dependency order.

use super::*;

pub(crate) fn deb_path(k: &Kernel) -> Result<Option<PathBuf>> {
    let dir = vm_cache().join("debs");
    fs::create_dir_all(&dir)?;
    for e in fs::read_dir(&dir)? {
        let p = e?.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{}_", k.package)) && name.ends_with(".deb") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The kernel package, downloaded once into the cache and unpacked there.
pub(crate) fn unpack_kernel(k: &Kernel) -> Result<PathBuf> {
    let dest = vm_cache().join("kernels").join(k.package);
    if dest.join(".unpacked").exists() {
        return Ok(dest);
    }
    let deb = match deb_path(k)? {
        Some(p) => p,
        None => {
            let dir = vm_cache().join("debs");
            let apt = AptConfig::for_kernel(k)?;
            let st = apt
                .command("apt-get")
                .args(["download", k.package])
                .current_dir(&dir)
                .status()
                .context("running apt-get download")?;
            if !st.success() {
                let avail =
                    output(
                        apt.command("apt-cache")
                            .args(["search", "--names-only", k.served]),
                    )
                    .unwrap_or_default();
                bail!(
                    "the pinned kernel {} is not served any more; pin one of these in xtask/src/vm/mod.rs (KERNELS):\n{avail}",
                    k.package
                );
            }
            deb_path(k)?.context("apt-get download left no .deb")?
        }
    };
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))?;
    fs::write(dest.join(".unpacked"), "")?;
    Ok(dest)
}

/// The apt options a kernel's package is fetched with: none for the
/// machine's own sources; for [`Archive::Private`], a sources file, lists
/// and cache of its own under the VM cache, refreshed each time a package
/// is fetched (only when it is not cached yet: about 2 s; `apt-get update`
/// with those options touches nothing of the machine's apt).
struct AptConfig {
    opts: Vec<String>,
}

impl AptConfig {
    fn for_kernel(k: &Kernel) -> Result<AptConfig> {
        let lines = match k.archive {
            Archive::Machine => return Ok(AptConfig { opts: vec![] }),
            Archive::Private(lines) => lines,
        };
        let base = vm_cache().join("apt").join(k.name);
        for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(base.join(d))?;
        }
        let list = base.join("sources.list");
        fs::write(&list, lines.join("\n") + "\n")?;
        let opts = vec![
            format!("-oDir::Etc::sourcelist={}", list.display()),
            format!(
                "-oDir::Etc::sourceparts={}",
                base.join("sources.list.d").display()
            ),
            format!("-oDir::State::Lists={}", base.join("lists").display()),
            format!("-oDir::Cache={}", base.join("cache").display()),
        ];
        let apt = AptConfig { opts };
        run(apt.command("apt-get").arg("update"))
            .with_context(|| format!("apt-get update for {}'s archive", k.name))?;
        Ok(apt)
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.args(&self.opts);
        c
    }
}

pub(crate) fn find_vmlinuz(kdir: &Path) -> Result<PathBuf> {
    for e in fs::read_dir(kdir.join("boot"))? {
        let p = e?.path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("vmlinuz-")
        {
            return Ok(p);
        }
    }
    bail!("no vmlinuz in {}", kdir.join("boot").display())
}

/// Every `.ko` / `.ko.xz` of the kernel, by module name (`-` and `_` alike).
pub(crate) fn module_index(kdir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut idx = BTreeMap::new();
    let mut stack = vec![kdir.join("lib/modules")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(m) = name
                .strip_suffix(".ko.xz")
                .or_else(|| name.strip_suffix(".ko"))
            {
                idx.insert(m.replace('-', "_"), p);
            }
        }
    }
    Ok(idx)
}

/// Decompresses (if needed) one module into `dir`, returns its path there.
pub(crate) fn stage_module(src: &Path, name: &str, dir: &Path) -> Result<PathBuf> {
    let dst = dir.join(format!("{name}.ko"));
    if src.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .args(["-dc"])
            .arg(src)
            .output()
            .context("running xz")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", src.display());
        }
        fs::write(&dst, out.stdout)?;
    } else {
        fs::copy(src, &dst)?;
    }
    Ok(dst)
}

/// Modules in load order: dependencies first.
pub(crate) fn modules_in_order(
    idx: &BTreeMap<String, PathBuf>,
    dir: &Path,
    wanted: &[&str],
) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        idx: &BTreeMap<String, PathBuf>,
        dir: &Path,
        done: &mut Vec<String>,
    ) -> Result<()> {
        let m = m.replace('-', "_");
        if done.contains(&m) {
            return Ok(());
        }
        let src = idx
            .get(&m)
            .with_context(|| format!("module {m} is not in the kernel package"))?;
        let staged = stage_module(src, &m, dir)?;
        let deps = output(Command::new("modinfo").args(["-F", "depends"]).arg(&staged))
            .with_context(|| format!("modinfo {}", staged.display()))?;
        for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
            visit(d, idx, dir, done)?;
        }
        done.push(m);
        Ok(())
    }
    let mut done = vec![];
    for m in wanted {
        visit(m, idx, dir, &mut done)?;
    }
    Ok(done)
}
