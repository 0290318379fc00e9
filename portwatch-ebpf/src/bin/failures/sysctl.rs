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
    maps::Array,
    programs::SysctlContext,
};
use portwatch_common::{
    lost, sysctl_name_words, SysctlEvent, SysctlGuard, COMM_LEN, GUARD_SPANS, KIND_SYSCTL,
    SF_NETNS, SF_NEW_TRUNC, SF_OLD, SF_OLD_TRUNC, SF_REFUSED, SYSCTL_NAMES, SYSCTL_NAME_LEN,
    SYSCTL_NAME_WORDS, SYSCTL_PORT_RANGE, SYSCTL_VALUE_LEN,
};
use portwatch_ebpf::shared;

use crate::{offsets, EVENTS, LOST};

/// What `serve --guard-port-range` refuses; zero (off) unless userspace
/// fills it.
#[map]
static SYSCTL_GUARD: Array<SysctlGuard> = Array::with_max_entries(1, 0);

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

#[cgroup_sysctl]
pub fn pw_sysctl(ctx: SysctlContext) -> i32 {
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
    let refuse = which == SYSCTL_PORT_RANGE && exposes_guarded(&ctx, netns);
    report(&ctx, which, netns, shared::task_ids(&o), refuse);
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
