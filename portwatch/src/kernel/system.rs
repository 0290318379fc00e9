//! What the host must give portwatch before anything loads: privileges,
//! locked-memory allowance (kernels before 5.11 charge BPF maps to it), and a
//! mounted tracefs (tracepoint attach reads event ids from it).

use std::path::Path;

use anyhow::{bail, Context as _, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_cap_eff(&status)
}

/// The effective capability set in the text of a /proc/PID/status.
pub(crate) fn parse_cap_eff(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(line.trim(), 16).context("parsing CapEff")
}

/// Fails with one clear sentence when portwatch cannot load BPF programs.
pub fn check_privileges() -> Result<()> {
    match bpf_missing(effective_caps()?) {
        None => Ok(()),
        Some(msg) => bail!("{msg}"),
    }
}

/// Why a process with effective capability set `caps` cannot load and
/// attach the programs (the kernel takes CAP_SYS_ADMIN in place of either
/// CAP_BPF or CAP_PERFMON), naming what is missing; None when it can.
fn bpf_missing(caps: u64) -> Option<String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    let lacking = match (has(CAP_BPF), has(CAP_PERFMON)) {
        (false, false) => "CAP_BPF and CAP_PERFMON",
        (false, true) => "CAP_BPF",
        _ => "CAP_PERFMON",
    };
    Some(format!(
        "portwatch must run as root or with CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load its eBPF programs, \
         and this process lacks {lacking}: try sudo portwatch ..., or grant the capability"
    ))
}

/// What `portwatch serve`, the node agent, needs beyond loading programs,
/// and why: the capabilities deploy/kubernetes/portwatch.yaml grants.
const AGENT_CAPS: &[(u32, &str, &str)] = &[
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "setns() into each pod's network namespace for the port scan and the check",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "opening other processes' /proc/PID/ns/net and /proc/PID/fd to find each pod's network namespace and who holds its ports",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "adding the clsact qdisc and tc program of the NodePort-steal watch over netlink, on kernels before 6.6",
    ),
];

/// Fails with one clear sentence when `serve` lacks a capability it needs:
/// in a container with too few, it would otherwise run half blind (no
/// per-pod port numbers) without saying so.
pub fn check_agent_privileges() -> Result<()> {
    // The list holds CAP_SYS_ADMIN, which also stands in for CAP_BPF and
    // CAP_PERFMON: with it, the programs load too.
    match agent_missing(effective_caps()?) {
        None => Ok(()),
        Some(msg) => bail!("{msg}"),
    }
}

fn agent_missing(caps: u64) -> Option<String> {
    let missing: Vec<String> = AGENT_CAPS
        .iter()
        .filter(|(c, _, _)| caps & (1u64 << c) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "serve lacks {}: run it as root or add the capability to the container's securityContext (see deploy/kubernetes/portwatch.yaml)",
        missing.join(" and ")
    ))
}

/// Lifts RLIMIT_MEMLOCK: before Linux 5.11 every BPF map is charged to it.
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// When `main` began, for [`startup_mark`].
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Logs (at debug, target `portwatch::startup`) that start-up reached
/// `phase`, with the time since `main` began and the resident set then:
/// `RUST_LOG=portwatch::startup=debug` shows where a slow start goes. The
/// first call (from `main`) starts the clock.
pub fn startup_mark(phase: impl std::fmt::Display) {
    let t0 = *STARTED.get_or_init(std::time::Instant::now);
    if log::log_enabled!(target: "portwatch::startup", log::Level::Debug) {
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or_else(
                || "?".into(),
                |p| format!("{:.1}", p as f64 * 4096.0 / 1048576.0),
            );
        log::debug!(
            target: "portwatch::startup",
            "{phase}: {:.1} ms, RSS {rss} MiB",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Hands memory the allocator holds but no longer uses back to the system,
/// after a large start-up buffer (the kernel BTF) is freed: otherwise it
/// stays in the process's resident set for as long as it runs.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe { libc::malloc_trim(0) };
}

const TRACEFS_MAGIC: i64 = 0x74726163;

fn is_tracefs(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: statfs is plain C data, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs, both
    // live for the call.
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
    // SAFETY: source, target and type are NUL-terminated strings live for
    // the call; no mount data is passed.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> u64 {
        list.iter().fold(0, |m, c| m | (1u64 << c))
    }

    #[test]
    fn bpf_check_names_what_is_missing() {
        assert!(bpf_missing(caps(&[CAP_SYS_ADMIN])).is_none());
        assert!(bpf_missing(caps(&[CAP_BPF, CAP_PERFMON])).is_none());
        let m = bpf_missing(caps(&[CAP_BPF])).unwrap();
        assert!(
            m.ends_with(
                "process lacks CAP_PERFMON: try sudo portwatch ..., or grant the capability"
            ),
            "{m}"
        );
        let m = bpf_missing(caps(&[CAP_PERFMON, CAP_NET_ADMIN])).unwrap();
        assert!(
            m.contains("must run as root") && m.contains("lacks CAP_BPF:"),
            "{m}"
        );
        let m = bpf_missing(0).unwrap();
        assert!(m.contains("lacks CAP_BPF and CAP_PERFMON:"), "{m}");
    }

    #[test]
    fn agent_check_names_each_missing_capability_in_one_sentence() {
        let all = caps(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN]);
        assert!(agent_missing(all).is_none());
        assert!(agent_missing(u64::MAX).is_none(), "root");
        for (c, name, _) in AGENT_CAPS {
            let m = agent_missing(all & !(1u64 << c)).unwrap();
            assert!(m.starts_with(&format!("serve lacks {name} (")), "{m}");
            assert_eq!(m.matches("lacks").count(), 1, "{m}");
            assert!(!m.contains('\n'), "one line: {m}");
        }
        let m = agent_missing(caps(&[CAP_NET_ADMIN])).unwrap();
        assert!(
            m.contains("CAP_SYS_ADMIN (") && m.contains(" and CAP_SYS_PTRACE ("),
            "{m}"
        );
    }
}
