//! Stage 5: which events the operator asked to see.

use crate::{
    k8s::pods::Pod,
    pipeline::{
        event::{Errno, Event},
        sysctl::SysctlWrite,
    },
};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub errno: Option<Errno>,
    pub dport: Option<u16>,
    /// The pod's namespace (a name: known from the CRI look-up only).
    pub namespace: Option<String>,
    /// The pod's name (from the CRI look-up), or a prefix of its uid.
    pub pod: Option<String>,
    /// The container's name (from the CRI look-up), or a prefix of its id.
    pub container: Option<String>,
    /// Host processes only: events with no pod.
    pub host: bool,
}

/// `want` is the name, or a non-empty prefix of the id.
fn name_or_prefix(name: Option<&str>, id: Option<&str>, want: &str) -> bool {
    name == Some(want) || (!want.is_empty() && id.is_some_and(|i| i.starts_with(want)))
}

impl Filter {
    /// Whether `ev` may still match once the names of its pod, being looked
    /// up (`names_pending`), are known: every criterion but the names is
    /// decided now. The final word is `matches`, once the names are in.
    pub fn could_match(&self, ev: &Event, names_pending: bool) -> bool {
        if !names_pending || ev.pod.is_none() {
            return self.matches(ev);
        }
        let undecided = Filter {
            namespace: None,
            pod: None,
            container: None,
            ..self.clone()
        };
        // A process in the pod's own cgroup has no container to be named.
        undecided.matches(ev)
            && (self.container.is_none()
                || ev.pod.as_ref().is_some_and(|p| p.container_id.is_some()))
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.errno.is_none_or(|e| ev.errno == e)
            && self.dport.is_none_or(|d| ev.dport == Some(d))
            && self.matches_who(ev.pid, &ev.comm, ev.pod.as_ref())
    }

    /// A sysctl write: the criteria about who wrote it. It has no errno and
    /// no destination, so `--errno` and `--dport` leave it out.
    pub fn matches_sysctl(&self, w: &SysctlWrite) -> bool {
        self.errno.is_none()
            && self.dport.is_none()
            && self.matches_who(w.pid, &w.comm, w.pod.as_ref())
    }

    /// As `could_match`, for a sysctl write.
    pub fn could_match_sysctl(&self, w: &SysctlWrite, names_pending: bool) -> bool {
        if !names_pending || w.pod.is_none() {
            return self.matches_sysctl(w);
        }
        let undecided = Filter {
            namespace: None,
            pod: None,
            container: None,
            ..self.clone()
        };
        undecided.matches_sysctl(w)
            && (self.container.is_none()
                || w.pod.as_ref().is_some_and(|p| p.container_id.is_some()))
    }

    /// Process and pod criteria.
    fn matches_who(&self, pid: u32, comm: &str, pod: Option<&Pod>) -> bool {
        self.pid.is_none_or(|p| pid == p)
            && self.comm.as_deref().is_none_or(|c| comm == c)
            && (!self.host || pod.is_none())
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| pod.and_then(|p| p.namespace.as_deref()) == Some(n))
            && self.pod.as_deref().is_none_or(|want| {
                pod.is_some_and(|p| {
                    name_or_prefix(p.name.as_deref(), Some(&p.uid), &want.to_ascii_lowercase())
                        || p.name.as_deref() == Some(want)
                })
            })
            && self.container.as_deref().is_none_or(|want| {
                pod.is_some_and(|p| {
                    name_or_prefix(
                        p.container.as_deref(),
                        p.container_id.as_deref(),
                        &want.to_ascii_lowercase(),
                    ) || p.container.as_deref() == Some(want)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::pods::Pod;
    use crate::pipeline::event::tests::sample_event;

    const UID: &str = "0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
    const CID: &str = "4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

    fn in_pod(named: bool) -> crate::pipeline::event::Event {
        let mut ev = sample_event();
        ev.cgroup = Some(format!("/kubepods/burstable/pod{UID}/{CID}"));
        ev.pod = Some(Pod {
            namespace: named.then(|| "shop".into()),
            name: named.then(|| "web-1".into()),
            uid: UID.into(),
            container: named.then(|| "nginx".into()),
            container_id: Some(CID.into()),
        });
        ev
    }

    fn f(set: impl FnOnce(&mut Filter)) -> Filter {
        let mut f = Filter::default();
        set(&mut f);
        f
    }

    #[test]
    fn pod_filters() {
        let host = sample_event();
        let anon = in_pod(false);
        let named = in_pod(true);
        // --host: only events with no pod.
        let h = f(|f| f.host = true);
        assert!(h.matches(&host));
        assert!(!h.matches(&anon) && !h.matches(&named));
        // --namespace: names only, so nothing matches until names are known.
        // While they are being looked up, the event is kept for the final word.
        let ns = f(|f| f.namespace = Some("shop".into()));
        assert!(ns.matches(&named));
        assert!(ns.could_match(&anon, true));
        assert!(!ns.could_match(&anon, false));
        assert!(
            !ns.could_match(&host, true),
            "a host process has no names to wait for"
        );
        let mut own = anon.clone();
        own.pod.as_mut().unwrap().container_id = None;
        assert!(!f(|f| f.container = Some("nginx".into())).could_match(&own, true));
        assert!(f(|f| f.container = Some("nginx".into())).could_match(&anon, true));
        assert!(
            !f(|f| {
                f.pod = Some("web-1".into());
                f.dport = Some(7101);
            })
            .could_match(&anon, true),
            "what is known now still decides"
        );

        assert!(!ns.matches(&anon) && !ns.matches(&host));
        assert!(!f(|f| f.namespace = Some("shopx".into())).matches(&named));
        // --pod: the name, or a prefix of the uid.
        for want in ["web-1", "0f5e5e8a", UID, "0F5E5E8A"] {
            let p = f(|f| f.pod = Some(want.into()));
            assert!(p.matches(&named), "{want}");
            assert!(!p.matches(&host), "{want}");
        }
        assert!(f(|f| f.pod = Some("0f5e".into())).matches(&anon));
        assert!(!f(|f| f.pod = Some("web-1".into())).matches(&anon));
        assert!(!f(|f| f.pod = Some("web".into())).matches(&named));
        assert!(!f(|f| f.pod = Some("1b2c".into())).matches(&named));
        assert!(!f(|f| f.pod = Some(String::new())).matches(&anon));
        // --container: the name, or a prefix of the id.
        for want in ["nginx", "4c5f1e2d3b4a", CID] {
            assert!(
                f(|f| f.container = Some(want.into())).matches(&named),
                "{want}"
            );
        }
        assert!(f(|f| f.container = Some("4c5f".into())).matches(&anon));
        assert!(!f(|f| f.container = Some("nginx".into())).matches(&anon));
        assert!(!f(|f| f.container = Some("5f1e".into())).matches(&anon));
        assert!(!f(|f| f.container = Some("4c5f".into())).matches(&host));
        let mut pod_only = anon.clone();
        pod_only.pod.as_mut().unwrap().container_id = None;
        assert!(!f(|f| f.container = Some("4c5f".into())).matches(&pod_only));
        // Combined with the others (AND), and with each other.
        assert!(f(|f| {
            f.pod = Some("0f5e".into());
            f.container = Some("4c5f".into());
            f.dport = Some(7100);
        })
        .matches(&anon));
        assert!(!f(|f| {
            f.pod = Some("0f5e".into());
            f.dport = Some(7101);
        })
        .matches(&anon));
        assert!(!f(|f| {
            f.host = true;
            f.pod = Some("0f5e".into());
        })
        .matches(&anon));
        assert!(!f(|f| {
            f.host = true;
            f.comm = Some("wget".into());
        })
        .matches(&host));
    }

    #[test]
    fn each_filter_selects() {
        let ev = sample_event();
        assert!(Filter::default().matches(&ev));
        assert!(Filter {
            pid: Some(ev.pid),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            pid: Some(ev.pid + 1),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            comm: Some("curl".into()),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            comm: Some("cur".into()),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            errno: Some(Errno::EADDRNOTAVAIL),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            errno: Some(Errno::EADDRINUSE),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            dport: Some(7100),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            dport: Some(7101),
            ..Default::default()
        }
        .matches(&ev));
        let mut bind = ev.clone();
        bind.dport = None;
        assert!(!Filter {
            dport: Some(7100),
            ..Default::default()
        }
        .matches(&bind));
        // Filters combine with AND.
        assert!(!Filter {
            pid: Some(ev.pid),
            comm: Some("wget".into()),
            ..Default::default()
        }
        .matches(&ev));
    }

    #[test]
    fn sysctl_writes_match_on_who_wrote_them() {
        let mut w = crate::pipeline::sysctl::tests::sample_write();
        assert!(Filter::default().matches_sysctl(&w));
        assert!(f(|f| f.pid = Some(4242)).matches_sysctl(&w));
        assert!(!f(|f| f.pid = Some(1)).matches_sysctl(&w));
        assert!(f(|f| f.comm = Some("sysctl".into())).matches_sysctl(&w));
        assert!(f(|f| f.host = true).matches_sysctl(&w));
        // Failure-only criteria leave writes out.
        assert!(!f(|f| f.errno = Some(Errno::EADDRNOTAVAIL)).matches_sysctl(&w));
        assert!(!f(|f| f.dport = Some(80)).matches_sysctl(&w));
        // A pod's write: matched by uid prefix now, by name once known.
        w.pod = in_pod(false).pod;
        assert!(!f(|f| f.host = true).matches_sysctl(&w));
        assert!(f(|f| f.pod = Some("0f5e5e8a".into())).matches_sysctl(&w));
        let ns = f(|f| f.namespace = Some("shop".into()));
        assert!(!ns.matches_sysctl(&w));
        assert!(ns.could_match_sysctl(&w, true));
        assert!(!ns.could_match_sysctl(&w, false));
        w.pod = in_pod(true).pod;
        assert!(ns.matches_sysctl(&w));
    }
}
