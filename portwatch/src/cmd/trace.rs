//! `portwatch trace`: the trace pipeline into a table or JSON lines on
//! stdout, until Ctrl-C / SIGTERM or the reader closes stdout.

use std::io::{self, BufWriter};

use anyhow::Result;

use crate::{
    cmd::cli::TraceArgs,
    kernel::attach,
    pipeline::{
        cause,
        control::{self, Control},
        filter::Filter,
        sink::{JsonSink, TableSink, TraceSink},
        trace::{self, End},
    },
};

/// `portwatch trace`: the pipeline into a table or JSON lines on stdout,
/// until SIGINT/SIGTERM.
pub async fn run(args: TraceArgs) -> Result<End> {
    let (_stop, rx) = control::stop_on_signals()?;
    let stdout = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let sink: Box<dyn TraceSink> = if args.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(TableSink::new(stdout))
    };
    trace::pipeline(&options(&args), sink, Control::new(rx)).await
}

/// What the trace options ask the pipeline for.
pub fn options(args: &TraceArgs) -> trace::Options {
    trace::Options {
        attach: attach::Options {
            backend: args.backend.0,
            ringbuf_bytes: args.ringbuf_size * 1024,
            cgroup2: crate::k8s::pods::cgroup2_root(),
            guard_port_range: false,
        },
        cri_endpoint: args.cri_endpoint.clone(),
        detail: cause::Options {
            budget: args.detail_budget,
            lookups: !args.no_detail,
        },
        filter: filter_of(args),
        netns_sweep: args.netns_sweep,
        cri: None,
        nodeport_range: args.nodeport_range,
    }
}

/// The filter the trace options ask for.
pub fn filter_of(args: &TraceArgs) -> Filter {
    Filter {
        pid: args.pid,
        comm: args.comm.clone(),
        errno: args.errno,
        dport: args.dport,
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        container: args.container.clone(),
        host: args.host,
    }
}
