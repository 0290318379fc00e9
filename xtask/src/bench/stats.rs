//! Statistics, targets and formatting: pure, unit-tested.

/// `v` (milliseconds) as "median ms (min–max, n=N)" with `decimals`
/// places, "–" when empty.
pub fn ms_range_cell(v: &[f64], decimals: usize) -> String {
    match median(v) {
        None => "–".into(),
        Some(m) => format!(
            "{m:.decimals$} ms ({:.decimals$}–{:.decimals$}, n={})",
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
            v.len()
        ),
    }
}

/// A size in kB as "N.N MiB", "–" when unknown.
pub fn mib_cell(kb: Option<u64>) -> String {
    kb.map_or("–".into(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0))
}

pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// How far a set of measurements spreads: (max - min) over the median, in
/// percent; None for none.
pub fn spread_pct(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((hi - lo) / m * 100.0)
}

/// `x / base`, None when the base is missing or zero.
pub fn ratio(x: f64, base: f64) -> Option<f64> {
    (base != 0.0 && x.is_finite() && base.is_finite()).then(|| x / base)
}

/// Slowdown in percent from a time-per-operation ratio (1.05 -> +5.0).
pub fn pct(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// Human form of the limit, e.g. "≤ 2.0 %".
    pub limit: String,
    pub measured: String,
    /// None when it could not be measured.
    pub met: Option<bool>,
    /// "met", "missed by 12.3 pp", "not measured".
    pub verdict: String,
}

/// A target `value <= limit` (or `< limit` when `strict`), in `unit`, shown
/// with `decimals` decimals. The verdict says by how much it was missed.
fn not_measured(name: &str, limit: String) -> Target {
    Target {
        name: name.into(),
        limit,
        measured: "–".into(),
        met: None,
        verdict: "not measured".into(),
    }
}

/// A row without a limit: what was measured (None: "–", "not measured"),
/// and what it is (`what`) when it was.
pub fn measured_only(name: &str, measured: Option<String>, what: &str) -> Target {
    Target {
        name: name.into(),
        limit: "–".into(),
        verdict: if measured.is_some() {
            what
        } else {
            "not measured"
        }
        .into(),
        measured: measured.unwrap_or_else(|| "–".into()),
        met: None,
    }
}

/// A target on a value that must reach `limit` (a share, say).
pub fn target_at_least(
    name: &str,
    value: Option<f64>,
    limit: f64,
    unit: &str,
    decimals: usize,
) -> Target {
    let limit_s = format!("≥ {limit:.decimals$}{unit}");
    let u = if unit.trim() == "%" { " pp" } else { unit };
    match value {
        None => not_measured(name, limit_s),
        Some(v) => Target {
            name: name.into(),
            limit: limit_s,
            measured: format!("{v:.decimals$}{unit}"),
            met: Some(v >= limit),
            verdict: if v >= limit {
                "met".into()
            } else {
                format!("missed by {:.decimals$}{u}", limit - v)
            },
        },
    }
}

pub fn target_at_most(
    name: &str,
    value: Option<f64>,
    limit: f64,
    strict: bool,
    unit: &str,
    decimals: usize,
) -> Target {
    let sign = if strict { "<" } else { "≤" };
    let limit_s = format!("{sign} {limit:.decimals$}{unit}");
    match value {
        None => not_measured(name, limit_s),
        Some(v) => {
            let met = if strict { v < limit } else { v <= limit };
            let verdict = if met {
                "met".to_string()
            } else {
                // "pp" for limits that are themselves percentages.
                let u = if unit.trim() == "%" { " pp" } else { unit };
                format!("missed by {:.decimals$}{u}", v - limit)
            };
            Target {
                name: name.into(),
                limit: limit_s,
                measured: format!("{v:.decimals$}{unit}"),
                met: Some(met),
                verdict,
            }
        }
    }
}

/// `12345.6` -> "12,346".
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// "+12.3 %" for a ratio, "–" without one.
pub fn signed_pct(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{:+.1} %", pct(r)),
        None => "–".into(),
    }
}

pub fn md_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// `key=value` pairs of a pwbench result line.
pub fn parse_kv(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counts from portwatch's JSON output: (events of `comm`, lost total).
pub fn count_portwatch(text: &str, comm: &str) -> (u64, u64) {
    let want = format!("\"comm\":\"{comm}\"");
    let mut events = 0;
    let mut lost = 0;
    for l in text.lines() {
        if l.contains("\"kind\":\"lost\"") {
            lost += json_count(l).unwrap_or(0);
        } else if l.contains(&want) {
            events += 1;
        }
    }
    (events, lost)
}

pub(crate) fn json_count(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"count\":")? + 8..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Counts from the bpftrace script's output: (events of `comm`, lost total).
/// Event lines are `PID TID COMM PROBE ERRNO`; bpftrace reports drops as `Lost N events`.
pub fn count_bpftrace(text: &str, comm: &str) -> (u64, u64) {
    let mut events = 0;
    let mut lost = 0;
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() == 3 && w[0] == "Lost" && w[2] == "events" {
            lost += w[1].parse::<u64>().unwrap_or(0);
        } else if w.len() == 5 && w[2] == comm {
            events += 1;
        }
    }
    (events, lost)
}

/// Events of `comm` whose detail was complete.
pub fn count_complete(text: &str, comm: &str) -> u64 {
    let c = format!("\"comm\":\"{comm}\"");
    text.lines()
        .filter(|l| l.contains(&c) && l.contains("\"detail_complete\":true"))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_complete_detail_of_one_command() {
        let text = "{\"comm\":\"pwbench\",\"detail_complete\":true}\n\
                    {\"comm\":\"pwbench\",\"detail_complete\":false}\n\
                    {\"comm\":\"curl\",\"detail_complete\":true}\n\
                    {\"schema\":2,\"kind\":\"lost\",\"count\":3}\n";
        assert_eq!(count_complete(text, "pwbench"), 1);
        assert_eq!(count_portwatch(text, "pwbench"), (2, 3));
    }

    #[test]
    fn shares_that_must_reach_a_limit() {
        let t = target_at_least("detail", Some(98.5), 99.0, " %", 1);
        assert_eq!(
            (t.limit.as_str(), t.verdict.as_str()),
            ("≥ 99.0 %", "missed by 0.5 pp")
        );
        assert_eq!(
            target_at_least("detail", Some(99.0), 99.0, " %", 1).met,
            Some(true)
        );
        assert_eq!(
            target_at_least("detail", None, 99.0, " %", 1).verdict,
            "not measured"
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0, 4.0]), Some(3.0));
    }

    #[test]
    fn ratios_and_percent() {
        assert_eq!(ratio(110.0, 100.0), Some(1.1));
        assert_eq!(ratio(1.0, 0.0), None);
        assert!((pct(1.05) - 5.0).abs() < 1e-9);
        assert_eq!(signed_pct(Some(1.25)), "+25.0 %");
        assert_eq!(signed_pct(Some(0.9)), "-10.0 %");
        assert_eq!(signed_pct(None), "–");
    }

    #[test]
    fn targets_say_by_how_much() {
        let t = target_at_most("slowdown", Some(1.5), 2.0, false, " %", 1);
        assert_eq!((t.met, t.verdict.as_str()), (Some(true), "met"));
        let t = target_at_most("slowdown", Some(12.34), 2.0, false, " %", 1);
        assert_eq!(t.met, Some(false));
        assert_eq!(t.verdict, "missed by 10.3 pp");
        assert_eq!(t.limit, "≤ 2.0 %");
        let t = target_at_most("start-up", Some(280.4), 100.0, true, " ms", 0);
        assert_eq!(t.verdict, "missed by 180 ms");
        assert_eq!(t.measured, "280 ms");
        // Strict limits: equal is a miss.
        let t = target_at_most("start-up", Some(100.0), 100.0, true, " ms", 0);
        assert_eq!(t.met, Some(false));
        let t = target_at_most("lost", Some(0.0), 0.0, false, "", 0);
        assert_eq!(t.met, Some(true));
        let t = target_at_most("lost", None, 0.0, false, "", 0);
        assert_eq!((t.met, t.verdict.as_str()), (None, "not measured"));
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(-4321.0), "-4,321");
        assert_eq!(md_row(&["a".into(), "b".into()]), "| a | b |");
    }

    #[test]
    fn parses_workload_and_tracer_output() {
        let kv = parse_kv("op=connect n=10 ns=2000 ns_per_op=200.0 errors=0");
        assert_eq!(kv[1], ("n".to_string(), "10".to_string()));
        let pw = concat!(
            r#"{"schema":1,"kind":"connect","errno":"EADDRNOTAVAIL","pid":7,"comm":"pwbench","port_range":[1,2]}"#,
            "\n",
            r#"{"schema":1,"kind":"connect","errno":"EADDRNOTAVAIL","pid":8,"comm":"curl"}"#,
            "\n",
            r#"{"schema":1,"kind":"lost","count":12}"#,
            "\n",
            r#"{"schema":1,"kind":"lost","count":3}"#,
            "\n"
        );
        assert_eq!(count_portwatch(pw, "pwbench"), (1, 15));
        let bt = "Attaching 4 probes...\n7 7 pwbench tracepoint:syscalls:sys_exit_connect 99\n\
                  Lost 40 events\n8 8 curl tracepoint:syscalls:sys_exit_connect 99\n\n";
        assert_eq!(count_bpftrace(bt, "pwbench"), (1, 40));
    }
}
