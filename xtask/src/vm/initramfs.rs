//! The guest's initramfs and its `/init`.

use super::*;

/// A guest's root file system under construction: the base every guest
/// shares (busybox applets, dash as /bin/sh, Debian's `ip`, /etc), then
/// programs with the libraries `ldd` names, kernel modules in load order,
/// and `/init`, packed as a newc cpio.
pub(crate) struct GuestRoot {
    pub(crate) root: PathBuf,
    dynamic: Vec<PathBuf>,
}

impl GuestRoot {
    /// A fresh tree at `dir/root` with the base layout and `tools` (host
    /// programs copied at their own paths).
    pub(crate) fn new(dir: &Path, tools: &[&str]) -> Result<GuestRoot> {
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&root);
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "lib/modules",
            "pw",
            "etc",
            "var",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        std::os::unix::fs::symlink("/run", root.join("var/run"))?;
        put(&root, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        std::os::unix::fs::symlink("dash", root.join("bin/sh"))?;
        // Enough of /etc for programs that look users up.
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )?;
        fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        // Protocol names, for ipset's and iptables' `tcp`.
        fs::write(
            root.join("etc/protocols"),
            "ip 0 IP\nicmp 1 ICMP\ntcp 6 TCP\nudp 17 UDP\nipv6-icmp 58 IPv6-ICMP\nsctp 132 SCTP\n",
        )?;
        let mut g = GuestRoot {
            root,
            dynamic: vec![],
        };
        for src in tools {
            g.program(Path::new(src), Path::new(src), false)?;
        }
        Ok(g)
    }

    /// Copies a program to `at` (stripped of debug info when `strip`); its
    /// libraries come along when the tree is packed.
    pub(crate) fn program(&mut self, src: &Path, at: &Path, strip: bool) -> Result<()> {
        if strip {
            put_stripped(&self.root, src, at)?;
        } else {
            put(&self.root, src, at)?;
        }
        self.dynamic.push(src.to_path_buf());
        Ok(())
    }

    /// Stages `wanted` and their dependencies from the kernel package into
    /// /lib/modules; returns them in load order.
    pub(crate) fn modules(&self, kdir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
        modules_in_order(&module_index(kdir)?, &self.root.join("lib/modules"), wanted)
    }

    /// Adds the programs' libraries and `/init`, and packs the tree into
    /// `dir/initramfs.cpio`. `what` names the guest in the log line.
    pub(crate) fn pack(self, init: &str, dir: &Path, what: &str) -> Result<PathBuf> {
        let root = &self.root;
        for prog in &self.dynamic {
            for lib in libraries_of(prog)? {
                if !root.join(lib.strip_prefix("/").unwrap()).exists() {
                    put(root, &lib, &lib)?;
                }
            }
        }
        let init_path = root.join("init");
        fs::write(&init_path, init)?;
        fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;

        // newc cpio, uncompressed: the kernel unpacks it faster than it gunzips.
        let initrd = dir.join("initramfs.cpio");
        let list = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && find . -print0 | cpio --null --quiet -o -H newc -R 0:0 > '{}'",
                root.display(),
                initrd.display()
            ))
            .status()?;
        if !list.success() {
            bail!("building {} failed", initrd.display());
        }
        let mb = fs::metadata(&initrd)?.len() as f64 / (1 << 20) as f64;
        eprintln!("xtask: {what} initramfs {mb:.1} MiB");
        Ok(initrd)
    }
}

/// The vm-test guest: the test binaries, the tools they drive, the modules.
pub(crate) fn build_initramfs(
    k: &Kernel,
    kdir: &Path,
    payload: &Payload,
    dir: &Path,
    extra: &[String],
) -> Result<PathBuf> {
    let mut g = GuestRoot::new(dir, HOST_TOOLS)?;
    for (link, to) in TOOL_LINKS {
        std::os::unix::fs::symlink(to, g.root.join(link.trim_start_matches('/')))?;
    }
    for ext in XTABLES_EXTENSIONS {
        let p = Path::new(XTABLES_DIR).join(ext);
        g.program(&p, &p, false)?;
    }
    for f in &payload.fixed {
        g.program(f, f, true)?;
    }
    let mut test_names = vec![];
    for t in &payload.tests {
        // trace-0123abcd -> /pw/trace
        let stem = t.file_name().unwrap().to_string_lossy();
        let name = stem.rsplit_once('-').map_or(&*stem, |(n, _)| n).to_string();
        if HOST_ONLY.contains(&name.as_str()) {
            continue;
        }
        g.program(t, &Path::new("/pw").join(&name), true)?;
        test_names.push(name);
    }
    let index = module_index(kdir)?;
    let mut wanted = MODULES.to_vec();
    wanted.extend(
        MODULES_WHERE_SPLIT
            .iter()
            .filter(|m| index.contains_key(**m)),
    );
    let mods = g.modules(kdir, &wanted)?;
    eprintln!("xtask: {} modules: {}", k.name, mods.join(" "));
    let init = guest_init(k, &mods, &test_names, &payload.fixed[0], extra);
    g.pack(&init, dir, k.name)
}

/// The guest's PID 1: mounts, modules, then every test binary once per
/// backend, then the automatic choice, each framed by marker lines.
pub(crate) fn guest_init(
    k: &Kernel,
    mods: &[String],
    tests: &[String],
    portwatch: &Path,
    extra: &[String],
) -> String {
    let skips: String = SKIP.iter().map(|s| format!(" --skip {s}")).collect();
    let extra = extra.join(" ");
    let mut s = String::new();
    s += "#!/bin/sh\n";
    s += "export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root RUST_BACKTRACE=1\n";
    s += "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n";
    // No tmpfs over /tmp: the initramfs (already in RAM) may carry the
    // test binaries there, at the paths they were built for (a checkout
    // under /tmp, as CI's clean clone is).
    s += "chmod 1777 /tmp; mount -t tmpfs run /run; mkdir -p /run/netns /root\n";
    s += "mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf\n";
    for m in mods {
        s += &format!("insmod /lib/modules/{m}.ko || echo PWVM-FAIL module {m}\n");
    }
    s += "/sbin/ip link set lo up\n";
    s += &format!("echo PWVM-KERNEL {} $(uname -r)\n", k.name);
    s += "echo PWVM-BTF $(ls /sys/kernel/btf | tr '\\n' ' ' 2>/dev/null)\n";
    for t in tests {
        if PER_BACKEND.contains(&t.as_str()) {
            for b in BACKENDS {
                s += &format!("echo PWVM-BEGIN {t} {b}\n");
                s += &format!(
                    "PORTWATCH_TEST_BACKEND={b} /pw/{t} --test-threads=1{skips} {extra} 2>&1\n"
                );
                s += &format!("echo PWVM-END {t} {b} rc=$?\n");
            }
        } else {
            s += &format!("echo PWVM-BEGIN {t} any\n");
            s += &format!("/pw/{t} --test-threads=1 --show-output{skips} {extra} 2>&1\n");
            s += &format!("echo PWVM-END {t} any rc=$?\n");
        }
    }
    // The automatic choice on a kernel that offers everything is fexit.
    s += "echo PWVM-BEGIN trace auto\n";
    s += &format!("PORTWATCH_TEST_EXPECT_AUTO={AUTO_PICKS} /pw/trace --test-threads=1 --exact startup_names_the_backend_of_each_hook 2>&1\n");
    s += "echo PWVM-END trace auto rc=$?\n";
    // What portwatch itself says at start-up on this kernel, for the
    // matrix: the backend each hook got and why, the sysctl watch, the
    // IPVS path (ip_vs is loaded in this netns).
    for (what, args) in [
        ("trace", "trace --json"),
        ("nodeport", "nodeport-steal --json"),
    ] {
        s += &format!(
            "{pw} {args} >/dev/null 2>/tmp/pw-{what}.err & pid=$!\n\
             for i in $(seq 60); do grep -q attached /tmp/pw-{what}.err && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done\n\
             kill -INT $pid; wait $pid\n\
             while IFS= read -r l; do echo \"PWVM-INFO {what} $l\"; done < /tmp/pw-{what}.err\n",
            pw = portwatch.display()
        );
    }
    s += "echo PWVM-DONE\n";
    s += "poweroff -f\n";
    s
}
