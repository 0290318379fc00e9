//! What the host must give portwatch before anything loads: privileges,
//! locked-memory allowance (kernels before 5.11 charge BPF maps to it), and a
//! mounted tracefs (tracepoint attach reads event ids from it).

use std::path::Path;

use anyhow::{bail, Context as _, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(line.trim(), 16).context("parsing CapEff")
}

/// Fails with one clear sentence when portwatch cannot load BPF programs.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps()?;
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "portwatch must run as root (or with CAP_BPF and CAP_PERFMON) to load its eBPF programs; \
         try: sudo portwatch ..."
    )
}

/// Lifts RLIMIT_MEMLOCK: before Linux 5.11 every BPF map is charged to it.
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

const TRACEFS_MAGIC: i64 = 0x74726163;

fn is_tracefs(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == TRACEFS_MAGIC }
}

/// Makes sure tracefs is mounted; mounts it at /sys/kernel/tracing when it
/// is not. Returns a sentence to print when it had to mount it.
pub fn ensure_tracefs() -> Result<Option<String>> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if is_tracefs(p) {
            return Ok(None);
        }
    }
    let target = "/sys/kernel/tracing";
    if !Path::new(target).is_dir() {
        bail!(
            "tracefs is not mounted and {target} does not exist (kernel without CONFIG_TRACING?)"
        );
    }
    let src = c"tracefs";
    let tgt = std::ffi::CString::new(target).unwrap();
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {target} failed: {e}");
    }
    Ok(Some(format!(
        "tracefs was not mounted; mounted it at {target}"
    )))
}
