//! Events as JSON lines: one object per event (docs/schema.md, version
//! `EVENT_SCHEMA`), and one per batch of lost events.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use super::{Sink, TraceSink};
use crate::{
    k8s::pods::Pod,
    pipeline::{
        event::{Cause, Detail, Event, Family, HolderCount, Kind, PortHolder, Proto, States},
        schema::{rfc3339_micros, Rfc3339Micros, EVENT_SCHEMA, SYSCTL_SCHEMA},
        sysctl::{Name, SysctlWrite, Verdict},
    },
};

#[derive(Serialize)]
struct JsonSysctl<'a> {
    schema: u32,
    time: String,
    kind: &'static str,
    name: Name,
    old: Option<&'a str>,
    new: &'a str,
    old_truncated: bool,
    new_truncated: bool,
    pid: u32,
    tid: u32,
    comm: &'a str,
    uid: u32,
    cgroup_id: u64,
    cgroup: Option<&'a str>,
    pod: Option<&'a Pod>,
    netns: Option<u32>,
    node_netns: bool,
    verdict: Option<Verdict>,
    /// `creates_nodeport_overlap`: the guarded ports exposed once applied.
    exposed: Option<String>,
    /// The ports taken out of `ip_local_reserved_ports`.
    removed: Option<String>,
    /// Range writes: usable ports before and after.
    usable: Option<[u32; 2]>,
    refused: bool,
}

pub fn sysctl_line(w: &SysctlWrite) -> String {
    let a = w.assessment.as_ref();
    let j = JsonSysctl {
        schema: SYSCTL_SCHEMA,
        time: rfc3339_micros(w.time_ns),
        kind: "sysctl_write",
        name: w.name,
        old: w.old.as_deref(),
        new: &w.new,
        old_truncated: w.old_truncated,
        new_truncated: w.new_truncated,
        pid: w.pid,
        tid: w.tid,
        comm: &w.comm,
        uid: w.uid,
        cgroup_id: w.cgroup_id,
        cgroup: w.cgroup.as_deref(),
        pod: w.pod.as_ref(),
        netns: w.netns,
        node_netns: w.node_netns,
        verdict: a.map(|a| a.verdict),
        exposed: a.and_then(|a| a.exposed.as_ref()).map(|p| p.to_string()),
        removed: a.and_then(|a| a.removed.as_ref()).map(|p| p.to_string()),
        usable: a.and_then(|a| a.usable).map(|(b, n)| [b, n]),
        refused: w.refused,
    };
    serde_json::to_string(&j).expect("sysctl write serializes")
}

#[derive(Serialize)]
struct JsonLost {
    schema: u32,
    kind: &'static str,
    count: u64,
}

pub struct JsonSink<W: Write> {
    out: W,
    /// The line being written, reused from event to event.
    line: Vec<u8>,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink {
            out,
            line: Vec::with_capacity(1024),
        }
    }
}

/// One event as its JSON line (what `put` writes, without the newline).
#[cfg(test)]
pub fn json_line(ev: &Event) -> String {
    let mut out = Vec::with_capacity(512);
    write_event(&mut out, ev).expect("event serializes");
    String::from_utf8(out).expect("writes UTF-8")
}

/// A JSON object written field by field onto a byte buffer.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }
    /// `"name":` (names are the schema's own: nothing to escape).
    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }
    fn num(&mut self, name: &str, v: impl itoa::Integer) {
        let mut b = itoa::Buffer::new();
        let s = b.format(v);
        self.key(name).extend_from_slice(s.as_bytes());
    }
    fn opt_num(&mut self, name: &str, v: Option<impl itoa::Integer>) {
        match v {
            Some(v) => self.num(name, v),
            None => self.key(name).extend_from_slice(b"null"),
        }
    }
    /// A word of the schema's own (an enum's name): nothing to escape.
    fn word(&mut self, name: &str, w: &str) {
        let out = self.key(name);
        out.push(b'"');
        out.extend_from_slice(w.as_bytes());
        out.push(b'"');
    }
    fn opt_word(&mut self, name: &str, w: Option<&str>) {
        match w {
            Some(w) => self.word(name, w),
            None => self.key(name).extend_from_slice(b"null"),
        }
    }
    fn str(&mut self, name: &str, s: &str) {
        string(self.key(name), s);
    }
    fn opt_str(&mut self, name: &str, s: Option<&str>) {
        match s {
            Some(s) => self.str(name, s),
            None => self.key(name).extend_from_slice(b"null"),
        }
    }
    fn opt_ip(&mut self, name: &str, ip: Option<IpAddr>) {
        let out = self.key(name);
        match ip {
            // An address's text needs no escaping.
            Some(ip) => ip_text(out, ip),
            None => out.extend_from_slice(b"null"),
        }
    }
    /// Two ports as `[a,b]`, or null.
    fn opt_pair(&mut self, name: &str, v: Option<(u16, u16)>) {
        let out = self.key(name);
        match v {
            Some((a, b)) => {
                let mut buf = itoa::Buffer::new();
                out.push(b'[');
                out.extend_from_slice(buf.format(a).as_bytes());
                out.push(b',');
                out.extend_from_slice(buf.format(b).as_bytes());
                out.push(b']');
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_bool(&mut self, name: &str, v: Option<bool>) {
        let out = self.key(name);
        out.extend_from_slice(match v {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        });
    }
    /// A nested value, or null.
    fn opt<T>(&mut self, name: &str, v: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
        let out = self.key(name);
        match v {
            Some(v) => write(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn end(self) {
        self.out.push(b'}');
    }
}

/// An address as a JSON string (its text needs no escaping); IPv4 without
/// the formatting machinery, which was a twentieth of the tracer's CPU.
fn ip_text(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    match ip {
        IpAddr::V4(a) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(o).as_bytes());
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

/// A pod object, as serde writes `Pod`.
fn pod(out: &mut Vec<u8>, p: &Pod) {
    let mut o = Obj::new(out);
    o.opt_str("namespace", p.namespace.as_deref());
    o.opt_str("name", p.name.as_deref());
    o.str("uid", &p.uid);
    o.opt_str("container", p.container.as_deref());
    o.opt_str("container_id", p.container_id.as_deref());
    o.end();
}

/// `{"STATE": n, ...}` in the map's (sorted) order.
fn states(out: &mut Vec<u8>, st: &States) {
    let mut o = Obj::new(out);
    for (state, n) in st {
        o.num(state, *n);
    }
    o.end();
}

fn list<T>(out: &mut Vec<u8>, items: &[T], each: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, it);
    }
    out.push(b']');
}

fn holder_count(out: &mut Vec<u8>, h: &HolderCount) {
    let mut o = Obj::new(out);
    o.num("pid", h.pid);
    o.str("comm", &h.comm);
    o.opt("pod", h.pod.as_ref(), pod);
    o.num("count", h.count);
    o.end();
}

fn port_holder(out: &mut Vec<u8>, h: &PortHolder) {
    let mut o = Obj::new(out);
    o.opt_num("pid", h.pid);
    o.opt_str("comm", h.comm.as_deref());
    o.opt("pod", h.pod.as_ref(), pod);
    o.word("state", h.state);
    o.str("local", &h.local);
    o.num("count", h.count);
    o.end();
}

/// The cause's detail, as serde writes `Detail` (untagged: the variant's
/// own object). By hand for the same reason as the event around it.
fn detail(out: &mut Vec<u8>, d: &Detail) {
    let holder_counts = |out: &mut Vec<u8>, hs: &Vec<HolderCount>| list(out, hs, holder_count);
    let mut o = Obj::new(out);
    match d {
        Detail::Exhausted(x) => {
            o.opt_pair("range", x.range.map(|[a, b]| (a, b)));
            o.opt_str("reserved", x.reserved.as_deref());
            o.opt_num("usable", x.usable);
            o.opt_num("in_use", x.in_use);
            o.opt("states", x.states.as_ref(), states);
            o.opt("holders", x.holders.as_ref(), holder_counts);
        }
        Detail::Tuple(t) => {
            o.num("sport", t.sport);
            o.opt("states", t.states.as_ref(), states);
            o.opt("holders", t.holders.as_ref(), holder_counts);
        }
        Detail::PortInUse(p) => {
            o.num("port", p.port);
            o.opt(
                "holders",
                p.holders.as_ref(),
                |out, hs: &Vec<PortHolder>| list(out, hs, port_holder),
            );
        }
        Detail::AddrNotLocal { addr } => o.opt_ip("addr", *addr),
        Detail::Unknown { reason } => o.str("reason", reason),
    }
    o.end();
}

/// A JSON string: as is where nothing needs escaping (a comm, a cgroup
/// path, almost always), else as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a string serializes");
    }
}

/// One event's JSON object onto `out`. This runs once per event: the
/// fixed fields are written by hand (serde's generic path, with its map
/// for the bind-only fields, was most of the tracer's CPU per event), the
/// nested pod and detail through serde. The field order is the schema's.
fn write_event(out: &mut Vec<u8>, ev: &Event) -> io::Result<()> {
    let time = Rfc3339Micros::new(ev.time_ns);
    let mut o = Obj::new(out);
    o.num("schema", EVENT_SCHEMA);
    o.word("time", time.as_str());
    o.word("kind", ev.kind.name());
    o.word("errno", ev.errno.name());
    o.num("ret", ev.ret);
    o.num("pid", ev.pid);
    o.num("tid", ev.tid);
    o.str("comm", &ev.comm);
    o.num("uid", ev.uid);
    o.num("cgroup_id", ev.cgroup_id);
    o.opt_str("cgroup", ev.cgroup.as_deref());
    o.opt_num("netns", ev.netns);
    o.opt_word("proto", ev.proto.map(Proto::name));
    o.opt_word("family", ev.family.map(Family::name));
    o.opt_ip("saddr", ev.saddr);
    o.opt_num("sport", ev.sport);
    o.opt_ip("daddr", ev.daddr);
    o.opt_num("dport", ev.dport);
    o.word("probe", ev.probe.name());
    o.opt_pair("port_range", ev.port_range);
    o.opt("pod", ev.pod.as_ref(), pod);
    // Bind events only: what the caller asked for.
    if ev.kind == Kind::Bind {
        o.opt_ip("requested_addr", ev.saddr);
        o.opt_num("requested_port", ev.sport);
    }
    o.opt_word("cause", ev.cause.map(Cause::name));
    o.opt("detail", ev.detail.as_ref(), detail);
    o.opt_bool("detail_complete", ev.detail_complete);
    o.end();
    Ok(())
}

impl<W: Write> Sink<Event> for JsonSink<W> {
    fn put(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        write_event(&mut self.line, ev)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        let j = JsonLost {
            schema: EVENT_SCHEMA,
            kind: "lost",
            count,
        };
        writeln!(
            self.out,
            "{}",
            serde_json::to_string(&j).expect("serializes")
        )
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> TraceSink for JsonSink<W> {
    fn sysctl(&mut self, w: &SysctlWrite) -> io::Result<()> {
        writeln!(self.out, "{}", sysctl_line(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::probe::Probe;
    use crate::pipeline::{
        cause,
        event::{tests::sample_event, Detail, Errno, HolderCount},
        sysctl::tests::sample_write,
    };

    /// The event as serde writes it: the reference the hand-written writer
    /// is held to.
    #[derive(Serialize)]
    struct SerdeEvent<'a> {
        schema: u32,
        time: &'a str,
        kind: Kind,
        errno: Errno,
        ret: i32,
        pid: u32,
        tid: u32,
        comm: &'a str,
        uid: u32,
        cgroup_id: u64,
        cgroup: Option<&'a str>,
        netns: Option<u32>,
        proto: Option<Proto>,
        family: Option<Family>,
        saddr: Option<IpAddr>,
        sport: Option<u16>,
        daddr: Option<IpAddr>,
        dport: Option<u16>,
        probe: Probe,
        port_range: Option<[u16; 2]>,
        pod: Option<&'a Pod>,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        requested: Option<Requested>,
        cause: Option<Cause>,
        detail: Option<&'a Detail>,
        detail_complete: Option<bool>,
    }

    #[derive(Serialize)]
    struct Requested {
        requested_addr: Option<IpAddr>,
        requested_port: Option<u16>,
    }

    fn serde_line(ev: &Event) -> String {
        let time = Rfc3339Micros::new(ev.time_ns);
        serde_json::to_string(&SerdeEvent {
            schema: EVENT_SCHEMA,
            time: time.as_str(),
            kind: ev.kind,
            errno: ev.errno,
            ret: ev.ret,
            pid: ev.pid,
            tid: ev.tid,
            comm: &ev.comm,
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            cgroup: ev.cgroup.as_deref(),
            netns: ev.netns,
            proto: ev.proto,
            family: ev.family,
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
            probe: ev.probe,
            port_range: ev.port_range.map(|(a, b)| [a, b]),
            pod: ev.pod.as_ref(),
            requested: (ev.kind == Kind::Bind).then_some(Requested {
                requested_addr: ev.saddr,
                requested_port: ev.sport,
            }),
            cause: ev.cause,
            detail: ev.detail.as_ref(),
            detail_complete: ev.detail_complete,
        })
        .unwrap()
    }

    /// Byte for byte what serde writes, for every field's every shape:
    /// nulls and values, both families, both kinds, strings that need
    /// escaping (quotes, backslashes, control bytes, non-ASCII), a pod and
    /// a detail.
    #[test]
    fn hand_written_line_is_serdes_byte_for_byte() {
        let mut evs = vec![sample_event()];
        let mut e = sample_event();
        e.comm = "a\"b\\c\nd\u{1}é€".into();
        e.cgroup = Some("/kubepods/pod\"x\"/\t".into());
        e.family = Some(Family::Ipv6);
        e.saddr = Some("fd00::1".parse().unwrap());
        e.sport = Some(0);
        e.daddr = Some("::ffff:10.0.0.1".parse().unwrap());
        e.netns = None;
        e.proto = None;
        e.port_range = None;
        e.probe = Probe::Fexit;
        e.ret = i32::MIN;
        e.cgroup_id = u64::MAX;
        evs.push(e);
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(7100);
        b.pod = Some(Pod {
            namespace: Some("ns".into()),
            name: None,
            uid: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            container: Some("c\"1".into()),
            container_id: None,
        });
        b.cause = Some(Cause::PortInUse);
        b.detail = Some(Detail::Unknown {
            reason: "gone".into(),
        });
        b.detail_complete = Some(false);
        evs.push(b);
        let mut x = sample_event();
        x.cause = Some(Cause::PortsExhausted);
        x.detail = Some(Detail::Exhausted(crate::pipeline::event::Exhausted {
            range: Some([41000, 41003]),
            reserved: Some(String::new()),
            usable: Some(4),
            in_use: Some(4),
            states: Some([("ESTABLISHED", 4)].into_iter().collect()),
            holders: Some(vec![HolderCount {
                pid: 1,
                comm: "x".into(),
                pod: None,
                count: 4,
            }]),
        }));
        x.detail_complete = Some(true);
        evs.push(x.clone());
        // Every other shape of detail: nulls, pods, several states and
        // holders, port holders, addresses of both families.
        let pod1 = Pod {
            namespace: None,
            name: Some("web-1".into()),
            uid: "u".into(),
            container: None,
            container_id: Some("ab\\cd".into()),
        };
        let details = [
            Detail::Exhausted(crate::pipeline::event::Exhausted {
                range: None,
                reserved: None,
                usable: None,
                in_use: None,
                states: None,
                holders: None,
            }),
            Detail::Exhausted(crate::pipeline::event::Exhausted {
                range: Some([0, 65535]),
                reserved: Some("30000-32767,40000".into()),
                usable: Some(0),
                in_use: Some(u32::MAX),
                states: Some(
                    [("TIME_WAIT", 2), ("ESTABLISHED", 1), ("SYN_SENT", 0)]
                        .into_iter()
                        .collect(),
                ),
                holders: Some(vec![
                    HolderCount {
                        pid: 7,
                        comm: "nginx: worker".into(),
                        pod: Some(pod1.clone()),
                        count: 2,
                    },
                    HolderCount {
                        pid: 8,
                        comm: "q\"".into(),
                        pod: None,
                        count: 1,
                    },
                ]),
            }),
            Detail::Exhausted(crate::pipeline::event::Exhausted {
                holders: Some(vec![]),
                states: Some(Default::default()),
                ..match x.detail.clone().unwrap() {
                    Detail::Exhausted(e) => e,
                    _ => unreachable!(),
                }
            }),
            Detail::Tuple(crate::pipeline::event::Tuple {
                sport: 40000,
                states: Some([("ESTABLISHED", 1)].into_iter().collect()),
                holders: None,
            }),
            Detail::Tuple(crate::pipeline::event::Tuple {
                sport: 0,
                states: None,
                holders: Some(vec![HolderCount {
                    pid: 1,
                    comm: String::new(),
                    pod: Some(pod1.clone()),
                    count: 0,
                }]),
            }),
            Detail::PortInUse(crate::pipeline::event::PortInUse {
                port: 7100,
                holders: None,
            }),
            Detail::PortInUse(crate::pipeline::event::PortInUse {
                port: 7100,
                holders: Some(vec![
                    PortHolder {
                        pid: Some(3),
                        comm: Some("srv".into()),
                        pod: Some(pod1),
                        state: "LISTEN",
                        local: "[::]:7100".into(),
                        count: 1,
                    },
                    PortHolder {
                        pid: None,
                        comm: None,
                        pod: None,
                        state: "TIME_WAIT",
                        local: "127.0.0.1:7100".into(),
                        count: 3,
                    },
                ]),
            }),
            Detail::AddrNotLocal { addr: None },
            Detail::AddrNotLocal {
                addr: Some("10.1.2.3".parse().unwrap()),
            },
            Detail::AddrNotLocal {
                addr: Some("2001:db8::1".parse().unwrap()),
            },
            Detail::Unknown {
                reason: "netns gone\n\u{7f}".into(),
            },
        ];
        for d in details {
            let mut e = sample_event();
            e.detail = Some(d);
            evs.push(e);
        }
        // Addresses at the ends of IPv4's digits.
        for a in ["0.0.0.0", "255.255.255.255", "10.0.100.9"] {
            let mut e = sample_event();
            e.daddr = Some(a.parse().unwrap());
            evs.push(e);
        }
        for ev in &evs {
            assert_eq!(json_line(ev), serde_line(ev));
        }
    }

    #[test]
    fn sysctl_write_record() {
        assert_eq!(
            sysctl_line(&sample_write()),
            r#"{"schema":1,"time":"2026-11-23T08:12:33.123456Z","kind":"sysctl_write","name":"net.ipv4.ip_local_port_range","old":"32768 60999","new":"1024 65535","old_truncated":false,"new_truncated":false,"pid":4242,"tid":4242,"comm":"sysctl","uid":0,"cgroup_id":1234,"cgroup":null,"pod":null,"netns":4026531840,"node_netns":true,"verdict":"creates_nodeport_overlap","exposed":"30000-32767","removed":null,"usable":[28232,64512],"refused":false}"#
        );
        let mut w = sample_write();
        w.assessment = None;
        w.old = None;
        w.refused = true;
        let v: serde_json::Value = serde_json::from_str(&sysctl_line(&w)).unwrap();
        assert!(v["verdict"].is_null() && v["old"].is_null(), "{v}");
        assert_eq!(v["refused"], true);
    }

    #[test]
    fn json_has_the_contract_fields_in_order() {
        let line = json_line(&sample_event());
        assert_eq!(
            line,
            r#"{"schema":3,"time":"2026-11-23T08:12:33.123456Z","kind":"connect","errno":"EADDRNOTAVAIL","ret":-99,"pid":4242,"tid":4243,"comm":"curl","uid":0,"cgroup_id":1234,"cgroup":null,"netns":4026532598,"proto":"tcp","family":"ipv4","saddr":null,"sport":null,"daddr":"127.0.0.1","dport":7100,"probe":"tracepoint","port_range":[41000,41003],"pod":null,"cause":null,"detail":null,"detail_complete":null}"#
        );
        let mut ev = sample_event();
        ev.family = Some(Family::Ipv6);
        ev.daddr = Some("::1".parse().unwrap());
        ev.comm = "we\"ird\n".into();
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        assert_eq!(v["daddr"], "::1");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["comm"], "we\"ird\n");
        assert!(v.get("requested_addr").is_none(), "bind events only: {v}");
    }

    #[test]
    fn json_carries_cause_detail_and_the_request_of_a_bind() {
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.ret = -98;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(0);
        b.daddr = None;
        b.dport = None;
        b.reserved = Some(crate::host::ports::PortSet::new());
        let v = cause::classify(&b);
        cause::finish(&mut b, v, None);
        let v: serde_json::Value = serde_json::from_str(&json_line(&b)).unwrap();
        assert_eq!(v["schema"], 3);
        assert_eq!(v["requested_addr"], "127.0.0.1");
        assert_eq!(v["requested_port"], 0);
        assert_eq!(v["cause"], "bind_ports_exhausted");
        assert_eq!(v["detail"]["range"], serde_json::json!([41000, 41003]));
        assert_eq!(v["detail"]["usable"], 4);
        assert!(v["detail"]["in_use"].is_null());
        assert_eq!(v["detail_complete"], false);
    }

    #[test]
    fn sink_writes_the_same_line_straight_to_its_writer() {
        let mut buf = vec![];
        let mut sink = JsonSink::new(&mut buf);
        let mut ev = sample_event();
        sink.put(&ev).unwrap();
        ev.comm = "we\"ird\n".into();
        sink.put(&ev).unwrap();
        let want = format!("{}\n{}\n", json_line(&sample_event()), json_line(&ev));
        assert_eq!(String::from_utf8(buf).unwrap(), want);
    }

    #[test]
    fn json_lost_record() {
        let mut buf = vec![];
        JsonSink::new(&mut buf).lost(7).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"schema\":3,\"kind\":\"lost\",\"count\":7}\n"
        );
    }
}
