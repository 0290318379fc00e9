//! IPVS scheduling: the connection entry IPVS makes for a stolen SYN-ACK.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};
use portwatch_common::{
    StealEvent, SynAckKey, AF_INET, AF_INET6, PROBE_FEXIT, PROBE_KPROBE, SOFF_IPVS, STEAL_IPVS,
};
use portwatch_ebpf::{net::IPPROTO_TCP, shared::read_k};

use crate::{emit_steal, steal_offsets, SYNACKS};

/// `struct ip_vs_conn *ip_vs_conn_new(const struct ip_vs_conn_param *p,
///   int dest_af, const union nf_inet_addr *daddr, __be16 dport, ...)`:
/// IPVS made a connection entry. Reported only for a connection whose
/// SYN-ACK was just seen on a guarded port (a stolen reply), not for the
/// node's ordinary IPVS traffic.
#[kprobe]
pub fn pw_kp_ipvs_conn_new(ctx: ProbeContext) -> u32 {
    let arg = |n| ctx.arg(n).unwrap_or(0);
    let _ = conn_new(arg(0), arg(1), arg(2), arg(3), PROBE_KPROBE);
    0
}

/// The same on fexit, where the kernel has it for ip_vs (portwatch loads
/// it against the module's BTF). The arguments are the context's u64
/// slots; an int or `__be16` sits in the low bits of its slot, as in a
/// register.
#[fexit(function = "ip_vs_conn_new")]
pub fn pw_fx_ipvs_conn_new(ctx: FExitContext) -> i32 {
    let _ = conn_new(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3), PROBE_FEXIT);
    0
}

/// A `union nf_inet_addr` as the SYN-ACK key stores it: IPv4 in the first
/// 4 bytes, IPv6 in all 16.
///
/// # Safety
/// `at` must be a kernel address (the read is checked by the helper).
#[inline(always)]
unsafe fn inet_addr(af: u16, at: u64) -> Option<[u8; 16]> {
    let mut a = [0u8; 16];
    if af == AF_INET {
        // SAFETY: a checked read of 4 bytes.
        let v: [u8; 4] = unsafe { bpf_probe_read_kernel(at as *const [u8; 4]) }.ok()?;
        a[..4].copy_from_slice(&v);
    } else if af == AF_INET6 {
        // SAFETY: a checked read of 16 bytes.
        a = unsafe { bpf_probe_read_kernel(at as *const [u8; 16]) }.ok()?;
    } else {
        return None;
    }
    Some(a)
}

/// Both programs' body: the arguments as the kernel passed them.
#[inline(always)]
fn conn_new(p: u64, dest_af: u64, daddr: u64, dport: u64, probe: u8) -> Option<()> {
    let o = steal_offsets();
    if o.valid & SOFF_IPVS == 0 {
        return None;
    }
    // SAFETY: integers, pointers and address bytes, read through the
    // checking helpers at offsets from the ip_vs module's BTF.
    unsafe {
        let proto: u16 = read_k(p, o.cp_protocol)?;
        if proto != IPPROTO_TCP as u16 {
            return None;
        }
        let af: u16 = read_k(p, o.cp_af)?;
        let caddr_p: u64 = read_k(p, o.cp_caddr)?;
        let vaddr_p: u64 = read_k(p, o.cp_vaddr)?;
        let cport: u16 = read_k(p, o.cp_cport)?;
        let vport: u16 = read_k(p, o.cp_vport)?;
        let key = SynAckKey {
            local_addr: inet_addr(af, vaddr_p)?,
            remote_addr: inet_addr(af, caddr_p)?,
            local_port: u16::from_be(vport),
            remote_port: u16::from_be(cport),
        };
        SYNACKS.get(&key)?;
        let mut ev = StealEvent::zeroed();
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.kind = STEAL_IPVS;
        ev.probe = probe;
        ev.family = af;
        ev.local_port = key.local_port;
        ev.remote_port = key.remote_port;
        ev.local_addr = key.local_addr;
        ev.remote_addr = key.remote_addr;
        // The real server's family may differ (IPVS tunnels one to the other).
        let rs_af = dest_af as u16;
        ev.rs_family = rs_af;
        ev.rs_addr = inet_addr(rs_af, daddr)?;
        ev.rs_port = u16::from_be(dport as u16);
        emit_steal(&ev);
    }
    Some(())
}
