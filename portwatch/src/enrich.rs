//! Stage 4: what the kernel side did not know, added in userspace: the
//! `ip_local_port_range` and `ip_local_reserved_ports` of the event's netns,
//! read when the event arrives (cached per netns for a second, so a storm
//! costs one read a second). It also hands out netns handles to the `cause`
//! stage's look-ups. And the event's cgroup path and pod (`pods`): the
//! cgroup id resolved through a cache, the pod uid and container id parsed
//! from the path.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    cause::NsHandle,
    event::Event,
    netns::{parse_port_range, read_sysctls, NetnsHandles},
    pods::{self, CgroupResolver},
    ports::PortSet,
};

const RANGE_TTL: Duration = Duration::from_secs(1);
pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

type Ports = (Option<(u16, u16)>, Option<PortSet>);

pub struct Enricher {
    netns: NetnsHandles,
    ranges: HashMap<u32, (Ports, Instant)>,
    cgroups: CgroupResolver,
}

impl Enricher {
    pub fn new() -> Enricher {
        Enricher {
            netns: NetnsHandles::default(),
            ranges: HashMap::new(),
            cgroups: CgroupResolver::new(),
        }
    }

    /// Where cgroup ids are resolved (None: no cgroup2 mount).
    pub fn cgroup_root(&self) -> Option<&std::path::Path> {
        self.cgroups.root()
    }

    pub fn enrich(&mut self, ev: &mut Event) {
        let (range, reserved) = match ev.netns {
            Some(ino) => self.ports(ino, &[ev.tid, ev.pid]),
            None => (None, None),
        };
        ev.port_range = range;
        ev.reserved = reserved;
        ev.cgroup = self.cgroups.resolve(ev.cgroup_id, &[ev.tid, ev.pid]);
        ev.pod = ev.cgroup.as_deref().and_then(pods::parse_kube_path);
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
        let paths = [PORT_RANGE, RESERVED_PORTS];
        let read = if self.netns.is_own(ino) {
            read_sysctls(None, &paths).ok()
        } else {
            self.netns
                .get(ino, pids)
                .and_then(|f| read_sysctls(Some(f), &paths).ok())
        };
        let r: Ports = match read {
            Some(v) => (parse_port_range(&v[0]), PortSet::parse(&v[1]).ok()),
            None => (None, None),
        };
        if self.ranges.len() > 4096 {
            self.ranges.clear();
        }
        self.ranges.insert(ino, (r.clone(), Instant::now()));
        r
    }
}
