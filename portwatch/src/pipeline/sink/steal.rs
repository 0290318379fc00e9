//! nodeport-steal reports as JSON lines or a table with a plain-words line.

use std::io::{self, Write};

use serde_json::json;

use crate::pipeline::{
    correlate::Report,
    decode::Clock,
    schema::{rfc3339_micros, STEAL_SCHEMA},
    sink::Sink,
};

/// What every report of a run shares.
pub struct Context {
    /// What names the real server: "fexit" or "kprobe" when IPVS's
    /// scheduling path is probed, "ip_vs_conn" when it is read from IPVS's
    /// connection table (no module BTF); a report without one says "tc".
    pub probe: &'static str,
    /// The sysctl that keeps the kernel from picking guarded source ports,
    /// when the node's range overlaps them.
    pub fix: Option<String>,
}

pub fn to_json(r: &Report, clock: &Clock, ctx: &Context) -> serde_json::Value {
    let kind = if r.steal {
        "nodeport_steal"
    } else {
        "nodeport_near_miss"
    };
    let (pid, comm) = match &r.owner {
        Some((p, c)) => (json!(p), json!(c)),
        None => (json!(null), json!(null)),
    };
    let ipvs = match r.real_server {
        Some(rs) => json!({
            "vip": r.local.ip().to_string(),
            "vport": r.local.port(),
            "real_server": rs.to_string(),
        }),
        None => json!(null),
    };
    json!({
        "schema": STEAL_SCHEMA,
        "time": rfc3339_micros(clock.wall_ns(r.ts_ns)),
        "kind": kind,
        "port": r.local.port(),
        "node_addr": r.local.ip().to_string(),
        "victim": {
            "saddr": r.local.ip().to_string(),
            "sport": r.local.port(),
            "daddr": r.remote.ip().to_string(),
            "dport": r.remote.port(),
            "pid": pid,
            "comm": comm,
            "pod": r.pod,
        },
        "ipvs": ipvs,
        "outcome": r.outcome.name(),
        "syn_retransmits": r.retransmits,
        "probe": if r.real_server.is_some() { ctx.probe } else { "tc" },
    })
}

/// The line under a table row: what happened, in words, and the fix.
pub fn hint(r: &Report, ctx: &Context) -> String {
    let who = match &r.owner {
        Some((p, c)) => format!("{c} (pid {p})"),
        None => "the client".into(),
    };
    let what = match (r.steal, r.real_server) {
        (true, Some(rs)) => format!(
            "IPVS took the SYN-ACK for {} as a new connection to its virtual service and sent it to {rs}; {who} never got its reply ({})",
            r.local,
            r.outcome.name()
        ),
        (true, None) => format!(
            "the SYN-ACK for {} arrived but never reached {who}'s socket ({})",
            r.local,
            r.outcome.name()
        ),
        (false, _) => format!(
            "{who} connected from guarded port {} and its reply got through this time ({})",
            r.local.port(),
            r.outcome.name()
        ),
    };
    match &ctx.fix {
        Some(f) => format!("{what}. Fix: {f}"),
        None => what,
    }
}

pub struct JsonSink<W: Write> {
    w: W,
    clock: Clock,
    ctx: Context,
}

impl<W: Write> JsonSink<W> {
    pub fn new(w: W, clock: Clock, ctx: Context) -> Self {
        JsonSink { w, clock, ctx }
    }
}

impl<W: Write> Sink<Report> for JsonSink<W> {
    fn put(&mut self, r: &Report) -> io::Result<()> {
        // A write failing inside serde stays serde's error (wrapped), not
        // the io error it carries: only a failed flush reads as the
        // reader gone.
        serde_json::to_writer(&mut self.w, &to_json(r, &self.clock, &self.ctx))
            .map_err(io::Error::other)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }
    /// The loss is said on stderr already.
    fn lost(&mut self, _count: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

pub struct TableSink<W: Write> {
    w: W,
    clock: Clock,
    ctx: Context,
    header: bool,
}

impl<W: Write> TableSink<W> {
    pub fn new(w: W, clock: Clock, ctx: Context) -> Self {
        TableSink {
            w,
            clock,
            ctx,
            header: false,
        }
    }
}

impl<W: Write> Sink<Report> for TableSink<W> {
    fn put(&mut self, r: &Report) -> io::Result<()> {
        if !self.header {
            writeln!(
                self.w,
                "{:<15} {:<18} {:>5} {:<44} {:>7} {:<15} {:<21} OUTCOME",
                "TIME", "KIND", "PORT", "VICTIM", "PID", "COMM", "REAL SERVER"
            )?;
            self.header = true;
        }
        let t = rfc3339_micros(self.clock.wall_ns(r.ts_ns));
        let time = t.get(11..26).unwrap_or(&t);
        let (pid, comm) = match &r.owner {
            Some((p, c)) => (p.to_string(), c.clone()),
            None => ("-".into(), "-".into()),
        };
        writeln!(
            self.w,
            "{:<15} {:<18} {:>5} {:<44} {:>7} {:<15} {:<21} {}",
            time,
            if r.steal {
                "nodeport_steal"
            } else {
                "nodeport_near_miss"
            },
            r.local.port(),
            format!("{} -> {}", r.local, r.remote),
            pid,
            comm,
            r.real_server.map_or("-".into(), |s| s.to_string()),
            r.outcome.name()
        )?;
        writeln!(self.w, "  {}", hint(r, &self.ctx))?;
        Ok(())
    }
    /// The loss is said on stderr already.
    fn lost(&mut self, _count: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::correlate::Outcome;

    fn report(rs: Option<&str>, outcome: Outcome) -> Report {
        Report {
            ts_ns: 1_000_000_000,
            steal: rs.is_some() || outcome != Outcome::Established,
            local: "10.0.0.1:30080".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
            owner: Some((42, "kubelet".into())),
            real_server: rs.map(|s| s.parse().unwrap()),
            outcome,
            retransmits: 2,
            pod: None,
        }
    }

    fn ctx() -> Context {
        Context {
            probe: "kprobe",
            fix: Some("sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767".into()),
        }
    }

    #[test]
    fn json_fields_are_the_contract() {
        let clock = Clock::fixed(1_700_000_000_000_000_000);
        let v = to_json(
            &report(Some("10.0.1.3:8080"), Outcome::Failed),
            &clock,
            &ctx(),
        );
        assert_eq!(v["kind"], "nodeport_steal");
        assert_eq!(v["port"], 30080);
        assert_eq!(v["node_addr"], "10.0.0.1");
        assert_eq!(v["victim"]["saddr"], "10.0.0.1");
        assert_eq!(v["victim"]["sport"], 30080);
        assert_eq!(v["victim"]["daddr"], "10.0.0.2");
        assert_eq!(v["victim"]["dport"], 80);
        assert_eq!(v["victim"]["pid"], 42);
        assert_eq!(v["victim"]["comm"], "kubelet");
        assert!(v["victim"]["pod"].is_null());
        assert_eq!(v["ipvs"]["vip"], "10.0.0.1");
        assert_eq!(v["ipvs"]["vport"], 30080);
        assert_eq!(v["ipvs"]["real_server"], "10.0.1.3:8080");
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["probe"], "kprobe");
        assert_eq!(v["schema"], STEAL_SCHEMA);
        assert!(v["time"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:2"));

        let v = to_json(&report(None, Outcome::Established), &clock, &ctx());
        assert_eq!(v["kind"], "nodeport_near_miss");
        assert!(v["ipvs"].is_null());
        assert_eq!(v["probe"], "tc");
    }

    #[test]
    fn table_row_and_hint() {
        let mut out = vec![];
        let mut t = TableSink::new(&mut out, Clock::fixed(0), ctx());
        t.put(&report(Some("10.0.1.3:8080"), Outcome::Retransmitting))
            .unwrap();
        t.put(&report(None, Outcome::Failed)).unwrap();
        let s = String::from_utf8(out).unwrap();
        let lines: Vec<_> = s.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{s}");
        assert!(lines[1].contains("nodeport_steal") && lines[1].contains("10.0.1.3:8080"));
        assert!(
            lines[2].contains("IPVS took the SYN-ACK for 10.0.0.1:30080"),
            "{s}"
        );
        assert!(lines[2].contains("kubelet (pid 42)"), "{s}");
        assert!(lines[2].ends_with("Fix: sysctl -w net.ipv4.ip_local_reserved_ports=30000-32767"));
        assert!(
            lines[4].contains("never reached kubelet (pid 42)'s socket (failed)"),
            "{s}"
        );
        assert_eq!(lines.len(), 5);
    }
}
