//! `portwatch check`: a one-shot audit that says what will fail before it
//! does. Every network namespace of the host (or those named with
//! `--netns`) is read from inside: its sysctls through a thread that has
//! entered it, its sockets through sock_diag opened there.
//!
//! Findings: `nodeport_overlap` (node netns only), `port_pressure`,
//! `time_wait_heavy`, `range_parity`. Each carries its evidence and, where
//! one command fixes it, that exact command.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::json;

use crate::{
    cmd::cli::CheckArgs,
    host::{
        holders::{comm_of, Holders},
        netns::{self, parse_port_range},
        ports::{self, PortSet},
        sockdiag::{self, PortFilter, Sock, STATE_LISTEN, STATE_TIME_WAIT},
        sysctl::{PORT_RANGE, RESERVED_PORTS, TW_REUSE},
    },
    pipeline::{cause::holder_counts, event::HolderCount, sink::SCHEMA_VERSION},
};

/// The kernel's default range: clear of the default NodePort range.
const DEFAULT_RANGE: (u16, u16) = (32768, 60999);
/// Exit code when something is at warning or above.
pub const EXIT_FINDINGS: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub schema: u32,
    pub kind: &'static str,
    pub check: &'static str,
    pub severity: Severity,
    pub netns: u32,
    /// How the netns was found: "node", "/run/netns/NAME", "pid 123 (comm)".
    #[serde(rename = "where")]
    pub place: String,
    /// The pod whose netns it is (uid and ids from the cgroup of a process
    /// in it; names null: `check` does not ask the runtime).
    pub pod: Option<crate::k8s::pods::Pod>,
    pub evidence: serde_json::Value,
    /// One command that fixes it, run as root on the node (null: no single command does).
    pub fix: Option<String>,
    /// The finding in plain words.
    pub message: String,
}

/// A network namespace to audit.
pub struct Target {
    pub ino: u32,
    /// None: portwatch's own (the node's).
    handle: Option<File>,
    pub place: String,
    /// What to put before a command to run it in this netns ("" for the node).
    enter: String,
    pub is_node: bool,
    /// A process in this netns, when one was seen (tells whose pod it is).
    pub pid: Option<u32>,
}

/// What was read from one netns.
pub struct NsState {
    pub range: (u16, u16),
    pub reserved: PortSet,
    pub tw_reuse: Option<u32>,
    /// TCP sockets with a local port in the range (Err: the table could
    /// not be read, so the socket checks are not made).
    pub socks: Result<Vec<Sock>, String>,
}

fn enter_prefix(path: &Path) -> String {
    let s = path.display().to_string();
    for dir in ["/run/netns/", "/var/run/netns/"] {
        if let Some(name) = s.strip_prefix(dir) {
            if !name.contains('/') {
                return format!("ip netns exec {name} ");
            }
        }
    }
    format!("nsenter --net={s} ")
}

fn open_ns(path: &Path) -> Result<(File, u32)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ino = f.metadata()?.ino() as u32;
    // Make sure it is a network namespace (setns would refuse it later anyway).
    let magic = {
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), &mut st) } == 0;
        ok.then_some(st.f_type as i64)
    };
    const NSFS_MAGIC: i64 = 0x6e736673;
    if magic != Some(NSFS_MAGIC) {
        bail!("{} is not a namespace file", path.display());
    }
    Ok((f, ino))
}

/// The targets: those named with `--netns`, or the node's netns and every
/// other one on the host (bind mounts under /run/netns, then /proc/*/ns/net).
pub fn discover(specs: &[String]) -> Result<Vec<Target>> {
    let own = netns::own_ino().context("reading portwatch's own netns")?;
    let mut out: Vec<Target> = vec![];
    let mut seen = HashSet::new();
    if !specs.is_empty() {
        for s in specs {
            let path = match s.parse::<u32>() {
                Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
                Err(_) => PathBuf::from(s),
            };
            let (f, ino) = open_ns(&path).with_context(|| format!("--netns {s}"))?;
            if !seen.insert(ino) {
                continue;
            }
            let is_node = ino == own;
            out.push(Target {
                ino,
                handle: (!is_node).then_some(f),
                place: if is_node {
                    "node".into()
                } else {
                    path.display().to_string()
                },
                enter: if is_node {
                    String::new()
                } else {
                    enter_prefix(&path)
                },
                is_node,
                pid: s.parse().ok(),
            });
        }
        return Ok(out);
    }
    seen.insert(own);
    out.push(Target {
        ino: own,
        handle: None,
        place: "node".into(),
        enter: String::new(),
        is_node: true,
        pid: Some(std::process::id()),
    });
    let mut named: Vec<PathBuf> = vec![];
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            named.extend(rd.flatten().map(|e| e.path()));
        }
    }
    named.sort();
    for p in named {
        if let Ok((f, ino)) = open_ns(&p) {
            if seen.insert(ino) {
                out.push(Target {
                    ino,
                    handle: Some(f),
                    place: p.display().to_string(),
                    enter: enter_prefix(&p),
                    is_node: false,
                    pid: None,
                });
            }
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Some(ino) = netns::ino_of(&p) else {
            continue;
        };
        if seen.contains(&ino) {
            // A named netns (CNI's /run/netns/cni-…) gets the first pid
            // seen in it: through it, the pod it belongs to.
            if let Some(t) = out.iter_mut().find(|t| t.ino == ino && t.pid.is_none()) {
                t.pid = Some(pid);
            }
            continue;
        }
        // A process may exit between the two looks: skip it then.
        if let Ok((f, ino2)) = open_ns(&p) {
            if ino2 == ino && seen.insert(ino) {
                out.push(Target {
                    ino,
                    handle: Some(f),
                    place: format!("pid {pid} ({})", comm_of(pid).unwrap_or_default()),
                    enter: enter_prefix(&p),
                    is_node: false,
                    pid: Some(pid),
                });
            }
        }
    }
    Ok(out)
}

pub fn read_state(t: &Target) -> Result<NsState> {
    let v = netns::read_sysctls(t.handle.as_ref(), &[PORT_RANGE, RESERVED_PORTS, TW_REUSE])
        .with_context(|| format!("sysctls of netns {} ({})", t.ino, t.place))?;
    let range = parse_port_range(&v[0])
        .with_context(|| format!("ip_local_port_range {:?} of netns {}", v[0].trim(), t.ino))?;
    let reserved = PortSet::parse(&v[1])
        .with_context(|| format!("ip_local_reserved_ports of netns {}", t.ino))?;
    let tw_reuse = v[2].trim().parse().ok();
    let socks = sockdiag::dump_in(
        t.handle.as_ref(),
        libc::IPPROTO_TCP as u8,
        PortFilter::SportRange(range.0, range.1),
    )
    .map_err(|e| format!("socket table of netns {} ({}): {e:#}", t.ino, t.place));
    Ok(NsState {
        range,
        reserved,
        tw_reuse,
        socks,
    })
}

/// Ports of IPVS virtual services, where the kernel has IPVS (in the node
/// netns, the one portwatch runs in).
pub fn ipvs_ports() -> Option<PortSet> {
    let services = crate::host::ipvs::read_services().ok()??;
    Some(PortSet::from_ranges(
        services.iter().map(|s| (s.port, s.port)),
    ))
}

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(a) => format!("[{a}]:{p}"),
        a => format!("{a}:{p}"),
    }
}

fn states_json(socks: &[&Sock]) -> BTreeMap<&'static str, u32> {
    let mut m = BTreeMap::new();
    for s in socks {
        *m.entry(sockdiag::state_name(s.state)).or_default() += 1;
    }
    m
}

/// The audit of one netns. `guarded`: NodePorts and IPVS ports (node only).
pub fn findings_for(
    t: &Target,
    st: &NsState,
    guarded: &PortSet,
    holders: &Holders,
) -> Vec<Finding> {
    let mut out = vec![];
    let (lo, hi) = st.range;
    let range = PortSet::range(lo, hi);
    let usable = ports::usable(st.range, &st.reserved);
    let reserved_in = st.reserved.intersect(&range);
    let finding = |check, severity, evidence, fix: Option<String>, message: String| Finding {
        schema: SCHEMA_VERSION,
        kind: "finding",
        check,
        severity,
        netns: t.ino,
        place: t.place.clone(),
        pod: t
            .pid
            .filter(|_| !t.is_node)
            .and_then(crate::k8s::pods::of_pid),
        evidence,
        fix,
        message,
    };

    if t.is_node {
        if let Some((uncovered, merged)) =
            crate::host::ports::exposed_guarded((lo, hi), &st.reserved, guarded)
        {
            out.push(finding(
                "nodeport_overlap",
                Severity::Critical,
                json!({
                    "port_range": [lo, hi],
                    "guarded": guarded.to_string(),
                    "reserved": st.reserved.to_string(),
                    "uncovered": uncovered.to_string(),
                    "uncovered_count": uncovered.len(),
                }),
                Some(format!(
                    "{}sysctl -w net.ipv4.ip_local_reserved_ports={merged}",
                    t.enter
                )),
                format!(
                    "ip_local_port_range {lo}-{hi} overlaps the guarded ports {guarded} and {} of them ({uncovered}) are not in ip_local_reserved_ports: a connect() may take a NodePort as its source port and break that service",
                    uncovered.len()
                ),
            ));
        }
    }

    // Sockets toward each destination, on usable ports of the range.
    let mut by_dst: HashMap<(IpAddr, u16), Vec<&Sock>> = HashMap::new();
    for s in st.socks.iter().flatten() {
        if s.state != STATE_LISTEN && s.dport != 0 && usable.contains(s.sport) {
            by_dst.entry((s.dst, s.dport)).or_default().push(s);
        }
    }
    let n_usable = usable.len();
    let mut hot: Vec<((IpAddr, u16), Vec<&Sock>)> = by_dst
        .into_iter()
        .filter(|(_, v)| n_usable > 0 && v.len() as u32 * 100 >= n_usable * 80)
        .collect();
    hot.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    for ((dst, dport), socks) in hot {
        let in_use = socks.len() as u32;
        let severity = if in_use * 100 >= n_usable * 95 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        let inodes: HashSet<u32> = socks.iter().map(|s| s.inode).collect();
        let owners = holders.resolve(Some(t.ino), &inodes);
        let hs: Vec<HolderCount> = holder_counts(socks.iter().copied(), &owners, 5);
        let states = states_json(&socks);
        let wider = (lo.min(DEFAULT_RANGE.0), hi.max(DEFAULT_RANGE.1));
        // Widening on the node must not open NodePorts that are not reserved.
        let opens_guarded = t.is_node
            && !PortSet::range(wider.0, wider.1)
                .intersect(guarded)
                .minus(&st.reserved)
                .is_empty();
        let fix = (wider != (lo, hi) && !opens_guarded).then(|| {
            format!(
                "{}sysctl -w net.ipv4.ip_local_port_range=\"{} {}\"",
                t.enter, wider.0, wider.1
            )
        });
        let target = endpoint(dst, dport);
        out.push(finding(
            "port_pressure",
            severity,
            json!({
                "daddr": dst,
                "dport": dport,
                "in_use": in_use,
                "usable": n_usable,
                "port_range": [lo, hi],
                "reserved": reserved_in.to_string(),
                "states": states,
                "holders": hs,
            }),
            fix,
            format!(
                "{in_use} of {n_usable} usable ports of ip_local_port_range {lo}-{hi} are in use toward {target} ({}%); at {n_usable} connect() fails with EADDRNOTAVAIL",
                in_use * 100 / n_usable
            ),
        ));
        let tw = states.get("TIME_WAIT").copied().unwrap_or(0);
        debug_assert_eq!(
            tw,
            socks.iter().filter(|s| s.state == STATE_TIME_WAIT).count() as u32
        );
        if tw * 2 > in_use {
            let fix = (st.tw_reuse != Some(1))
                .then(|| format!("{}sysctl -w net.ipv4.tcp_tw_reuse=1", t.enter));
            out.push(finding(
                "time_wait_heavy",
                Severity::Warning,
                json!({
                    "daddr": dst,
                    "dport": dport,
                    "time_wait": tw,
                    "in_use": in_use,
                    "tcp_tw_reuse": st.tw_reuse,
                }),
                fix,
                format!(
                    "{tw} of the {in_use} ports in use toward {target} are in TIME_WAIT (this side closed first); tcp_tw_reuse is {}",
                    st.tw_reuse
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "unreadable".into())
                ),
            ));
        }
    }

    if lo % 2 == hi % 2 && hi > lo + 1 {
        out.push(finding(
            "range_parity",
            Severity::Info,
            json!({ "port_range": [lo, hi] }),
            Some(format!(
                "{}sysctl -w net.ipv4.ip_local_port_range=\"{lo} {}\"",
                t.enter,
                hi - 1
            )),
            format!(
                "both ends of ip_local_port_range {lo}-{hi} are {}: the kernel advises different parities (connect() scans ports in pairs and may skip one)",
                if lo % 2 == 0 { "even" } else { "odd" }
            ),
        ));
    }
    out
}

#[derive(Serialize)]
struct Summary {
    schema: u32,
    kind: &'static str,
    netns_checked: usize,
    netns_skipped: usize,
    /// Netns whose socket table could not be read: no port_pressure /
    /// time_wait_heavy verdict there (exit 1 unless something else gives 3).
    netns_sockets_unreadable: usize,
    findings: usize,
    critical: usize,
    warning: usize,
    info: usize,
    guarded: String,
    ipvs: bool,
    exit: u8,
}

/// Runs the audit; returns the exit code (0 or 3).
pub fn run(args: &CheckArgs) -> Result<u8> {
    let targets = discover(&args.netns)?;
    let ipvs = ipvs_ports();
    let mut guarded = PortSet::range(args.nodeport_range.0, args.nodeport_range.1);
    if let Some(p) = &ipvs {
        guarded = guarded.union(p);
    }
    let holders = Holders::new();
    let mut all: Vec<Finding> = vec![];
    let mut checked = 0;
    let mut skipped = 0;
    let mut unreadable: Vec<String> = vec![];
    for t in &targets {
        match read_state(t) {
            Ok(st) => {
                checked += 1;
                if let Err(e) = &st.socks {
                    unreadable.push(e.clone());
                }
                all.extend(findings_for(t, &st, &guarded, &holders));
            }
            // Named ones must be readable; found ones may vanish meanwhile.
            Err(e) if !args.netns.is_empty() || t.is_node => return Err(e),
            Err(e) => {
                skipped += 1;
                log::info!("skipping netns {} ({}): {e:#}", t.ino, t.place);
            }
        }
    }
    // Worst first; the discovery order (node first) within a severity.
    all.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let count = |s| all.iter().filter(|f| f.severity == s).count();
    let exit = if all.iter().any(|f| f.severity >= Severity::Warning) {
        EXIT_FINDINGS
    } else if !unreadable.is_empty() {
        // Nothing found, but not everything could be looked at.
        1
    } else {
        0
    };
    let summary = Summary {
        schema: SCHEMA_VERSION,
        kind: "summary",
        netns_checked: checked,
        netns_skipped: skipped,
        netns_sockets_unreadable: unreadable.len(),
        findings: all.len(),
        critical: count(Severity::Critical),
        warning: count(Severity::Warning),
        info: count(Severity::Info),
        guarded: guarded.to_string(),
        ipvs: ipvs.is_some(),
        exit,
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let res = if args.json {
        write_json(&mut out, &all, &summary)
    } else {
        write_table(&mut out, &all, &summary)
    };
    match res.and_then(|_| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the findings")
        }
        _ => {}
    }
    if let Some(first) = unreadable.first() {
        eprintln!(
            "portwatch: port_pressure and time_wait_heavy not checked in {} netns: {first}",
            unreadable.len()
        );
    }
    Ok(exit)
}

fn write_json(out: &mut impl Write, all: &[Finding], s: &Summary) -> io::Result<()> {
    for f in all {
        writeln!(out, "{}", serde_json::to_string(f).expect("serializes"))?;
    }
    writeln!(out, "{}", serde_json::to_string(s).expect("serializes"))
}

fn write_table(out: &mut impl Write, all: &[Finding], s: &Summary) -> io::Result<()> {
    if !all.is_empty() {
        writeln!(
            out,
            "{:<9} {:<17} {:<10} WHERE",
            "SEVERITY", "CHECK", "NETNS"
        )?;
    }
    for f in all {
        writeln!(
            out,
            "{:<9} {:<17} {:<10} {}",
            f.severity.name(),
            f.check,
            f.netns,
            f.place
        )?;
        writeln!(out, "  \u{2514} {}", f.message)?;
        if let Some(fix) = &f.fix {
            writeln!(out, "    fix: {fix}")?;
        }
    }
    writeln!(
        out,
        "checked {} network namespace{}{}: {} critical, {} warning, {} info (guarded ports {}{})",
        s.netns_checked,
        if s.netns_checked == 1 { "" } else { "s" },
        if s.netns_skipped > 0 {
            format!(" ({} gone while looking)", s.netns_skipped)
        } else {
            String::new()
        },
        s.critical,
        s.warning,
        s.info,
        s.guarded,
        if s.ipvs {
            ", IPVS services included"
        } else {
            ""
        },
    )?;
    if s.netns_sockets_unreadable > 0 {
        writeln!(
            out,
            "socket tables unreadable in {} network namespace{}: port_pressure and time_wait_heavy not checked there",
            s.netns_sockets_unreadable,
            if s.netns_sockets_unreadable == 1 { "" } else { "s" },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(is_node: bool) -> Target {
        Target {
            ino: 4026532000,
            handle: None,
            place: if is_node {
                "node".into()
            } else {
                "/run/netns/t".into()
            },
            enter: if is_node {
                String::new()
            } else {
                "ip netns exec t ".into()
            },
            is_node,
            pid: None,
        }
    }

    fn sock(state: u8, sport: u16, dport: u16) -> Sock {
        Sock {
            state,
            src: "10.0.0.1".parse().unwrap(),
            sport,
            dst: "10.0.0.9".parse().unwrap(),
            dport,
            inode: 0,
            uid: 0,
        }
    }

    fn state(range: (u16, u16), reserved: &str, socks: Vec<Sock>) -> NsState {
        NsState {
            range,
            reserved: PortSet::parse(reserved).unwrap(),
            tw_reuse: Some(0),
            socks: Ok(socks),
        }
    }

    fn checks(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.check).collect()
    }

    #[test]
    fn nodeport_overlap_fix_keeps_existing_reservations() {
        let g = PortSet::range(30000, 32767);
        let h = Holders::new();
        let f = findings_for(
            &target(true),
            &state((1024, 65535), "8080,31000-31010", vec![]),
            &g,
            &h,
        );
        assert_eq!(checks(&f), vec!["nodeport_overlap"]);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].fix.as_deref(),
            Some("sysctl -w net.ipv4.ip_local_reserved_ports=8080,30000-32767")
        );
        assert_eq!(f[0].evidence["uncovered"], "30000-30999,31011-32767");
        // Covered: no finding. Not the node: no finding.
        let covered = state((1024, 65535), "30000-32767", vec![]);
        assert!(findings_for(&target(true), &covered, &g, &h).is_empty());
        let pod = state((1024, 65535), "", vec![]);
        assert!(findings_for(&target(false), &pod, &g, &h).is_empty());
        // The default range does not touch the NodePorts.
        let dflt = state((32768, 60999), "", vec![]);
        assert!(findings_for(&target(true), &dflt, &g, &h).is_empty());
    }

    #[test]
    fn pressure_thresholds_and_time_wait() {
        let g = PortSet::range(30000, 32767);
        let h = Holders::new();
        // 6 ports, one reserved: 5 usable. 3 in use: nothing.
        let s3 = state(
            (42000, 42005),
            "42005",
            (42000..42003).map(|p| sock(1, p, 80)).collect(),
        );
        assert!(findings_for(&target(false), &s3, &g, &h).is_empty());
        // 4 of 5: warning, with the wider range as the fix.
        let s4 = state(
            (42000, 42005),
            "42005",
            (42000..42004).map(|p| sock(1, p, 80)).collect(),
        );
        let f = findings_for(&target(false), &s4, &g, &h);
        assert_eq!(checks(&f), vec!["port_pressure"]);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].evidence["in_use"], 4);
        assert_eq!(f[0].evidence["usable"], 5);
        assert_eq!(f[0].evidence["reserved"], "42005");
        assert_eq!(
            f[0].fix.as_deref(),
            Some("ip netns exec t sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\"")
        );
        // 5 of 5 with most in TIME_WAIT: critical, plus time_wait_heavy.
        let mut socks: Vec<Sock> = (42000..42003)
            .map(|p| sock(STATE_TIME_WAIT, p, 80))
            .collect();
        socks.extend((42003..42005).map(|p| sock(1, p, 80)));
        socks.push(sock(1, 42005, 80)); // a reserved port: not counted
        socks.push(sock(STATE_LISTEN, 42001, 0));
        let f = findings_for(
            &target(false),
            &state((42000, 42005), "42005", socks),
            &g,
            &h,
        );
        assert_eq!(checks(&f), vec!["port_pressure", "time_wait_heavy"]);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(
            f[0].evidence["states"],
            json!({"ESTABLISHED": 2, "TIME_WAIT": 3})
        );
        assert_eq!(f[1].evidence["tcp_tw_reuse"], 0);
        assert_eq!(
            f[1].fix.as_deref(),
            Some("ip netns exec t sysctl -w net.ipv4.tcp_tw_reuse=1")
        );
        // Spread over destinations: no single one under pressure.
        let spread = (42000..42005).map(|p| sock(1, p, p)).collect();
        assert!(findings_for(
            &target(false),
            &state((42000, 42005), "42005", spread),
            &g,
            &h
        )
        .is_empty());
    }

    #[test]
    fn unreadable_socket_table_still_gives_the_sysctl_findings() {
        let g = PortSet::range(30000, 32767);
        let mut st = state((1024, 65535), "", vec![]);
        st.socks = Err("no inet_diag".into());
        let f = findings_for(&target(true), &st, &g, &Holders::new());
        assert_eq!(checks(&f), vec!["nodeport_overlap"]);
    }

    #[test]
    fn parity_is_info_only() {
        let g = PortSet::range(30000, 32767);
        let f = findings_for(
            &target(false),
            &state((41000, 41004), "", vec![]),
            &g,
            &Holders::new(),
        );
        assert_eq!(checks(&f), vec!["range_parity"]);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(
            f[0].fix.as_deref(),
            Some("ip netns exec t sysctl -w net.ipv4.ip_local_port_range=\"41000 41003\"")
        );
        let f = findings_for(
            &target(false),
            &state((41000, 41003), "", vec![]),
            &g,
            &Holders::new(),
        );
        assert!(f.is_empty());
    }

    #[test]
    fn enter_prefixes() {
        assert_eq!(
            enter_prefix(Path::new("/run/netns/ab")),
            "ip netns exec ab "
        );
        assert_eq!(
            enter_prefix(Path::new("/proc/12/ns/net")),
            "nsenter --net=/proc/12/ns/net "
        );
    }
}
