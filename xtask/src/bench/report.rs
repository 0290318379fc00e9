//! Medians, ratios and targets of a whole bench run, as Markdown and JSON.

use super::*;

pub(crate) struct Report {
    pub(crate) backend: String,
    /// Per configuration: median getppid ns, median connect ns.
    pub(crate) getppid: [Option<f64>; KINDS],
    pub(crate) connect: [Option<f64>; KINDS],
    pub(crate) connect_all: [Vec<f64>; KINDS],
    pub(crate) getppid_all: [Vec<f64>; KINDS],
    /// Worst run-queue wait share of the kept success-path loops, and how
    /// many loops were repeated.
    pub(crate) max_wait_share: f64,
    pub(crate) repeats: u32,
    pub(crate) storm_max_wait_share: f64,
    pub(crate) foreign_runs: usize,
    /// Per run, for the JSON: (config, connect ns, getppid ns, cpu share, wait share).
    pub(crate) run_details: Vec<Value>,
    pub(crate) storm_attempts: [Option<f64>; KINDS],
    pub(crate) storm_output: [Option<f64>; KINDS],
    pub(crate) storm_delivered: [u64; KINDS],
    pub(crate) storm_lost: [u64; KINDS],
    pub(crate) storm_n: [u64; KINDS],
    pub(crate) storm_cpu_per_event_us: [Option<f64>; KINDS],
    pub(crate) storm_drain: [Option<f64>; KINDS],
    pub(crate) startup_ms: [Vec<f64>; KINDS],
    pub(crate) storm_hwm_kb: [Option<u64>; KINDS],
    pub(crate) idle_hwm_kb: [Option<u64>; KINDS],
    pub(crate) targets: Vec<Target>,
}

/// How many kinds of run (`Kind`) a report keeps apart.
pub(crate) const KINDS: usize = 4;

pub(crate) fn idx(k: Kind) -> usize {
    match k {
        Kind::None => 0,
        Kind::Portwatch => 1,
        Kind::Bpftrace => 2,
        Kind::Floor => 3,
    }
}

/// Syscalls per `pwbench connect` iteration: socket, setsockopt, connect,
/// accept, close, close.
pub(crate) const SYSCALLS_PER_CONNECT: f64 = 6.0;

impl Report {
    pub(crate) fn new(
        runs: &[(Kind, SuccessRun)],
        storms: &[StormRun],
        startups: &[(Kind, f64)],
        idle_hwm: &[(Kind, u64)],
        backend: String,
    ) -> Report {
        let mut connect_all: [Vec<f64>; KINDS] = Default::default();
        let mut getppid_all: [Vec<f64>; KINDS] = Default::default();
        for (k, r) in runs {
            connect_all[idx(*k)].push(r.connect_ns);
            getppid_all[idx(*k)].push(r.getppid_ns);
        }
        let mut startup_ms: [Vec<f64>; KINDS] = Default::default();
        for (k, ms) in startups {
            startup_ms[idx(*k)].push(*ms);
        }
        let mut r = Report {
            backend,
            getppid: std::array::from_fn(|i| median(&getppid_all[i])),
            connect: std::array::from_fn(|i| median(&connect_all[i])),
            connect_all,
            getppid_all,
            max_wait_share: runs.iter().map(|(_, r)| r.wait_share).fold(0.0, f64::max),
            repeats: runs.iter().map(|(_, r)| r.repeats).sum(),
            storm_max_wait_share: storms.iter().map(|s| s.wait_share).fold(0.0, f64::max),
            run_details: runs
                .iter()
                .map(|(k, r)| {
                    json!({
                        "tracer": k.name(),
                        "connect_ns_per_op": r.connect_ns,
                        "getppid_ns_per_op": r.getppid_ns,
                        "workload_cpu_share": r.workload_cpu_share,
                        "wait_share": r.wait_share,
                        "repeats": r.repeats,
                        "foreign_tracepoint_programs": r.foreign_tp_progs,
                    })
                })
                .chain(storms.iter().map(|s| {
                    json!({
                        "tracer": s.kind.name(),
                        "storm_attempts_per_s": s.attempts_per_s,
                        "delivered": s.delivered,
                        "lost": s.lost,
                        "drain_s": s.drain_s,
                        "tracer_cpu_s": s.cpu_s,
                        "vmhwm_kb": s.hwm_kb,
                        "wait_share": s.wait_share,
                        "foreign_tracepoint_programs": s.foreign_tp_progs,
                    })
                }))
                .collect(),
            foreign_runs: runs
                .iter()
                .filter(|(k, r)| *k == Kind::None && r.foreign_tp_progs > 0)
                .count()
                + storms
                    .iter()
                    .filter(|s| s.kind == Kind::None && s.foreign_tp_progs > 0)
                    .count(),
            storm_attempts: [None; KINDS],
            storm_output: [None; KINDS],
            storm_delivered: [0; KINDS],
            storm_lost: [0; KINDS],
            storm_n: [0; KINDS],
            storm_cpu_per_event_us: [None; KINDS],
            storm_drain: [None; KINDS],
            startup_ms,
            storm_hwm_kb: [None; KINDS],
            idle_hwm_kb: [None; KINDS],
            targets: vec![],
        };
        for k in [Kind::None, Kind::Portwatch, Kind::Bpftrace] {
            let i = idx(k);
            let s: Vec<&StormRun> = storms.iter().filter(|s| s.kind == k).collect();
            if s.is_empty() {
                continue;
            }
            r.storm_attempts[i] = median(&s.iter().map(|s| s.attempts_per_s).collect::<Vec<_>>());
            r.storm_n[i] = s.iter().map(|s| s.n).sum();
            if k != Kind::None {
                r.storm_output[i] = median(&s.iter().map(|s| s.output_per_s).collect::<Vec<_>>());
                r.storm_delivered[i] = s.iter().map(|s| s.delivered).sum();
                r.storm_lost[i] = s.iter().map(|s| s.lost).sum();
                r.storm_drain[i] = median(&s.iter().map(|s| s.drain_s).collect::<Vec<_>>());
                let cpu: f64 = s.iter().map(|s| s.cpu_s).sum();
                r.storm_cpu_per_event_us[i] =
                    (r.storm_delivered[i] > 0).then(|| cpu * 1e6 / r.storm_delivered[i] as f64);
                r.storm_hwm_kb[i] = s.iter().filter_map(|s| s.hwm_kb).max();
            }
            r.idle_hwm_kb[i] = idle_hwm
                .iter()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, kb)| *kb)
                .max();
        }
        r.targets = r.evaluate();
        r
    }

    pub(crate) fn connect_ratio(&self, i: usize) -> Option<f64> {
        ratio(self.connect[i]?, self.connect[0]?)
    }

    pub(crate) fn getppid_ratio(&self, i: usize) -> Option<f64> {
        ratio(self.getppid[i]?, self.getppid[0]?)
    }

    /// The targets, each against this run's own measures (and bpftrace's
    /// in the same run where the target is relative to it).
    pub(crate) fn evaluate(&self) -> Vec<Target> {
        let pw_slow = self.connect_ratio(1).map(pct);
        let bt_slow = self.connect_ratio(2).map(pct);
        let mut t = vec![target_at_most(
            "success-path slowdown (connect loop), portwatch",
            pw_slow,
            2.0,
            false,
            " %",
            1,
        )];
        // Half of bpftrace's slowdown; a bpftrace that costs nothing
        // measurable leaves portwatch nothing to be half of.
        let mut half = target_at_most(
            "… at most half of bpftrace's slowdown",
            pw_slow,
            bt_slow.map_or(f64::NAN, |b| (b / 2.0).max(0.0)),
            false,
            " %",
            1,
        );
        if bt_slow.is_none() {
            half.met = None;
            half.verdict = "not measured".into();
        }
        t.push(half);
        // What the kernel costs with empty programs on the hooks portwatch
        // uses, in the same rounds: the floor a tracepoint tool cannot go
        // under, and how far above it portwatch is.
        let floor = self.connect_ratio(3).map(pct);
        t.push(measured_only(
            "… the floor: empty programs on the same tracepoints, same rounds",
            floor.map(|f| format!("{f:.1} %")),
            "the kernel's own cost",
        ));
        t.push(measured_only(
            "… portwatch above that floor",
            pw_slow.zip(floor).map(|(p, f)| format!("{:+.1} pp", p - f)),
            "measured",
        ));
        let lost = (self.storm_n[1] > 0).then_some(self.storm_lost[1] as f64);
        t.push(target_at_most(
            "events lost in the storm (JSON to a file, tracer at normal priority)",
            lost,
            0.0,
            false,
            "",
            0,
        ));
        t.push(target_at_most(
            "tracer CPU per storm event (utime+stime)",
            self.storm_cpu_per_event_us[1],
            2.0,
            false,
            " µs",
            2,
        ));
        t.push(target_at_most(
            "start-up, exec -> attached (median)",
            median(&self.startup_ms[1]),
            50.0,
            false,
            " ms",
            0,
        ));
        t.push(target_at_most(
            "peak RSS at idle (VmHWM)",
            self.idle_hwm_kb[1].map(|kb| kb as f64 / 1024.0),
            15.0,
            false,
            " MiB",
            1,
        ));
        t.push(target_at_most(
            "peak RSS at the end of the storm (VmHWM)",
            self.storm_hwm_kb[1].map(|kb| kb as f64 / 1024.0),
            24.0,
            false,
            " MiB",
            1,
        ));
        t
    }

    pub(crate) fn markdown(&self, sz: &Sizes, machine: &str) -> String {
        let mut o = Vec::<String>::new();
        let dash = || "–".to_string();
        o.push(format!(
            "portwatch bench, {}: {machine}; portwatch backend: {}.",
            date_utc(),
            self.backend
        ));
        o.push(format!(
            "Workload pinned to CPU {WORKLOAD_CPU} (`taskset -c {WORKLOAD_CPU}`), tracer pinned to CPU {TRACER_CPU}, \
             the workload at nice {NICE}, the tracer at nice {TRACER_NICE} (normal priority, as on a node); test netns, loopback only. Success path: {} interleaved rounds (order rotated) of \
             {} getppid() and {} connect+accept+close; storm: {} round(s) of {} failing connects.",
            sz.rounds, sz.getppid_n, sz.connect_n, sz.storm_rounds, sz.storm_n
        ));
        o.push(String::new());
        o.push(md_row(&[
            "measure".into(),
            "no tracer".into(),
            "portwatch".into(),
            "bpftrace".into(),
        ]));
        o.push("|---|---:|---:|---:|".into());
        let per_s = |ns: Option<f64>| ns.map(|ns| thousands(1e9 / ns)).unwrap_or_else(dash);
        o.push(md_row(&[
            "connect+accept+close: median connects/s".into(),
            per_s(self.connect[0]),
            per_s(self.connect[1]),
            per_s(self.connect[2]),
        ]));
        let us_with_ratio = |i: usize| -> String {
            match self.connect[i] {
                None => dash(),
                Some(ns) if i == 0 => format!("{:.2} µs", ns / 1e3),
                Some(ns) => format!("{:.2} µs ({})", ns / 1e3, signed_pct(self.connect_ratio(i))),
            }
        };
        o.push(md_row(&[
            "… median time per connect (vs no tracer)".into(),
            us_with_ratio(0),
            us_with_ratio(1),
            us_with_ratio(2),
        ]));
        let g = |i: usize| -> String {
            match self.getppid[i] {
                None => dash(),
                Some(ns) if i == 0 => format!("{ns:.0} ns"),
                Some(ns) => format!("{ns:.0} ns ({})", signed_pct(self.getppid_ratio(i))),
            }
        };
        o.push(md_row(&[
            "getppid() (unrelated syscall): median time per call".into(),
            g(0),
            g(1),
            g(2),
        ]));
        let rate = |x: Option<f64>| x.map(thousands).unwrap_or_else(dash);
        o.push(md_row(&[
            "storm: failing connects/s of the client core".into(),
            rate(self.storm_attempts[0]),
            match (self.storm_attempts[1], self.storm_attempts[0]) {
                (Some(a), Some(b)) => format!("{} ({:.2}×)", thousands(a), a / b),
                (a, _) => rate(a),
            },
            match (self.storm_attempts[2], self.storm_attempts[0]) {
                (Some(a), Some(b)) => format!("{} ({:.2}×)", thousands(a), a / b),
                (a, _) => rate(a),
            },
        ]));
        o.push(md_row(&[
            "storm: events/s reaching the output file".into(),
            dash(),
            rate(self.storm_output[1]),
            rate(self.storm_output[2]),
        ]));
        let lost = |i: usize| {
            if self.storm_n[i] == 0 {
                return dash();
            }
            format!(
                "{} of {} ({:.2} %)",
                thousands(self.storm_lost[i] as f64),
                thousands(self.storm_n[i] as f64),
                self.storm_lost[i] as f64 * 100.0 / self.storm_n[i] as f64
            )
        };
        o.push(md_row(&[
            "storm: events lost".into(),
            dash(),
            lost(1),
            lost(2),
        ]));
        let delivered = |i: usize| {
            if self.storm_n[i] == 0 {
                return dash();
            }
            format!(
                "{} of {}",
                thousands(self.storm_delivered[i] as f64),
                thousands(self.storm_n[i] as f64)
            )
        };
        o.push(md_row(&[
            "storm: events in the output file".into(),
            dash(),
            delivered(1),
            delivered(2),
        ]));
        let drain = |i: usize| {
            self.storm_drain[i]
                .map(|s| format!("{:.0} ms", s * 1e3))
                .unwrap_or_else(dash)
        };
        o.push(md_row(&[
            "storm: output still growing after the client stopped".into(),
            dash(),
            drain(1),
            drain(2),
        ]));
        let cpu = |i: usize| {
            self.storm_cpu_per_event_us[i]
                .map(|us| format!("{us:.2} µs"))
                .unwrap_or_else(dash)
        };
        o.push(md_row(&[
            "storm: tracer process CPU per event (utime+stime)".into(),
            dash(),
            cpu(1),
            cpu(2),
        ]));
        let st = |i: usize| ms_range_cell(&self.startup_ms[i], 0);
        o.push(md_row(&[
            "start-up, exec -> attached: median (min–max)".into(),
            dash(),
            st(1),
            st(2),
        ]));
        let mib = mib_cell;
        o.push(md_row(&[
            "peak RSS (VmHWM): idle / end of storm".into(),
            dash(),
            format!(
                "{} / {}",
                mib(self.idle_hwm_kb[1]),
                mib(self.storm_hwm_kb[1])
            ),
            format!(
                "{} / {}",
                mib(self.idle_hwm_kb[2]),
                mib(self.storm_hwm_kb[2])
            ),
        ]));
        o.push(String::new());
        o.push(md_row(&[
            "target".into(),
            "limit".into(),
            "measured".into(),
            "result".into(),
        ]));
        o.push("|---|---|---:|---|".into());
        for t in &self.targets {
            o.push(md_row(&[
                t.name.clone(),
                t.limit.clone(),
                t.measured.clone(),
                t.verdict.clone(),
            ]));
        }
        o.push(String::new());
        for n in self.notes() {
            o.push(format!("- {n}"));
        }
        o.join("\n")
    }

    pub(crate) fn notes(&self) -> Vec<String> {
        let mut n = vec![];
        for (i, who) in [
            (1, "portwatch"),
            (2, "bpftrace"),
            (3, "empty programs on the same tracepoints (the floor)"),
        ] {
            if let (Some(c0), Some(ci), Some(g0), Some(gi)) = (
                self.connect[0],
                self.connect[i],
                self.getppid[0],
                self.getppid[i],
            ) {
                let added = ci - c0;
                let slow_path = SYSCALLS_PER_CONNECT * (gi - g0);
                n.push(format!(
                    "{who}: {added:+.0} ns per connect iteration; the node-wide slow syscall path \
                     alone (getppid's {:+.0} ns × {SYSCALLS_PER_CONNECT:.0} syscalls per iteration) \
                     accounts for about {slow_path:.0} ns of it.",
                    gi - g0
                ));
            }
        }
        let spread = |v: &[f64]| spread_pct(v).unwrap_or(0.0);
        n.push(format!(
            "Noise: connect per-run spread (max-min over median) {:.1} % / {:.1} % / {:.1} % / {:.1} % \
             (none / portwatch / bpftrace / floor); getppid {:.1} % / {:.1} % / {:.1} % / {:.1} %.",
            spread(&self.connect_all[0]),
            spread(&self.connect_all[1]),
            spread(&self.connect_all[2]),
            spread(&self.connect_all[3]),
            spread(&self.getppid_all[0]),
            spread(&self.getppid_all[1]),
            spread(&self.getppid_all[2]),
            spread(&self.getppid_all[3]),
        ));
        n.push(format!(
            "Other processes on CPU {WORKLOAD_CPU} (run-queue wait of the workload): at most {:.1} % \
             of a kept success-path loop, {} loop(s) repeated for exceeding {:.0} %; at most {:.1} % \
             of a storm.",
            self.max_wait_share * 100.0,
            self.repeats,
            MAX_WAIT_SHARE * 100.0,
            self.storm_max_wait_share * 100.0
        ));
        if self.foreign_runs > 0 {
            n.push(format!(
                "{} no-tracer run(s) started while another tracepoint BPF program was loaded on \
                 the machine: their baseline includes that program's cost.",
                self.foreign_runs
            ));
        }
        n.push(
            "bpftrace's start-up is taken at its \"Attaching N probes...\" line, which it prints \
             just before it attaches; portwatch's at \"portwatch: attached\", printed after."
                .into(),
        );
        n
    }

    pub(crate) fn json(&self, sz: &Sizes) -> Value {
        let per = |f: &dyn Fn(usize) -> Value| json!({"none": f(0), "portwatch": f(1), "bpftrace": f(2), "floor": f(3)});
        json!({
            "schema": 1,
            "date": date_utc(),
            "backend": self.backend,
            "pinning": {"workload_cpu": WORKLOAD_CPU, "tracer_cpu": TRACER_CPU, "workload": "taskset", "tracer": "sched_setaffinity before exec", "nice": NICE, "tracer_nice": TRACER_NICE},
            "sizes": {"rounds": sz.rounds, "getppid_n": sz.getppid_n, "connect_n": sz.connect_n, "storm_rounds": sz.storm_rounds, "storm_n": sz.storm_n},
            "success_path": {
                "connect_ns_per_op_median": per(&|i| json!(self.connect[i])),
                "connect_ns_per_op_runs": per(&|i| json!(self.connect_all[i])),
                "connect_ratio_vs_none": per(&|i| json!(self.connect_ratio(i))),
                "getppid_ns_per_op_median": per(&|i| json!(self.getppid[i])),
                "getppid_ns_per_op_runs": per(&|i| json!(self.getppid_all[i])),
                "getppid_ratio_vs_none": per(&|i| json!(self.getppid_ratio(i))),
                "max_wait_share": self.max_wait_share,
                "repeated_loops": self.repeats,
                "baseline_runs_with_foreign_tracepoint_programs": self.foreign_runs,
            },
            "storm": {
                "attempts_per_s_median": per(&|i| json!(self.storm_attempts[i])),
                "attempts_ratio_vs_none": per(&|i| json!(self.storm_attempts[i].zip(self.storm_attempts[0]).and_then(|(a, b)| ratio(a, b)))),
                "output_events_per_s_median": per(&|i| json!(self.storm_output[i])),
                "attempts": per(&|i| json!(self.storm_n[i])),
                "delivered": per(&|i| json!(self.storm_delivered[i])),
                "lost": per(&|i| json!(self.storm_lost[i])),
                "drain_s_median": per(&|i| json!(self.storm_drain[i])),
                "tracer_cpu_us_per_event": per(&|i| json!(self.storm_cpu_per_event_us[i])),
                "vmhwm_kb": per(&|i| json!(self.storm_hwm_kb[i])),
            },
            "startup_ms": per(&|i| json!({"median": median(&self.startup_ms[i]), "runs": self.startup_ms[i]})),
            "idle_vmhwm_kb": per(&|i| json!(self.idle_hwm_kb[i])),
            "targets": self.targets.iter().map(|t| json!({
                "name": t.name, "limit": t.limit, "measured": t.measured, "met": t.met, "verdict": t.verdict,
            })).collect::<Vec<_>>(),
            "notes": self.notes(),
            "runs": self.run_details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(connect: [f64; KINDS], getppid: [f64; KINDS]) -> Report {
        let runs: Vec<(Kind, SuccessRun)> =
            [Kind::None, Kind::Portwatch, Kind::Bpftrace, Kind::Floor]
                .into_iter()
                .map(|k| {
                    (
                        k,
                        SuccessRun {
                            connect_ns: connect[idx(k)],
                            getppid_ns: getppid[idx(k)],
                            workload_cpu_share: 1.0,
                            wait_share: 0.0,
                            repeats: 0,
                            foreign_tp_progs: 0,
                        },
                    )
                })
                .collect();
        let storms = vec![StormRun {
            kind: Kind::Portwatch,
            n: 1000,
            attempts_per_s: 1e5,
            delivered: 1000,
            lost: 0,
            drain_s: 0.1,
            output_per_s: 9e4,
            cpu_s: 0.002,
            hwm_kb: Some(30 * 1024),
            wait_share: 0.0,
            foreign_tp_progs: 0,
        }];
        Report::new(
            &runs,
            &storms,
            &[(Kind::Portwatch, 50.0), (Kind::Bpftrace, 150.0)],
            &[],
            "tracepoint".into(),
        )
    }

    #[test]
    fn report_evaluates_targets_against_the_same_run() {
        let r = report(
            [10_000.0, 10_100.0, 10_500.0, 10_080.0],
            [100.0, 130.0, 131.0, 129.0],
        );
        let verdicts: Vec<&str> = r.targets.iter().map(|t| t.verdict.as_str()).collect();
        // +1 % (met), at most half of bpftrace's +5 % (met), the floor of
        // +0.8 % and portwatch's +0.2 pp above it, 0 lost, 2 µs per event
        // (met), 50 ms (met), idle RSS not measured, 30 MiB at the end of
        // the storm (missed by 6).
        assert_eq!(
            verdicts,
            [
                "met",
                "met",
                "the kernel's own cost",
                "measured",
                "met",
                "met",
                "met",
                "not measured",
                "missed by 6.0 MiB"
            ],
            "{:?}",
            r.targets
        );
        assert_eq!(r.storm_cpu_per_event_us[1], Some(2.0));
        let md = r.markdown(&Sizes::new(true), "test machine");
        assert!(md.contains("| … median time per connect (vs no tracer) | 10.00 µs | 10.10 µs (+1.0 %) | 10.50 µs (+5.0 %) |"), "{md}");
        assert!(md.contains("| peak RSS at the end of the storm (VmHWM) | ≤ 24.0 MiB | 30.0 MiB | missed by 6.0 MiB |"), "{md}");
        assert!(md.contains("| … the floor: empty programs on the same tracepoints, same rounds | – | 0.8 % | the kernel's own cost |\n| … portwatch above that floor | – | +0.2 pp | measured |"), "{md}");
        assert!(md.contains("- empty programs on the same tracepoints (the floor): +80 ns per connect iteration; the node-wide slow syscall path alone (getppid's +29 ns"), "{md}");
        // Noise can put a tracer under the no-tracer runs: signed, once.
        let r = report(
            [10_000.0, 9_900.0, 10_500.0, 10_080.0],
            [100.0, 99.0, 131.0, 129.0],
        );
        let md = r.markdown(&Sizes::new(true), "test machine");
        assert!(md.contains("- portwatch: -100 ns per connect iteration; the node-wide slow syscall path alone (getppid's -1 ns"), "{md}");
        let r = report(
            [10_000.0, 10_600.0, 10_500.0, 10_080.0],
            [100.0, 130.0, 131.0, 129.0],
        );
        assert_eq!(r.targets[0].verdict, "missed by 4.0 pp");
        assert_eq!(r.targets[1].verdict, "missed by 3.5 pp");
        let j = r.json(&Sizes::new(true));
        assert_eq!(j["targets"][0]["met"], json!(false));
        assert_eq!(
            j["success_path"]["connect_ratio_vs_none"]["portwatch"],
            json!(1.06)
        );
    }
}
