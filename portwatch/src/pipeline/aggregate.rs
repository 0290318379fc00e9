//! `top`'s stage after the trace pipeline: the failures grouped by pod x
//! netns x kind x errno x destination (counts in the interval and since
//! start), each interval's summary taken with the ports in use toward
//! every destination seen failing (from `usage` samples).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use crate::{
    host::usage::{Dest, Usage},
    pipeline::{
        event::{Errno, Event, Kind, Proto},
        schema::rfc3339_micros,
    },
};

/// Version of the summary records; raised on any change to names or meaning.
pub const SCHEMA_VERSION: u32 = crate::pipeline::schema::SUMMARY_SCHEMA;

/// Who failed: a pod (by uid: names may come later) or the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Who {
    Host,
    Pod(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RowKey {
    who: Who,
    netns: Option<u32>,
    kind: Kind,
    errno: Errno,
    /// `Proto::name`.
    proto: Option<&'static str>,
    /// connect(): where to. bind(): none.
    dest: Option<Dest>,
}

#[derive(Debug, Default)]
struct Counts {
    now: u64,
    total: u64,
    /// The interval (`Agg::intervals`) of the latest failure.
    seen: u64,
    causes: BTreeMap<&'static str, u64>,
    /// The latest event's process.
    pid: u32,
    comm: String,
}

/// Pod names as the latest event carried them.
#[derive(Debug, Default, Clone)]
struct Names {
    namespace: Option<String>,
    name: Option<String>,
}

/// Rows kept without a new failure (at the default 2 s interval: 10 minutes).
const IDLE_INTERVALS: u64 = 300;
/// Rows kept at most (least recently failing dropped first).
const MAX_ROWS: usize = 5000;

/// The failures seen, by row, with the counts of the running interval.
#[derive(Debug, Default)]
pub struct Agg {
    rows: HashMap<RowKey, Counts>,
    /// Intervals summarised so far.
    intervals: u64,
    pods: HashMap<String, Names>,
    events_now: u64,
    events_total: u64,
    lost_now: u64,
    lost_total: u64,
}

/// One row of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `namespace/name` when known, else the pod uid, else `host`.
    pub pod: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub netns: Option<u32>,
    pub kind: Kind,
    pub errno: Errno,
    /// tcp, udp, ...
    pub proto: Option<&'static str>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    /// Failures in this interval.
    pub count: u64,
    /// Failures since start.
    pub total: u64,
    /// `total` by cause.
    pub causes: BTreeMap<&'static str, u64>,
    /// The latest failing process.
    pub pid: u32,
    pub comm: String,
    /// Ephemeral ports in use toward daddr:dport from the netns (TCP
    /// connect rows; null when unknown, see `usage_error`).
    pub in_use: Option<u32>,
    /// The netns's usable ephemeral ports (range less reserved).
    pub usable: Option<u32>,
    pub range: Option<[u16; 2]>,
    /// in_use / usable, in percent, one decimal.
    pub percent: Option<f64>,
    /// Why in_use is null on a row that should have it.
    pub usage_error: Option<String>,
}

/// What one interval prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub kind: &'static str,
    pub time: String,
    pub interval_ms: u64,
    /// What this summary's counts cover (the first and last may be shorter).
    pub window_ms: u64,
    /// The summary printed on exit.
    #[serde(rename = "final")]
    pub last: bool,
    pub events: u64,
    pub events_total: u64,
    /// Events the kernel side dropped (ring buffer full).
    pub lost: u64,
    pub lost_total: u64,
    pub rows: Vec<Row>,
}

/// A sample of one netns, or why there is none.
pub type Sampled = HashMap<u32, Result<Usage, String>>;

pub fn dest_of(ev: &Event) -> Option<Dest> {
    match ev.kind {
        Kind::Connect => Some((ev.daddr?.to_canonical(), ev.dport?)),
        Kind::Bind => None,
    }
}

impl Agg {
    pub fn record(&mut self, ev: &Event) {
        let who = match &ev.pod {
            Some(p) => {
                let n = self.pods.entry(p.uid.clone()).or_default();
                if p.namespace.is_some() || p.name.is_some() {
                    n.namespace = p.namespace.clone();
                    n.name = p.name.clone();
                }
                Who::Pod(p.uid.clone())
            }
            None => Who::Host,
        };
        let key = RowKey {
            who,
            netns: ev.netns,
            kind: ev.kind,
            errno: ev.errno,
            proto: ev.proto.map(Proto::name),
            dest: dest_of(ev),
        };
        let c = self.rows.entry(key).or_default();
        c.now += 1;
        c.total += 1;
        c.seen = self.intervals;
        if let Some(cause) = ev.cause {
            *c.causes.entry(cause.name()).or_default() += 1;
        }
        c.pid = ev.pid;
        if c.comm != ev.comm {
            c.comm = ev.comm.clone();
        }
        self.events_now += 1;
        self.events_total += 1;
    }

    pub fn lost(&mut self, n: u64) {
        self.lost_now += n;
        self.lost_total += n;
    }

    /// The TCP destinations seen failing, by netns: what to sample.
    pub fn destinations(&self) -> HashMap<u32, Vec<Dest>> {
        let mut by: HashMap<u32, HashSet<Dest>> = HashMap::new();
        for k in self.rows.keys() {
            if let (Some(ns), Some(d), Some("tcp")) = (k.netns, k.dest, k.proto) {
                by.entry(ns).or_default().insert(d);
            }
        }
        by.into_iter()
            .map(|(ns, s)| {
                let mut v: Vec<Dest> = s.into_iter().collect();
                v.sort();
                (ns, v)
            })
            .collect()
    }

    fn label(&self, who: &Who) -> (String, Names, Option<String>) {
        match who {
            Who::Host => ("host".into(), Names::default(), None),
            Who::Pod(uid) => {
                let n = self.pods.get(uid).cloned().unwrap_or_default();
                let label = match (&n.namespace, &n.name) {
                    (Some(ns), Some(name)) => format!("{ns}/{name}"),
                    (None, Some(name)) => name.clone(),
                    _ => uid.clone(),
                };
                (label, n, Some(uid.clone()))
            }
        }
    }

    /// The summary of the interval that ends now (its counts start over),
    /// with the ports in use from `sampled`.
    pub fn take_summary(
        &mut self,
        sampled: &Sampled,
        time_ns: u64,
        interval: Duration,
        window: Duration,
        last: bool,
    ) -> Summary {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(k, c)| {
                let (pod, names, uid) = self.label(&k.who);
                let mut r = Row {
                    pod,
                    namespace: names.namespace,
                    name: names.name,
                    uid,
                    netns: k.netns,
                    kind: k.kind,
                    errno: k.errno,
                    proto: k.proto,
                    daddr: k.dest.map(|d| d.0),
                    dport: k.dest.map(|d| d.1),
                    count: c.now,
                    total: c.total,
                    causes: c.causes.clone(),
                    pid: c.pid,
                    comm: c.comm.clone(),
                    in_use: None,
                    usable: None,
                    range: None,
                    percent: None,
                    usage_error: None,
                };
                if let Some(d) = k.dest {
                    match (k.netns, k.proto) {
                        (Some(ns), Some("tcp")) => match sampled.get(&ns) {
                            Some(Ok(u)) => {
                                let n = u.in_use(d);
                                r.in_use = Some(n);
                                r.usable = Some(u.usable);
                                r.range = Some([u.range.0, u.range.1]);
                                r.percent = u.percent(n);
                            }
                            Some(Err(e)) => r.usage_error = Some(e.clone()),
                            None => r.usage_error = Some("not sampled".into()),
                        },
                        (None, _) => r.usage_error = Some("the event named no netns".into()),
                        (_, _) => r.usage_error = Some("only TCP sockets are counted".into()),
                    }
                }
                r
            })
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.total.cmp(&a.total))
                .then_with(|| a.pod.cmp(&b.pod))
                .then(a.netns.cmp(&b.netns))
                .then(a.daddr.cmp(&b.daddr))
                .then(a.dport.cmp(&b.dport))
                .then(a.kind.name().cmp(b.kind.name()))
                .then(a.errno.name().cmp(b.errno.name()))
        });
        let s = Summary {
            schema: SCHEMA_VERSION,
            kind: "summary",
            time: rfc3339_micros(time_ns),
            interval_ms: interval.as_millis() as u64,
            window_ms: window.as_millis() as u64,
            last,
            events: self.events_now,
            events_total: self.events_total,
            lost: self.lost_now,
            lost_total: self.lost_total,
            rows,
        };
        for c in self.rows.values_mut() {
            c.now = 0;
        }
        self.events_now = 0;
        self.lost_now = 0;
        self.intervals += 1;
        self.forget_old();
        s
    }

    /// Bounds memory on a long run: rows without a failure for
    /// `IDLE_INTERVALS` go, and past `MAX_ROWS` the least recently failing
    /// go first (their counts leave the rows, not `events_total`).
    fn forget_old(&mut self) {
        let now = self.intervals;
        self.rows
            .retain(|_, c| now.saturating_sub(c.seen) <= IDLE_INTERVALS);
        if self.rows.len() > MAX_ROWS {
            let mut seen: Vec<u64> = self.rows.values().map(|c| c.seen).collect();
            seen.sort_unstable_by(|a, b| b.cmp(a));
            let cut = seen[MAX_ROWS - 1];
            self.rows.retain(|_, c| c.seen >= cut);
            // Ties at the cut: keep at most MAX_ROWS all the same.
            if self.rows.len() > MAX_ROWS {
                let drop: Vec<RowKey> = self
                    .rows
                    .iter()
                    .filter(|(_, c)| c.seen == cut)
                    .map(|(k, _)| k.clone())
                    .take(self.rows.len() - MAX_ROWS)
                    .collect();
                for k in drop {
                    self.rows.remove(&k);
                }
            }
        }
        let live: HashSet<&String> = self
            .rows
            .keys()
            .filter_map(|k| match &k.who {
                Who::Pod(uid) => Some(uid),
                Who::Host => None,
            })
            .collect();
        self.pods.retain(|uid, _| live.contains(uid));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        host::{ports::PortSet, usage::DestUse},
        k8s::pods::Pod,
        kernel::probe::Probe,
        pipeline::event::Cause,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub fn ev(kind: Kind, errno: Errno, netns: u32, dest: Option<(&str, u16)>) -> Event {
        Event {
            time_ns: 0,
            kind,
            errno,
            ret: -99,
            pid: 7,
            tid: 7,
            comm: "curl".into(),
            uid: 0,
            cgroup_id: 1,
            netns: Some(netns),
            proto: Some(Proto::Tcp),
            family: None,
            saddr: None,
            sport: None,
            daddr: dest.map(|d| ip(d.0)),
            dport: dest.map(|d| d.1),
            sock_port: None,
            probe: Probe::Tracepoint,
            port_range: None,
            reserved: None,
            cgroup: None,
            pod: None,
            cause: Some(Cause::PortsExhausted),
            detail: None,
            detail_complete: None,
        }
    }

    pub fn pod(uid: &str, names: Option<(&str, &str)>) -> Option<Pod> {
        Some(Pod {
            namespace: names.map(|n| n.0.into()),
            name: names.map(|n| n.1.into()),
            uid: uid.into(),
            container: None,
            container_id: None,
        })
    }

    pub fn usage(range: (u16, u16), dests: &[(&str, u16, u32)]) -> Usage {
        Usage {
            range,
            reserved: PortSet::new(),
            usable: (range.1 - range.0 + 1) as u32,
            total: dests.iter().map(|d| d.2).sum(),
            unconnected: 0,
            dests: dests
                .iter()
                .map(|&(a, p, n)| DestUse {
                    daddr: ip(a),
                    dport: p,
                    in_use: n,
                })
                .collect(),
        }
    }

    const EADDRNOTAVAIL: Errno = Errno::EADDRNOTAVAIL;

    #[test]
    fn groups_by_pod_errno_and_destination() {
        let mut a = Agg::default();
        let web = pod("0f5e5e8a-1111", None);
        for _ in 0..3 {
            let mut e = ev(Kind::Connect, EADDRNOTAVAIL, 10, Some(("10.0.0.9", 80)));
            e.pod = web.clone();
            a.record(&e);
        }
        // The same pod, its names known now: one row, labelled by name.
        let mut e = ev(
            Kind::Connect,
            EADDRNOTAVAIL,
            10,
            Some(("::ffff:10.0.0.9", 80)),
        );
        e.pod = pod("0f5e5e8a-1111", Some(("shop", "web-1")));
        e.cause = Some(Cause::TupleInUse);
        a.record(&e);
        // Host processes, another netns, a bind and a UDP connect.
        a.record(&ev(
            Kind::Connect,
            EADDRNOTAVAIL,
            20,
            Some(("10.0.0.9", 80)),
        ));
        a.record(&ev(Kind::Bind, Errno::EADDRINUSE, 20, None));
        let mut u = ev(Kind::Connect, EADDRNOTAVAIL, 20, Some(("10.0.0.7", 53)));
        u.proto = Some(Proto::Udp);
        a.record(&u);
        a.lost(2);

        let d = a.destinations();
        assert_eq!(d.len(), 2);
        assert_eq!(d[&10], vec![(ip("10.0.0.9"), 80)]);
        assert_eq!(d[&20], vec![(ip("10.0.0.9"), 80)], "UDP is not sampled");

        let mut sampled = Sampled::new();
        sampled.insert(10, Ok(usage((41000, 41003), &[("10.0.0.9", 80, 3)])));
        sampled.insert(20, Err("netns 20 is gone".into()));
        let s = a.take_summary(
            &sampled,
            1_700_000_000_000_000_000,
            Duration::from_secs(2),
            Duration::from_millis(2001),
            false,
        );
        assert_eq!(
            (s.events, s.events_total, s.lost, s.lost_total),
            (7, 7, 2, 2)
        );
        assert_eq!(s.rows.len(), 4, "{:#?}", s.rows);
        let r = &s.rows[0];
        assert_eq!(r.pod, "shop/web-1");
        assert_eq!(r.uid.as_deref(), Some("0f5e5e8a-1111"));
        assert_eq!((r.count, r.total), (4, 4));
        assert_eq!(r.daddr, Some(ip("10.0.0.9")), "v4-mapped folded into v4");
        assert_eq!(
            (r.in_use, r.usable, r.percent),
            (Some(3), Some(4), Some(75.0))
        );
        assert_eq!(r.range, Some([41000, 41003]));
        assert_eq!(r.causes["ports_exhausted"], 3);
        assert_eq!(r.causes["tuple_in_use"], 1);
        let host: Vec<&Row> = s.rows.iter().filter(|r| r.pod == "host").collect();
        assert_eq!(host.len(), 3);
        assert!(host.iter().all(|r| r.uid.is_none() && r.total == 1));
        let tcp = host
            .iter()
            .find(|r| r.kind == Kind::Connect && r.proto == Some("tcp"))
            .unwrap();
        assert_eq!(tcp.usage_error.as_deref(), Some("netns 20 is gone"));
        assert_eq!(tcp.in_use, None);
        let bind = host.iter().find(|r| r.kind == Kind::Bind).unwrap();
        assert_eq!((bind.daddr, bind.usage_error.as_deref()), (None, None));
        let udp = host.iter().find(|r| r.proto == Some("udp")).unwrap();
        assert_eq!(
            udp.usage_error.as_deref(),
            Some("only TCP sockets are counted")
        );

        // The next interval: counts start over, totals stay.
        let mut e = ev(Kind::Bind, Errno::EADDRINUSE, 20, None);
        e.cause = None;
        a.record(&e);
        let s = a.take_summary(
            &Sampled::new(),
            0,
            Duration::from_secs(2),
            Duration::from_secs(2),
            true,
        );
        assert_eq!(
            (s.events, s.events_total, s.lost, s.lost_total),
            (1, 8, 0, 2)
        );
        assert_eq!(s.rows[0].kind, Kind::Bind, "the row that failed now first");
        assert_eq!((s.rows[0].count, s.rows[0].total), (1, 2));
        assert!(s.rows[1..].iter().all(|r| r.count == 0));
        assert_eq!(s.rows[1].usage_error.as_deref(), Some("not sampled"));
    }

    #[test]
    fn rows_are_bounded_and_idle_ones_forgotten() {
        let mut a = Agg::default();
        let sum =
            |a: &mut Agg| a.take_summary(&Sampled::new(), 0, Duration::ZERO, Duration::ZERO, false);
        // One row that keeps failing, one that failed once.
        a.record(&ev(
            Kind::Connect,
            Errno::EADDRNOTAVAIL,
            7,
            Some(("10.0.0.1", 80)),
        ));
        a.record(&ev(
            Kind::Connect,
            Errno::EADDRNOTAVAIL,
            7,
            Some(("10.0.0.2", 80)),
        ));
        for _ in 0..IDLE_INTERVALS + 1 {
            a.record(&ev(
                Kind::Connect,
                Errno::EADDRNOTAVAIL,
                7,
                Some(("10.0.0.1", 80)),
            ));
            sum(&mut a);
        }
        let s = sum(&mut a);
        assert_eq!(s.rows.len(), 1, "{:?}", s.rows);
        assert_eq!(s.rows[0].daddr, Some(ip("10.0.0.1")));
        assert_eq!(s.events_total, IDLE_INTERVALS + 3);
        // A storm toward more destinations than the bound, in one interval.
        for i in 0..(MAX_ROWS as u32 + 500) {
            let d = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            a.record(&ev(Kind::Connect, Errno::EADDRNOTAVAIL, 8, Some((&d, 443))));
        }
        assert_eq!(
            sum(&mut a).rows.len(),
            MAX_ROWS + 501,
            "every row of the interval shows once"
        );
        assert_eq!(sum(&mut a).rows.len(), MAX_ROWS, "then the bound holds");
    }

    #[test]
    fn pod_label_falls_back_to_uid() {
        let mut a = Agg::default();
        let mut e = ev(Kind::Connect, EADDRNOTAVAIL, 10, Some(("10.0.0.9", 80)));
        e.pod = pod("0f5e5e8a-2222", None);
        a.record(&e);
        let s = a.take_summary(&Sampled::new(), 0, Duration::ZERO, Duration::ZERO, false);
        assert_eq!(s.rows[0].pod, "0f5e5e8a-2222");
        assert_eq!(s.rows[0].name, None);
    }

    /// Four failures in one netns, its ports sampled: what the
    /// sink tests render.
    pub fn sample_summary() -> Summary {
        let mut a = Agg::default();
        for _ in 0..2 {
            a.record(&ev(
                Kind::Connect,
                EADDRNOTAVAIL,
                4026532345,
                Some(("::1", 7300)),
            ));
        }
        let mut e = ev(
            Kind::Connect,
            EADDRNOTAVAIL,
            4026532345,
            Some(("127.0.0.1", 7100)),
        );
        e.pod = pod("0f5e5e8a-1111", Some(("shop", "web-1")));
        a.record(&e);
        a.record(&ev(Kind::Bind, Errno::EADDRINUSE, 4026532345, None));
        let mut sampled = Sampled::new();
        sampled.insert(
            4026532345,
            Ok(usage(
                (41000, 41003),
                &[("::1", 7300, 4), ("127.0.0.1", 7100, 1)],
            )),
        );
        a.take_summary(
            &sampled,
            1_763_900_000_123_456_000,
            Duration::from_secs(2),
            Duration::from_millis(1500),
            false,
        )
    }
}
