//! What `portwatch serve` exports, in Prometheus' text format.
//!
//! Cardinality is bounded by construction (docs/metrics.md):
//! - failures: kind (2) x errno (2) x cause (6) per pod, and at most
//!   `MAX_FAILURE_PODS` pods; past that, failures count under
//!   `namespace="", pod="_other"`;
//! - steals: guarded ports x outcomes (the guarded set is the NodePort range
//!   plus the IPVS services);
//! - in_use: at most `--max-destinations` destinations per netns, rewritten
//!   at every scan (destinations that fell out of the top disappear);
//! - usable: one per netns; check findings: checks x severities per pod;
//! - sysctl writes: names (4) x verdicts (6, `unknown` included) x refused
//!   (2) per pod, the pods counted with the failures' under
//!   `MAX_FAILURE_PODS`.

use std::{collections::HashSet, sync::Mutex};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    host::usage::DestUse,
    pipeline::{correlate::Report, event::Event, sysctl::SysctlWrite},
};

/// Pods with their own failure series; the rest share one `_other` series.
pub const MAX_FAILURE_PODS: usize = 1000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub errno: String,
    pub cause: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SysctlLabels {
    pub name: String,
    pub verdict: String,
    pub namespace: String,
    pub pod: String,
    pub refused: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StealLabels {
    pub port: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InUseLabels {
    pub namespace: String,
    pub pod: String,
    /// The netns inode: tells apart netns that are not pods (all "", "").
    pub netns: String,
    pub daddr: String,
    pub dport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsableLabels {
    pub namespace: String,
    pub pod: String,
    pub netns: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub check: String,
    pub severity: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub backend: String,
}

/// The (namespace, pod) labels of a pod: names when the runtime gave them,
/// else the uid as the pod; host processes get ("", "").
pub fn pod_labels(pod: Option<&crate::k8s::pods::Pod>) -> (String, String) {
    match pod {
        None => (String::new(), String::new()),
        Some(p) => (
            p.namespace.clone().unwrap_or_default(),
            p.name.clone().unwrap_or_else(|| p.uid.clone()),
        ),
    }
}

pub struct Metrics {
    registry: Registry,
    failures: Family<FailureLabels, Counter>,
    failure_pods: Mutex<HashSet<(String, String)>>,
    sysctl_writes: Family<SysctlLabels, Counter>,
    steals: Family<StealLabels, Counter>,
    near_misses: Family<StealLabels, Counter>,
    lost: Counter,
    in_use: Family<InUseLabels, Gauge>,
    usable: Family<UsableLabels, Gauge>,
    findings: Family<FindingLabels, Gauge>,
    build: Family<BuildLabels, Gauge>,
    scans: Counter,
    scan_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            failures: Family::default(),
            failure_pods: Mutex::new(HashSet::new()),
            sysctl_writes: Family::default(),
            steals: Family::default(),
            near_misses: Family::default(),
            lost: Counter::default(),
            in_use: Family::default(),
            usable: Family::default(),
            findings: Family::default(),
            build: Family::default(),
            scans: Counter::default(),
            scan_errors: Counter::default(),
        };
        m.registry.register(
            "portwatch_failures",
            "connect()/bind() failures with EADDRNOTAVAIL or EADDRINUSE, by why and by pod",
            m.failures.clone(),
        );
        m.registry.register(
            "portwatch_sysctl_writes",
            "writes of the port sysctls (ip_local_port_range, ip_local_reserved_ports, tcp_tw_reuse, ip_unprivileged_port_start), by what the write does, by pod, and whether --guard-port-range refused it",
            m.sysctl_writes.clone(),
        );
        m.registry.register(
            "portwatch_nodeport_steals",
            "SYN-ACKs for a local client taken by IPVS (the connection lost its reply), by local port and what became of the connection",
            m.steals.clone(),
        );
        m.registry.register(
            "portwatch_nodeport_near_misses",
            "SYN-ACKs for a local client on a guarded port that no IPVS service took",
            m.near_misses.clone(),
        );
        m.registry.register(
            "portwatch_events_lost",
            "kernel records dropped because a ring buffer was full",
            m.lost.clone(),
        );
        m.registry.register(
            "portwatch_ephemeral_ports_in_use",
            "ephemeral ports in use toward a destination from a netns (the top --max-destinations per netns, sampled each --scan-interval)",
            m.in_use.clone(),
        );
        m.registry.register(
            "portwatch_ephemeral_ports_usable",
            "ephemeral ports a netns can use: ip_local_port_range minus ip_local_reserved_ports",
            m.usable.clone(),
        );
        m.registry.register(
            "portwatch_check_findings",
            "findings of the last `portwatch check` run, by check and severity",
            m.findings.clone(),
        );
        m.registry.register(
            "portwatch_build_info",
            "1, labelled with the version and the probe backend attached",
            m.build.clone(),
        );
        m.registry.register(
            "portwatch_scans",
            "netns scans done (in_use, usable)",
            m.scans.clone(),
        );
        m.registry.register(
            "portwatch_scan_errors",
            "netns that could not be read during a scan (they may have gone meanwhile)",
            m.scan_errors.clone(),
        );
        m
    }

    pub fn build_info(&self, version: &str, backend: &str) {
        self.build.clear();
        self.build
            .get_or_create(&BuildLabels {
                version: version.into(),
                backend: backend.into(),
            })
            .set(1);
    }

    /// A pod's labels, or `("", "_other")` once `MAX_FAILURE_PODS` pods
    /// have their own series.
    fn capped_pod_labels(&self, pod: Option<&crate::k8s::pods::Pod>) -> (String, String) {
        let (mut namespace, mut pod) = pod_labels(pod);
        if !pod.is_empty() {
            let mut seen = self.failure_pods.lock().unwrap();
            let key = (namespace.clone(), pod.clone());
            if !seen.contains(&key) {
                if seen.len() >= MAX_FAILURE_PODS {
                    namespace.clear();
                    pod = "_other".into();
                } else {
                    seen.insert(key);
                }
            }
        }
        (namespace, pod)
    }

    pub fn sysctl_write(&self, w: &SysctlWrite) {
        let (namespace, pod) = self.capped_pod_labels(w.pod.as_ref());
        self.sysctl_writes
            .get_or_create(&SysctlLabels {
                name: w.name.dotted().into(),
                verdict: w
                    .assessment
                    .as_ref()
                    .map_or("unknown", |a| a.verdict.name())
                    .into(),
                namespace,
                pod,
                refused: w.refused.to_string(),
            })
            .inc();
    }

    pub fn failure(&self, ev: &Event) {
        let (namespace, pod) = self.capped_pod_labels(ev.pod.as_ref());
        self.failures
            .get_or_create(&FailureLabels {
                kind: ev.kind.name().into(),
                errno: ev.errno.name().into(),
                cause: ev.cause.map(|c| c.name()).unwrap_or("unknown").into(),
                namespace,
                pod,
            })
            .inc();
    }

    pub fn steal(&self, r: &Report) {
        let labels = StealLabels {
            port: r.local.port().to_string(),
            outcome: r.outcome.name().into(),
        };
        if r.steal {
            self.steals.get_or_create(&labels).inc();
        } else {
            self.near_misses.get_or_create(&labels).inc();
        }
    }

    pub fn lost(&self, n: u64) {
        self.lost.inc_by(n);
    }

    /// One scan's results replace the last one's.
    pub fn set_usage(&self, netns: &[NetnsUsage]) {
        self.in_use.clear();
        self.usable.clear();
        for n in netns {
            self.usable
                .get_or_create(&UsableLabels {
                    namespace: n.namespace.clone(),
                    pod: n.pod.clone(),
                    netns: n.ino.to_string(),
                })
                .set(n.usable as i64);
            for d in &n.top {
                self.in_use
                    .get_or_create(&InUseLabels {
                        namespace: n.namespace.clone(),
                        pod: n.pod.clone(),
                        netns: n.ino.to_string(),
                        daddr: d.daddr.to_string(),
                        dport: d.dport.to_string(),
                    })
                    .set(d.in_use as i64);
            }
        }
        self.scans.inc();
    }

    pub fn scan_errors(&self, n: u64) {
        self.scan_errors.inc_by(n);
    }

    /// One check run's counts replace the last one's.
    pub fn set_findings(&self, counts: &[(FindingLabels, u32)]) {
        self.findings.clear();
        for (l, n) in counts {
            self.findings.get_or_create(l).set(*n as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One netns as a scan saw it, with its labels.
#[derive(Debug, Clone)]
pub struct NetnsUsage {
    pub ino: u32,
    pub namespace: String,
    pub pod: String,
    pub usable: u32,
    /// Most used first, at most the bound.
    pub top: Vec<DestUse>,
}

/// Findings per (check, severity, namespace, pod), counted over netns.
pub fn count_findings<'a>(
    netns: impl IntoIterator<Item = (&'a str, &'a str, &'a [(&'static str, &'static str)])>,
) -> Vec<(FindingLabels, u32)> {
    let mut counts: std::collections::BTreeMap<(String, String, String, String), u32> =
        Default::default();
    for (namespace, pod, findings) in netns {
        for (check, severity) in findings {
            *counts
                .entry((
                    check.to_string(),
                    severity.to_string(),
                    namespace.to_string(),
                    pod.to_string(),
                ))
                .or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((check, severity, namespace, pod), n)| {
            (
                FindingLabels {
                    check,
                    severity,
                    namespace,
                    pod,
                },
                n,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sysctl::tests::sample_write;

    #[test]
    fn sysctl_writes_are_counted_by_name_verdict_pod_and_refusal() {
        let m = Metrics::new();
        let mut w = sample_write();
        m.sysctl_write(&w);
        w.refused = true;
        m.sysctl_write(&w);
        m.sysctl_write(&w);
        w.assessment = None;
        w.pod = crate::k8s::pods::parse_kube_path(
            "/kubepods/pod0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6/4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100",
        );
        m.sysctl_write(&w);
        let text = m.encode();
        for line in [
            r#"portwatch_sysctl_writes_total{name="net.ipv4.ip_local_port_range",verdict="creates_nodeport_overlap",namespace="",pod="",refused="false"} 1"#,
            r#"portwatch_sysctl_writes_total{name="net.ipv4.ip_local_port_range",verdict="creates_nodeport_overlap",namespace="",pod="",refused="true"} 2"#,
            r#"portwatch_sysctl_writes_total{name="net.ipv4.ip_local_port_range",verdict="unknown",namespace="",pod="0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6",refused="true"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
