//! One run of each measurement: the success path, the failure storm, the
//! cause-detail storm.

use super::*;

#[derive(Default)]
pub(crate) struct SuccessRun {
    pub(crate) getppid_ns: f64,
    pub(crate) connect_ns: f64,
    /// Workload CPU time over wall time (below 1: softirq work done by
    /// ksoftirqd, or the process waited).
    pub(crate) workload_cpu_share: f64,
    /// Largest run-queue wait share of the two loops kept.
    pub(crate) wait_share: f64,
    /// Loops repeated because another process took the core.
    pub(crate) repeats: u32,
    pub(crate) foreign_tp_progs: usize,
}

pub(crate) struct StormRun {
    pub(crate) kind: Kind,
    pub(crate) n: u64,
    pub(crate) attempts_per_s: f64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) drain_s: f64,
    pub(crate) output_per_s: f64,
    pub(crate) cpu_s: f64,
    pub(crate) hwm_kb: Option<u64>,
    pub(crate) wait_share: f64,
    pub(crate) foreign_tp_progs: usize,
}

/// Waits until `out` has stopped growing for 1.2 s (longer than portwatch's
/// 0.5 s lost-report tick; at most 60 s after `t_end`) and returns when it
/// last grew.
pub(crate) fn output_settled(out: &Path, t_end: Instant) -> Instant {
    let mut size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let mut t_last = t_end;
    loop {
        thread::sleep(Duration::from_millis(20));
        let s = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        let now = Instant::now();
        if s != size {
            size = s;
            t_last = now;
        }
        if now - t_last > Duration::from_millis(1200) || now - t_end > Duration::from_secs(60) {
            return t_last;
        }
    }
}

/// Destinations and failures of the cause-detail storm: every
/// destination's 2-port range held, failures round-robin over them, so
/// each needs its own socket-table look-up.
pub(crate) const SPREAD_DESTS: u16 = 50;
pub(crate) const SPREAD_N: u64 = 10_000;
/// Rounds of the detail storm, each one run with detail and one without
/// (order alternating): three of each, so that `--no-detail`'s own spread
/// says what "within the noise" is.
pub(crate) const DETAIL_ROUNDS: usize = 3;
pub(crate) const SPREAD_PORT: u16 = 7100;

/// One run of the detail storm.
pub(crate) struct DetailRun {
    pub(crate) no_detail: bool,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) complete: u64,
    pub(crate) output_per_s: f64,
}

pub(crate) fn detail_storm(
    pw: &Path,
    script: &Path,
    pwbench: &Path,
    netns: &str,
    dir: &Path,
    no_detail: bool,
) -> Result<DetailRun> {
    let out = dir.join("detail-storm.out");
    let extra: &[&str] = if no_detail { &["--no-detail"] } else { &[] };
    let live = start_tracer_with(Kind::Portwatch, pw, script, &out, extra)?;
    let args = [
        "spread".to_string(),
        SPREAD_PORT.to_string(),
        SPREAD_DESTS.to_string(),
        STORM_FILL.to_string(),
        SPREAD_N.to_string(),
    ];
    let w = workload(pwbench, netns, &args);
    let t_end = Instant::now();
    let t_last = output_settled(&out, t_end);
    stop_tracer(live)?;
    let w = w?;
    let text = fs::read_to_string(&out).unwrap_or_default();
    let (delivered, lost) = count_portwatch(&text, "pwbench");
    let complete = count_complete(&text, "pwbench");
    let _ = fs::remove_file(&out);
    if delivered == 0 {
        bail!("portwatch reported none of the detail storm's failures");
    }
    let secs = w.ns / 1e9 + (t_last - t_end).as_secs_f64();
    Ok(DetailRun {
        no_detail,
        delivered,
        lost,
        complete,
        output_per_s: delivered as f64 / secs,
    })
}

pub(crate) fn detail_markdown(runs: &[DetailRun]) -> String {
    let mut s = format!(
        "Cause detail under a storm of {SPREAD_N} EADDRNOTAVAIL failures over {SPREAD_DESTS} destinations (portwatch trace --json, output to a file):\n\n"
    );
    s += &md_row(&[
        "run".into(),
        "events out/s".into(),
        "delivered".into(),
        "lost".into(),
        "complete detail".into(),
        "ratio vs --no-detail".into(),
    ]);
    s += "\n";
    s += &md_row(&vec!["---".to_string(); 6]);
    s += "\n";
    let base = median(
        &runs
            .iter()
            .filter(|r| r.no_detail)
            .map(|r| r.output_per_s)
            .collect::<Vec<_>>(),
    );
    for r in runs {
        s += &md_row(&[
            if r.no_detail {
                "--no-detail"
            } else {
                "with detail (default 50 ms budget)"
            }
            .into(),
            thousands(r.output_per_s),
            r.delivered.to_string(),
            r.lost.to_string(),
            if r.no_detail {
                "-".into()
            } else {
                format!(
                    "{:.1} %",
                    100.0 * r.complete as f64 / r.delivered.max(1) as f64
                )
            },
            match base.and_then(|b| ratio(r.output_per_s, b)) {
                Some(x) => format!("{x:.2}x"),
                None => "-".into(),
            },
        ]);
        s += "\n";
    }
    for t in detail_targets(runs) {
        s += &format!(
            "\nTarget: {} {}; measured {} ({}).\n",
            t.name, t.limit, t.measured, t.verdict
        );
    }
    s
}

/// The detail storm's targets: complete detail in the runs with detail,
/// and their events out/s against the `--no-detail` runs' (the median of
/// each), where "within the noise" is the `--no-detail` runs' own spread
/// (max - min over their median).
pub(crate) fn detail_targets(runs: &[DetailRun]) -> [Target; 2] {
    let with: Vec<&DetailRun> = runs.iter().filter(|r| !r.no_detail).collect();
    let share = (!with.is_empty()).then(|| {
        100.0 * with.iter().map(|r| r.complete).sum::<u64>() as f64
            / with.iter().map(|r| r.delivered).sum::<u64>().max(1) as f64
    });
    let rates = |no_detail: bool| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.no_detail == no_detail)
            .map(|r| r.output_per_s)
            .collect()
    };
    let (base, detail) = (rates(true), rates(false));
    let noise = spread_pct(&base);
    let shortfall = median(&detail)
        .zip(median(&base))
        .and_then(|(d, b)| ratio(d, b))
        .map(|r| 100.0 * (1.0 - r));
    let mut throughput = target_at_most(
        "events out/s with detail below --no-detail's (median of each)",
        shortfall.filter(|_| noise.is_some()),
        noise.unwrap_or(0.0),
        false,
        " %",
        1,
    );
    if let Some(n) = noise {
        throughput.limit = format!("≤ {n:.1} % (--no-detail's own spread)");
    }
    [
        target_at_least(
            "complete detail, 50-destination storm (50 ms budget)",
            share,
            99.0,
            " %",
            1,
        ),
        throughput,
    ]
}

pub(crate) fn detail_json(runs: &[DetailRun]) -> Value {
    json!({
        "failures": SPREAD_N,
        "destinations": SPREAD_DESTS,
        "runs": runs.iter().map(|r| json!({
            "no_detail": r.no_detail,
            "events_out_per_s": r.output_per_s,
            "delivered": r.delivered,
            "lost": r.lost,
            "complete": r.complete,
        })).collect::<Vec<_>>(),
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn storm(
    kind: Kind,
    pw: &Path,
    script: &Path,
    pwbench: &Path,
    netns: &str,
    dir: &Path,
    n: u64,
    startups: &mut Vec<(Kind, f64)>,
) -> Result<StormRun> {
    let args = [
        "storm".to_string(),
        LISTEN_PORT.to_string(),
        STORM_FILL.to_string(),
        n.to_string(),
    ];
    let foreign = tracepoint_progs();
    if kind == Kind::None {
        let w = workload(pwbench, netns, &args)?;
        return Ok(StormRun {
            kind,
            n,
            attempts_per_s: w.n as f64 / (w.ns / 1e9),
            delivered: 0,
            lost: 0,
            drain_s: 0.0,
            output_per_s: 0.0,
            cpu_s: 0.0,
            hwm_kb: None,
            wait_share: w.wait_share(),
            foreign_tp_progs: foreign,
        });
    }
    let out = dir.join(format!("storm-{}.out", kind.name()));
    let live = start_tracer(kind, pw, script, &out)?;
    startups.push((kind, live.startup_ms));
    let pid = live.pid();
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    let w = workload(pwbench, netns, &args);
    let t_end = Instant::now();
    let t_last = output_settled(&out, t_end);
    let cpu1 = cpu_ticks(pid).unwrap_or(cpu0);
    let hwm_kb = status_kb(pid, "VmHWM");
    let stderr = stop_tracer(live)?;
    let w = w?;
    let text = fs::read_to_string(&out).unwrap_or_default();
    let (delivered, lost) = match kind {
        Kind::Portwatch => count_portwatch(&text, "pwbench"),
        _ => count_bpftrace(&text, "pwbench"),
    };
    drop(text);
    let _ = fs::remove_file(&out);
    if delivered == 0 {
        bail!(
            "{} reported none of the storm's {n} failures:\n{}",
            kind.name(),
            stderr.join("\n")
        );
    }
    let storm_s = w.ns / 1e9;
    let drain_s = (t_last - t_end).as_secs_f64();
    Ok(StormRun {
        kind,
        n,
        attempts_per_s: w.n as f64 / storm_s,
        delivered,
        lost,
        drain_s,
        output_per_s: delivered as f64 / (storm_s + drain_s),
        cpu_s: (cpu1 - cpu0) as f64 / clk_tck(),
        hwm_kb,
        wait_share: w.wait_share(),
        foreign_tp_progs: foreign,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(no_detail: bool, output_per_s: f64) -> DetailRun {
        DetailRun {
            no_detail,
            delivered: 100,
            lost: 0,
            complete: if no_detail { 0 } else { 100 },
            output_per_s,
        }
    }

    /// Detail's throughput is judged against --no-detail's own spread:
    /// within it is met, beyond it is missed by the difference.
    #[test]
    fn detail_throughput_is_judged_against_the_no_detail_spread() {
        let base = [run(true, 100e3), run(true, 110e3), run(true, 90e3)];
        let within: Vec<DetailRun> = base
            .into_iter()
            .chain([run(false, 95e3), run(false, 85e3), run(false, 88e3)])
            .collect();
        let [complete, t] = detail_targets(&within);
        assert_eq!(complete.met, Some(true));
        assert_eq!(t.measured, "12.0 %");
        assert!(t.limit.starts_with("≤ 20.0 %"), "{}", t.limit);
        assert_eq!(t.met, Some(true));
        let beyond: Vec<DetailRun> = [run(true, 100e3), run(true, 110e3), run(true, 90e3)]
            .into_iter()
            .chain([run(false, 70e3), run(false, 72e3), run(false, 60e3)])
            .collect();
        let [_, t] = detail_targets(&beyond);
        assert_eq!(
            (t.met, t.verdict.as_str()),
            (Some(false), "missed by 10.0 pp")
        );
        let [_, t] = detail_targets(&[run(false, 1.0)]);
        assert_eq!(t.met, None);
    }
}
