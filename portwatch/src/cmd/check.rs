//! `portwatch check`: a one-shot audit that says what will fail before it
//! does. Every network namespace of the host (or those named with
//! `--netns`) is found and read (`host::discover`), audited
//! (`pipeline::findings`) and reported (`pipeline::sink::findings`).

use std::io::{self, Write};

use anyhow::{Context as _, Result};

use crate::{
    cmd::cli::CheckArgs,
    host::{
        discover::{discover, ipvs_ports, read_state},
        holders::Holders,
        ports::PortSet,
    },
    pipeline::{
        findings::{findings_for, sysctls_of, Finding, Severity},
        lastwrite,
        schema::FINDING_SCHEMA,
        sink::findings::{write_json, write_table, Summary},
    },
};

/// Exit code when something is at warning or above.
pub const EXIT_FINDINGS: u8 = 3;

/// Runs the audit; returns the exit code (0 or 3).
pub fn run(args: &CheckArgs) -> Result<u8> {
    let targets = discover(&args.netns)?;
    let ipvs = ipvs_ports();
    let mut guarded = PortSet::range(args.nodeport_range.0, args.nodeport_range.1);
    if let Some(p) = &ipvs {
        guarded = guarded.union(p);
    }
    let holders = Holders::new();
    let writes = match lastwrite::load(&args.writes_file) {
        Ok(Some(l)) => {
            if l.skipped > 0 {
                eprintln!(
                    "portwatch: {}: {} line(s) that are not sysctl_write records skipped",
                    args.writes_file.display(),
                    l.skipped
                );
            }
            Some(l.writes)
        }
        Ok(None) => None,
        Err(e) => {
            // The audit stands without it: say so and go on.
            eprintln!("portwatch: no last writers: {e:#}");
            None
        }
    };
    let mut all: Vec<Finding> = vec![];
    let mut checked = 0;
    let mut skipped = 0;
    let mut unreadable: Vec<String> = vec![];
    for t in &targets {
        match read_state(t) {
            Ok(st) => {
                checked += 1;
                if let Err(e) = &st.socks {
                    unreadable.push(e.clone());
                }
                let mut found = findings_for(t, &st, &guarded, &holders);
                for f in &mut found {
                    let last = writes
                        .as_deref()
                        .and_then(|w| lastwrite::last_of(w, t.ino, sysctls_of(f.check)));
                    f.last_write = last.map(|w| lastwrite::LastWrite {
                        current: w.holds(st.range, &st.reserved, st.tw_reuse),
                        ..w.clone()
                    });
                }
                all.extend(found);
            }
            // Named ones must be readable; found ones may vanish meanwhile.
            Err(e) if !args.netns.is_empty() || t.is_node => return Err(e),
            Err(e) => {
                skipped += 1;
                log::info!("skipping netns {} ({}): {e:#}", t.ino, t.place);
            }
        }
    }
    // Worst first; the discovery order (node first) within a severity.
    all.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let count = |s| all.iter().filter(|f| f.severity == s).count();
    let exit = if all.iter().any(|f| f.severity >= Severity::Warning) {
        EXIT_FINDINGS
    } else if !unreadable.is_empty() {
        // Nothing found, but not everything could be looked at.
        1
    } else {
        0
    };
    let summary = Summary {
        schema: FINDING_SCHEMA,
        kind: "summary",
        netns_checked: checked,
        netns_skipped: skipped,
        netns_sockets_unreadable: unreadable.len(),
        findings: all.len(),
        critical: count(Severity::Critical),
        warning: count(Severity::Warning),
        info: count(Severity::Info),
        guarded: guarded.to_string(),
        ipvs: ipvs.is_some(),
        last_writes: writes
            .is_some()
            .then(|| args.writes_file.display().to_string()),
        exit,
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let res = if args.json {
        write_json(&mut out, &all, &summary)
    } else {
        write_table(&mut out, &all, &summary)
    };
    match res.and_then(|_| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing the findings")
        }
        _ => {}
    }
    if let Some(first) = unreadable.first() {
        eprintln!(
            "portwatch: port_pressure and time_wait_heavy not checked in {} netns: {first}",
            unreadable.len()
        );
    }
    Ok(exit)
}
