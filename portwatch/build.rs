//! Builds the kernel programs (portwatch-ebpf) for bpfel-unknown-none and
//! leaves one object per bin of that crate in OUT_DIR (`failures` for
//! trace, `steal` for nodeport-steal), where src/attach.rs embeds them.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "portwatch-ebpf")
        .ok_or_else(|| anyhow!("portwatch-ebpf package not found"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    // `cargo xtask setup` registers Debian's rustc (which ships rust-src for
    // -Z build-std) as a rustup toolchain under this name.
    println!("cargo:rerun-if-env-changed=PORTWATCH_EBPF_TOOLCHAIN");
    let toolchain =
        std::env::var("PORTWATCH_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-1.96".into());
    let toolchain: &'static str = Box::leak(toolchain.into_boxed_str());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(toolchain),
    )
}
