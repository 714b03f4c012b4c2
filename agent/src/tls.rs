//! TLS termination with rustls: certificate and key from PEM files, ALPN h2 and
//! http/1.1, and rotation without dropping connections — a watcher re-reads the files
//! when they change and new handshakes use the new pair; an unreadable or mismatched
//! new pair is refused with a log line and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate and key do not match: {0}")]
    Mismatch(String),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| file_err(key, e))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    Ok(pair)
}

/// Serves the current pair to every handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(p) => Arc::clone(&p.into_inner()),
        })
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

pub fn acceptor(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let pair = load_pair(&cfg.cert_file, &cfg.key_file)?;
    let store = Arc::new(CertStore {
        current: RwLock::new(Arc::new(pair)),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Mismatch(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    spawn_watcher(store, cfg.clone());
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Polls the two files' mtime and size; cheap, and works on every filesystem including
/// Kubernetes secret volumes (whose atomic symlink swaps inotify reports unreliably).
fn spawn_watcher(store: Arc<CertStore>, cfg: TlsConfig) {
    let interval = Duration::from_millis(cfg.reload_interval_ms.max(100));
    tokio::spawn(async move {
        let mut seen = (stamp(&cfg.cert_file), stamp(&cfg.key_file));
        loop {
            tokio::time::sleep(interval).await;
            let now = (stamp(&cfg.cert_file), stamp(&cfg.key_file));
            if now == seen {
                continue;
            }
            match load_pair(&cfg.cert_file, &cfg.key_file) {
                Ok(pair) => {
                    match store.current.write() {
                        Ok(mut c) => *c = Arc::new(pair),
                        Err(p) => *p.into_inner() = Arc::new(pair),
                    }
                    seen = now;
                    crate::log::info(
                        "tls.reloaded",
                        "new certificate loaded; new handshakes use it",
                    );
                }
                // Half-written files during a rotation fail here; retry next tick.
                Err(e) => crate::log::warn(
                    "tls.reload_failed",
                    &format!("keeping the current certificate: {e}"),
                ),
            }
        }
    });
}
