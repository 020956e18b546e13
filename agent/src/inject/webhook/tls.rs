//! The webhook's TLS: the certificate and key from PEM files, re-read periodically and
//! swapped in for new handshakes when their contents change (a cert-manager renewal, a
//! rewritten Secret); connections already open keep the session they have.
//!
//! Crypto is rustls with `ring`: pure Rust plus a little C and assembly that the `cc` crate
//! builds, no cmake or Go (aws-lc-rs needs cmake and a larger C build), a smaller binary and
//! a shorter build; the webhook needs nothing that only aws-lc has (FIPS, post-quantum).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no usable PEM private key.
    #[error("{path}: no PEM private key found ({reason})")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The key is of an unsupported type or does not belong to the certificate.
    #[error("{key} does not fit {cert}: {source}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// The contents of the two files.
#[derive(PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

// Never the key's bytes in a log line.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pem { .. }")
    }
}

/// Serves the current certificate to every handshake; [`CertStore::watch`] replaces it.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents `current` was made from (only the watcher reads and writes it).
    current_pem: Mutex<Pem>,
}

impl CertStore {
    /// Loads the pair once; an unusable pair is an error (the webhook does not start).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let pem = read_pair(cert_path, key_path)?;
        let key = certified_key(&pem, cert_path, key_path, &provider)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(key),
            current_pem: Mutex::new(pem),
        }))
    }

    /// A rustls server configuration (HTTP/1.1 only) that asks this store at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .expect("ring's default provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Re-reads both files every `interval` until `stop`; when their contents changed and
    /// form a valid pair, new handshakes get it. A half-written or mismatched pair keeps the
    /// old one (logged) and is tried again at the next tick.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        // The first look is one interval on: `load` has just read the files.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let store = Arc::clone(&self);
            let read =
                tokio::task::spawn_blocking(move || read_pair(&store.cert_path, &store.key_path))
                    .await;
            let pem = match read {
                Ok(Ok(pem)) => pem,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot re-read the TLS files; keeping the current certificate");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS reload task failed");
                    continue;
                }
            };
            let mut current_pem = self.current_pem.lock().unwrap_or_else(|p| p.into_inner());
            if *current_pem == pem {
                continue;
            }
            match certified_key(&pem, &self.cert_path, &self.key_path, &self.provider) {
                Ok(key) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
                    *current_pem = pem;
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new TLS files are not a usable pair (yet); keeping the current certificate");
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<Pem, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(Pem {
        cert: read(cert)?,
        key: read(key)?,
    })
}

fn certified_key(
    pem: &Pem,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem.cert)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| TlsError::NoKey {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|source| TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        })
}
