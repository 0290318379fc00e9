//! Command-line interface.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::{kernel::probe::Probe, pipeline::event::Errno};

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
    /// One-shot audit of every network namespace: what will fail before it does.
    /// Exit 0: nothing at warning or above; 3: something is; 1: error; 2: bad arguments.
    Check(CheckArgs),
    /// Catch SYN-ACKs for local clients on NodePort / IPVS ports that IPVS
    /// takes as new connections (the client never gets its reply).
    NodeportSteal(NodeportArgs),
    /// The node agent (a DaemonSet): trace and nodeport-steal events as JSON
    /// lines on stdout, plus Prometheus metrics, the netns port scan and the
    /// check, on --listen (/metrics, /healthz, /readyz). Stops on SIGTERM.
    Serve(ServeArgs),
    /// A live summary of the failures: by pod, errno and destination, with
    /// the ephemeral ports in use toward each failing destination.
    Top(TopArgs),
    /// Shell completions and man pages, from these definitions (for
    /// packaging: `cargo xtask dist` ships them).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Generate {
    /// The completion script for SHELL, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// One man page per command (portwatch.1, portwatch-trace.1, ...) into DIR.
    Man { dir: std::path::PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    /// The trace options: filters, backend; --json prints one summary
    /// object per interval (schema: docs/schema.md) instead of a table.
    #[command(flatten)]
    pub trace: TraceArgs,
    /// How often to summarize: 2s, 500ms, 1m (100ms to 24h).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where to serve /metrics, /healthz and /readyz: ADDR:PORT or :PORT.
    /// (9477 is listed for immudb's exporter in Prometheus' port list, and
    /// no 9xxx port is free there any more: change it if it clashes on the
    /// node.)
    #[arg(long, value_name = "ADDR:PORT", default_value = ":9477", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with this certificate (PEM, the chain after it); needs
    /// --tls-key. Re-read when it changes on disk (a rotated Secret).
    /// Without it, plain HTTP: anyone who reaches the port reads the pod
    /// names and failures of this node.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Serve only clients whose certificate chains to this CA (PEM):
    /// mutual TLS, e.g. Prometheus' scrape client certificate.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// How long a connection may take to send its first request's header
    /// (the TLS handshake included).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
    pub http_header_timeout: Duration,
    /// How long a request may take, header to response.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
    pub http_request_timeout: Duration,
    /// How long a kept-alive connection may stay quiet between requests.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_interval)]
    pub http_idle_timeout: Duration,
    /// Connections open at once; when full, the one quiet for longest is
    /// closed to make room (idle clients cannot lock Prometheus out).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// How often to run the check (NodePort overlap, port pressure, ...).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_interval)]
    pub check_interval: Duration,
    /// How often to sample the ports in use and usable in every netns.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
    pub scan_interval: Duration,
    /// Destinations exported per netns (the most used ones): bounds the
    /// in-use series to this many per netns.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_destinations: u16,
    /// The NodePort range (guarded, and audited by the check).
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767", value_parser = crate::host::ports::parse_lo_hi)]
    pub nodeport_range: (u16, u16),
    /// Refuse (EPERM) writes of the node's net.ipv4.ip_local_port_range
    /// that would take in NodePorts (--nodeport-range) not kept in
    /// ip_local_reserved_ports, and writes of the node's
    /// ip_local_reserved_ports that would stop keeping the NodePorts such a
    /// range takes in. Writes in pods' own network namespaces are never
    /// refused. A refused write can fail a pod's start: see the README.
    #[arg(long)]
    pub guard_port_range: bool,
    /// Where serve keeps the last writes of the port sysctls per network
    /// namespace (sysctl-writes.jsonl), for `check` to name who made a
    /// finding's setting. A host directory (hostPath) outlives the pod.
    #[arg(long, value_name = "DIR", default_value = crate::pipeline::lastwrite::DEFAULT_STATE_DIR)]
    pub state_dir: std::path::PathBuf,
    /// Probe kind for the trace hooks: auto, fexit, kprobe, tracepoint.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Probe kind on IPVS's scheduling path, for the nodeport-steal
    /// reports: auto (fexit, else kprobe), fexit, kprobe.
    #[arg(long, value_name = "PROBE", default_value = "auto", value_parser = parse_ipvs_probe)]
    pub ipvs_probe: BackendChoice,
    /// How long an event may wait for its detail before it goes out.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_budget)]
    pub detail_budget: Duration,
    /// The container runtime's CRI socket, for pod and container names:
    /// unix:///PATH (as kubelet and crictl write it) or PATH. Default: the
    /// first of /run/containerd/containerd.sock and /var/run/crio/crio.sock
    /// that answers.
    #[arg(long, value_name = "PATH", env = crate::k8s::cri::ENDPOINT_ENV, value_parser = crate::k8s::cri::parse_endpoint)]
    pub cri_endpoint: Option<std::path::PathBuf>,
}

/// The trace options `serve` runs its trace pipeline with: `trace`'s
/// defaults (no filter: the node's every failure), with serve's choices.
pub fn trace_args_for_serve(s: &ServeArgs) -> TraceArgs {
    TraceArgs {
        json: true,
        backend: s.backend,
        detail_budget: s.detail_budget,
        cri_endpoint: s.cri_endpoint.clone(),
        netns_sweep: s.scan_interval,
        nodeport_range: s.nodeport_range,
        ..TraceArgs::default()
    }
}

/// The nodeport-steal options `serve` runs with.
pub fn nodeport_args_for_serve(s: &ServeArgs) -> NodeportArgs {
    NodeportArgs {
        json: true,
        nodeport_range: s.nodeport_range,
        ipvs_probe: s.ipvs_probe,
        ..NodeportArgs::default()
    }
}

pub(crate) fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    full.parse()
        .map_err(|_| "expected ADDR:PORT or :PORT, e.g. :9477 or 127.0.0.1:9477".to_string())
}

/// 500ms, 10s, 2m, 1h: between 100ms and 24h.
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return Err("expected a duration with its unit: 500ms, 10s, 2m, 1h".into());
    };
    let v: u64 = num
        .trim()
        .parse()
        .map_err(|_| "expected a duration with its unit: 500ms, 10s, 2m, 1h".to_string())?;
    let d = Duration::from_millis(v.saturating_mul(ms));
    if d < Duration::from_millis(100) || d > Duration::from_secs(86_400) {
        return Err("must be between 100ms and 24h".into());
    }
    Ok(d)
}

#[derive(Args, Debug, Clone)]
pub struct NodeportArgs {
    /// One JSON object per line (schema: docs/schema.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The NodePort range to guard (besides the node's IPVS virtual services).
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767", value_parser = crate::host::ports::parse_lo_hi)]
    pub nodeport_range: (u16, u16),
    /// More ports to guard, in the kernel's list syntax: 8080,9000-9100.
    #[arg(long, value_name = "LIST", value_parser = parse_port_list)]
    pub ports: Option<crate::host::ports::PortSet>,
    /// Watch SYN-ACKs on these interfaces only (repeatable). Default: every
    /// interface but lo, including ones that appear later (new pods).
    #[arg(long, value_name = "IFACE")]
    pub interface: Vec<String>,
    /// How long to follow a victim connection for its outcome before
    /// reporting it (a final state reports at once): 5s, 500ms.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_follow)]
    pub follow: Duration,
    /// Probe kind on IPVS's scheduling path (ip_vs_conn_new), which names
    /// the real server: auto (fexit, else kprobe), fexit, kprobe. A forced
    /// kind the kernel cannot attach is an error; where the ip_vs module
    /// has no BTF (before 5.11) nothing is probed and the real server is
    /// read from /proc/net/ip_vs_conn, whatever the choice.
    #[arg(long, value_name = "PROBE", default_value = "auto", value_parser = parse_ipvs_probe)]
    pub ipvs_probe: BackendChoice,
}

impl Default for NodeportArgs {
    /// What `portwatch nodeport-steal` runs with when given no option (the
    /// `default_value`s above; a test holds them equal).
    fn default() -> NodeportArgs {
        NodeportArgs {
            json: false,
            nodeport_range: (30000, 32767),
            ports: None,
            interface: vec![],
            follow: Duration::from_secs(5),
            ipvs_probe: BackendChoice(None),
        }
    }
}

pub(crate) fn parse_port_list(s: &str) -> Result<crate::host::ports::PortSet, String> {
    crate::host::ports::PortSet::parse(s).map_err(|e| format!("{e:#}"))
}

pub(crate) fn parse_follow(s: &str) -> Result<Duration, String> {
    let d = parse_budget(s)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// One JSON object per finding, then a summary, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Audit only this network namespace (a path like /run/netns/NAME or
    /// /proc/PID/ns/net, or a PID). Repeatable. The node checks apply to the
    /// netns portwatch runs in.
    #[arg(long, value_name = "PATH|PID")]
    pub netns: Vec<String>,
    /// The ports NodePorts use, guarded from the ephemeral range.
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767", value_parser = crate::host::ports::parse_lo_hi)]
    pub nodeport_range: (u16, u16),
    /// The last sysctl writes `serve` kept on this node: each finding names
    /// the last write of its sysctl from there. No file: no writer named.
    #[arg(long, value_name = "FILE", default_value_os_t = crate::pipeline::lastwrite::default_file())]
    pub writes_file: std::path::PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// One JSON object per line (schema: docs/schema.md) instead of a table.
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
    /// Only pods of this namespace (its name, from the container runtime
    /// over CRI: with no runtime reachable, nothing matches).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only this pod: its name (from the runtime over CRI) or a prefix of
    /// its uid.
    #[arg(long, value_name = "NAME|UID")]
    pub pod: Option<String>,
    /// Only this container: its name (from the runtime over CRI) or a
    /// prefix of its id.
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    /// Only host processes (no pod cgroup).
    #[arg(long, conflicts_with_all = ["namespace", "pod", "container"])]
    pub host: bool,
    /// Probe kind: auto picks the best the kernel offers (fexit, then kprobe, then tracepoint).
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ringbuf_kib)]
    pub ringbuf_size: u32,
    /// How long an event may wait for its detail (socket table, holders)
    /// before it goes out with `"detail_complete": false`: 50ms, 0, 1s.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_budget)]
    pub detail_budget: Duration,
    /// Cause from the event alone: no socket-table or holder look-ups.
    #[arg(long)]
    pub no_detail: bool,
    /// The container runtime's CRI socket, for pod, namespace and container
    /// names: unix:///PATH (as kubelet and crictl write it) or PATH.
    /// Default: the first that answers of /run/containerd/containerd.sock,
    /// /var/run/crio/crio.sock.
    #[arg(long, value_name = "PATH", env = crate::k8s::cri::ENDPOINT_ENV, value_parser = crate::k8s::cri::parse_endpoint)]
    pub cri_endpoint: Option<std::path::PathBuf>,
    /// How often handles on network namespaces that have gone are closed
    /// (not a flag: `serve` sweeps every scan interval).
    #[arg(skip = crate::host::netns::DEFAULT_SWEEP)]
    pub netns_sweep: Duration,
    /// The NodePort range: a write of the node's ip_local_port_range or
    /// ip_local_reserved_ports that exposes any of it is reported as
    /// creates_nodeport_overlap.
    #[arg(long, value_name = "LO-HI", default_value = "30000-32767", value_parser = crate::host::ports::parse_lo_hi)]
    pub nodeport_range: (u16, u16),
}

impl Default for TraceArgs {
    /// What `portwatch trace` runs with when given no option (the
    /// `default_value`s above; a test holds them equal).
    fn default() -> TraceArgs {
        TraceArgs {
            json: false,
            pid: None,
            comm: None,
            errno: None,
            dport: None,
            namespace: None,
            pod: None,
            container: None,
            host: false,
            backend: BackendChoice(None),
            ringbuf_size: 4096,
            detail_budget: Duration::from_millis(50),
            no_detail: false,
            cri_endpoint: None,
            netns_sweep: crate::host::netns::DEFAULT_SWEEP,
            nodeport_range: (30000, 32767),
        }
    }
}

pub(crate) fn parse_budget(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    let v: u64 = num
        .trim()
        .parse()
        .map_err(|_| "expected milliseconds, e.g. 50ms, 0 or 1s".to_string())?;
    let ms = v.checked_mul(mul).filter(|&ms| ms <= 60_000);
    ms.map(Duration::from_millis)
        .ok_or_else(|| "at most 60s".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice(pub Option<Probe>);

pub(crate) fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice(None)),
        "fexit" => Ok(BackendChoice(Some(Probe::Fexit))),
        "kprobe" => Ok(BackendChoice(Some(Probe::Kprobe))),
        "tracepoint" => Ok(BackendChoice(Some(Probe::Tracepoint))),
        _ => Err("expected one of: auto, fexit, kprobe, tracepoint".into()),
    }
}

/// `--ipvs-probe`: a tracepoint cannot see IPVS's arguments.
pub(crate) fn parse_ipvs_probe(s: &str) -> Result<BackendChoice, String> {
    match s {
        "tracepoint" => Err("expected one of: auto, fexit, kprobe (IPVS has no tracepoint)".into()),
        _ => parse_backend(s).map_err(|_| "expected one of: auto, fexit, kprobe".into()),
    }
}

pub(crate) fn parse_ringbuf_kib(s: &str) -> Result<u32, String> {
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
            "--detail-budget",
            "200ms",
            "--no-detail",
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
        .command
        else {
            panic!("trace")
        };
        assert!(t.json);
        assert_eq!(t.pid, Some(7));
        assert_eq!(t.comm.as_deref(), Some("curl"));
        assert_eq!(t.errno, Some(Errno::EADDRINUSE));
        assert_eq!(t.dport, Some(80));
        assert_eq!(t.backend, BackendChoice(Some(Probe::Kprobe)));
        assert_eq!(t.detail_budget, Duration::from_millis(200));
        assert!(t.no_detail);
        let Command::Trace(t) = parse(&["trace"]).unwrap().command else {
            unreachable!()
        };
        assert_eq!(t.backend, BackendChoice(None));
        assert_eq!(t.ringbuf_size, 4096);
        assert_eq!(t.detail_budget, Duration::from_millis(50));
        assert!(!t.no_detail);
        assert!(t.namespace.is_none() && t.pod.is_none() && t.container.is_none() && !t.host);
        assert!(t.cri_endpoint.is_none());
        let Command::Trace(t) = parse(&[
            "trace",
            "--namespace",
            "shop",
            "--pod",
            "0f5e5e8a",
            "--container",
            "4c5f1e2d",
            "--dport",
            "80",
        ])
        .unwrap()
        .command
        else {
            unreachable!()
        };
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert_eq!(t.pod.as_deref(), Some("0f5e5e8a"));
        assert_eq!(t.container.as_deref(), Some("4c5f1e2d"));
        assert_eq!(t.dport, Some(80));
        let Command::Trace(t) = parse(&["trace", "--host", "--comm", "curl"])
            .unwrap()
            .command
        else {
            unreachable!()
        };
        assert!(t.host);
        let Command::Trace(t) = parse(&["trace", "--cri-endpoint", "/run/k3s/containerd.sock"])
            .unwrap()
            .command
        else {
            unreachable!()
        };
        assert_eq!(
            t.cri_endpoint.as_deref(),
            Some(std::path::Path::new("/run/k3s/containerd.sock"))
        );
        for (arg, ms) in [("0", 0), ("1s", 1000), ("75", 75), ("2ms", 2)] {
            let Command::Trace(t) = parse(&["trace", "--detail-budget", arg]).unwrap().command
            else {
                unreachable!()
            };
            assert_eq!(t.detail_budget, Duration::from_millis(ms), "{arg}");
        }
    }

    #[test]
    fn cri_endpoints_in_kubelet_and_crictl_form() {
        use std::path::PathBuf;
        let ok = |s: &str| crate::k8s::cri::parse_endpoint(s).unwrap();
        let p = PathBuf::from("/run/containerd/containerd.sock");
        assert_eq!(ok("unix:///run/containerd/containerd.sock"), p);
        assert_eq!(ok("/run/containerd/containerd.sock"), p);
        assert_eq!(ok("unix:/run/containerd/containerd.sock"), p);
        assert_eq!(ok("run/k3s.sock"), PathBuf::from("run/k3s.sock"));
        for bad in [
            "bogus://x",
            "tcp://127.0.0.1:2376",
            "npipe:////./pipe/containerd-containerd",
            "http://localhost/run/containerd/containerd.sock",
            "unix://run/containerd/containerd.sock",
            "",
            " ",
        ] {
            let e = crate::k8s::cri::parse_endpoint(bad).unwrap_err();
            assert!(e.contains("unix:///PATH"), "{bad:?}: {e}");
        }
        for cmd in ["trace", "top", "serve"] {
            let c = parse(&[cmd, "--cri-endpoint", "unix:///run/k3s/containerd.sock"]).unwrap();
            let got = match c.command {
                Command::Trace(t) => t.cri_endpoint,
                Command::Top(t) => t.trace.cri_endpoint,
                Command::Serve(s) => s.cri_endpoint,
                _ => unreachable!(),
            };
            assert_eq!(
                got,
                Some(PathBuf::from("/run/k3s/containerd.sock")),
                "{cmd}"
            );
            let e = parse(&[cmd, "--cri-endpoint", "bogus://x"]).err().unwrap();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{cmd}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn parses_check_options() {
        let Command::Check(c) = parse(&["check"]).unwrap().command else {
            panic!("check")
        };
        assert!(!c.json && c.netns.is_empty());
        assert_eq!(c.nodeport_range, (30000, 32767));
        let Command::Check(c) = parse(&[
            "check",
            "--json",
            "--netns",
            "/run/netns/a",
            "--netns",
            "42",
            "--nodeport-range",
            "20000-22767",
        ])
        .unwrap()
        .command
        else {
            panic!("check")
        };
        assert!(c.json);
        assert_eq!(c.netns, vec!["/run/netns/a", "42"]);
        assert_eq!(c.nodeport_range, (20000, 22767));
    }

    #[test]
    fn parses_nodeport_steal_options() {
        let Command::NodeportSteal(n) = parse(&["nodeport-steal"]).unwrap().command else {
            panic!("nodeport-steal")
        };
        assert_eq!(n.nodeport_range, (30000, 32767));
        assert_eq!(n.follow, Duration::from_secs(5));
        assert!(n.ports.is_none() && n.interface.is_empty() && !n.json);
        assert_eq!(n.ipvs_probe, BackendChoice(None));
        let Command::NodeportSteal(n) = parse(&[
            "nodeport-steal",
            "--ipvs-probe",
            "kprobe",
            "--json",
            "--ports",
            "8080,9000-9001",
            "--interface",
            "eth0",
            "--follow",
            "500ms",
        ])
        .unwrap()
        .command
        else {
            panic!("nodeport-steal")
        };
        assert_eq!(n.ports.unwrap().to_string(), "8080,9000-9001");
        assert_eq!(n.interface, vec!["eth0"]);
        assert_eq!(n.follow, Duration::from_millis(500));
        assert_eq!(n.ipvs_probe, BackendChoice(Some(Probe::Kprobe)));
        for bad in [
            &["nodeport-steal", "--ports", "x"][..],
            &["nodeport-steal", "--follow", "0"],
            &["nodeport-steal", "--nodeport-range", "5"],
            &["nodeport-steal", "--ipvs-probe", "tracepoint"],
            &["nodeport-steal", "--ipvs-probe", "uprobe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = parse(&["nodeport-steal", "--ipvs-probe", "tracepoint"]).unwrap_err();
        assert!(e.to_string().contains("IPVS has no tracepoint"), "{e}");
    }

    #[test]
    fn parses_serve_options() {
        let Command::Serve(s) = parse(&["serve"]).unwrap().command else {
            panic!("serve")
        };
        assert_eq!(s.listen, "0.0.0.0:9477".parse().unwrap());
        assert_eq!(s.check_interval, Duration::from_secs(60));
        assert_eq!(s.scan_interval, Duration::from_secs(10));
        assert_eq!(s.max_destinations, 20);
        assert_eq!(s.nodeport_range, (30000, 32767));
        let Command::Serve(s) = parse(&[
            "serve",
            "--listen",
            "127.0.0.1:19477",
            "--check-interval",
            "2m",
            "--scan-interval",
            "500ms",
            "--max-destinations",
            "5",
            "--backend",
            "tracepoint",
            "--ipvs-probe",
            "fexit",
            "--cri-endpoint",
            "/run/k3s/containerd/containerd.sock",
        ])
        .unwrap()
        .command
        else {
            panic!("serve")
        };
        assert_eq!(s.listen, "127.0.0.1:19477".parse().unwrap());
        assert_eq!(s.check_interval, Duration::from_secs(120));
        assert_eq!(s.scan_interval, Duration::from_millis(500));
        assert_eq!(s.max_destinations, 5);
        let t = trace_args_for_serve(&s);
        assert!(t.json && t.pid.is_none() && !t.host && !t.no_detail);
        assert_eq!(t.backend, BackendChoice(Some(Probe::Tracepoint)));
        assert_eq!(
            t.cri_endpoint.as_deref(),
            Some(std::path::Path::new("/run/k3s/containerd/containerd.sock"))
        );
        let n = nodeport_args_for_serve(&s);
        assert!(n.json && n.interface.is_empty());
        assert_eq!(n.ipvs_probe, BackendChoice(Some(Probe::Fexit)));
        for bad in [
            &["serve", "--listen", "9477"][..],
            &["serve", "--listen", "nowhere:1"],
            &["serve", "--scan-interval", "10"],
            &["serve", "--scan-interval", "10ms"],
            &["serve", "--check-interval", "2d"],
            &["serve", "--max-destinations", "0"],
            &["serve", "--max-destinations", "1001"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn parses_top_options() {
        let Command::Top(t) = parse(&["top"]).unwrap().command else {
            panic!("top")
        };
        assert_eq!(t.interval, Duration::from_secs(2));
        assert!(!t.trace.json && t.trace.pid.is_none() && !t.trace.host);
        assert_eq!(t.trace.backend, BackendChoice(None));
        let Command::Top(t) = parse(&[
            "top",
            "--interval",
            "500ms",
            "--json",
            "--errno",
            "EADDRNOTAVAIL",
            "--dport",
            "443",
            "--pod",
            "0f5e",
            "--backend",
            "tracepoint",
        ])
        .unwrap()
        .command
        else {
            panic!("top")
        };
        assert_eq!(t.interval, Duration::from_millis(500));
        assert!(t.trace.json);
        assert_eq!(t.trace.errno, Some(Errno::EADDRNOTAVAIL));
        assert_eq!(t.trace.dport, Some(443));
        assert_eq!(t.trace.pod.as_deref(), Some("0f5e"));
        assert_eq!(t.trace.backend, BackendChoice(Some(Probe::Tracepoint)));
        for bad in [
            &["top", "--interval", "0"][..],
            &["top", "--interval", "2"],
            &["top", "--interval", "soon"],
            &["top", "--host", "--pod", "0f5e"],
            &["top", "--errno", "ENOENT"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
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
            &["trace", "--detail-budget", "fast"],
            &["trace", "--detail-budget", "2m"],
            &["trace", "--host", "--pod", "0f5e"],
            &["trace", "--host", "--namespace", "default"],
            &["trace", "--host", "--container", "4c5f"],
            &["trace", "--pod"],
            &["trace", "--cri-endpoint"],
            &["check", "--nodeport-range", "32767-30000"],
            &["check", "--nodeport-range", "30000"],
            &["check", "--netns"],
            &["frobnicate"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_ne!(e.kind(), ErrorKind::DisplayHelp, "{bad:?}");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    /// The options serve builds without a command line start from these.
    #[test]
    fn defaults_are_what_no_option_parses_to() {
        let Command::Trace(t) = parse(&["trace"]).unwrap().command else {
            panic!("trace")
        };
        assert_eq!(format!("{t:?}"), format!("{:?}", TraceArgs::default()));
        let Command::NodeportSteal(n) = parse(&["nodeport-steal"]).unwrap().command else {
            panic!("nodeport-steal")
        };
        assert_eq!(format!("{n:?}"), format!("{:?}", NodeportArgs::default()));
    }
}
