//! Writes of the sysctls that decide which ports connect() may pick
//! (`portwatch_common::SYSCTL_NAMES`), seen by a `cgroup/sysctl` program on
//! the cgroup2 root: every process below it, whatever its netns.
//!
//! Reads and other sysctls cost a name read and a compare, and go on
//! untouched. Every write of one of ours is reported, before the kernel
//! applies it, with the value it replaces and the one written.
//!
//! With `serve --guard-port-range`, userspace fills `SYSCTL_GUARD`: a write
//! of the node's `ip_local_port_range` whose new range takes in guarded,
//! unreserved ports the old one did not is refused (the writer gets EPERM)
//! and reported as refused. Writes in any other netns go through.

use aya_ebpf::{
    cty::{c_char, c_ulong},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_strtoul,
        bpf_sysctl_get_current_value, bpf_sysctl_get_name, bpf_sysctl_get_new_value,
    },
    macros::{cgroup_sysctl, map},
    maps::{Array, PerCpuArray},
    programs::SysctlContext,
};
use portwatch_common::{
    lost, sysctl_name_words, SysctlEvent, SysctlGuard, COMM_LEN, GUARD_KEEP, GUARD_LIST_ITEMS,
    GUARD_LIST_TEXT, GUARD_SPANS, KIND_SYSCTL, SF_NETNS, SF_NEW_TRUNC, SF_OLD, SF_OLD_TRUNC,
    SF_REFUSED, SYSCTL_NAMES, SYSCTL_NAME_LEN, SYSCTL_NAME_WORDS, SYSCTL_PORT_RANGE,
    SYSCTL_RESERVED_PORTS, SYSCTL_VALUE_LEN,
};
use portwatch_ebpf::shared;

use crate::{offsets, EVENTS, LOST};

/// What `serve --guard-port-range` refuses; zero (off) unless userspace
/// fills it.
#[map]
static SYSCTL_GUARD: Array<SysctlGuard> = Array::with_max_entries(1, 0);

/// A new `ip_local_reserved_ports` as the guard reads it.
#[repr(C)]
struct ListScratch {
    /// The value in the first half, zeroes after (the parse reads a full
    /// half from any offset in the first).
    text: [u8; 2 * GUARD_LIST_TEXT],
    /// Bit j: an item holds `keep[j]` whole. Kept in memory, not in a
    /// register, so that the verifier does not tell apart the paths by
    /// which bits are set (in a register: 2^spans states per item).
    covered: u32,
    /// Where the next item starts.
    next: u32,
}

/// Per CPU: too big for the stack beside the rest.
#[map]
static GUARD_LIST: PerCpuArray<ListScratch> = PerCpuArray::with_max_entries(1, 0);

/// The program's answer: refuse the write (the writer gets EPERM).
const REFUSE: i32 = 0;

/// Bytes of a range value the guard reads ("65535 65535\n" and some
/// spaces); a longer value is not refused (the write goes through, and is
/// reported as any other).
const RANGE_TEXT: usize = 24;

/// The program's answer: let the access go on.
const ALLOW: i32 = 1;

const E2BIG: i64 = 7;

const NAMES: [[u64; SYSCTL_NAME_WORDS]; 4] = [
    sysctl_name_words(SYSCTL_NAMES[0]),
    sysctl_name_words(SYSCTL_NAMES[1]),
    sysctl_name_words(SYSCTL_NAMES[2]),
    sysctl_name_words(SYSCTL_NAMES[3]),
];

/// Which of `NAMES` the zero-padded `name` is, word by word.
#[inline(always)]
fn which_of(name: &[u64; SYSCTL_NAME_WORDS]) -> Option<u8> {
    let mut i = 0;
    while i < NAMES.len() {
        let n = &NAMES[i];
        if name[0] == n[0]
            && name[1] == n[1]
            && name[2] == n[2]
            && name[3] == n[3]
            && name[4] == n[4]
        {
            return Some(i as u8);
        }
        i += 1;
    }
    None
}

/// The watch, for `trace` and a `serve` without the guard: reports every
/// write, refuses none. Without the guard's checks, whose parses of the
/// values were most of its verification (start-up) time.
#[cgroup_sysctl]
pub fn pw_sysctl(ctx: SysctlContext) -> i32 {
    watch::<false>(&ctx)
}

/// The watch for `serve --guard-port-range`: also checks writes of the
/// port range and the reserved ports. Its own program, loaded only with
/// the guard (the only time SYSCTL_GUARD is filled), because the parses
/// cost tens of ms of verification at start-up.
#[cgroup_sysctl]
pub fn pw_sysctl_guard(ctx: SysctlContext) -> i32 {
    watch::<true>(&ctx)
}

#[inline(always)]
fn watch<const GUARD: bool>(ctx: &SysctlContext) -> i32 {
    // SAFETY: the kernel hands the program a valid `struct bpf_sysctl`;
    // `write` is a field the verifier lets it read.
    if unsafe { (*ctx.sysctl).write } == 0 {
        return ALLOW;
    }
    let mut name = [0u64; SYSCTL_NAME_WORDS];
    // SAFETY: the helper writes at most SYSCTL_NAME_LEN bytes into `name`,
    // which is that long; it NUL-terminates and leaves the zeroes after.
    let n = unsafe {
        bpf_sysctl_get_name(
            ctx.sysctl,
            name.as_mut_ptr() as *mut c_char,
            SYSCTL_NAME_LEN as u64,
            0,
        )
    };
    if n < 0 {
        // -E2BIG: longer than any of ours.
        return ALLOW;
    }
    let Some(which) = which_of(&name) else {
        return ALLOW;
    };
    let o = offsets();
    let netns = shared::task_netns(&o);
    let refuse = GUARD
        && ((which == SYSCTL_PORT_RANGE && exposes_guarded(ctx, netns))
            || (which == SYSCTL_RESERVED_PORTS && drops_kept(ctx, netns)));
    report(ctx, which, netns, shared::task_ids(&o), refuse);
    if refuse {
        REFUSE
    } else {
        ALLOW
    }
}

/// The range in the new (`new`) or current value of `ip_local_port_range`:
/// "LO HI", whitespace around and between, as the kernel takes it. None
/// for anything it cannot be (the kernel refuses such a write itself).
///
/// Parsed with `bpf_strtoul`, not a loop over the bytes: a byte loop with
/// a branch per character made 6.1's verifier walk over a million
/// instructions. The second number is read at a variable offset into a
/// buffer twice the value's length, whose second half stays zero.
#[inline(always)]
fn read_range(ctx: &SysctlContext, new: bool) -> Option<(u64, u64)> {
    let mut buf = [0u8; 2 * RANGE_TEXT];
    let dst = buf.as_mut_ptr() as *mut c_char;
    // SAFETY: the helpers write at most RANGE_TEXT bytes into `buf`, which
    // is twice that long.
    let n = unsafe {
        if new {
            bpf_sysctl_get_new_value(ctx.sysctl, dst, RANGE_TEXT as u64)
        } else {
            bpf_sysctl_get_current_value(ctx.sysctl, dst, RANGE_TEXT as u64)
        }
    };
    if n < 0 {
        return None;
    }
    let mut lo: c_ulong = 0;
    // SAFETY: reads at most RANGE_TEXT bytes of `buf`; writes `lo`.
    let used = unsafe {
        bpf_strtoul(
            buf.as_ptr() as *const c_char,
            RANGE_TEXT as u64,
            10,
            &mut lo,
        )
    };
    if used <= 0 || used >= RANGE_TEXT as i64 {
        return None;
    }
    let mut hi: c_ulong = 0;
    // SAFETY: `used` < RANGE_TEXT, so the RANGE_TEXT bytes read from there
    // stay inside `buf`; writes `hi`.
    let used2 = unsafe {
        bpf_strtoul(
            buf.as_ptr().add(used as usize) as *const c_char,
            RANGE_TEXT as u64,
            10,
            &mut hi,
        )
    };
    if used2 <= 0 || lo > 65535 || hi > 65535 || lo > hi {
        return None;
    }
    Some((lo, hi))
}

/// Whether this write of `ip_local_port_range`, in netns `netns`, takes in
/// guarded ports the old range left out (the guard on, in the node's netns).
#[inline(always)]
fn exposes_guarded(ctx: &SysctlContext, netns: Option<u32>) -> bool {
    let Some(g) = SYSCTL_GUARD.get(0) else {
        return false;
    };
    if g.enabled == 0 || netns != Some(g.netns) {
        return false;
    }
    // A value that does not parse the kernel refuses itself (EINVAL).
    let Some((lo, hi)) = read_range(ctx, true) else {
        return false;
    };
    // No old range known: every guarded port in the new one is new.
    let (olo, ohi) = read_range(ctx, false).unwrap_or((1, 0));
    let count = g.count as usize;
    let mut i = 0;
    while i < GUARD_SPANS {
        if i >= count {
            break;
        }
        let s = g.spans[i];
        let x = if lo > s.lo as u64 { lo } else { s.lo as u64 };
        let y = if hi < s.hi as u64 { hi } else { s.hi as u64 };
        // Guarded ports [x, y] are in the new range; new unless the old
        // range held them all.
        if x <= y && (x < olo || y > ohi) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether this write of `ip_local_reserved_ports`, in netns `netns`,
/// leaves a span of the guard's `keep` without one item of the new list
/// that holds it whole (the guard on, in the node's netns).
///
/// The list is `ITEM[,ITEM]...`, an item `PORT` or `LO-HI`. Each item is
/// read with `bpf_strtoul` and marks the spans it holds; no item is kept.
/// A list longer than the guard reads is judged by the part it read (a
/// cut item only gets shorter: it refuses more, never less).
///
/// Written for the verifier: where the next item starts and which spans
/// are held live in the map value, not in registers, so every pass of
/// the loop starts from the same state whatever the item looked like
/// (with them in registers, `PORT` and `LO-HI` items split the paths at
/// each pass: 2^16 of them, over a second of verification). Not inlined:
/// one call site, in `pw_sysctl_guard` only.
#[inline(never)]
fn drops_kept(ctx: &SysctlContext, netns: Option<u32>) -> bool {
    let Some(g) = SYSCTL_GUARD.get(0) else {
        return false;
    };
    if g.enabled == 0 || netns != Some(g.netns) || g.keep_count == 0 {
        return false;
    }
    let Some(scratch) = GUARD_LIST.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: `scratch` is this CPU's map value, valid for the program's
    // run; only the addresses of its fields are taken here.
    let (buf, covered, next) = unsafe {
        (
            core::ptr::addr_of_mut!((*scratch).text) as *mut u8,
            core::ptr::addr_of_mut!((*scratch).covered),
            core::ptr::addr_of_mut!((*scratch).next),
        )
    };
    // SAFETY: `covered` and `next` point into the map value (see above).
    unsafe {
        core::ptr::write_volatile(covered, 0);
        core::ptr::write_volatile(next, 0);
    }
    // SAFETY: the helper writes at most GUARD_LIST_TEXT bytes into the map
    // value's text, which is twice that long.
    let n =
        unsafe { bpf_sysctl_get_new_value(ctx.sysctl, buf as *mut c_char, GUARD_LIST_TEXT as u64) };
    if n < 0 && n != -E2BIG {
        return false;
    }
    let len = if n < 0 {
        GUARD_LIST_TEXT - 1
    } else {
        n as usize
    };
    let keep_count = g.keep_count as usize;
    let mut i = 0;
    while i < GUARD_LIST_ITEMS {
        // SAFETY: `next` points into the map value.
        let off = unsafe { core::ptr::read_volatile(next) } as usize & (GUARD_LIST_TEXT - 1);
        if off >= len {
            break;
        }
        let Some((lo, hi, end)) = item_at(buf, off) else {
            break;
        };
        // Which spans the item holds, without a branch: a branch per
        // compare of two unknown numbers splits the verifier's paths
        // (2^12 per item for 4 spans). Ports are below 2^32 (the kernel
        // refuses larger ones itself), so a difference's sign bit is the
        // compare. Spans past keep_count are masked off below.
        let (lo, hi) = ((lo & 0xffff_ffff) as i64, (hi & 0xffff_ffff) as i64);
        let mut bits: u32 = 0;
        let mut j = 0;
        while j < GUARD_KEEP {
            let k = g.keep[j];
            let lo_ok = (((k.lo as i64 - lo) as u64 >> 63) ^ 1) as u32;
            let hi_ok = (((hi - k.hi as i64) as u64 >> 63) ^ 1) as u32;
            bits |= (lo_ok & hi_ok) << j;
            j += 1;
        }
        // SAFETY: `covered` points into the map value.
        unsafe {
            let c = core::ptr::read_volatile(covered);
            core::ptr::write_volatile(covered, c | bits);
        }
        // SAFETY: `end` < GUARD_LIST_TEXT (item_at), inside the text.
        if unsafe { *buf.add(end) } != b',' {
            break;
        }
        // SAFETY: `next` points into the map value.
        unsafe { core::ptr::write_volatile(next, end as u32 + 1) };
        i += 1;
    }
    let all: u32 = (1u32 << keep_count.min(GUARD_KEEP)) - 1;
    // SAFETY: `covered` points into the map value.
    let covered = unsafe { core::ptr::read_volatile(covered) };
    covered & all != all
}

/// The item `PORT` or `LO-HI` at `off` (< GUARD_LIST_TEXT) of the list
/// text at `buf`: (lo, hi, offset of the byte after it, < GUARD_LIST_TEXT).
#[inline(always)]
fn item_at(buf: *mut u8, off: usize) -> Option<(u64, u64, usize)> {
    let (lo, mut end) = number_at(buf, off)?;
    // SAFETY: `end` < GUARD_LIST_TEXT (number_at), inside the text.
    if unsafe { *buf.add(end) } != b'-' {
        return Some((lo, lo, end));
    }
    end += 1;
    if end >= GUARD_LIST_TEXT {
        return None;
    }
    let (hi, end) = number_at(buf, end)?;
    Some((lo, hi, end))
}

/// The number at `off` (< GUARD_LIST_TEXT) and where it ends.
#[inline(always)]
fn number_at(buf: *mut u8, off: usize) -> Option<(u64, usize)> {
    if off >= GUARD_LIST_TEXT {
        return None;
    }
    let mut v: c_ulong = 0;
    // SAFETY: `off` < GUARD_LIST_TEXT, so the GUARD_LIST_TEXT bytes read
    // from there stay in the text (twice that long); writes `v`.
    let used = unsafe {
        bpf_strtoul(
            buf.add(off) as *const c_char,
            GUARD_LIST_TEXT as u64,
            10,
            &mut v,
        )
    };
    if used <= 0 || used as usize >= GUARD_LIST_TEXT {
        return None;
    }
    let end = off + used as usize;
    if end >= GUARD_LIST_TEXT {
        return None;
    }
    Some((v, end))
}

/// The flags a value helper's return earns: `ok` when read whole,
/// `ok | trunc` when cut (-E2BIG), none when unread.
#[inline(always)]
fn flags_of(ret: i64, ok: u16, trunc: u16) -> u16 {
    if ret >= 0 {
        ok
    } else if ret == -E2BIG {
        ok | trunc
    } else {
        0
    }
}

#[inline(always)]
fn report(
    ctx: &SysctlContext,
    which: u8,
    netns: Option<u32>,
    task: Option<(u32, u32, [u8; COMM_LEN])>,
    refused: bool,
) {
    let Some(mut entry) = EVENTS.reserve::<SysctlEvent>(0) else {
        shared::count_lost(&LOST, lost::EVENTS_FULL);
        return;
    };
    let p = entry.as_mut_ptr();
    // From the task struct, not bpf_get_current_pid_tgid/comm: cgroup
    // programs may call those only from 6.1 on (5.10 refuses the load).
    let (pid, tid, comm) = task.unwrap_or((0, 0, [0; COMM_LEN]));
    let mut flags = if refused { SF_REFUSED } else { 0 };
    let netns = match netns {
        Some(ns) => {
            flags |= SF_NETNS;
            ns
        }
        None => 0,
    };
    // SAFETY: `p` is the reserved record, SysctlEvent-sized and writable
    // until submitted; every field is plain data, written in place (the
    // record is too big for the stack). The helpers write at most the
    // length given into the buffers, which are that long, NUL-terminated.
    unsafe {
        (*p).ts_ns = bpf_ktime_get_boot_ns();
        (*p).cgroup_id = bpf_get_current_cgroup_id();
        (*p).pid = pid;
        (*p).tid = tid;
        (*p).uid = bpf_get_current_uid_gid() as u32;
        (*p).netns = netns;
        (*p)._ret = 0;
        (*p).kind = KIND_SYSCTL;
        (*p).which = which;
        (*p).comm = comm;
        let old = bpf_sysctl_get_current_value(
            ctx.sysctl,
            (*p).old.as_mut_ptr() as *mut c_char,
            SYSCTL_VALUE_LEN as u64,
        );
        flags |= flags_of(old, SF_OLD, SF_OLD_TRUNC);
        if flags & SF_OLD == 0 {
            (*p).old[0] = 0;
        }
        let new = bpf_sysctl_get_new_value(
            ctx.sysctl,
            (*p).new.as_mut_ptr() as *mut c_char,
            SYSCTL_VALUE_LEN as u64,
        );
        if new < 0 && new != -E2BIG {
            (*p).new[0] = 0;
        }
        flags |= flags_of(new, 0, SF_NEW_TRUNC);
        (*p).flags = flags;
    }
    entry.submit(0);
}
