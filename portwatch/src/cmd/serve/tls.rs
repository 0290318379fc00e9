//! TLS for `portwatch serve` (rustls): a server certificate and key, and
//! optionally a CA whose client certificates alone are let in (mutual TLS,
//! as Prometheus' exporters do with their web configuration).
//!
//! The files are read at start-up (a bad file is an error and exit 1) and
//! again whenever one of them changes on disk (a mounted Secret rotates by
//! swapping a symlink): each new connection stats the three files, and a
//! changed set is loaded before the handshake. A set that does not load is
//! said on stderr and the one before it stays in use.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{anyhow, Context as _, Result};
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::TlsAcceptor;

/// Where the certificate, its key and the client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA (None: any client).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// What identifies one version of the files: inode, size and mtime of each
/// (following symlinks, as a Secret's `..data` link is swapped).
type Stamp = Vec<Option<(u64, u64, SystemTime)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .map(|p| {
            let m = fs::metadata(p).ok()?;
            Some((m.ino(), m.len(), m.modified().ok()?))
        })
        .collect()
}

/// The rustls configuration the files describe.
pub fn load(files: &TlsFiles) -> Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading --tls-cert {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing --tls-cert {}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "--tls-cert {}: no certificate in it",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading --tls-key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading --tls-client-ca {}", ca.display()))?
            {
                let c = c.with_context(|| format!("parsing --tls-client-ca {}", ca.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(anyhow!(
                    "--tls-client-ca {}: no certificate in it",
                    ca.display()
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "--tls-cert {} and --tls-key {} do not make a pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The files' configuration, loaded again when they change.
pub struct Reloading {
    files: TlsFiles,
    current: Mutex<(Stamp, TlsAcceptor)>,
}

impl Reloading {
    /// Loads the files now: an error here is a start-up error.
    pub fn new(files: TlsFiles) -> Result<Reloading> {
        let st = stamp(&files);
        let cfg = load(&files)?;
        Ok(Reloading {
            files,
            current: Mutex::new((st, TlsAcceptor::from(Arc::new(cfg)))),
        })
    }

    /// The acceptor for a new connection: the files' current version when
    /// they changed and load, else the last one that did.
    pub fn acceptor(&self) -> TlsAcceptor {
        let st = stamp(&self.files);
        let mut cur = self.current.lock().unwrap();
        if st != cur.0 {
            match load(&self.files) {
                Ok(cfg) => {
                    eprintln!(
                        "portwatch: serve: TLS files changed on disk; new connections use them"
                    );
                    *cur = (st, TlsAcceptor::from(Arc::new(cfg)));
                }
                Err(e) => {
                    eprintln!(
                        "portwatch: serve: TLS files changed but do not load ({e:#}); keeping the previous ones"
                    );
                    // Said once per version of the files.
                    cur.0 = st;
                }
            }
        }
        cur.1.clone()
    }
}
