//! fexit on a function of a kernel module (IPVS's `ip_vs_conn_new`), which
//! aya 0.14 cannot load: its `FExit::load` hands the kernel no BTF object
//! fd, so the kernel looks the function's BTF id up in vmlinux's BTF, and a
//! module's functions are only in the module's own.
//!
//! So portwatch loads that one program itself, from the same object aya
//! loaded and against the maps aya created for it: the program is
//! relocated with the `aya_obj` crate (aya's own object parser) using the
//! fds of aya's maps, `.rodata` included, so it reads the same globals as
//! the object's other programs; it is loaded with `BPF_PROG_LOAD` (type
//! tracing, expected attach type fexit, the function's id in the module's
//! BTF, the module's BTF object fd), and attached with
//! `BPF_RAW_TRACEPOINT_OPEN`. The kernel structures come from `aya_obj`'s
//! bindings of the kernel's UAPI. The attachment lasts as long as the
//! [`ModuleFexit`] holding its fds.
//!
//! `trace` loads its fexit programs on vmlinux's functions the same way
//! (no BTF object fd: the id is vmlinux's): aya's loader would want a BTF in
//! which the function sits at its id, a placeholder per type below it,
//! some 130,000 of them and 6 MiB of start-up memory.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::{
    generated::{bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_type},
    ProgramSection,
};

/// What the kernel answers (as errno 524, which libc does not name) when
/// it cannot build the trampoline an fexit needs, e.g. for a function of
/// more arguments than the architecture's trampoline takes.
pub const ENOTSUPP: i32 = 524;

/// An fexit program loaded and attached; the kernel detaches it when
/// this is dropped (its fds closed).
pub struct ModuleFexit {
    _link: OwnedFd,
    _prog: OwnedFd,
    /// How long the object's parse and relocation, and the look-up of the
    /// module's BTF object, took.
    pub prepare_time: Duration,
    /// How long `BPF_PROG_LOAD` (verification included) took.
    pub load_time: Duration,
    /// How long the attach (`BPF_RAW_TRACEPOINT_OPEN`) took.
    pub attach_time: Duration,
}

/// Where an fexit goes: `func`, of kernel module `module` (None: of the
/// kernel itself), whose BTF id (in vmlinux's BTF, or in the module's, whose
/// ids continue vmlinux's) is `btf_id`.
pub struct Target<'a> {
    pub module: Option<&'a str>,
    pub func: &'a str,
    pub btf_id: u32,
}

/// Loads fexit program `prog` of `object` (which `ebpf` was loaded from)
/// and attaches it to `target`.
pub fn load_attach(ebpf: &Ebpf, object: &[u8], prog: &str, target: &Target) -> Result<ModuleFexit> {
    let started = Instant::now();
    let obj = Relocated::for_loaded(ebpf, object)?;
    let relocation = started.elapsed();
    let mut link = obj.load_attach(prog, target)?;
    link.prepare_time += relocation;
    Ok(link)
}

/// An object parsed and relocated against the maps aya created for it,
/// once for all the fexit programs loaded from it.
pub struct Relocated {
    obj: aya_obj::Object,
}

impl Relocated {
    /// `object`, which `ebpf` was loaded from, relocated against its maps.
    pub fn for_loaded(ebpf: &Ebpf, object: &[u8]) -> Result<Relocated> {
        Relocated::new(object, |name| {
            let m = ebpf
                .map(name)
                .with_context(|| format!("map {name} was not created by the loader"))?;
            let fd = map_fd(m).with_context(|| format!("map {name}: unexpected kind"))?;
            Ok(fd.as_raw_fd())
        })
    }

    /// `object` relocated against the maps `map_fd` gives each one's fd
    /// by name (`.rodata` too).
    fn new(object: &[u8], map_fd: impl Fn(&str) -> Result<RawFd>) -> Result<Relocated> {
        let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
        let maps = std::mem::take(&mut obj.maps);
        let mut fds: Vec<(&str, RawFd, &aya_obj::Map)> = vec![];
        for (name, m) in &maps {
            fds.push((name, map_fd(name)?, m));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(fds.into_iter(), &text_sections)
            .context("relocating the object's map references")?;
        obj.relocate_calls(&text_sections)
            .context("relocating the object's calls")?;
        Ok(Relocated { obj })
    }

    /// Fexit program `prog`: its instructions and the object's license.
    fn program(&self, prog: &str) -> Result<(Vec<bpf_insn>, CString)> {
        let obj = &self.obj;
        match obj.programs.get(prog).map(|p| &p.section) {
            Some(ProgramSection::FExit { .. }) => {}
            Some(s) => bail!("{prog} is not an fexit program ({s:?})"),
            None => bail!("program {prog} missing from the object"),
        }
        let key = obj.programs[prog].function_key();
        let f = obj
            .functions
            .get(&key)
            .with_context(|| format!("no code for {prog}"))?;
        Ok((f.instructions.clone(), obj.license.clone()))
    }

    /// Loads fexit program `prog` and attaches it to `target`.
    pub fn load_attach(&self, prog: &str, target: &Target) -> Result<ModuleFexit> {
        let started = Instant::now();
        let (insns, license) = self.program(prog)?;
        let btf = match target.module {
            Some(m) => Some(
                find_btf_object(&SysBtfObjects, m)
                    .with_context(|| format!("finding the {m} module's BTF object"))?,
            ),
            None => None,
        };
        let prepare_time = started.elapsed();
        let started = Instant::now();
        let prog_fd = prog_load(
            prog,
            &insns,
            &license,
            target.btf_id,
            btf.as_ref().map(|b| b.as_fd()),
        )
        .with_context(|| format!("loading {prog} for {}", target.func))?;
        let load_time = started.elapsed();
        // The program holds its own references to the module and its BTF now.
        drop(btf);
        let started = Instant::now();
        let link = raw_tracepoint_open(prog_fd.as_fd())
            .with_context(|| format!("attaching fexit to {}", target.func))?;
        Ok(ModuleFexit {
            _link: link,
            _prog: prog_fd,
            prepare_time,
            load_time,
            attach_time: started.elapsed(),
        })
    }
}

/// The fd of one of aya's maps (the kinds the objects have).
fn map_fd(m: &Map) -> Option<BorrowedFd<'_>> {
    match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d) => Some(d.fd().as_fd()),
        _ => None,
    }
}

/// Program `prog` of `object`, relocated against the maps `map_fd` names.
#[cfg(test)]
fn relocated(
    object: &[u8],
    prog: &str,
    map_fd: impl Fn(&str) -> Result<RawFd>,
) -> Result<(Vec<bpf_insn>, CString)> {
    Relocated::new(object, map_fd)?.program(prog)
}

/// `bpf(cmd, attr)`, retried while the kernel says EAGAIN (as it may for
/// a program load) or a signal interrupts it.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    let mut tries = 0;
    loop {
        // SAFETY: `attr` is a valid, initialised bpf_attr of the size
        // passed; the pointers the caller put in it point at buffers that
        // outlive the call, of the lengths it gave with them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                attr as *mut bpf_attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        tries += 1;
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) if tries < 5 => continue,
            _ => return Err(e),
        }
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of plain integers (and arrays of
    // them): all zeroes is valid, and what the kernel expects in the
    // fields a command does not use.
    unsafe { std::mem::zeroed() }
}

fn fd_of(r: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd, owned by no one else.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// How big a verifier log a failed load is retried with.
const LOG_SIZE: usize = 256 * 1024;

/// `BPF_PROG_LOAD` of an fexit program on function `btf_id` of the BTF
/// object `btf`. A refused program is loaded once more with the verifier's
/// log, whose last lines go into the error (the kernel's errno stays its
/// source).
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    btf_id: u32,
    btf: Option<BorrowedFd>,
) -> Result<OwnedFd> {
    let load = |log: Option<&mut Vec<u8>>| {
        let mut attr = zeroed_attr();
        // SAFETY: the union's BPF_PROG_LOAD member, on a zeroed union.
        let a = unsafe { &mut attr.__bindgen_anon_3 };
        a.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
        a.expected_attach_type = bpf_attach_type::BPF_TRACE_FEXIT as u32;
        a.insns = insns.as_ptr() as u64;
        a.insn_cnt = insns.len() as u32;
        a.license = license.as_ptr() as u64;
        a.attach_btf_id = btf_id;
        if let Some(btf) = btf {
            a.__bindgen_anon_1.attach_btf_obj_fd = btf.as_raw_fd() as u32;
        }
        // The kernel's names take 15 bytes and a NUL.
        for (d, s) in a.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        if let Some(log) = log {
            a.log_level = 1;
            a.log_buf = log.as_mut_ptr() as u64;
            a.log_size = log.len() as u32;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(fd_of)
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        // Refused before verification: no log to tell more.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOENT)) => Err(e.into()),
        Err(_) => {
            let mut log = vec![0u8; LOG_SIZE];
            let res = load(Some(&mut log));
            let tail = log_tail(&log, 3);
            match res {
                Ok(fd) => Ok(fd),
                Err(e) if tail.is_empty() => Err(e.into()),
                Err(e) => Err(anyhow::Error::from(e).context(format!("the verifier: {tail}"))),
            }
        }
    }
}

/// The last `n` non-empty lines of a NUL-terminated verifier log, joined.
pub(crate) fn log_tail(log: &[u8], n: usize) -> String {
    let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// `BPF_RAW_TRACEPOINT_OPEN` without a name: attaches a tracing program
/// where it was loaded for (5.5+); the returned fd is the attachment.
fn raw_tracepoint_open(prog: BorrowedFd) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: the union's BPF_RAW_TRACEPOINT_OPEN member, on a zeroed union.
    let a = unsafe { &mut attr.raw_tracepoint };
    a.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map(fd_of)
}

/// The kernel's BTF objects (vmlinux's, each module's, programs'), as the
/// look-up by name walks them: a trait, so the walk is tested on a list.
pub(crate) trait BtfObjects {
    type Fd;
    /// The id after `id` (0: the first); None past the last.
    fn next_id(&self, id: u32) -> io::Result<Option<u32>>;
    /// An fd for object `id`; None if it went away meanwhile.
    fn open(&self, id: u32) -> io::Result<Option<Self::Fd>>;
    /// The object's name ("vmlinux", a module's; a program's has none)
    /// and whether it is the kernel's own.
    fn name(&self, fd: &Self::Fd) -> io::Result<(String, bool)>;
}

/// The kernel's BTF object of module `module`.
pub(crate) fn find_btf_object<S: BtfObjects>(objects: &S, module: &str) -> Result<S::Fd> {
    let needs = |e: io::Error, what: &str| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (needs CAP_SYS_ADMIN)"
        } else {
            ""
        };
        anyhow::Error::from(e).context(format!("{what}{hint}"))
    };
    let (mut id, mut seen) = (0u32, 0usize);
    loop {
        let next = match objects.next_id(id) {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => return Err(needs(e, "listing the kernel's BTF objects")),
        };
        if next <= id {
            bail!("the kernel's BTF object ids went backwards ({id}, then {next})");
        }
        id = next;
        let Some(fd) = objects
            .open(id)
            .map_err(|e| needs(e, &format!("opening BTF object {id}")))?
        else {
            continue;
        };
        seen += 1;
        let (name, kernel) = objects
            .name(&fd)
            .map_err(|e| anyhow!(e).context(format!("reading BTF object {id}'s name")))?;
        if kernel && name == module {
            return Ok(fd);
        }
    }
    bail!("none of the kernel's {seen} BTF objects is named {module}")
}

/// The running kernel's BTF objects, through the bpf syscall.
struct SysBtfObjects;

impl BtfObjects for SysBtfObjects {
    type Fd = OwnedFd;

    fn next_id(&self, id: u32) -> io::Result<Option<u32>> {
        let mut attr = zeroed_attr();
        // SAFETY: the union's *_GET_NEXT_ID member, on a zeroed union.
        let a = unsafe { &mut attr.__bindgen_anon_6 };
        a.__bindgen_anon_1.start_id = id;
        match sys_bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
            // SAFETY: the member the kernel filled in.
            Ok(_) => Ok(Some(unsafe { attr.__bindgen_anon_6.next_id })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self, id: u32) -> io::Result<Option<OwnedFd>> {
        let mut attr = zeroed_attr();
        // SAFETY: the union's *_GET_FD_BY_ID member, on a zeroed union.
        let a = unsafe { &mut attr.__bindgen_anon_6 };
        a.__bindgen_anon_1.btf_id = id;
        match sys_bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => Ok(Some(fd_of(fd))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn name(&self, fd: &OwnedFd) -> io::Result<(String, bool)> {
        // Module names are shorter (MODULE_NAME_LEN is 56 with its NUL).
        let mut name = [0u8; 64];
        // SAFETY: bpf_btf_info is plain integers: all zeroes is valid.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = name.as_mut_ptr() as u64;
        info.name_len = name.len() as u32;
        let mut attr = zeroed_attr();
        // SAFETY: the union's BPF_OBJ_GET_INFO_BY_FD member, on a zeroed union.
        let a = unsafe { &mut attr.info };
        a.bpf_fd = fd.as_raw_fd() as u32;
        a.info_len = std::mem::size_of::<bpf_btf_info>() as u32;
        a.info = &mut info as *mut bpf_btf_info as u64;
        sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok((
            String::from_utf8_lossy(&name[..end]).into_owned(),
            info.kernel_btf != 0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel's BTF objects as a list of (id, name, kernel's own);
    /// `gone` ids vanish between listing and opening; `refuse` makes
    /// every call fail with that errno.
    struct Fake {
        objects: Vec<(u32, &'static str, bool)>,
        gone: Vec<u32>,
        refuse: Option<i32>,
    }

    impl Fake {
        fn new(objects: &[(u32, &'static str, bool)]) -> Fake {
            Fake {
                objects: objects.to_vec(),
                gone: vec![],
                refuse: None,
            }
        }
    }

    impl BtfObjects for Fake {
        type Fd = u32;
        fn next_id(&self, id: u32) -> io::Result<Option<u32>> {
            if let Some(e) = self.refuse {
                return Err(io::Error::from_raw_os_error(e));
            }
            Ok(self.objects.iter().map(|o| o.0).find(|&o| o > id))
        }
        fn open(&self, id: u32) -> io::Result<Option<u32>> {
            Ok((!self.gone.contains(&id)).then_some(id))
        }
        fn name(&self, fd: &u32) -> io::Result<(String, bool)> {
            let o = self.objects.iter().find(|o| o.0 == *fd).unwrap();
            Ok((o.1.to_string(), o.2))
        }
    }

    #[test]
    fn finds_the_module_by_name_among_the_kernels_objects() {
        let mut f = Fake::new(&[
            (1, "vmlinux", true),
            // A program's BTF may carry any name: only the kernel's count.
            (4, "ip_vs", false),
            (7, "nf_conntrack", true),
            (9, "ip_vs_rr", true),
            (12, "ip_vs", true),
        ]);
        assert_eq!(find_btf_object(&f, "ip_vs").unwrap(), 12);
        assert_eq!(find_btf_object(&f, "vmlinux").unwrap(), 1);
        // One that went away between listing and opening is passed over.
        f.gone = vec![12];
        let e = format!("{:#}", find_btf_object(&f, "ip_vs").unwrap_err());
        assert_eq!(e, "none of the kernel's 4 BTF objects is named ip_vs");
    }

    #[test]
    fn says_what_a_refusal_needs_and_keeps_its_errno() {
        let mut f = Fake::new(&[(1, "vmlinux", true)]);
        f.refuse = Some(libc::EPERM);
        let e = find_btf_object(&f, "ip_vs").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "listing the kernel's BTF objects (needs CAP_SYS_ADMIN): {}",
                io::Error::from_raw_os_error(libc::EPERM)
            )
        );
        assert_eq!(crate::kernel::load::errno_of(&e), Some(libc::EPERM));
        f.refuse = Some(libc::EINVAL);
        let e = find_btf_object(&f, "ip_vs").unwrap_err();
        assert!(e.to_string() == "listing the kernel's BTF objects", "{e}");
    }

    /// A listing that does not move forward ends instead of spinning.
    #[test]
    fn a_listing_that_goes_backwards_ends() {
        struct Stuck;
        impl BtfObjects for Stuck {
            type Fd = ();
            fn next_id(&self, _: u32) -> io::Result<Option<u32>> {
                Ok(Some(3))
            }
            fn open(&self, _: u32) -> io::Result<Option<()>> {
                Ok(Some(()))
            }
            fn name(&self, _: &()) -> io::Result<(String, bool)> {
                Ok(("x".into(), true))
            }
        }
        let e = find_btf_object(&Stuck, "ip_vs").unwrap_err();
        assert!(e.to_string().contains("went backwards (3, then 3)"), "{e}");
    }

    /// The fexit program of the built steal object, relocated against
    /// made-up map fds: each map reference (`ld_imm64` of a map fd or a
    /// map value) names one of them, `.rodata` (STEAL_OFFSETS) among them,
    /// and no call is left pointing nowhere.
    #[test]
    fn the_ipvs_fexit_relocates_against_the_loaders_maps() {
        use portwatch_common::progs;
        let obj = aya_obj::Object::parse(crate::kernel::load::STEAL_OBJECT).unwrap();
        let names: Vec<String> = obj.maps.keys().cloned().collect();
        let fd_of = |name: &str| -> Result<RawFd> {
            Ok(1000 + names.iter().position(|n| n == name).unwrap() as RawFd)
        };
        let (insns, license) = relocated(
            crate::kernel::load::STEAL_OBJECT,
            progs::FX_IPVS_CONN_NEW,
            fd_of,
        )
        .unwrap();
        assert_eq!(license.to_str().unwrap(), "Dual MIT/GPL");
        let mut used = HashSet::new();
        for (i, insn) in insns.iter().enumerate() {
            // BPF_LD | BPF_IMM | BPF_DW: src 1 is a map fd, 2 a map value.
            if insn.code == 0x18 && matches!(insn.src_reg(), 1 | 2) {
                let n = (insn.imm - 1000) as usize;
                assert!(n < names.len(), "instruction {i}: imm {}", insn.imm);
                used.insert(names[n].as_str());
            }
            // A call to a function of the object: resolved in place.
            if insn.code == 0x85 && insn.src_reg() == 1 {
                let to = i as i64 + 1 + insn.imm as i64;
                assert!((0..insns.len() as i64).contains(&to), "instruction {i}");
            }
        }
        for m in [".rodata", "SYNACKS", "STEALS"] {
            assert!(used.contains(m), "{m} not referenced: {used:?}");
        }
        // Not an fexit program, or not there: said so.
        let e = relocated(
            crate::kernel::load::STEAL_OBJECT,
            progs::KP_IPVS_CONN_NEW,
            fd_of,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("is not an fexit program"));
        let e = relocated(crate::kernel::load::STEAL_OBJECT, "pw_nothing", fd_of);
        assert!(format!("{:#}", e.unwrap_err()).contains("missing from the object"));
        // A map the loader did not create stops it.
        let e = relocated(
            crate::kernel::load::STEAL_OBJECT,
            progs::FX_IPVS_CONN_NEW,
            |n| anyhow::bail!("map {n} was not created by the loader"),
        );
        assert!(e.is_err());
    }

    /// The running kernel's own BTF object is found by name (as root: the
    /// listing needs CAP_SYS_ADMIN); a module that is not there is said so.
    #[test]
    fn finds_vmlinux_among_the_running_kernels_btf_objects() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root (the BTF listing): run it through cargo xtask test"
        );
        let fd = find_btf_object(&SysBtfObjects, "vmlinux").unwrap();
        assert_eq!(
            SysBtfObjects.name(&fd).unwrap(),
            ("vmlinux".to_string(), true)
        );
        let e = find_btf_object(&SysBtfObjects, "no_such_module").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("BTF objects is named no_such_module"),
            "{e}"
        );
    }

    #[test]
    fn the_verifier_logs_last_lines() {
        let mut log = b"func#0 @0\n0: R1=ctx() R10=fp0\n\n; ...\nR2 invalid mem access 'scalar'\nprocessed 12 insns\n".to_vec();
        log.extend_from_slice(&[0, b'x', b'y']);
        assert_eq!(
            log_tail(&log, 2),
            "R2 invalid mem access 'scalar' / processed 12 insns"
        );
        assert_eq!(log_tail(b"\0garbage", 3), "");
        assert_eq!(log_tail(b"one", 3), "one");
    }
}
