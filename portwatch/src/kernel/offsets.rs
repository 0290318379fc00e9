//! Kernel struct offsets for the programs, from the running kernel's BTF.

use portwatch_common::{Offsets, OFF_FILES, OFF_NETNS, OFF_REGS, OFF_SOCK, OFF_SOCK_NET, OFF_TASK};

use crate::kernel::btf::Btf;

/// Looks every offset up; a group with any field missing is marked invalid
/// (the programs then skip it) and named in the returned notes.
pub fn from_btf(btf: &Btf) -> (Offsets, Vec<String>) {
    let mut t = Offsets::default();
    let mut notes = vec![];
    let mut valid = 0;
    // Fills the group's slots; its flag when every field was found.
    let mut group = |flag: u32, name: &str, fields: &mut [(&mut u32, &str, &str)]| -> u32 {
        let mut ok = true;
        for (slot, strukt, path) in fields.iter_mut() {
            match btf.offset_of(strukt, path) {
                Ok(off) => **slot = off,
                Err(e) => {
                    notes.push(format!("{name}: {e:#}"));
                    ok = false;
                }
            }
        }
        if ok {
            flag
        } else {
            0
        }
    };
    valid |= group(
        OFF_NETNS,
        "netns of task",
        &mut [
            (&mut t.task_nsproxy, "task_struct", "nsproxy"),
            (&mut t.nsproxy_net_ns, "nsproxy", "net_ns"),
            (&mut t.net_ns_inum, "net", "ns.inum"),
        ],
    );
    valid |= group(
        OFF_FILES,
        "socket of fd",
        &mut [
            (&mut t.task_files, "task_struct", "files"),
            (&mut t.files_fdt, "files_struct", "fdt"),
            (&mut t.fdt_max_fds, "fdtable", "max_fds"),
            (&mut t.fdt_fd, "fdtable", "fd"),
            (&mut t.file_private_data, "file", "private_data"),
            (&mut t.socket_file, "socket", "file"),
            (&mut t.socket_sk, "socket", "sk"),
        ],
    );
    valid |= group(
        OFF_SOCK,
        "socket fields",
        &mut [
            (&mut t.skc_daddr, "sock", "__sk_common.skc_daddr"),
            (&mut t.skc_rcv_saddr, "sock", "__sk_common.skc_rcv_saddr"),
            (&mut t.skc_dport, "sock", "__sk_common.skc_dport"),
            (&mut t.skc_num, "sock", "__sk_common.skc_num"),
            (&mut t.skc_family, "sock", "__sk_common.skc_family"),
            (&mut t.skc_v6_daddr, "sock", "__sk_common.skc_v6_daddr"),
            (
                &mut t.skc_v6_rcv_saddr,
                "sock",
                "__sk_common.skc_v6_rcv_saddr",
            ),
            (&mut t.sk_protocol, "sock", "sk_protocol"),
            (&mut t.socket_sk, "socket", "sk"),
        ],
    );
    valid |= group(
        OFF_SOCK_NET,
        "netns of socket",
        &mut [
            (&mut t.skc_net, "sock", "__sk_common.skc_net.net"),
            (&mut t.net_ns_inum, "net", "ns.inum"),
        ],
    );
    valid |= group(
        OFF_TASK,
        "pid and comm of task",
        &mut [
            (&mut t.task_tgid, "task_struct", "tgid"),
            (&mut t.task_pid, "task_struct", "pid"),
            (&mut t.task_comm, "task_struct", "comm"),
        ],
    );
    // The socket's netns needs the socket fields too.
    if valid & OFF_SOCK == 0 {
        valid &= !OFF_SOCK_NET;
    }
    if let Some((connect, bind)) = saved_registers(btf) {
        t.nr_connect = connect;
        t.nr_bind = bind;
        valid |= OFF_REGS;
    }
    t.valid = valid;
    (t, notes)
}

/// Where the syscall exit program may read a call's arguments from the
/// task's saved user registers: on x86-64, whose `struct pt_regs` the
/// program is built with (the first three arguments in di, si and dx),
/// when the kernel's BTF has them at those offsets. The syscall numbers of
/// connect() and bind() then tell the exit tracepoints apart.
fn saved_registers(btf: &Btf) -> Option<(u32, u32)> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    // r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di: 8 bytes each.
    for (reg, at) in [("dx", 96), ("si", 104), ("di", 112)] {
        if btf.offset_of("pt_regs", reg).ok()? != at {
            return None;
        }
    }
    Some((libc::SYS_connect as u32, libc::SYS_bind as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_every_offset() {
        // Every kernel portwatch supports has BTF with these fields; if this
        // fails the programs would silently lose netns / socket details.
        let Ok(btf) = Btf::from_sys_fs() else {
            panic!("no /sys/kernel/btf/vmlinux on this machine: portwatch needs kernel BTF");
        };
        let (o, notes) = from_btf(&btf);
        assert!(notes.is_empty(), "missing offsets: {notes:?}");
        assert_eq!(
            o.valid,
            OFF_NETNS | OFF_FILES | OFF_SOCK | OFF_SOCK_NET | OFF_TASK | OFF_REGS
        );
        assert_eq!((o.nr_connect, o.nr_bind), (42, 49), "x86-64's numbers");
        // tgid follows pid in task_struct on every kernel since 2.6.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        // skc_daddr starts struct sock on every kernel since 2.6.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert!(o.skc_num > 0 && o.sk_protocol > o.skc_num);
    }
}
