//! The audit of one network namespace: what will fail before it does.
//!
//! Findings: `nodeport_overlap` (node netns only), `port_pressure`,
//! `time_wait_heavy`, `range_parity`. Each carries its evidence and, where
//! one command fixes it, that exact command.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use serde::Serialize;
use serde_json::json;

use crate::{
    host::{
        discover::{NsState, Target},
        holders::Holders,
        ports::{self, PortSet},
        sockdiag::{self, Sock, STATE_LISTEN, STATE_TIME_WAIT},
    },
    pipeline::{
        cause::holder_counts, event::HolderCount, lastwrite::LastWrite, schema::FINDING_SCHEMA,
        sysctl::Name,
    },
};

/// The kernel's default range: clear of the default NodePort range.
const DEFAULT_RANGE: (u16, u16) = (32768, 60999);

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
    /// The last write `serve` saw of the sysctl this finding is about, in
    /// this netns (null: none seen, or no `serve` on the node).
    pub last_write: Option<LastWrite>,
}

/// The sysctls whose values make a check's finding: whose last writer
/// `check` names.
pub fn sysctls_of(check: &str) -> &'static [Name] {
    match check {
        "nodeport_overlap" | "port_pressure" => &[Name::PortRange, Name::ReservedPorts],
        "range_parity" => &[Name::PortRange],
        "time_wait_heavy" => &[Name::TwReuse],
        _ => &[],
    }
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
        schema: FINDING_SCHEMA,
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
        last_write: None,
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
}
