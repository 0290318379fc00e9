//! Events as an aligned table for a person, each kind of failure followed
//! once by a line in plain words: the cause, the evidence, and the fix.

use std::{
    collections::HashSet,
    io::{self, Write},
    net::IpAddr,
};

use super::{Sink, TraceSink};
use crate::{
    k8s::pods::Pod,
    pipeline::{
        cause,
        event::{Cause, Detail, Event, Exhausted, HolderCount, Kind, PortHolder, Proto, States},
        schema::rfc3339_micros,
        sysctl::{Name, SysctlWrite, Verdict},
    },
};

pub struct TableSink<W: Write> {
    out: W,
    header_done: bool,
    /// (kind, cause, netns, destination or port): one explanation each.
    explained: HashSet<(Kind, Option<Cause>, Option<u32>, String)>,
}

impl<W: Write> TableSink<W> {
    pub fn new(out: W) -> Self {
        TableSink {
            out,
            header_done: false,
            explained: HashSet::new(),
        }
    }
}

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    let a = match addr {
        Some(IpAddr::V6(a)) => format!("[{a}]"),
        Some(a) => a.to_string(),
        None => "*".into(),
    };
    match port {
        Some(p) => format!("{a}:{p}"),
        None => format!("{a}:*"),
    }
}

fn range_words(d: &Exhausted) -> String {
    match (d.range, d.usable) {
        (Some([lo, hi]), usable) => {
            let size = hi as u32 - lo as u32 + 1;
            match usable {
                Some(u) if u != size => format!(
                    "ip_local_port_range {lo}-{hi} ({size} ports, {} reserved: {u} usable)",
                    size - u
                ),
                _ => format!("ip_local_port_range {lo}-{hi} ({size} ports)"),
            }
        }
        (None, _) => "ip_local_port_range (unreadable)".into(),
    }
}

fn states_words(st: &States) -> String {
    let mut v: Vec<(&&str, &u32)> = st.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn holders_words(h: &[HolderCount]) -> String {
    h.iter()
        .map(|h| format!("{} (pid {}) {}", h.comm, h.pid, h.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "; 4 sockets hold them (3 ESTABLISHED, 1 TIME_WAIT), held by curl (pid 7) 3"
fn usage_words(
    in_use: Option<u32>,
    states: Option<&States>,
    holders: Option<&Vec<HolderCount>>,
) -> String {
    let mut s = String::new();
    if let Some(n) = in_use {
        s.push_str(&format!(
            "; {n} socket{} hold{} them",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" }
        ));
        if let Some(st) = states.filter(|s| !s.is_empty()) {
            s.push_str(&format!(" ({})", states_words(st)));
        }
    }
    if let Some(h) = holders.filter(|h| !h.is_empty()) {
        s.push_str(&format!(", held by {}", holders_words(h)));
    }
    s
}

fn time_wait_most(states: Option<&States>) -> bool {
    states.is_some_and(|st| {
        let tw = st.get("TIME_WAIT").copied().unwrap_or(0);
        tw * 2 > st.values().sum::<u32>()
    })
}

fn port_holder_words(h: &PortHolder) -> String {
    let n = if h.count > 1 {
        format!("{} sockets ", h.count)
    } else {
        String::new()
    };
    match (&h.comm, h.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p}, {n}{} {})", h.state, h.local),
        _ => format!(
            "{} with no process ({} {})",
            if h.count > 1 {
                n.trim_end().to_string()
            } else {
                "a socket".into()
            },
            h.state,
            h.local
        ),
    }
}

/// One line in plain words: the cause, the evidence, and the fix.
pub fn hint(ev: &Event) -> String {
    if ev.cause.is_none() {
        // Not through the cause stage (unit tests): the event's own evidence.
        let mut e = ev.clone();
        cause::finish(&mut e, cause::classify(ev), None);
        return hint(&e);
    }
    let dst = endpoint(ev.daddr, ev.dport);
    let mut s = match (ev.cause.unwrap(), &ev.detail) {
        (Cause::PortsExhausted, Some(Detail::Exhausted(d))) => {
            let mut s = format!(
                "ports exhausted: every usable port of {} is taken toward {dst}{}. Fix: reuse connections (keep-alive, pooling) or spread them over more destinations; widen ip_local_port_range only with the NodePorts kept in ip_local_reserved_ports",
                range_words(d),
                usage_words(d.in_use, d.states.as_ref(), d.holders.as_ref()),
            );
            if time_wait_most(d.states.as_ref()) {
                s.push_str("; most are TIME_WAIT: let the server close first, or set net.ipv4.tcp_tw_reuse=1");
            }
            s
        }
        (Cause::TupleInUse, Some(Detail::Tuple(t))) => {
            let src = endpoint(ev.saddr, Some(t.sport));
            let mut s = format!(
                "4-tuple in use: source port {} was fixed by bind() before connect(), and {src} -> {dst} already exists",
                t.sport
            );
            if let Some(st) = t.states.as_ref().filter(|s| !s.is_empty()) {
                s.push_str(&format!(" ({})", states_words(st)));
            }
            if let Some(h) = t.holders.as_ref().filter(|h| !h.is_empty()) {
                s.push_str(&format!(", held by {}", holders_words(h)));
            }
            s.push_str(". Fix: don't bind() a fixed port before connect(); bind port 0 with IP_BIND_ADDRESS_NO_PORT so the kernel picks a free port per destination");
            s
        }
        (Cause::PortInUse, Some(Detail::PortInUse(p))) => {
            let by = match &p.holders {
                Some(h) if !h.is_empty() => format!(
                    " by {}",
                    h.iter().map(port_holder_words).collect::<Vec<_>>().join(", ")
                ),
                _ => String::new(),
            };
            format!(
                "port in use: port {} ({}) is taken{by}. Fix: stop the holder or bind another port (SO_REUSEADDR helps only against TIME_WAIT)",
                p.port,
                endpoint(ev.saddr, ev.sport)
            )
        }
        (Cause::BindPortsExhausted, Some(Detail::Exhausted(d))) => format!(
            "autobind exhausted: bind() asked for any port and none of {} was free{}. Fix: set IP_BIND_ADDRESS_NO_PORT before bind() so connect() picks the port per destination, or don't bind() before connect()",
            range_words(d),
            usage_words(d.in_use, d.states.as_ref(), d.holders.as_ref()),
        ),
        (Cause::AddrNotLocal, _) => format!(
            "address not local: {} is not configured in this network namespace. Fix: bind an address the netns has, or allow it with IP_FREEBIND or net.ipv4.ip_nonlocal_bind=1",
            ev.saddr.map(|a| a.to_string()).unwrap_or_else(|| "the address".into())
        ),
        (Cause::Unknown, Some(Detail::Unknown { reason })) => format!("cause unknown: {reason}"),
        (c, _) => c.name().replace('_', " "),
    };
    if ev.detail_complete == Some(false) {
        s.push_str(" [detail incomplete]");
    }
    s
}

fn clock_of(time_ns: u64) -> String {
    // HH:MM:SS.micro in UTC, the part of the RFC 3339 stamp a person reads.
    rfc3339_micros(time_ns)[11..26].to_string()
}

/// One line in plain words for a sysctl write: what it does, and the fix.
pub fn sysctl_hint(w: &SysctlWrite) -> String {
    let Some(a) = &w.assessment else {
        let why = if w.old_truncated || w.new_truncated {
            "a value was longer than portwatch keeps (cut)"
        } else {
            "a value did not parse, or the netns's other settings could not be read"
        };
        return format!("verdict unknown: {why}");
    };
    let mut s = match a.verdict {
        Verdict::CreatesNodeportOverlap => {
            let range = match w.name {
                Name::PortRange => format!("ip_local_port_range {}", w.new.replace(' ', "-")),
                _ => "ip_local_port_range".into(),
            };
            format!(
                "creates a NodePort overlap in the node's netns: {range} now takes in guarded ports {} that are not in ip_local_reserved_ports: a connect() on the node may pick a NodePort as its source port and break that service. Fix: don't write the node's sysctls from a hostNetwork pod (check POD_IP != HOST_IP first), or sysctl -w net.ipv4.ip_local_reserved_ports={}",
                a.exposed.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                a.fix.as_ref().map(|p| p.to_string()).unwrap_or_default()
            )
        }
        Verdict::RemovesReservation => format!(
            "removes a reservation: ports {} leave ip_local_reserved_ports and may now be taken as source ports",
            a.removed.as_ref().map(|p| p.to_string()).unwrap_or_default()
        ),
        Verdict::NarrowsRange => {
            let (b, n) = a.usable.unwrap_or_default();
            format!("narrows the range: {b} usable ports before, {n} after; connects run out of ports sooner")
        }
        Verdict::Parity => format!(
            "both ends of ip_local_port_range {} have the same parity: the kernel prefers ends of different parity (it warns about it) for its pairwise port search",
            w.new.replace(' ', "-")
        ),
        Verdict::Ok => "ok: no NodePort exposed, no reservation removed, no usable port lost".into(),
    };
    if w.refused {
        s = format!("REFUSED (the writer got EPERM): {s}");
    }
    s
}

impl<W: Write> TableSink<W> {
    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            writeln!(
                self.out,
                "{:<15} {:>7} {:<15} {:<7} {:<13} {:<5} {:<22} {:<22} {:<10} {:<11} {:<10} POD",
                "TIME(UTC)",
                "PID",
                "COMM",
                "KIND",
                "ERRNO",
                "PROTO",
                "SOURCE",
                "DESTINATION",
                "NETNS",
                "RANGE",
                "PROBE"
            )?;
            self.header_done = true;
        }
        Ok(())
    }
}

impl<W: Write> TraceSink for TableSink<W> {
    /// One line in the failures' first columns (KIND `sysctl`), the name
    /// and the values after them, and always its hint.
    fn sysctl(&mut self, w: &SysctlWrite) -> io::Result<()> {
        self.header()?;
        writeln!(
            self.out,
            "{:<15} {:>7} {:<15} {:<7} {} {} -> {:?}  netns {}{} pod {}",
            clock_of(w.time_ns),
            w.pid,
            w.comm,
            "sysctl",
            w.name.dotted(),
            w.old
                .as_deref()
                .map_or_else(|| "?".to_string(), |o| format!("{o:?}")),
            w.new,
            w.netns.map_or_else(|| "-".into(), |n| n.to_string()),
            if w.node_netns { " (node)" } else { "" },
            w.pod.as_ref().map_or_else(|| "-".into(), Pod::short),
        )?;
        writeln!(self.out, "  \u{2514} {}", sysctl_hint(w))
    }
}

impl<W: Write> Sink<Event> for TableSink<W> {
    fn put(&mut self, ev: &Event) -> io::Result<()> {
        self.header()?;
        let (src, dst) = match ev.kind {
            Kind::Connect => (endpoint(ev.saddr, ev.sport), endpoint(ev.daddr, ev.dport)),
            Kind::Bind => (endpoint(ev.saddr, ev.sport), "-".to_string()),
        };
        writeln!(
            self.out,
            "{:<15} {:>7} {:<15} {:<7} {:<13} {:<5} {:<22} {:<22} {:<10} {:<11} {:<10} {}",
            clock_of(ev.time_ns),
            ev.pid,
            ev.comm,
            ev.kind.name(),
            ev.errno.name(),
            ev.proto.map_or("-", Proto::name),
            src,
            dst,
            ev.netns
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            ev.port_range
                .map(|(a, b)| format!("{a}-{b}"))
                .unwrap_or_else(|| "-".into()),
            ev.probe.name(),
            ev.pod.as_ref().map_or_else(|| "-".into(), Pod::short),
        )?;
        let what = match ev.kind {
            Kind::Connect => endpoint(ev.daddr, ev.dport),
            Kind::Bind => endpoint(ev.saddr, ev.sport),
        };
        let key = (ev.kind, ev.cause, ev.netns, what);
        if self.explained.len() > 10_000 {
            self.explained.clear();
        }
        if self.explained.insert(key) {
            writeln!(self.out, "  \u{2514} {}", hint(ev))?;
        }
        Ok(())
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        writeln!(
            self.out,
            "!! {count} events lost (ring buffer full); see --ringbuf-size"
        )
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{
        event::{tests::sample_event, Errno},
        sink::json::json_line,
        sysctl::tests::sample_write,
    };

    #[test]
    fn a_sysctl_write_is_one_line_and_its_hint() {
        let mut buf = vec![];
        let mut t = TableSink::new(&mut buf);
        t.sysctl(&sample_write()).unwrap();
        let out = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("TIME(UTC)"), "{out}");
        assert_eq!(
            lines[1],
            "08:12:33.123456    4242 sysctl          sysctl  net.ipv4.ip_local_port_range \"32768 60999\" -> \"1024 65535\"  netns 4026531840 (node) pod -"
        );
        assert_eq!(
            lines[2],
            "  \u{2514} creates a NodePort overlap in the node's netns: ip_local_port_range 1024-65535 now takes in guarded ports 30000-32767 that are not in ip_local_reserved_ports: a connect() on the node may pick a NodePort as its source port and break that service. Fix: don't write the node's sysctls from a hostNetwork pod (check POD_IP != HOST_IP first), or sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767"
        );
        let mut w = sample_write();
        w.refused = true;
        assert!(sysctl_hint(&w)
            .starts_with("REFUSED (the writer got EPERM): creates a NodePort overlap"));
        w.assessment = None;
        w.new_truncated = true;
        assert!(sysctl_hint(&w).contains("cut"));
    }

    #[test]
    fn json_and_table_carry_the_pod() {
        let uid = "0f5e5e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6";
        let cid = "4c5f1e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
        let mut ev = sample_event();
        ev.cgroup = Some(format!("/kubepods/burstable/pod{uid}/{cid}"));
        ev.pod = crate::k8s::pods::parse_kube_path(ev.cgroup.as_deref().unwrap());
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        assert_eq!(v["cgroup"], format!("/kubepods/burstable/pod{uid}/{cid}"));
        assert_eq!(
            v["pod"],
            serde_json::json!({"namespace": null, "name": null, "uid": uid,
                               "container": null, "container_id": cid})
        );
        let mut host = sample_event();
        host.cgroup = Some("/system.slice/cron.service".into());
        let h: serde_json::Value = serde_json::from_str(&json_line(&host)).unwrap();
        assert_eq!(h["cgroup"], "/system.slice/cron.service");
        assert!(h["pod"].is_null(), "{h}");

        let mut buf = vec![];
        let mut t = TableSink::new(&mut buf);
        t.put(&ev).unwrap();
        t.put(&host).unwrap();
        let mut named = ev.clone();
        named.pod.as_mut().unwrap().namespace = Some("shop".into());
        named.pod.as_mut().unwrap().name = Some("web-1".into());
        t.put(&named).unwrap();
        let out = String::from_utf8(buf).unwrap();
        let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with("  ")).collect();
        assert!(rows[0].ends_with(" PROBE      POD"), "{out}");
        let pod_col = rows[0].find("POD").unwrap();
        assert_eq!(&rows[1][pod_col..], "0f5e5e8a", "{out}");
        assert_eq!(&rows[2][pod_col..], "-", "{out}");
        assert_eq!(&rows[3][pod_col..], "shop/web-1", "{out}");
    }

    #[test]
    fn table_names_match_json_names() {
        for p in [
            Proto::Tcp,
            Proto::Udp,
            Proto::Mptcp,
            Proto::Sctp,
            Proto::Other,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
        for k in [Kind::Connect, Kind::Bind] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn table_explains_first_event_of_each_kind_once() {
        let mut buf = vec![];
        let mut t = TableSink::new(&mut buf);
        let ev = sample_event();
        t.put(&ev).unwrap();
        t.put(&ev).unwrap();
        let mut b = ev.clone();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.ret = -98;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(7100);
        b.daddr = None;
        b.dport = None;
        t.put(&b).unwrap();
        let s = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 6, "{s}");
        assert!(lines[0].starts_with("TIME(UTC)"));
        assert!(lines[1].starts_with("08:12:33.123456"));
        assert!(
            lines[1].contains("curl")
                && lines[1].contains("EADDRNOTAVAIL")
                && lines[1].contains("127.0.0.1:7100")
        );
        assert!(lines[1].contains("41000-41003") && lines[1].contains("tracepoint"));
        assert!(
            lines[2].contains("ports exhausted: every usable port of ip_local_port_range 41000-41003 (4 ports) is taken toward 127.0.0.1:7100"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("Fix: reuse connections"), "{}", lines[2]);
        assert!(
            !lines[3].contains('\u{2514}'),
            "second identical event gets no hint"
        );
        assert!(lines[4].contains("bind") && lines[4].contains("EADDRINUSE"));
        assert!(
            lines[5].contains("port in use: port 7100 (127.0.0.1:7100) is taken. Fix:"),
            "{}",
            lines[5]
        );
        // Columns line up: DESTINATION starts at the same place in header and rows.
        let col = lines[0].find("DESTINATION").unwrap();
        assert_eq!(&lines[1][col..col + 14], "127.0.0.1:7100");
    }

    #[test]
    fn hints_for_every_cause() {
        use crate::pipeline::event::{PortInUse, Tuple};
        let mut ev = sample_event();
        ev.sock_port = Some(41001);
        ev.saddr = Some("127.0.0.1".parse().unwrap());
        let h = hint(&ev);
        assert!(
            h.starts_with("4-tuple in use: source port 41001 was fixed by bind()"),
            "{h}"
        );
        assert!(h.contains("127.0.0.1:41001 -> 127.0.0.1:7100"), "{h}");
        assert!(h.contains("IP_BIND_ADDRESS_NO_PORT"), "{h}");
        assert!(h.ends_with("[detail incomplete]"), "no look-up ran: {h}");
        ev.cause = Some(Cause::TupleInUse);
        ev.detail_complete = Some(true);
        ev.detail = Some(Detail::Tuple(Tuple {
            sport: 41001,
            states: Some([("ESTABLISHED", 1)].into()),
            holders: Some(vec![HolderCount {
                pid: 9,
                comm: "app".into(),
                pod: None,
                count: 1,
            }]),
        }));
        let h = hint(&ev);
        assert!(
            h.contains("already exists (1 ESTABLISHED), held by app (pid 9) 1"),
            "{h}"
        );
        assert!(!h.contains("incomplete"), "{h}");

        let mut x = sample_event();
        x.reserved = Some(crate::host::ports::PortSet::parse("41003").unwrap());
        x.cause = Some(Cause::PortsExhausted);
        x.detail_complete = Some(true);
        x.detail = Some(Detail::Exhausted(Exhausted {
            range: Some([41000, 41003]),
            reserved: Some("41003".into()),
            usable: Some(3),
            in_use: Some(3),
            states: Some([("ESTABLISHED", 1), ("TIME_WAIT", 2)].into()),
            holders: Some(vec![HolderCount {
                pid: 9,
                comm: "app".into(),
                pod: None,
                count: 1,
            }]),
        }));
        let h = hint(&x);
        assert!(h.contains("(4 ports, 1 reserved: 3 usable)"), "{h}");
        assert!(
            h.contains("3 sockets hold them (2 TIME_WAIT, 1 ESTABLISHED), held by app (pid 9) 1"),
            "{h}"
        );
        assert!(h.contains("most are TIME_WAIT"), "{h}");

        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.sport = Some(0);
        let h = hint(&b);
        assert!(h.starts_with("autobind exhausted"), "{h}");
        assert!(h.contains("IP_BIND_ADDRESS_NO_PORT"), "{h}");
        b.sport = Some(7200);
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.cause = Some(Cause::PortInUse);
        b.detail = Some(Detail::PortInUse(PortInUse {
            port: 7200,
            holders: Some(vec![PortHolder {
                pid: Some(5),
                comm: Some("nginx".into()),
                pod: None,
                state: "LISTEN",
                local: "0.0.0.0:7200".into(),
                count: 1,
            }]),
        }));
        b.detail_complete = Some(true);
        let h = hint(&b);
        assert!(
            h.contains("port 7200 (127.0.0.1:7200) is taken by nginx (pid 5, LISTEN 0.0.0.0:7200)"),
            "{h}"
        );
        let mut n = sample_event();
        n.kind = Kind::Bind;
        n.errno = Errno::EADDRNOTAVAIL;
        n.saddr = Some("10.9.9.9".parse().unwrap());
        let h = hint(&n);
        assert!(h.contains("10.9.9.9 is not configured"), "{h}");
        assert!(
            h.contains("IP_FREEBIND") && h.contains("ip_nonlocal_bind"),
            "{h}"
        );
        let mut v6 = sample_event();
        v6.daddr = Some("::1".parse().unwrap());
        assert!(hint(&v6).contains("[::1]:7100"));
        let mut u = sample_event();
        u.sock_port = None;
        assert!(hint(&u).starts_with("cause unknown: the socket could not be read"));
    }
}
