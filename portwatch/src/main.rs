//! portwatch: ephemeral port exhaustion, seen from the kernel.
//!
//! The binary parses the command line and runs the command; everything
//! else is the library's (`portwatch::cmd` and what it composes).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::Parser as _;
use portwatch::cmd::{check, cli, generate, nodeport, serve, top, trace};

fn main() -> ExitCode {
    // Bad arguments: clap prints its message and exits 2.
    portwatch::cmd::startup_mark("main");
    let cli = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    portwatch::cmd::startup_mark("arguments parsed");
    if let cli::Command::Generate(args) = &cli.command {
        return match generate::run(&args.what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portwatch: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    if let cli::Command::Check(args) = &cli.command {
        // One shot, no BPF: 0 nothing at warning or above, 3 something is.
        return match check::run(args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("portwatch: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portwatch: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            cli::Command::Trace(args) => trace::run(args).await.map(|_| ()),
            cli::Command::NodeportSteal(args) => nodeport::run(args).await,
            cli::Command::Top(args) => top::run(args).await.map(|_| ()),
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::Check(_) | cli::Command::Generate(_) => unreachable!("handled above"),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch: {e:#}");
            ExitCode::from(1)
        }
    }
}
