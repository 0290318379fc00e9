//! Command-line interface.

use clap::{Args, Parser, Subcommand};

use crate::event::{Errno, Probe};

#[derive(Parser, Debug)]
#[command(
    name = "portwatch",
    version,
    about = "See ephemeral port exhaustion as it happens: connect()/bind() failures with EADDRNOTAVAIL / EADDRINUSE, traced with eBPF."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream every connect()/bind() failing with EADDRNOTAVAIL or EADDRINUSE.
    Trace(TraceArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// One JSON object per line (schema in the README) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only events of this process id.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only events of this command name (exact, as in /proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only this errno.
    #[arg(long, value_enum, value_name = "ERRNO")]
    pub errno: Option<Errno>,
    /// Only connects toward this destination port.
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
    /// Probe kind: auto picks the best the kernel offers (fexit, then kprobe, then tracepoint).
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ringbuf_kib)]
    pub ringbuf_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice(pub Option<Probe>);

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice(None)),
        "fexit" => Ok(BackendChoice(Some(Probe::Fexit))),
        "kprobe" => Ok(BackendChoice(Some(Probe::Kprobe))),
        "tracepoint" => Ok(BackendChoice(Some(Probe::Tracepoint))),
        _ => Err("expected one of: auto, fexit, kprobe, tracepoint".into()),
    }
}

fn parse_ringbuf_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(4..=1 << 20).contains(&v) || !v.is_power_of_two() {
        return Err("expected a power of two between 4 and 1048576 (KiB)".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portwatch").chain(args.iter().copied()))
    }

    #[test]
    fn parses_trace_options() {
        let Command::Trace(t) = parse(&[
            "trace",
            "--json",
            "--pid",
            "7",
            "--comm",
            "curl",
            "--errno",
            "EADDRINUSE",
            "--dport",
            "80",
            "--backend",
            "kprobe",
        ])
        .unwrap()
        .command;
        assert!(t.json);
        assert_eq!(t.pid, Some(7));
        assert_eq!(t.comm.as_deref(), Some("curl"));
        assert_eq!(t.errno, Some(Errno::EADDRINUSE));
        assert_eq!(t.dport, Some(80));
        assert_eq!(t.backend, BackendChoice(Some(Probe::Kprobe)));
        let Command::Trace(t) = parse(&["trace"]).unwrap().command;
        assert_eq!(t.backend, BackendChoice(None));
        assert_eq!(t.ringbuf_size, 4096);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            &["trace", "--errno", "ENOENT"][..],
            &["trace", "--dport", "70000"],
            &["trace", "--pid", "x"],
            &["trace", "--backend", "uprobe"],
            &["trace", "--ringbuf-size", "3"],
            &["trace", "--nope"],
            &["frobnicate"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_ne!(e.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
