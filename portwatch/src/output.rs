//! Stage 6: events out, as JSON lines (a versioned contract, see README
//! "JSON schema") or as an aligned table with a plain-words hint.

use std::{
    collections::HashSet,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use crate::event::{Errno, Event, Family, Kind, Probe, Proto};

/// Version of the JSON records; raised on any change to names or meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// `time_ns` (ns since the epoch, UTC) as RFC 3339 with microseconds.
pub fn rfc3339_micros(time_ns: u64) -> String {
    let secs = time_ns / 1_000_000_000;
    let micros = (time_ns % 1_000_000_000) / 1_000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian
/// (the well-known era-based algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    schema: u32,
    time: String,
    kind: Kind,
    errno: Errno,
    ret: i32,
    pid: u32,
    tid: u32,
    comm: &'a str,
    uid: u32,
    cgroup_id: u64,
    netns: Option<u32>,
    proto: Option<Proto>,
    family: Option<Family>,
    saddr: Option<IpAddr>,
    sport: Option<u16>,
    daddr: Option<IpAddr>,
    dport: Option<u16>,
    probe: Probe,
    port_range: Option<[u16; 2]>,
    pod: Option<()>,
}

#[derive(Serialize)]
struct JsonLost {
    schema: u32,
    kind: &'static str,
    count: u64,
}

/// Where decoded events go.
pub trait Sink {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// `count` events were dropped by the kernel side since the last call.
    fn lost(&mut self, count: u64) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }
}

pub fn json_line(ev: &Event) -> String {
    let j = JsonEvent {
        schema: SCHEMA_VERSION,
        time: rfc3339_micros(ev.time_ns),
        kind: ev.kind,
        errno: ev.errno,
        ret: ev.ret,
        pid: ev.pid,
        tid: ev.tid,
        comm: &ev.comm,
        uid: ev.uid,
        cgroup_id: ev.cgroup_id,
        netns: ev.netns,
        proto: ev.proto,
        family: ev.family,
        saddr: ev.saddr,
        sport: ev.sport,
        daddr: ev.daddr,
        dport: ev.dport,
        probe: ev.probe,
        port_range: ev.port_range.map(|(a, b)| [a, b]),
        pod: None,
    };
    serde_json::to_string(&j).expect("event serializes")
}

impl<W: Write> Sink for JsonSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        writeln!(self.out, "{}", json_line(ev))
    }
    fn lost(&mut self, count: u64) -> io::Result<()> {
        let j = JsonLost {
            schema: SCHEMA_VERSION,
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

pub struct TableSink<W: Write> {
    out: W,
    header_done: bool,
    explained: HashSet<(Kind, Errno, bool)>,
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

fn range_words(r: Option<(u16, u16)>) -> String {
    match r {
        Some((lo, hi)) => format!(
            "ip_local_port_range {lo}-{hi} ({} ports)",
            hi as u32 - lo as u32 + 1
        ),
        None => "ip_local_port_range (unreadable)".into(),
    }
}

/// One line in plain words: what this failure means and what to look at.
pub fn hint(ev: &Event) -> String {
    let dst = endpoint(ev.daddr, ev.dport);
    let src = endpoint(ev.saddr, ev.sport);
    match (ev.kind, ev.errno) {
        (Kind::Connect, Errno::EADDRNOTAVAIL) => match ev.sock_port {
            Some(p) if p != 0 => format!(
                "source port {p} was fixed by bind() before connect() and that 4-tuple toward {dst} is already in use"
            ),
            _ => format!(
                "the ephemeral ports toward {dst} are used up: every port of {} is taken toward this destination",
                range_words(ev.port_range)
            ),
        },
        (Kind::Connect, Errno::EADDRINUSE) => {
            format!("the connection {src} -> {dst} already exists (4-tuple in use)")
        }
        (Kind::Bind, Errno::EADDRINUSE) => match ev.sport {
            Some(0) | None => format!(
                "bind() asked for any port and none was free in {} (autobind exhausted; IP_BIND_ADDRESS_NO_PORT lets connect() pick per destination)",
                range_words(ev.port_range)
            ),
            Some(p) => format!("port {p} is already taken by another socket ({src})"),
        },
        (Kind::Bind, Errno::EADDRNOTAVAIL) => format!(
            "address {} is not configured in this network namespace (IP_FREEBIND or net.ipv4.ip_nonlocal_bind allow it)",
            ev.saddr.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
        ),
    }
}

fn clock_of(time_ns: u64) -> String {
    // HH:MM:SS.micro in UTC, the part of the RFC 3339 stamp a person reads.
    rfc3339_micros(time_ns)[11..26].to_string()
}

impl<W: Write> Sink for TableSink<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if !self.header_done {
            writeln!(
                self.out,
                "{:<15} {:>7} {:<15} {:<7} {:<13} {:<5} {:<22} {:<22} {:<10} {:<11} PROBE",
                "TIME(UTC)",
                "PID",
                "COMM",
                "KIND",
                "ERRNO",
                "PROTO",
                "SOURCE",
                "DESTINATION",
                "NETNS",
                "RANGE"
            )?;
            self.header_done = true;
        }
        let (src, dst) = match ev.kind {
            Kind::Connect => (endpoint(ev.saddr, ev.sport), endpoint(ev.daddr, ev.dport)),
            Kind::Bind => (endpoint(ev.saddr, ev.sport), "-".to_string()),
        };
        writeln!(
            self.out,
            "{:<15} {:>7} {:<15} {:<7} {:<13} {:<5} {:<22} {:<22} {:<10} {:<11} {}",
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
        )?;
        let key = (
            ev.kind,
            ev.errno,
            ev.kind == Kind::Bind && ev.sport.unwrap_or(0) == 0,
        );
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
pub(crate) mod tests {
    use super::*;

    pub fn sample_event() -> Event {
        Event {
            time_ns: 1_795_421_553_123_456_789, // 2026-11-23T08:12:33.123456Z
            kind: Kind::Connect,
            errno: Errno::EADDRNOTAVAIL,
            ret: -99,
            pid: 4242,
            tid: 4243,
            comm: "curl".into(),
            uid: 0,
            cgroup_id: 1234,
            netns: Some(4026532598),
            proto: Some(Proto::Tcp),
            family: Some(Family::Ipv4),
            saddr: None,
            sport: None,
            daddr: Some("127.0.0.1".parse().unwrap()),
            dport: Some(7100),
            sock_port: Some(0),
            probe: Probe::Tracepoint,
            port_range: Some((41000, 41003)),
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_421_553_123_456_789),
            "2026-11-23T08:12:33.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_001_000),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(4_107_542_399_999_999_999),
            "2100-02-28T23:59:59.999999Z"
        );
    }

    #[test]
    fn json_has_the_contract_fields_in_order() {
        let line = json_line(&sample_event());
        assert_eq!(
            line,
            r#"{"schema":1,"time":"2026-11-23T08:12:33.123456Z","kind":"connect","errno":"EADDRNOTAVAIL","ret":-99,"pid":4242,"tid":4243,"comm":"curl","uid":0,"cgroup_id":1234,"netns":4026532598,"proto":"tcp","family":"ipv4","saddr":null,"sport":null,"daddr":"127.0.0.1","dport":7100,"probe":"tracepoint","port_range":[41000,41003],"pod":null}"#
        );
        let mut ev = sample_event();
        ev.family = Some(Family::Ipv6);
        ev.daddr = Some("::1".parse().unwrap());
        ev.comm = "we\"ird\n".into();
        let v: serde_json::Value = serde_json::from_str(&json_line(&ev)).unwrap();
        assert_eq!(v["daddr"], "::1");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["comm"], "we\"ird\n");
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
    fn json_lost_record() {
        let mut buf = vec![];
        JsonSink::new(&mut buf).lost(7).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"schema\":1,\"kind\":\"lost\",\"count\":7}\n"
        );
    }

    #[test]
    fn table_explains_first_event_of_each_kind_once() {
        let mut buf = vec![];
        let mut t = TableSink::new(&mut buf);
        let ev = sample_event();
        t.event(&ev).unwrap();
        t.event(&ev).unwrap();
        let mut b = ev.clone();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.ret = -98;
        b.saddr = Some("127.0.0.1".parse().unwrap());
        b.sport = Some(7100);
        b.daddr = None;
        b.dport = None;
        t.event(&b).unwrap();
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
            lines[2].contains("ephemeral ports toward 127.0.0.1:7100 are used up"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("41000-41003 (4 ports)"));
        assert!(
            !lines[3].contains('\u{2514}'),
            "second identical event gets no hint"
        );
        assert!(lines[4].contains("bind") && lines[4].contains("EADDRINUSE"));
        assert!(lines[5].contains("port 7100 is already taken"));
        // Columns line up: DESTINATION starts at the same place in header and rows.
        let col = lines[0].find("DESTINATION").unwrap();
        assert_eq!(&lines[1][col..col + 14], "127.0.0.1:7100");
    }

    #[test]
    fn hints_for_every_cause() {
        let mut ev = sample_event();
        ev.sock_port = Some(41001);
        assert!(hint(&ev).contains("source port 41001 was fixed by bind()"));
        let mut b = sample_event();
        b.kind = Kind::Bind;
        b.errno = Errno::EADDRINUSE;
        b.sport = Some(0);
        assert!(hint(&b).contains("IP_BIND_ADDRESS_NO_PORT"));
        b.errno = Errno::EADDRNOTAVAIL;
        b.saddr = Some("10.9.9.9".parse().unwrap());
        assert!(hint(&b).contains("10.9.9.9 is not configured"));
        let mut v6 = sample_event();
        v6.daddr = Some("::1".parse().unwrap());
        assert!(hint(&v6).contains("[::1]:7100"));
    }
}
