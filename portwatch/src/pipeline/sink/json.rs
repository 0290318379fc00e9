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
    kernel::probe::Probe,
    pipeline::{
        event::{Cause, Detail, Errno, Event, Family, Kind, Proto},
        schema::{rfc3339_micros, Rfc3339Micros, EVENT_SCHEMA, SYSCTL_SCHEMA},
        sysctl::{Name, SysctlWrite, Verdict},
    },
};

#[derive(Serialize)]
struct JsonEvent<'a> {
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
    /// Bind events only: what the caller asked for.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    requested: Option<Requested>,
    cause: Option<Cause>,
    detail: Option<&'a Detail>,
    detail_complete: Option<bool>,
}

#[derive(Serialize)]
struct Requested {
    requested_addr: Option<IpAddr>,
    /// 0: any port.
    requested_port: Option<u16>,
}

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
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }
}

/// One event as its JSON line (what `put` writes, without the newline).
#[cfg(test)]
pub fn json_line(ev: &Event) -> String {
    let mut out = Vec::with_capacity(512);
    write_event(&mut out, ev).expect("event serializes");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// One event's JSON object, written straight into `out` (no line of its
/// own in between: this runs once per event).
fn write_event(out: &mut impl Write, ev: &Event) -> io::Result<()> {
    let time = Rfc3339Micros::new(ev.time_ns);
    let j = JsonEvent {
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
    };
    serde_json::to_writer(out, &j).map_err(io::Error::from)
}

impl<W: Write> Sink<Event> for JsonSink<W> {
    fn put(&mut self, ev: &Event) -> io::Result<()> {
        write_event(&mut self.out, ev)?;
        self.out.write_all(b"\n")
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
    use crate::pipeline::{cause, event::tests::sample_event, sysctl::tests::sample_write};

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
