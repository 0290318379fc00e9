//! `check`'s findings out: one JSON object per finding and a summary
//! object, or a table with the finding in words and its fix.

use std::io::{self, Write};

use serde::Serialize;

use crate::pipeline::findings::Finding;

/// The last record of a check: what was looked at, and the exit code.
#[derive(Serialize)]
pub struct Summary {
    pub schema: u32,
    pub kind: &'static str,
    pub netns_checked: usize,
    pub netns_skipped: usize,
    /// Netns whose socket table could not be read: no port_pressure /
    /// time_wait_heavy verdict there (exit 1 unless something else gives 3).
    pub netns_sockets_unreadable: usize,
    pub findings: usize,
    pub critical: usize,
    pub warning: usize,
    pub info: usize,
    pub guarded: String,
    pub ipvs: bool,
    /// The file of last sysctl writes that was read (null: none there).
    pub last_writes: Option<String>,
    pub exit: u8,
}

pub fn write_json(out: &mut impl Write, all: &[Finding], s: &Summary) -> io::Result<()> {
    for f in all {
        writeln!(out, "{}", serde_json::to_string(f).expect("serializes"))?;
    }
    writeln!(out, "{}", serde_json::to_string(s).expect("serializes"))
}

pub fn write_table(out: &mut impl Write, all: &[Finding], s: &Summary) -> io::Result<()> {
    if !all.is_empty() {
        writeln!(
            out,
            "{:<9} {:<17} {:<10} WHERE",
            "SEVERITY", "CHECK", "NETNS"
        )?;
    }
    for f in all {
        writeln!(
            out,
            "{:<9} {:<17} {:<10} {}",
            f.severity.name(),
            f.check,
            f.netns,
            f.place
        )?;
        writeln!(out, "  \u{2514} {}", f.message)?;
        if let Some(w) = &f.last_write {
            writeln!(
                out,
                "    last write: {} {} (pid {}, {}) {}: {} -> {}{}",
                w.time,
                w.comm,
                w.pid,
                w.who(),
                w.name,
                w.old.as_deref().map_or("?".into(), |o| format!("{o:?}")),
                format_args!("{:?}", w.new),
                if w.current == Some(false) {
                    " (changed since by a write portwatch did not see)"
                } else {
                    ""
                }
            )?;
        }
        if let Some(fix) = &f.fix {
            writeln!(out, "    fix: {fix}")?;
        }
    }
    writeln!(
        out,
        "checked {} network namespace{}{}: {} critical, {} warning, {} info (guarded ports {}{})",
        s.netns_checked,
        if s.netns_checked == 1 { "" } else { "s" },
        if s.netns_skipped > 0 {
            format!(" ({} gone while looking)", s.netns_skipped)
        } else {
            String::new()
        },
        s.critical,
        s.warning,
        s.info,
        s.guarded,
        if s.ipvs {
            ", IPVS services included"
        } else {
            ""
        },
    )?;
    if s.netns_sockets_unreadable > 0 {
        writeln!(
            out,
            "socket tables unreadable in {} network namespace{}: port_pressure and time_wait_heavy not checked there",
            s.netns_sockets_unreadable,
            if s.netns_sockets_unreadable == 1 { "" } else { "s" },
        )?;
    }
    Ok(())
}
