//! Loading the two objects (`failures` for `trace`, `steal` for
//! `nodeport-steal`; `serve` loads each once), and what loading needs from
//! the kernel: a loader that reads no BTF, the small BTF an fexit program
//! is loaded with, and kernel errors told apart by errno.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{Program, ProgramError},
    Ebpf, EbpfLoader,
};

use crate::kernel::{btf::Btf, system};

/// `trace`'s kernel programs (the `failures` bin of portwatch-ebpf),
/// embedded at build time.
pub(crate) static FAILURES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/failures"));

/// `nodeport-steal`'s kernel programs (the `steal` bin of portwatch-ebpf).
pub(crate) static STEAL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steal"));

/// Memlock, then `object` loaded with what `set` puts into the loader
/// (globals, map sizes).
///
/// Without the kernel's BTF: rustc emits no CO-RE relocations (the unit
/// tests check that both objects have none), so aya would parse the 5 MB of
/// vmlinux BTF for nothing (see `new_loader`). Field offsets come from portwatch's own reader
/// through the objects' globals instead.
pub(crate) fn load_object<'a>(
    object: &[u8],
    set: impl FnOnce(&mut EbpfLoader<'a>),
) -> Result<Ebpf> {
    system::raise_memlock();
    let mut loader = new_loader();
    set(&mut loader);
    let mut ebpf = loader
        .load(object)
        .map_err(|e| explain_load_error(anyhow!(e)))?;
    if let Ok(logger) = aya_log::EbpfLogger::init(&mut ebpf) {
        crate::kernel::source::spawn_ebpf_logger(logger);
    }
    Ok(ebpf)
}

/// An `EbpfLoader` without the kernel BTF, built without reading it.
///
/// aya 0.14's `EbpfLoader::new` always reads and parses vmlinux BTF (5.5 MB
/// read, about 15 MiB of heap at once, tens of ms), which portwatch would
/// then throw away. So the loader is built in a short-lived thread with a
/// private mount namespace in which `/sys/kernel/btf` is an empty tmpfs:
/// aya finds no BTF there and skips the work. Nothing else sees that
/// namespace, and it goes away with the thread. Where the thread cannot
/// have one (no CAP_SYS_ADMIN, a seccomp profile that refuses mount), the
/// loader is built as usual and the BTF dropped.
fn new_loader<'a>() -> EbpfLoader<'a> {
    let built = std::thread::scope(|s| {
        s.spawn(|| hide_kernel_btf().then(EbpfLoader::new))
            .join()
            .ok()
            .flatten()
    });
    let mut loader = built.unwrap_or_else(EbpfLoader::new);
    loader.btf(None);
    loader
}

/// Gives the calling thread its own mount namespace (private, so nothing
/// propagates back to the host's) with an empty tmpfs on `/sys/kernel/btf`.
/// False if any step is refused; the thread is then best left to end.
fn hide_kernel_btf() -> bool {
    // SAFETY: plain syscalls on this thread's own fs and mount namespace,
    // with NUL-terminated string literals and null pointers where the
    // kernel allows them (source, type and data of a propagation change).
    unsafe {
        libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::mount(
                c"none".as_ptr(),
                c"/sys/kernel/btf".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) == 0
    }
}

/// The errno the kernel answered with, wherever it sits in the error's
/// chain (aya keeps the syscall's `io::Error` as the source).
pub(crate) fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>()?.raw_os_error())
}

pub(crate) fn explain_load_error(e: anyhow::Error) -> anyhow::Error {
    if errno_of(&e) == Some(libc::EPERM) {
        anyhow!("the kernel refused to load portwatch's eBPF programs (permission denied): {e:#}")
    } else {
        e.context("loading portwatch's eBPF programs")
    }
}

/// Program `name` of a loaded object, as the kind `T` it must be
/// (`KProbe`, `TracePoint`, ...).
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?)
}

/// The vmlinux BTF ids of kernel functions `funcs`: all that loading fexit
/// programs on them needs from the BTF (`modfexit` loads them at those ids).
pub(crate) fn func_ids(btf: &Btf, funcs: &[&'static str]) -> Result<Vec<(u32, &'static str)>> {
    funcs
        .iter()
        .map(|f| {
            Ok((
                btf.func_id(f).with_context(|| format!("no BTF for {f}"))?,
                *f,
            ))
        })
        .collect()
}
