//! `portwatch generate`: shell completions and man pages, generated from the
//! clap definitions so they never drift from the flags. Hidden from `--help`;
//! `cargo xtask dist` ships what it writes.

use std::{fs, io::Write, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cmd::cli::{Cli, Generate};

pub fn run(what: &Generate) -> Result<()> {
    match what {
        Generate::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "portwatch", &mut out);
            out.flush().context("writing the completions")
        }
        Generate::Man { dir } => man_pages(dir),
    }
}

/// portwatch.1, then portwatch-COMMAND.1 for every visible command.
fn man_pages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut top = Cli::command();
    top.build();
    write_page(dir, "portwatch", top.clone())?;
    for sub in top
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("portwatch-{}", sub.get_name());
        let version = top.get_version().unwrap_or("").to_string();
        let page = sub.clone().name(name.clone()).version(version);
        write_page(dir, &name, page)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .with_context(|| format!("rendering {name}.1"))?;
    fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_man_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("pw-man-{}", std::process::id()));
        man_pages(&dir).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "portwatch-check.1",
                "portwatch-nodeport-steal.1",
                "portwatch-serve.1",
                "portwatch-top.1",
                "portwatch-trace.1",
                "portwatch.1"
            ]
        );
        let trace = fs::read_to_string(dir.join("portwatch-trace.1")).unwrap();
        assert!(trace.starts_with(".ie"), "{}", &trace[..40]);
        assert!(trace.contains("portwatch\\-trace") && trace.contains("cri\\-endpoint"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
