//! `top`'s summaries out: one JSON object per interval (its own schema,
//! `schema::SUMMARY_SCHEMA`), or a table with a title line: in blocks,
//! or redrawn in place and cut to the terminal.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::IpAddr,
};

use super::Sink;
use crate::pipeline::aggregate::{Row, Summary};

pub fn json_line(s: &Summary) -> String {
    serde_json::to_string(s).expect("summary serializes")
}

fn endpoint(d: Option<IpAddr>, p: Option<u16>) -> String {
    match (d, p) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => "-".into(),
    }
}

fn seconds(d: u64) -> String {
    if d.is_multiple_of(1000) {
        format!("{}s", d / 1000)
    } else {
        format!("{:.1}s", d as f64 / 1000.0)
    }
}

/// The most frequent cause of a row.
fn main_cause(c: &BTreeMap<&'static str, u64>) -> &'static str {
    c.iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or("-", |(k, _)| k)
}

const HEADERS: [&str; 10] = [
    "POD",
    "NETNS",
    "KIND",
    "ERRNO",
    "DESTINATION",
    "NOW",
    "TOTAL",
    "IN USE",
    "USE%",
    "CAUSE",
];
/// Right-aligned columns (numbers).
const RIGHT: [bool; 10] = [
    false, false, false, false, false, true, true, true, true, false,
];

fn cells(r: &Row) -> [String; 10] {
    let dash = || "-".to_string();
    [
        r.pod.clone(),
        r.netns.map_or_else(dash, |n| n.to_string()),
        r.kind.name().into(),
        r.errno.name().into(),
        endpoint(r.daddr, r.dport),
        r.count.to_string(),
        r.total.to_string(),
        match (r.in_use, r.usable) {
            (Some(n), Some(u)) => format!("{n}/{u}"),
            _ => dash(),
        },
        r.percent.map_or_else(dash, |p| format!("{p:.1}%")),
        main_cause(&r.causes).into(),
    ]
}

/// The summary as text: a title line, then the table. `max_rows`: a
/// screenful (the rest is counted on a last line); `width`: lines are cut.
pub fn table(s: &Summary, max_rows: Option<usize>, width: Option<usize>) -> String {
    let mut out = vec![];
    let mut title = format!(
        "portwatch top  {}Z  every {}  failures: {} in {}, {} in all",
        &s.time[..19],
        seconds(s.interval_ms),
        s.events,
        seconds(s.window_ms),
        s.events_total
    );
    if s.lost_total > 0 {
        title.push_str(&format!(
            "  LOST: {} in {}, {} in all",
            s.lost,
            seconds(s.window_ms),
            s.lost_total
        ));
    }
    out.push(title);
    if s.rows.is_empty() {
        out.push("no connect()/bind() failures seen yet".into());
    } else {
        let shown = max_rows.unwrap_or(usize::MAX).min(s.rows.len());
        let body: Vec<[String; 10]> = s.rows[..shown].iter().map(cells).collect();
        let mut w = HEADERS.map(str::len);
        for c in &body {
            for (i, x) in c.iter().enumerate() {
                w[i] = w[i].max(x.chars().count());
            }
        }
        let line = |c: &[String; 10]| {
            let mut l = String::new();
            for (i, x) in c.iter().enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                let pad = w[i] - x.chars().count();
                if RIGHT[i] {
                    l.extend(std::iter::repeat_n(' ', pad));
                    l.push_str(x);
                } else {
                    l.push_str(x);
                    if i + 1 < c.len() {
                        l.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            l
        };
        out.push(line(&HEADERS.map(String::from)));
        out.extend(body.iter().map(line));
        if shown < s.rows.len() {
            out.push(format!("... {} more rows", s.rows.len() - shown));
        }
    }
    if let Some(w) = width {
        for l in &mut out {
            if l.chars().count() > w {
                *l = l.chars().take(w).collect();
            }
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Summaries as JSON lines.
pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }
}

impl<W: Write> Sink<Summary> for JsonSink<W> {
    fn put(&mut self, s: &Summary) -> io::Result<()> {
        self.out.write_all(format!("{}\n", json_line(s)).as_bytes())
    }
    /// A summary counts the losses itself.
    fn lost(&mut self, _count: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Summaries as blocks of text separated by a blank line (for a pipe or
/// a file).
pub struct TableSink<W: Write> {
    out: W,
}

impl<W: Write> TableSink<W> {
    pub fn new(out: W) -> Self {
        TableSink { out }
    }
}

impl<W: Write> Sink<Summary> for TableSink<W> {
    fn put(&mut self, s: &Summary) -> io::Result<()> {
        self.out
            .write_all(format!("{}\n", table(s, None, None)).as_bytes())
    }
    /// A summary counts the losses itself.
    fn lost(&mut self, _count: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Summaries redrawn in place on a terminal, cut to its size.
pub struct ScreenSink<W: Write> {
    out: W,
}

impl<W: Write> ScreenSink<W> {
    pub fn new(out: W) -> Self {
        ScreenSink { out }
    }
}

impl<W: Write> Sink<Summary> for ScreenSink<W> {
    fn put(&mut self, s: &Summary) -> io::Result<()> {
        let (rows, cols) = term_size().unwrap_or((24, 80));
        // Title, header, and the "more" line fit with the rows.
        let max = rows.saturating_sub(3).max(1);
        self.out
            .write_all(format!("\x1b[H\x1b[2J{}", table(s, Some(max), Some(cols))).as_bytes())
    }
    /// A summary counts the losses itself.
    fn lost(&mut self, _count: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The terminal's (rows, columns), when stdout is one.
fn term_size() -> Option<(usize, usize)> {
    // SAFETY: winsize is plain C data, for which all zeroes is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, live and writable.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row as usize, ws.ws_col as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::aggregate::tests::sample_summary;

    #[test]
    fn table_columns_and_alignment() {
        let t = table(&sample_summary(), None, None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "portwatch top  2025-11-23T12:13:20Z  every 2s  failures: 4 in 1.5s, 4 in all"
        );
        assert!(lines[1].starts_with("POD  "), "{t}");
        assert_eq!(lines.len(), 5, "{t}");
        let row = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle}: {t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("[::1]:7300"),
            [
                "host",
                "4026532345",
                "connect",
                "EADDRNOTAVAIL",
                "[::1]:7300",
                "2",
                "2",
                "4/4",
                "100.0%",
                "ports_exhausted"
            ]
        );
        assert_eq!(row("shop/web-1")[7..9], ["1/4", "25.0%"]);
        assert_eq!(
            row("EADDRINUSE")[4..],
            ["-", "1", "1", "-", "-", "ports_exhausted"]
        );
        // Columns line up: every USE% cell ends where its header ends.
        let end = lines[1].find("USE%").unwrap() + 4;
        for l in &lines[2..] {
            assert!(l[..end].ends_with('%') || l[..end].ends_with('-'), "{l}");
        }
        assert!(!t.contains('\x1b'), "no ANSI codes in the text");
    }

    #[test]
    fn table_fits_a_screen() {
        let t = table(&sample_summary(), Some(1), Some(40));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "title, header, one row, more: {t}");
        assert_eq!(lines[3], "... 2 more rows");
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{t}");
        let mut empty = sample_summary();
        empty.rows.clear();
        empty.lost = 3;
        empty.lost_total = 5;
        let t = table(&empty, None, None);
        assert!(t.contains("LOST: 3 in 1.5s, 5 in all"), "{t}");
        assert!(
            t.ends_with("no connect()/bind() failures seen yet\n"),
            "{t}"
        );
    }

    #[test]
    fn json_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&sample_summary())).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["kind"], "summary");
        assert_eq!(v["time"], "2025-11-23T12:13:20.123456Z");
        assert_eq!(v["interval_ms"], 2000);
        assert_eq!(v["window_ms"], 1500);
        assert_eq!(v["final"], false);
        assert_eq!(
            (v["events"].as_u64(), v["lost_total"].as_u64()),
            (Some(4), Some(0))
        );
        let r = &v["rows"][0];
        for (k, want) in [
            ("pod", serde_json::json!("host")),
            ("namespace", serde_json::Value::Null),
            ("uid", serde_json::Value::Null),
            ("netns", serde_json::json!(4026532345u32)),
            ("kind", serde_json::json!("connect")),
            ("errno", serde_json::json!("EADDRNOTAVAIL")),
            ("proto", serde_json::json!("tcp")),
            ("daddr", serde_json::json!("::1")),
            ("dport", serde_json::json!(7300)),
            ("count", serde_json::json!(2)),
            ("total", serde_json::json!(2)),
            ("causes", serde_json::json!({"ports_exhausted": 2})),
            ("pid", serde_json::json!(7)),
            ("comm", serde_json::json!("curl")),
            ("in_use", serde_json::json!(4)),
            ("usable", serde_json::json!(4)),
            ("range", serde_json::json!([41000, 41003])),
            ("percent", serde_json::json!(100.0)),
            ("usage_error", serde_json::Value::Null),
        ] {
            assert_eq!(r[k], want, "{k}: {r}");
        }
        assert_eq!(r.as_object().unwrap().len(), 20, "{r}");
        let shop = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["pod"] == "shop/web-1")
            .unwrap();
        assert_eq!(shop["namespace"], "shop");
        assert_eq!(shop["name"], "web-1");
        assert_eq!(shop["uid"], "0f5e5e8a-1111");
        assert_eq!(shop["percent"], 25.0);
    }
}
