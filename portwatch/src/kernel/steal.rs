//! nodeport-steal's programs attached: the SYN-ACK watch on each
//! interface's ingress (tc), the socket followers (tracepoints) and, where
//! the kernel has IPVS, its scheduling path (fexit on `ip_vs_conn_new`,
//! else a kprobe).

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
    load::{errno_of, load_object, program, STEAL_OBJECT},
    modfexit::{self, ModuleFexit, ENOTSUPP},
    probe::Probe,
    system,
    tpformat::Format,
};

/// The IPVS function probed, and its module.
const IPVS_FN: &str = "ip_vs_conn_new";
const IPVS_MODULE: &str = "ip_vs";

/// nodeport-steal, attached: the SYN-ACK watch (tc ingress), the socket
/// followers (tracepoints) and, where the kernel has IPVS, its scheduling
/// path (fexit or kprobe on `ip_vs_conn_new`).
pub struct StealAttached {
    pub ebpf: Ebpf,
    /// The probe on IPVS's scheduling path; None: packet path only. Holds
    /// the fexit's attachment: keep it for as long as the probe should stay.
    pub ipvs: Option<IpvsProbe>,
    /// Why the IPVS probe is missing, when it is.
    pub ipvs_missing: Option<String>,
    pub notes: Vec<String>,
}

/// What IPVS's scheduling path got.
pub struct IpvsProbe {
    /// fexit or kprobe.
    pub probe: Probe,
    /// Why not fexit, where the kprobe attached: "fexit: <why it failed>"
    /// or "--ipvs-probe kprobe".
    pub why_not_fexit: Option<String>,
    /// The fexit's attachment: detached when this is dropped.
    _fexit: Option<ModuleFexit>,
}

impl IpvsProbe {
    /// For the start-up line: "fexit on ip_vs_conn_new", or "kprobe on
    /// ip_vs_conn_new (fexit: why it failed)".
    pub fn describe(&self) -> String {
        let mut s = format!("{} on {IPVS_FN}", self.probe.name());
        if let Some(why) = &self.why_not_fexit {
            s.push_str(&format!(" ({why})"));
        }
        s
    }
}

/// Where the IPVS probe goes, found in the ip_vs module's BTF: the
/// function's BTF id (what an fexit is loaded for) and its arity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpvsFn {
    btf_id: u32,
    params: u32,
}

/// Offsets for the nodeport-steal programs: tracepoint layouts from tracefs,
/// `struct ip_vs_conn_param` from the ip_vs module's BTF when it is loaded,
/// with `ip_vs_conn_new` there (or why IPVS cannot be probed).
fn steal_offsets(notes: &mut Vec<String>) -> Result<(StealOffsets, Result<IpvsFn, String>)> {
    let mut o = StealOffsets::default();
    let ss = Format::read("sock", "inet_sock_set_state")?;
    set_state_offsets(&ss, &mut o)?;
    o.valid |= SOFF_STATE;
    match Format::read("tcp", "tcp_retransmit_skb").and_then(|rt| retransmit_offsets(&rt, &mut o)) {
        Ok(()) => o.valid |= SOFF_RETRANS,
        Err(e) => notes.push(format!("SYN retransmissions will not be counted: {e:#}")),
    }
    let ipvs = ipvs_module_btf().and_then(|m| {
        let params = ipvs_offsets(&m, &mut o)?;
        let btf_id = m.func_id(IPVS_FN).context("no BTF id for ip_vs_conn_new")?;
        Ok(IpvsFn { btf_id, params })
    });
    if ipvs.is_ok() {
        o.valid |= SOFF_IPVS;
    }
    Ok((o, ipvs.map_err(|e| format!("{e:#}"))))
}

/// The ip_vs module's BTF, or precisely what is missing: IPVS itself, or
/// (before 5.11, which added module BTF) only the BTF to probe it with.
/// vmlinux's BTF, which the module's continues, is read only then: without
/// IPVS nodeport-steal needs none.
fn ipvs_module_btf() -> Result<Btf> {
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
    Btf::from_sys_fs()?.module_from_sys_fs("ip_vs")
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

/// `struct ip_vs_conn_param` and `ip_vs_conn_new` (its arity returned),
/// from the ip_vs module's BTF.
pub(crate) fn ipvs_offsets(m: &Btf, o: &mut StealOffsets) -> Result<u32> {
    let params = match m.func_params(IPVS_FN) {
        Some(7) => 7,
        Some(n) => bail!("ip_vs_conn_new takes {n} arguments on this kernel, expected 7"),
        None => bail!("ip_vs_conn_new is not in the ip_vs module's BTF"),
    };
    o.cp_af = m.offset_of("ip_vs_conn_param", "af")?;
    o.cp_caddr = m.offset_of("ip_vs_conn_param", "caddr")?;
    o.cp_vaddr = m.offset_of("ip_vs_conn_param", "vaddr")?;
    o.cp_cport = m.offset_of("ip_vs_conn_param", "cport")?;
    o.cp_vport = m.offset_of("ip_vs_conn_param", "vport")?;
    o.cp_protocol = m.offset_of("ip_vs_conn_param", "protocol")?;
    Ok(params)
}

/// Why the fexit on `func` (of `params` arguments) did not attach, in
/// words an operator can act on.
pub(crate) fn fexit_reason(e: &anyhow::Error, func: &str, params: u32) -> String {
    match errno_of(e) {
        // Before 6.6, x86-64's BPF trampoline saves at most 6 arguments.
        Some(ENOTSUPP) if params > 6 => format!(
            "{e}: ENOTSUPP ({func} has {params} arguments; x86-64 fexit takes more than 6 from 6.6 on)"
        ),
        Some(ENOTSUPP) => format!("{e}: ENOTSUPP"),
        _ => format!("{e:#}"),
    }
}

/// The probe on `ip_vs_conn_new`: fexit, else the kprobe (unless `forced`
/// names one). The error says why neither (or the forced one) attached.
fn attach_ipvs(ebpf: &mut Ebpf, f: IpvsFn, forced: Option<Probe>) -> Result<IpvsProbe, String> {
    let why_not_fexit = if forced == Some(Probe::Kprobe) {
        "--ipvs-probe kprobe".to_string()
    } else {
        let target = modfexit::Target {
            module: Some(IPVS_MODULE),
            func: IPVS_FN,
            btf_id: f.btf_id,
        };
        match modfexit::load_attach(ebpf, STEAL_OBJECT, progs::FX_IPVS_CONN_NEW, &target) {
            Ok(link) => {
                log::info!(
                    "fexit on {IPVS_FN}: relocation and BTF look-up took {:?}, BPF_PROG_LOAD {:?}, the attach {:?}",
                    link.prepare_time,
                    link.load_time,
                    link.attach_time
                );
                return Ok(IpvsProbe {
                    probe: Probe::Fexit,
                    why_not_fexit: None,
                    _fexit: Some(link),
                });
            }
            Err(e) if forced == Some(Probe::Fexit) => {
                return Err(fexit_reason(&e, IPVS_FN, f.params))
            }
            Err(e) => format!("fexit: {}", fexit_reason(&e, IPVS_FN, f.params)),
        }
    };
    let res = (|| -> Result<()> {
        let p = kprobe_mut(ebpf, progs::KP_IPVS_CONN_NEW)?;
        p.load()
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("loading {}", progs::KP_IPVS_CONN_NEW))?;
        p.attach(IPVS_FN, 0)
            .map_err(|e| anyhow!(e))
            .context("attaching a kprobe to ip_vs_conn_new")?;
        Ok(())
    })();
    match res {
        Ok(()) => Ok(IpvsProbe {
            probe: Probe::Kprobe,
            why_not_fexit: Some(why_not_fexit),
            _fexit: None,
        }),
        Err(e) if forced.is_some() => Err(short_reason(Probe::Kprobe, &e)),
        Err(e) => Err(format!(
            "{why_not_fexit}; kprobe: {}",
            short_reason(Probe::Kprobe, &e)
        )),
    }
}

/// Attaches nodeport-steal's programs but the SYN-ACK watch (`attach_tc`
/// puts that on each interface). `ipvs_probe` forces the kind of probe on
/// IPVS (`--ipvs-probe`); None: fexit, else kprobe.
pub fn attach_nodeport(ipvs_probe: Option<Probe>) -> Result<StealAttached> {
    system::check_privileges()?;
    let mut notes = vec![];
    if let Some(n) = system::ensure_tracefs()? {
        notes.push(n);
    }
    let (offs, ipvs_fn) = steal_offsets(&mut notes)?;
    // The BTF read for IPVS is gone: its memory goes back before the load.
    system::release_free_memory();
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

    let (ipvs, ipvs_missing) = match ipvs_fn {
        Ok(f) => match attach_ipvs(&mut ebpf, f, ipvs_probe) {
            Ok(p) => (Some(p), None),
            Err(why) => match ipvs_probe {
                Some(p) => bail!(
                    "--ipvs-probe {} is not available for {IPVS_FN} on this kernel ({why})",
                    p.name()
                ),
                None => (None, Some(why)),
            },
        },
        // No IPVS, or nothing to read its arguments with: the same whatever
        // the choice (the packet path and IPVS's connection table remain).
        Err(why) => (None, Some(why)),
    };
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

    /// The start-up line's words for each outcome, and why fexit failed
    /// in an operator's words (errno 524 is unnamed in libc's text).
    #[test]
    fn says_which_probe_and_why_not_fexit() {
        let p = |probe, why: Option<&str>| IpvsProbe {
            probe,
            why_not_fexit: why.map(str::to_string),
            _fexit: None,
        };
        assert_eq!(p(Probe::Fexit, None).describe(), "fexit on ip_vs_conn_new");
        assert_eq!(
            p(Probe::Kprobe, Some("--ipvs-probe kprobe")).describe(),
            "kprobe on ip_vs_conn_new (--ipvs-probe kprobe)"
        );
        let enotsupp = anyhow::Error::from(std::io::Error::from_raw_os_error(ENOTSUPP))
            .context("attaching fexit to ip_vs_conn_new");
        assert_eq!(
            fexit_reason(&enotsupp, "ip_vs_conn_new", 7),
            "attaching fexit to ip_vs_conn_new: ENOTSUPP (ip_vs_conn_new has 7 arguments; x86-64 fexit takes more than 6 from 6.6 on)"
        );
        assert_eq!(
            fexit_reason(&enotsupp, "f", 2),
            "attaching fexit to ip_vs_conn_new: ENOTSUPP"
        );
        let eperm = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EPERM))
            .context("listing the kernel's BTF objects (needs CAP_SYS_ADMIN)");
        let why = fexit_reason(&eperm, "ip_vs_conn_new", 7);
        assert!(
            why.starts_with("listing the kernel's BTF objects (needs CAP_SYS_ADMIN): "),
            "{why}"
        );
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
