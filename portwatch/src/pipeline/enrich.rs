//! Stage 4: what the kernel side did not know, added in userspace: the
//! `ip_local_port_range` and `ip_local_reserved_ports` of the event's netns,
//! read when the event arrives (cached per netns for a second, so a storm
//! costs one read a second). It also hands out netns handles to the `cause`
//! stage's look-ups. And the event's cgroup path and pod (`pods`): the
//! cgroup id resolved through a cache, the pod uid and container id parsed
//! from the path, and their names from the container runtime (`cri`): from
//! its cache at once, or a slot the event waits for in the `cause` stage.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    host::{
        netns::{self, NetnsHandles},
        ports::PortSet,
        sockdiag::NsHandle,
        sysctl::{read_ports, PortSysctls},
    },
    k8s::{
        cri::{self, Cri, Lookup},
        pods::{self, CgroupResolver, Pod},
    },
    pipeline::event::Event,
};

const RANGE_TTL: Duration = Duration::from_secs(1);

type Ports = (Option<(u16, u16)>, Option<PortSet>);

pub struct Enricher {
    netns: NetnsHandles,
    ranges: HashMap<u32, (Ports, Instant)>,
    cgroups: CgroupResolver,
    cri: Cri,
}

impl Enricher {
    /// `cri_endpoint`: the runtime's CRI socket (None: the first of
    /// `cri::DEFAULT_ENDPOINTS` that answers). Without a cgroup2 mount
    /// there are no pods, and no runtime is asked. Netns handles whose
    /// namespace has gone are closed every `netns_sweep` (see `maintain`).
    /// `shared`: a runtime client already started (its thread and
    /// connection are used; `cri_endpoint` is then not looked at).
    pub fn new(
        cri_endpoint: Option<PathBuf>,
        shared: Option<&Cri>,
        netns_sweep: Duration,
    ) -> Result<Enricher> {
        let cgroups = CgroupResolver::new();
        let cri = match (cgroups.root(), shared) {
            (None, _) => Cri::off(),
            (Some(_), Some(c)) => c.handle(),
            (Some(_), None) => Cri::start(cri_endpoint)?,
        };
        Ok(Enricher {
            netns: NetnsHandles::with(netns_sweep, netns::cap_for(netns::nofile_limit())),
            ranges: HashMap::new(),
            cgroups,
            cri,
        })
    }

    /// What start-up says about pod identity, once, on stderr.
    pub fn pods_note(&self) -> String {
        let Some(root) = self.cgroups.describe() else {
            return "pods: no cgroup2 mount in /proc/self/mountinfo: cgroup and pod stay null on every event".into();
        };
        let ids = format!("pods: pod uid and container id come from cgroup paths under {root}");
        match self.cri.status() {
            cri::Status::Found { .. } => format!(
                "{ids}; pod, namespace and container names from the CRI runtime, {}",
                self.cri.status()
            ),
            cri::Status::NotFound(_) if self.cri.given() => format!(
                "WARNING: pods: the CRI endpoint given (--cri-endpoint or {}) does not answer, {}: pod, namespace and container names stay null until it does (it is asked again at most every {} s while events need names; a line here says when it answers); pod uid and container id still come from cgroup paths under {}",
                cri::ENDPOINT_ENV,
                self.cri.status(),
                cri::REPROBE_EVERY.as_secs(),
                root
            ),
            _ => format!(
                "{ids}; {}: pod, namespace and container names stay null (--namespace matches nothing; --pod/--container take a uid/id prefix; --cri-endpoint names the runtime's socket)",
                self.cri.status()
            ),
        }
    }

    /// Notified whenever a name look-up finishes.
    pub fn names_wake(&self) -> Arc<tokio::sync::Notify> {
        self.cri.wake()
    }

    /// Fills what userspace knows. Returns the slot of a name look-up still
    /// under way (the pod's names are then filled when it is, see
    /// `cause::Detailer`).
    pub fn enrich(&mut self, ev: &mut Event) -> Option<cri::Slot> {
        let (range, reserved) = match ev.netns {
            Some(ino) => self.ports(ino, &[ev.tid, ev.pid]),
            None => (None, None),
        };
        ev.port_range = range;
        ev.reserved = reserved;
        let (cgroup, pod, slot) = self.pod_of(ev.cgroup_id, &[ev.tid, ev.pid]);
        ev.cgroup = cgroup;
        ev.pod = pod;
        slot
    }

    /// The cgroup path of `cgroup_id` and its pod, with the names the
    /// runtime's cache has; the slot of a name look-up still under way.
    pub fn pod_of(
        &mut self,
        cgroup_id: u64,
        pids: &[u32],
    ) -> (Option<String>, Option<Pod>, Option<cri::Slot>) {
        let cgroup = self.cgroups.resolve(cgroup_id, pids);
        let mut pod = cgroup.as_deref().and_then(pods::parse_kube_path);
        let slot = match pod.as_mut().map(|p| (self.cri.names(cri::Key::of(p)), p)) {
            Some((Lookup::Known(Some(names)), p)) => {
                names.apply(p);
                None
            }
            Some((Lookup::Pending(slot), _)) => Some(slot),
            Some((Lookup::Known(None), _)) | None => None,
        };
        (cgroup, pod, slot)
    }

    /// The port settings of netns `ino` read now, past the cache (a sysctl
    /// write may just have changed them). None: the netns is gone.
    pub fn ports_now(&mut self, ino: u32, pids: &[u32]) -> Option<PortSysctls> {
        self.ranges.remove(&ino);
        if self.netns.is_own(ino) {
            read_ports(None, false).ok()
        } else {
            self.netns
                .get(ino, pids)
                .and_then(|f| read_ports(Some(f), false).ok())
        }
    }

    /// Periodic upkeep, called often (it does work only when due): closes
    /// the handles of namespaces no process or bind mount holds any more,
    /// and forgets their cached ranges.
    pub fn maintain(&mut self) {
        self.netns.sweep_if_due();
        self.ranges.retain(|_, (_, t)| t.elapsed() < RANGE_TTL);
    }

    /// A handle on netns `ino` for a look-up on another thread (None: gone).
    pub fn handle(&mut self, ino: u32, ev: &Event) -> Option<NsHandle> {
        if self.netns.is_own(ino) {
            return Some(NsHandle::Own);
        }
        self.netns.dup(ino, &[ev.tid, ev.pid]).map(NsHandle::File)
    }

    fn ports(&mut self, ino: u32, pids: &[u32]) -> Ports {
        if let Some((r, t)) = self.ranges.get(&ino) {
            if t.elapsed() < RANGE_TTL {
                return r.clone();
            }
        }
        let read = if self.netns.is_own(ino) {
            read_ports(None, false).ok()
        } else {
            self.netns
                .get(ino, pids)
                .and_then(|f| read_ports(Some(f), false).ok())
        };
        let r: Ports = match read {
            Some(p) => (p.range.ok(), p.reserved.ok()),
            None => (None, None),
        };
        if self.ranges.len() > 4096 {
            self.ranges.clear();
        }
        self.ranges.insert(ino, (r.clone(), Instant::now()));
        r
    }
}
