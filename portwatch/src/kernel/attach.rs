//! Stage 1 of `trace`: the `failures` object loaded (`load`) and each hook
//! attached with the best backend the running kernel offers (fexit ->
//! kprobe -> tracepoint), or the one `--backend` forces; and the
//! sysctl-write watch. nodeport-steal's programs: `steal`.

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{
        kprobe::KProbeLinkId, trace_point::TracePointLinkId, CgroupAttachMode, CgroupSysctl,
        KProbe, TracePoint,
    },
    Ebpf,
};

use portwatch_common::{globals, maps, progs, OFF_REGS};

use crate::kernel::{
    btf::Btf,
    load::{errno_of, func_ids, load_object, program, FAILURES_OBJECT},
    modfexit::{self, ModuleFexit},
    offsets,
    probe::Probe,
    system,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Bind,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Bind => "bind",
        }
    }
}

/// What one hook got, for the start-up report.
#[derive(Debug, Clone)]
pub struct HookReport {
    pub hook: Hook,
    pub probe: Probe,
    /// Where it attached, e.g. "inet_hash_connect, inet6_hash_connect".
    pub target: String,
    /// Why better backends were passed over.
    pub skipped: Vec<(Probe, String)>,
}

#[derive(Clone)]
pub struct Options {
    /// `None`: automatic choice.
    pub backend: Option<Probe>,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// The root of the cgroup2 hierarchy, where the sysctl-write watch
    /// attaches (None: no cgroup2 mount, no watch).
    pub cgroup2: Option<std::path::PathBuf>,
    /// `serve --guard-port-range`: the watch that may refuse writes of the
    /// node's port range and reserved ports (filled by `set_sysctl_guard`).
    pub guard_port_range: bool,
}

pub struct Attached {
    pub ebpf: Ebpf,
    /// The fexit attachments (loaded outside aya): they last as long as
    /// this is kept.
    pub fexits: Vec<ModuleFexit>,
    pub hooks: Vec<HookReport>,
    /// The sysctl-write watch: where it attached, or why it did not (the
    /// failure hooks work without it).
    pub sysctl: Result<String, String>,
    /// Things the operator should know (tracefs mounted, offsets missing).
    pub notes: Vec<String>,
}

/// What attaching a hook needs from the kernel BTF, taken out of it before
/// the object is loaded (so that the BTF, 5 MB, is gone by the time the
/// ring buffer is mapped): the functions each backend probes and the
/// small BTF fexit loads with, or why there are none.
struct HookPlan {
    targets: Result<Targets, String>,
    /// The functions' vmlinux BTF ids, for fexit.
    fexit: Result<Vec<(u32, &'static str)>, String>,
}

impl HookPlan {
    fn new(btf: &Btf, hook: Hook) -> HookPlan {
        let targets = targets(btf, hook).map_err(|e| format!("{e:#}"));
        let fexit = match &targets {
            Ok(t) => {
                let funcs: Vec<&'static str> = t.fns.iter().map(|(f, _, _)| *f).collect();
                func_ids(btf, &funcs).map_err(|e| format!("{e:#}"))
            }
            Err(e) => Err(e.clone()),
        };
        HookPlan { targets, fexit }
    }

    fn targets(&self) -> Result<&Targets> {
        self.targets.as_ref().map_err(|e| anyhow!("{e}"))
    }
}

/// The loaded object before any hook is attached, with what attaching needs.
struct Loaded {
    ebpf: Ebpf,
    plans: [(Hook, HookPlan); 2],
    /// The syscall exit program can read the call's arguments from the
    /// saved registers (as far as the BTF says; the kernel has the last word).
    exit_regs: bool,
    notes: Vec<String>,
}

/// The `failures` object, with its offsets from the kernel BTF the caller
/// parsed (once: it is 5 MB of start-up work) and an EVENTS ring buffer of
/// `ringbuf_bytes`. The BTF is dropped, and the memory it took handed back
/// to the system, before the object loads.
fn load_failures(btf: Btf, ringbuf_bytes: u32) -> Result<Loaded> {
    let mut notes = vec![];
    let (offs, missing) = offsets::from_btf(&btf);
    for m in missing {
        notes.push(format!(
            "kernel BTF lacks a field, some event details will be null: {m}"
        ));
    }
    btf.remember_funcs(&HOOK_FUNCS);
    let plans = [Hook::Connect, Hook::Bind].map(|h| (h, HookPlan::new(&btf, h)));
    drop(btf);
    system::release_free_memory();
    system::startup_mark("offsets and hook plans from the BTF");
    let ebpf = load_object(FAILURES_OBJECT, |l| {
        l.override_global(globals::OFFSETS, &offs, true)
            .map_max_entries(maps::EVENTS, ringbuf_bytes);
    })?;
    system::startup_mark("object loaded (maps created)");
    Ok(Loaded {
        ebpf,
        plans,
        exit_regs: offs.valid & OFF_REGS != 0,
        notes,
    })
}

pub fn attach(opts: &Options) -> Result<Attached> {
    let Loaded {
        mut ebpf,
        plans,
        mut exit_regs,
        mut notes,
    } = {
        system::check_privileges()?;
        let btf = Btf::from_sys_fs()?;
        system::startup_mark("kernel BTF read and indexed");
        load_failures(btf, opts.ringbuf_bytes)?
    };
    let mut hooks = vec![];
    let mut fexits = vec![];
    let mut relocated = None;
    for (hook, plan) in &plans {
        hooks.push(attach_hook(
            &mut ebpf,
            plan,
            *hook,
            opts.backend,
            &mut fexits,
            &mut relocated,
            &mut exit_regs,
            &mut notes,
        )?);
        system::startup_mark(format_args!("{} hook attached", hook.name()));
    }
    drop(relocated);
    let sysctl = match &opts.cgroup2 {
        Some(root) => {
            attach_sysctl(&mut ebpf, root, opts.guard_port_range).map_err(|e| format!("{e:#}"))
        }
        None => Err("no cgroup2 mount in /proc/self/mountinfo".into()),
    };
    system::startup_mark("sysctl watch attached");
    // What loading took (the fexit attempt's small BTF, aya's parse of
    // the object) goes back before the ring buffer is mapped.
    system::release_free_memory();
    Ok(Attached {
        ebpf,
        fexits,
        hooks,
        sysctl,
        notes,
    })
}

/// The sysctl-write watch on the root of the cgroup2 hierarchy (the
/// unified mount on a hybrid host): every process of the node is below it.
/// aya attaches through a BPF link here (the ring buffer needs 5.8, links
/// came with 5.7): a cgroup link always shares the hook with other
/// programs, and the kernel takes no flags with it (BPF_F_ALLOW_MULTI
/// there is EINVAL), hence `Single`, which passes none. The link goes away
/// with the loader, as every other program's.
/// With `guard`, the program that also guards the reserved ports (its
/// list parse costs verification time only `serve --guard-port-range`
/// pays).
fn attach_sysctl(ebpf: &mut Ebpf, root: &std::path::Path, guard: bool) -> Result<String> {
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let name = if guard {
        progs::SYSCTL_GUARD
    } else {
        progs::SYSCTL
    };
    let p: &mut CgroupSysctl = program(ebpf, name)?;
    p.load()
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("loading {name}"))?;
    p.attach(&dir, CgroupAttachMode::Single)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("attaching to the cgroup2 root {}", root.display()))?;
    Ok(format!(
        "cgroup/sysctl on the cgroup2 root {}",
        root.display()
    ))
}

/// Hands the sysctl guard to the kernel side (`serve --guard-port-range`).
pub fn set_sysctl_guard(ebpf: &mut Ebpf, guard: &portwatch_common::SysctlGuard) -> Result<()> {
    let map = ebpf
        .map_mut(maps::SYSCTL_GUARD)
        .with_context(|| format!("map {} missing from the object", maps::SYSCTL_GUARD))?;
    let mut arr: aya::maps::Array<_, portwatch_common::SysctlGuard> =
        aya::maps::Array::try_from(map)?;
    arr.set(0, guard, 0)
        .map_err(|e| anyhow!(e))
        .context("setting the sysctl guard")
}

/// Where a kernel with kprobes lists its kprobe PMU (aya reads its type
/// there to attach).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

#[allow(clippy::too_many_arguments)]
fn attach_hook(
    ebpf: &mut Ebpf,
    plan: &HookPlan,
    hook: Hook,
    forced: Option<Probe>,
    fexits: &mut Vec<ModuleFexit>,
    relocated: &mut Option<modfexit::Relocated>,
    exit_regs: &mut bool,
    notes: &mut Vec<String>,
) -> Result<HookReport> {
    let order: &[Probe] = match forced {
        Some(p) => match p {
            Probe::Fexit => &[Probe::Fexit],
            Probe::Kprobe => &[Probe::Kprobe],
            Probe::Tracepoint => &[Probe::Tracepoint],
        },
        None => &[Probe::Fexit, Probe::Kprobe, Probe::Tracepoint],
    };
    let mut skipped = vec![];
    for &probe in order {
        let res = match probe {
            Probe::Fexit => attach_fexit(ebpf, plan, fexits, relocated),
            Probe::Kprobe => attach_kprobe(ebpf, plan),
            Probe::Tracepoint => attach_tracepoint(ebpf, hook, exit_regs, notes),
        };
        match res {
            Ok(target) => {
                return Ok(HookReport {
                    hook,
                    probe,
                    target,
                    skipped,
                })
            }
            Err(e) => skipped.push((probe, short_reason(probe, &e))),
        }
    }
    let why = skipped
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.name()))
        .collect::<Vec<_>>()
        .join("; ");
    match forced {
        Some(p) => bail!(
            "--backend {} is not available for the {} hook on this kernel ({why})",
            p.name(),
            hook.name()
        ),
        None => bail!(
            "no backend could attach the {} hook on this kernel ({why})",
            hook.name()
        ),
    }
}

/// An error up to the verifier's log, which aya appends to a refused load
/// (the log is for a developer, not for a start-up line).
fn without_verifier_log(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    match s.find(". Verifier output") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Why a backend is unavailable, in words an operator can act on.
pub(crate) fn short_reason(probe: Probe, e: &anyhow::Error) -> String {
    match (probe, errno_of(e)) {
        (Probe::Fexit, Some(libc::EPERM)) => {
            "the kernel refuses to load fexit programs (EPERM)".into()
        }
        (Probe::Kprobe, Some(libc::ENOENT)) if !std::path::Path::new(KPROBE_PMU).exists() => {
            "the kernel has no kprobes (CONFIG_KPROBES off)".into()
        }
        _ => format!("{e:#}"),
    }
}

/// Which kernel functions a hook probes, as found in BTF.
struct Targets {
    /// (function, fexit program, kprobe entry program)
    fns: Vec<(&'static str, &'static str, &'static str)>,
}

/// Every function `targets` asks the BTF about, looked up in one pass
/// before it asks.
const HOOK_FUNCS: [&str; 5] = [
    "inet_hash_connect",
    "inet6_hash_connect",
    "__inet_bind",
    "inet_bind_sk",
    "inet6_bind",
];

fn targets(btf: &Btf, hook: Hook) -> Result<Targets> {
    let mut fns = vec![];
    match hook {
        Hook::Connect => {
            for f in ["inet_hash_connect", "inet6_hash_connect"] {
                match btf.func_params(f) {
                    Some(2) => fns.push((
                        f,
                        if f == "inet_hash_connect" {
                            progs::FX_CONN4
                        } else {
                            progs::FX_CONN6
                        },
                        progs::KP_CONNECT,
                    )),
                    Some(n) => bail!("{f} takes {n} arguments on this kernel, expected 2"),
                    None => bail!("{f} is not in the kernel's BTF"),
                }
            }
        }
        Hook::Bind => {
            match (
                btf.func_params("__inet_bind"),
                btf.func_params("inet_bind_sk"),
            ) {
                (Some(4), _) => fns.push(("__inet_bind", progs::FX_BIND4, progs::KP_BIND)),
                (_, Some(3)) => fns.push(("inet_bind_sk", progs::FX_BIND3, progs::KP_BIND)),
                _ => bail!(
                    "neither __inet_bind(4 args) nor inet_bind_sk(3 args) is in the kernel's BTF"
                ),
            }
            match btf.func_params("inet6_bind") {
                Some(3) => fns.push(("inet6_bind", progs::FX_BIND6, progs::KP_BIND6)),
                _ => bail!("inet6_bind(3 args) is not in the kernel's BTF"),
            }
        }
    }
    Ok(Targets { fns })
}

/// fexit on each of the hook's functions, loaded by portwatch itself at the
/// function's vmlinux BTF id (`modfexit`); the attachments go on `fexits`
/// only when every one of the hook's is there.
fn attach_fexit(
    ebpf: &mut Ebpf,
    plan: &HookPlan,
    fexits: &mut Vec<ModuleFexit>,
    relocated: &mut Option<modfexit::Relocated>,
) -> Result<String> {
    let t = plan.targets()?;
    let ids = plan.fexit.as_ref().map_err(|e| anyhow!("{e}"))?;
    let mut got = vec![];
    let mut names = vec![];
    for (func, prog, _) in &t.fns {
        let btf_id = ids
            .iter()
            .find(|(_, f)| f == func)
            .map(|(id, _)| *id)
            .with_context(|| format!("no BTF id for {func}"))?;
        let target = modfexit::Target {
            module: None,
            func,
            btf_id,
        };
        // On an error `got` is dropped, and with it what this hook had
        // attached: never half a hook (the fallback would double-report).
        // The object is parsed and relocated once, for every fexit.
        let obj = match relocated {
            Some(o) => o,
            None => relocated.insert(modfexit::Relocated::for_loaded(ebpf, FAILURES_OBJECT)?),
        };
        let link = obj.load_attach(prog, &target)?;
        log::debug!(
            target: "portwatch::startup",
            "fexit on {func}: BPF_PROG_LOAD {:?}, the attach {:?}",
            link.load_time,
            link.attach_time
        );
        got.push(link);
        names.push(*func);
    }
    fexits.extend(got);
    Ok(names.join(", "))
}

pub(crate) fn kprobe_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut KProbe> {
    program(ebpf, name)
}

fn is_loaded(ebpf: &mut Ebpf, name: &str) -> bool {
    kprobe_mut(ebpf, name).is_ok_and(|p| p.fd().is_ok())
}

fn load_kprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut KProbe> {
    let p = kprobe_mut(ebpf, name)?;
    if p.fd().is_err() {
        p.load()
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("loading {name}"))?;
    }
    Ok(p)
}

fn attach_kprobe(ebpf: &mut Ebpf, plan: &HookPlan) -> Result<String> {
    let t = plan.targets()?;
    let mut names = vec![];
    // Links made so far, detached again if a later one fails (the
    // kretprobe program is shared with the other hook, so no unload).
    let mut links: Vec<(&str, KProbeLinkId)> = vec![];
    // The programs this attempt will load (not those the other hook uses).
    let mut fresh: Vec<&str> = t.fns.iter().map(|f| f.2).chain([progs::KRET]).collect();
    fresh.dedup();
    fresh.retain(|p| !is_loaded(ebpf, p));
    let mut res = Ok(());
    for (func, _, entry) in &t.fns {
        for prog in [*entry, progs::KRET] {
            match load_kprobe(ebpf, prog).and_then(|p| {
                p.attach(func, 0)
                    .map_err(|e| anyhow!(e))
                    .with_context(|| format!("attaching {prog} to {func}"))
            }) {
                Ok(id) => links.push((prog, id)),
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        if res.is_err() {
            break;
        }
        names.push(*func);
    }
    if let Err(e) = res {
        for (prog, id) in links {
            if let Ok(p) = kprobe_mut(ebpf, prog) {
                let _ = p.detach(id);
            }
        }
        // Programs this attempt loaded and nothing uses: unload them too.
        for prog in fresh {
            if is_loaded(ebpf, prog) {
                let _ = kprobe_mut(ebpf, prog).map(|p| p.unload());
            }
        }
        return Err(e);
    }
    Ok(names.join(", "))
}

fn tracepoint_mut<'a>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut TracePoint> {
    program(ebpf, prog)
}

/// Loads `prog` unless it already is, and attaches it to `category:name`.
pub(crate) fn load_attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<TracePointLinkId> {
    let p = tracepoint_mut(ebpf, prog)?;
    if p.fd().is_err() {
        p.load()
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("loading {prog}"))?;
    }
    p.attach(category, name)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("attaching to tracepoint {category}:{name}"))
}

/// `sys_exit_*` alone, with the program that reads the call's arguments
/// from the task's saved registers, where it loads (`exit_regs`; the first
/// refusal turns it off for the other hook too). Else `sys_enter_*` with
/// the hook's own program and `sys_exit_*` with the one exit program both
/// hooks share (loaded by whichever hook comes first).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    hook: Hook,
    exit_regs: &mut bool,
    notes: &mut Vec<String>,
) -> Result<String> {
    if let Some(n) = system::ensure_tracefs()? {
        notes.push(n);
    }
    let (enter, sys) = match hook {
        Hook::Connect => (progs::TP_CONN_ENTER, "connect"),
        Hook::Bind => (progs::TP_BIND_ENTER, "bind"),
    };
    if hook == Hook::Connect {
        notes.push(
            "the connect() tracepoints do not see connects made through io_uring or \
             TCP Fast Open (sendto with MSG_FASTOPEN); fexit and kprobe do"
                .into(),
        );
    }
    if *exit_regs {
        let tp = format!("sys_exit_{sys}");
        match load_attach_tracepoint(ebpf, progs::TP_EXIT_REGS, "syscalls", &tp) {
            Ok(_) => {
                return Ok(format!(
                    "syscalls:{tp} (arguments from the saved registers)"
                ))
            }
            Err(e) => {
                *exit_regs = false;
                notes.push(format!(
                    "the syscall exit tracepoints cannot read the call's arguments from the task's saved registers on this kernel (bpf_task_pt_regs came with 5.15): {}; the enter tracepoints remember them",
                    without_verifier_log(&e)
                ));
            }
        }
    }
    let exit_was_loaded = tracepoint_mut(ebpf, progs::TP_EXIT)?.fd().is_ok();
    let mut links = vec![];
    let mut res = Ok(());
    for (prog, tp) in [
        (enter, format!("sys_enter_{sys}")),
        (progs::TP_EXIT, format!("sys_exit_{sys}")),
    ] {
        match load_attach_tracepoint(ebpf, prog, "syscalls", &tp) {
            Ok(link) => links.push((prog, link)),
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    if let Err(e) = res {
        // Never leave half a hook attached; the exit program stays loaded
        // if the other hook uses it.
        for (prog, link) in links {
            if let Ok(p) = tracepoint_mut(ebpf, prog) {
                let _ = p.detach(link);
            }
        }
        if let Ok(p) = tracepoint_mut(ebpf, enter) {
            let _ = p.unload();
        }
        if !exit_was_loaded {
            if let Ok(p) = tracepoint_mut(ebpf, progs::TP_EXIT) {
                let _ = p.unload();
            }
        }
        return Err(e);
    }
    Ok(format!("syscalls:sys_enter_{sys} + sys_exit_{sys}"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn kernel_errors_are_told_apart_by_errno() {
        let eperm = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EPERM))
            .context("loading pw_fx_conn4")
            .context("fexit");
        assert_eq!(errno_of(&eperm), Some(libc::EPERM));
        assert_eq!(
            short_reason(Probe::Fexit, &eperm),
            "the kernel refuses to load fexit programs (EPERM)"
        );
        let other = anyhow!("no BTF for inet_bind_sk");
        assert_eq!(errno_of(&other), None);
        assert_eq!(
            short_reason(Probe::Fexit, &other),
            "no BTF for inet_bind_sk"
        );
        let einval = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(explain_load_error(einval)
            .to_string()
            .starts_with("loading portwatch's eBPF programs"));
    }

    use std::collections::{BTreeSet, HashMap};

    use portwatch_common::{globals, lost, maps, progs, Offsets, StealOffsets};

    use super::{short_reason, Probe};
    use crate::kernel::load::{
        errno_of, explain_load_error, func_ids, FAILURES_OBJECT, STEAL_OBJECT,
    };
    use anyhow::anyhow;

    fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
        names.into_iter().collect()
    }

    /// The names the eBPF side writes as identifiers, checked against the
    /// constants userspace uses: each object has exactly its programs and
    /// maps, its LOST has one entry per slot, and its globals are there with
    /// the size of the type userspace writes (the other object's are not).
    fn check(
        what: &str,
        object: &[u8],
        want_progs: &[&str],
        want_maps: &[&str],
        lost_slots: u32,
        want_globals: &[(&str, usize)],
        absent_globals: &[(&str, usize)],
    ) {
        let mut obj = aya_obj::Object::parse(object)
            .unwrap_or_else(|e| panic!("{what}: the built object does not parse: {e}"));
        // Loaded without the kernel's BTF: nothing may need relocating.
        assert!(
            !obj.has_btf_relocations(),
            "{what}: has CO-RE relocations, but is loaded without the kernel BTF"
        );
        assert_eq!(
            set(obj.programs.keys().map(String::as_str)),
            set(want_progs.iter().copied()),
            "{what}: programs"
        );
        // Sections of globals (.rodata, .bss, ...) are maps to aya too.
        assert_eq!(
            set(obj
                .maps
                .keys()
                .map(String::as_str)
                .filter(|m| !m.starts_with('.'))),
            set(want_maps.iter().copied()),
            "{what}: maps"
        );
        assert_eq!(
            obj.maps[maps::LOST].max_entries(),
            lost_slots,
            "{what}: LOST slots"
        );
        for &(name, size) in want_globals {
            let zeroes = vec![0u8; size];
            obj.patch_map_data(HashMap::from([(name, (&zeroes[..], true))]))
                .unwrap_or_else(|e| panic!("{what}: global {name} of {size} bytes: {e}"));
        }
        for &(name, size) in absent_globals {
            let zeroes = vec![0u8; size];
            assert!(
                obj.patch_map_data(HashMap::from([(name, (&zeroes[..], true))]))
                    .is_err(),
                "{what}: has the other object's global {name}"
            );
        }
    }

    /// The hook's functions' ids, as portwatch's own reader finds them in a
    /// built blob: what the fexit loads are given.
    #[test]
    fn fexit_targets_are_each_functions_kernel_id() {
        use crate::kernel::btf::{tests::Builder, Btf};
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let p = b.ptr(int);
        b.func("tcp_v4_connect", &[p, p, int]);
        let want = b.func("inet_hash_connect", &[p, p]);
        let want6 = b.func("inet6_hash_connect", &[p, p]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            func_ids(&btf, &["inet6_hash_connect", "inet_hash_connect"]).unwrap(),
            [(want6, "inet6_hash_connect"), (want, "inet_hash_connect")]
        );
        assert!(func_ids(&btf, &["no_such_function"]).is_err());
    }

    #[test]
    fn failures_object_holds_exactly_the_shared_names() {
        check(
            "failures",
            FAILURES_OBJECT,
            progs::FAILURES,
            maps::FAILURES,
            lost::FAILURES_SLOTS,
            &[(globals::OFFSETS, size_of::<Offsets>())],
            &[(globals::STEAL_OFFSETS, size_of::<StealOffsets>())],
        );
    }

    #[test]
    fn steal_object_holds_exactly_the_shared_names() {
        check(
            "steal",
            STEAL_OBJECT,
            progs::STEAL,
            maps::STEAL,
            lost::STEAL_SLOTS,
            &[(globals::STEAL_OFFSETS, size_of::<StealOffsets>())],
            &[(globals::OFFSETS, size_of::<Offsets>())],
        );
    }
}
