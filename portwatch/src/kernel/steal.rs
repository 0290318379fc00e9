//! nodeport-steal's programs attached: the SYN-ACK watch on each
//! interface's ingress (tc), the socket followers (tracepoints) and, where
//! the kernel has IPVS, its scheduling path (kprobe on `ip_vs_conn_new`).

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{
        tc::{self, TcAttachType},
        SchedClassifier,
    },
    Ebpf,
};

use portwatch_common::{
    globals, progs, StealOffsets, TpSockFields, SOFF_IPVS, SOFF_RETRANS, SOFF_STATE, TP_NO_FAMILY,
};

use crate::kernel::{
    attach::{kprobe_mut, load_attach_tracepoint, short_reason},
    btf::Btf,
    load::{load_object, program, STEAL_OBJECT},
    probe::Probe,
    system,
    tpformat::Format,
};

/// nodeport-steal, attached: the SYN-ACK watch (tc ingress), the socket
/// followers (tracepoints) and, where the kernel has IPVS, its scheduling
/// path (kprobe on `ip_vs_conn_new`).
pub struct StealAttached {
    pub ebpf: Ebpf,
    /// e.g. "kprobe on ip_vs_conn_new"; None: packet path only.
    pub ipvs: Option<String>,
    /// Why the IPVS probe is missing, when it is.
    pub ipvs_missing: Option<String>,
    pub notes: Vec<String>,
}

/// Offsets for the nodeport-steal programs: tracepoint layouts from tracefs,
/// `struct ip_vs_conn_param` from the ip_vs module's BTF when it is loaded.
fn steal_offsets(btf: &Btf, notes: &mut Vec<String>) -> Result<(StealOffsets, Option<String>)> {
    let mut o = StealOffsets::default();
    let ss = Format::read("sock", "inet_sock_set_state")?;
    set_state_offsets(&ss, &mut o)?;
    o.valid |= SOFF_STATE;
    match Format::read("tcp", "tcp_retransmit_skb").and_then(|rt| retransmit_offsets(&rt, &mut o)) {
        Ok(()) => o.valid |= SOFF_RETRANS,
        Err(e) => notes.push(format!("SYN retransmissions will not be counted: {e:#}")),
    }
    let ipvs_missing = match ipvs_module_btf(btf).and_then(|m| ipvs_offsets(&m, &mut o)) {
        Ok(()) => {
            o.valid |= SOFF_IPVS;
            None
        }
        Err(e) => Some(format!("{e:#}")),
    };
    Ok((o, ipvs_missing))
}

/// The ip_vs module's BTF, or precisely what is missing: IPVS itself, or
/// (before 5.11, which added module BTF) only the BTF to probe it with.
fn ipvs_module_btf(btf: &Btf) -> Result<Btf> {
    let loaded = std::path::Path::new("/proc/net/ip_vs").exists()
        || std::path::Path::new("/sys/module/ip_vs").exists();
    if !loaded {
        bail!("IPVS is not loaded on this kernel");
    }
    if !std::path::Path::new("/sys/kernel/btf/ip_vs").exists() {
        bail!(
            "no module BTF for ip_vs on this kernel (/sys/kernel/btf/ip_vs; kernels before 5.11 have none), so IPVS's arguments cannot be read"
        );
    }
    btf.module_from_sys_fs("ip_vs")
}

/// The socket and its 4-tuple (IPv4 and IPv6 addresses), named alike in
/// both tracepoint records. `family` is required where `need_family`;
/// otherwise a record without one (5.10's `tcp_retransmit_skb`) tells IPv4
/// by its v4-mapped `saddr_v6`.
fn tp_sock_fields(f: &Format, need_family: bool) -> Result<TpSockFields> {
    let family = match f.offset("family", 2) {
        Ok(off) => off,
        Err(e) if need_family || f.has("family") => return Err(e),
        Err(_) if f.has("saddr_v6") => TP_NO_FAMILY,
        Err(_) => bail!("no field family, and no saddr_v6 to tell IPv4 by"),
    };
    Ok(TpSockFields {
        skaddr: f.offset("skaddr", 8)?,
        sport: f.offset("sport", 2)?,
        dport: f.offset("dport", 2)?,
        family,
        saddr: f.offset("saddr", 4)?,
        daddr: f.offset("daddr", 4)?,
        saddr_v6: f.offset("saddr_v6", 16)?,
        daddr_v6: f.offset("daddr_v6", 16)?,
    })
}

/// `sock:inet_sock_set_state`'s fields, from its format.
pub(crate) fn set_state_offsets(ss: &Format, o: &mut StealOffsets) -> Result<()> {
    o.ss = tp_sock_fields(ss, true)?;
    o.ss_oldstate = ss.offset("oldstate", 4)?;
    o.ss_newstate = ss.offset("newstate", 4)?;
    o.ss_protocol = ss.offset("protocol", 2)?;
    Ok(())
}

/// `tcp:tcp_retransmit_skb`'s fields, from its format.
pub(crate) fn retransmit_offsets(rt: &Format, o: &mut StealOffsets) -> Result<()> {
    o.rt = tp_sock_fields(rt, false)?;
    o.rt_state = rt.offset("state", 4)?;
    Ok(())
}

/// `struct ip_vs_conn_param` and `ip_vs_conn_new`, from the ip_vs module's
/// BTF.
pub(crate) fn ipvs_offsets(m: &Btf, o: &mut StealOffsets) -> Result<()> {
    match m.func_params("ip_vs_conn_new") {
        Some(7) => {}
        Some(n) => bail!("ip_vs_conn_new takes {n} arguments on this kernel, expected 7"),
        None => bail!("ip_vs_conn_new is not in the ip_vs module's BTF"),
    }
    o.cp_af = m.offset_of("ip_vs_conn_param", "af")?;
    o.cp_caddr = m.offset_of("ip_vs_conn_param", "caddr")?;
    o.cp_vaddr = m.offset_of("ip_vs_conn_param", "vaddr")?;
    o.cp_cport = m.offset_of("ip_vs_conn_param", "cport")?;
    o.cp_vport = m.offset_of("ip_vs_conn_param", "vport")?;
    o.cp_protocol = m.offset_of("ip_vs_conn_param", "protocol")?;
    Ok(())
}

pub fn attach_nodeport() -> Result<StealAttached> {
    system::check_privileges()?;
    let mut notes = vec![];
    if let Some(n) = system::ensure_tracefs()? {
        notes.push(n);
    }
    let btf = Btf::from_sys_fs()?;
    let (offs, mut ipvs_missing) = steal_offsets(&btf, &mut notes)?;
    let mut ebpf = load_object(STEAL_OBJECT, |l| {
        l.override_global(globals::STEAL_OFFSETS, &offs, true);
    })?;

    for (prog, cat, name) in [
        (progs::TP_SOCK_STATE, "sock", "inet_sock_set_state"),
        (progs::TP_RETRANS, "tcp", "tcp_retransmit_skb"),
    ] {
        if prog == progs::TP_RETRANS && offs.valid & SOFF_RETRANS == 0 {
            continue;
        }
        load_attach_tracepoint(&mut ebpf, prog, cat, name)?;
    }
    tc_synack_mut(&mut ebpf)?
        .load()
        .map_err(|e| anyhow!(e))
        .context("loading the tc SYN-ACK program")?;

    let mut ipvs = None;
    if ipvs_missing.is_none() {
        let res = (|| -> Result<()> {
            let p = kprobe_mut(&mut ebpf, progs::KP_IPVS_CONN_NEW)?;
            p.load()
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("loading {}", progs::KP_IPVS_CONN_NEW))?;
            p.attach("ip_vs_conn_new", 0)
                .map_err(|e| anyhow!(e))
                .context("attaching a kprobe to ip_vs_conn_new")?;
            Ok(())
        })();
        match res {
            Ok(()) => ipvs = Some("kprobe on ip_vs_conn_new".to_string()),
            Err(e) => ipvs_missing = Some(short_reason(Probe::Kprobe, &e)),
        }
    }
    Ok(StealAttached {
        ebpf,
        ipvs,
        ipvs_missing,
        notes,
    })
}

fn tc_synack_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    program(ebpf, progs::TC_SYNACK)
}

/// Puts the SYN-ACK watch on `iface`'s ingress (adding the clsact qdisc
/// it needs when the interface has none yet).
pub fn attach_tc(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    // Fails with EEXIST when a clsact qdisc is already there, which is
    // fine, and is not needed at all where the kernel attaches through TCX
    // links (6.6+). Its error only matters if the attach fails too.
    let qdisc = tc::qdisc_add_clsact(iface).err();
    tc_synack_mut(ebpf)?
        .attach(iface, TcAttachType::Ingress)
        .map_err(|e| match qdisc {
            Some(q) => anyhow!(
                "{e} (adding a clsact qdisc failed first: {q}; is the sch_ingress module available?)"
            ),
            None => anyhow!(e),
        })
        .with_context(|| format!("attaching to the ingress of {iface}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5.10's `tcp:tcp_retransmit_skb` (Debian 5.10.0-46 cloud): no
    /// `family`; the kernel stores IPv4 addresses v4-mapped in `saddr_v6`.
    const RETRANS_510: &str =
        include_str!("../../fuzz/corpus/tracefs_format/tcp-tcp_retransmit_skb-5.10.format");

    #[test]
    fn retransmit_without_family_tells_ipv4_by_saddr_v6() {
        let f = Format::parse("tcp:tcp_retransmit_skb", RETRANS_510).unwrap();
        let mut o = StealOffsets::default();
        retransmit_offsets(&f, &mut o).unwrap();
        assert_eq!(o.rt.family, TP_NO_FAMILY);
        assert_eq!((o.rt.saddr_v6, o.rt.daddr_v6), (40, 56));
        assert_eq!((o.rt.saddr, o.rt.daddr, o.rt.sport), (32, 36, 28));
        assert_eq!(o.rt_state, 24);
        // inet_sock_set_state must have its family: no fallback there.
        assert!(set_state_offsets(&f, &mut o)
            .unwrap_err()
            .to_string()
            .contains("no field family"));
    }

    #[test]
    fn retransmit_with_family_uses_it() {
        let text = RETRANS_510.replace(
            "\tfield:__u8 saddr[4];\toffset:32;",
            "\tfield:__u16 family;\toffset:72;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:32;",
        );
        let f = Format::parse("tcp:tcp_retransmit_skb", &text).unwrap();
        let mut o = StealOffsets::default();
        retransmit_offsets(&f, &mut o).unwrap();
        assert_eq!((o.rt.family, o.rt.saddr_v6, o.rt.daddr_v6), (72, 40, 56));
        // A family of the wrong size is an error, not a reason to guess.
        let bad = text.replace("offset:72;\tsize:2;", "offset:72;\tsize:4;");
        let f = Format::parse("tcp:tcp_retransmit_skb", &bad).unwrap();
        assert!(retransmit_offsets(&f, &mut o).is_err());
        // Neither family nor saddr_v6: says what it lacks.
        let none = RETRANS_510.replace("saddr_v6", "other_v6");
        let f = Format::parse("tcp:tcp_retransmit_skb", &none).unwrap();
        let e = format!("{:#}", retransmit_offsets(&f, &mut o).unwrap_err());
        assert!(e.contains("no field family, and no saddr_v6"), "{e}");
    }
}
