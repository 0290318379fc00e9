//! Stage 4: what the kernel side did not know, added in userspace.
//! Today: the `ip_local_port_range` of the event's netns, read when the event
//! arrives (cached per netns for a second, so a storm costs one read a second).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    event::Event,
    netns::{parse_port_range, read_sysctl_in, NetnsHandles},
};

const RANGE_TTL: Duration = Duration::from_secs(1);
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Default)]
pub struct Enricher {
    netns: NetnsHandles,
    ranges: HashMap<u32, (Option<(u16, u16)>, Instant)>,
}

impl Enricher {
    pub fn new() -> Enricher {
        Enricher::default()
    }

    pub fn enrich(&mut self, ev: &mut Event) {
        ev.port_range = ev
            .netns
            .and_then(|ino| self.port_range(ino, &[ev.tid, ev.pid]));
    }

    fn port_range(&mut self, ino: u32, pids: &[u32]) -> Option<(u16, u16)> {
        if let Some((r, t)) = self.ranges.get(&ino) {
            if t.elapsed() < RANGE_TTL {
                return *r;
            }
        }
        let r = if self.netns.is_own(ino) {
            std::fs::read_to_string(PORT_RANGE)
                .ok()
                .and_then(|s| parse_port_range(&s))
        } else {
            self.netns
                .get(ino, pids)
                .and_then(|f| read_sysctl_in(f, PORT_RANGE).ok())
                .and_then(|s| parse_port_range(&s))
        };
        if self.ranges.len() > 4096 {
            self.ranges.clear();
        }
        self.ranges.insert(ino, (r, Instant::now()));
        r
    }
}
