//! Writes of the sysctls that decide which ports connect() may pick
//! (`portwatch_common::SYSCTL_NAMES`), seen by a `cgroup/sysctl` program on
//! the cgroup2 root: every process below it, whatever its netns.
//!
//! Reads and other sysctls cost a name read and a compare, and go on
//! untouched. Every write of one of ours is reported, before the kernel
//! applies it, with the value it replaces and the one written.

use aya_ebpf::{
    cty::c_char,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_sysctl_get_current_value,
        bpf_sysctl_get_name, bpf_sysctl_get_new_value,
    },
    macros::cgroup_sysctl,
    programs::SysctlContext,
};
use portwatch_common::{
    lost, sysctl_name_words, SysctlEvent, COMM_LEN, KIND_SYSCTL, SF_NETNS, SF_NEW_TRUNC, SF_OLD,
    SF_OLD_TRUNC, SYSCTL_NAMES, SYSCTL_NAME_LEN, SYSCTL_NAME_WORDS, SYSCTL_VALUE_LEN,
};
use portwatch_ebpf::shared;

use crate::{offsets, EVENTS, LOST};

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
    if let Some(which) = which_of(&name) {
        report(&ctx, which);
    }
    ALLOW
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
fn report(ctx: &SysctlContext, which: u8) {
    let Some(mut entry) = EVENTS.reserve::<SysctlEvent>(0) else {
        shared::count_lost(&LOST, lost::EVENTS_FULL);
        return;
    };
    let p = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let o = offsets();
    let mut flags = 0u16;
    let netns = match shared::task_netns(&o) {
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
        (*p).pid = (pid_tgid >> 32) as u32;
        (*p).tid = pid_tgid as u32;
        (*p).uid = bpf_get_current_uid_gid() as u32;
        (*p).netns = netns;
        (*p)._ret = 0;
        (*p).kind = KIND_SYSCTL;
        (*p).which = which;
        (*p).comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
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
