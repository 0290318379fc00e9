//! `cargo xtask image`: the DaemonSet's OCI image, built here with no
//! registry. The root filesystem is assembled by hand (the release binary and
//! the libraries `ldd` lists, nothing else: no shell, no package manager),
//! then Debian's podman (through its buildah library) makes it an image
//! `FROM scratch`, tagged with the workspace version, and saves it as an OCI
//! archive that `podman load`, `skopeo copy oci-archive:...` or
//! `ctr -n k8s.io images import` take.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{rootfs::libraries_of, run, workspace_root};

/// Where the binary sits inside the image.
pub const BIN_IN_IMAGE: &str = "/usr/bin/portwatch";

/// The image's repository name; `localhost/` is podman's name for "built
/// here, from no registry".
pub const REPO: &str = "localhost/portwatch";

pub struct Image {
    /// `localhost/portwatch:<version>`
    pub tag: String,
    /// The OCI archive, under target/image/.
    pub archive: PathBuf,
}

/// `[workspace.package] version` of the top Cargo.toml: the image's tag.
pub fn workspace_version() -> Result<String> {
    let path = workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    version_in(&text)
        .with_context(|| format!("no [workspace.package] version in {}", path.display()))
}

fn version_in(toml: &str) -> Option<String> {
    let mut in_section = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == "version" {
                return Some(v.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// Builds the image from the release binary `bin`.
pub fn build(bin: &Path) -> Result<Image> {
    let t0 = Instant::now();
    let version = workspace_version()?;
    let tag = format!("{REPO}:{version}");
    let dir = workspace_root().join("target/image");
    let root = dir.join("rootfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;

    crate::rootfs::put(&root, bin, Path::new(BIN_IN_IMAGE))?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(root.join(&BIN_IN_IMAGE[1..])))?;
    let libs = libraries_of(bin)?;
    if libs.is_empty() {
        bail!(
            "ldd listed no library for {}: expected a glibc-linked binary",
            bin.display()
        );
    }
    for lib in &libs {
        crate::rootfs::put(&root, lib, lib)?;
    }
    // Mount points the runtime and the DaemonSet use; /tmp for anything that
    // wants a scratch file (the root filesystem is mounted read-only).
    for d in ["proc", "sys", "dev", "tmp", "run"] {
        fs::create_dir_all(root.join(d))?;
    }

    let containerfile = dir.join("Containerfile");
    fs::write(
        &containerfile,
        format!(
            "FROM scratch\n\
             COPY rootfs/ /\n\
             LABEL org.opencontainers.image.title=portwatch \
             org.opencontainers.image.version={version} \
             org.opencontainers.image.description=\"portwatch serve: the node agent (DaemonSet)\"\n\
             ENV PATH=/usr/bin\n\
             ENTRYPOINT [\"{BIN_IN_IMAGE}\"]\n\
             CMD [\"serve\"]\n"
        ),
    )?;
    // --timestamp 0: the same inputs give the same image id.
    run(Command::new("podman")
        .args([
            "build",
            "--quiet",
            "--timestamp",
            "0",
            "--tag",
            &tag,
            "--file",
        ])
        .arg(&containerfile)
        .arg(&dir))?;
    let archive = dir.join(format!("portwatch-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    run(Command::new("podman")
        .args(["save", "--quiet", "--format", "oci-archive", "--output"])
        .arg(&archive)
        .arg(&tag))?;
    let size = fs::metadata(&archive)?.len();
    eprintln!(
        "xtask: image {tag} ({:.1} MiB, {} libraries) saved to {} in {:.1} s",
        size as f64 / (1 << 20) as f64,
        libs.len(),
        archive.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Image { tag, archive })
}

#[cfg(test)]
mod tests {
    use super::version_in;

    #[test]
    fn reads_the_workspace_version() {
        let toml = "[workspace]\nmembers = []\n\n[workspace.package]\nlicense = \"MIT\"\nversion = \"1.2.3\"\n\n[workspace.dependencies]\nversion = \"9\"\n";
        assert_eq!(version_in(toml).as_deref(), Some("1.2.3"));
        assert_eq!(version_in("[package]\nversion = \"1\"\n"), None);
    }

    #[test]
    fn the_real_workspace_has_a_version() {
        assert!(super::workspace_version().unwrap().contains('.'));
    }
}
