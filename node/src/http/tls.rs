//! HTTPS on the HTTP port: browsers capture a camera only from a secure page, so a node that
//! serves publishers on other machines needs TLS.
//!
//! - `--tls-cert FILE --tls-key FILE` (PEM): the certificate chain and its key, read again on
//!   SIGHUP (a renewed certificate needs no restart; a broken file keeps the old one, logged).
//! - `--tls self-signed`: a certificate made with rcgen at start for trials, its SHA-256
//!   fingerprint printed so that a browser's warning can be checked against it.
//!
//! [`TlsListener`] hands axum connections whose handshake is done: handshakes run in their own
//! tasks with a deadline, so a slow or silent client never holds up the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::NodeError;

/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for axum to take them.
const READY_QUEUE: usize = 256;

/// Where the node's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files, read at start and on SIGHUP.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A certificate made at start for the given names.
    SelfSigned,
}

/// The client's address, for handlers (`ConnectInfo<ClientAddr>`), whether or not the
/// connection is TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The certificate currently served; swapped on SIGHUP.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    source: TlsSource,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

impl CertStore {
    /// Loads (or makes) the certificate. `names` go into a self-signed certificate.
    pub fn load(source: TlsSource, names: &[String]) -> Result<Arc<Self>, NodeError> {
        let key = match &source {
            TlsSource::Files { cert, key } => read_pem(cert, key)?,
            TlsSource::SelfSigned => self_signed(names)?,
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
            source,
        }))
    }

    /// SHA-256 of the served leaf certificate, as browsers show it (`AB:CD:...`).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let current = self.resolve_current();
        let leaf = current.cert.first().map(|c| c.as_ref()).unwrap_or_default();
        sha2::Sha256::digest(leaf)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn resolve_current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again; on failure the old certificate stays and the error is returned.
    pub fn reload(&self) -> Result<(), NodeError> {
        let TlsSource::Files { cert, key } = &self.source else {
            return Ok(());
        };
        let fresh = read_pem(cert, key)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: &Arc<Self>) {
        let store = self.clone();
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!(
                    "cannot listen for SIGHUP: the TLS certificate will not be reloaded"
                );
                return;
            };
            while hangups.recv().await.is_some() {
                match store.reload() {
                    Ok(()) => {
                        metrics::counter!("cascade_tls_reloads_total", "result" => "ok")
                            .increment(1);
                        tracing::info!(fingerprint = %store.fingerprint(), "TLS certificate reloaded on SIGHUP");
                    }
                    Err(e) => {
                        metrics::counter!("cascade_tls_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::error!(error = %e, "TLS certificate not reloaded; still serving the previous one");
                    }
                }
            }
        });
    }
}

fn tls_error(path: &Path, message: impl std::fmt::Display) -> NodeError {
    NodeError::Tls(format!("{}: {message}", path.display()))
}

fn read_pem(cert: &Path, key: &Path) -> Result<CertifiedKey, NodeError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(cert, e))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no CERTIFICATE block in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key, e))?;
    certified(chain, &key_der).map_err(|e| tls_error(key, e))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, rustls::Error> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(certified)
}

fn self_signed(names: &[String]) -> Result<CertifiedKey, NodeError> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| NodeError::Tls(format!("cannot make a self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| NodeError::Tls(format!("self-signed key: {e}")))?;
    certified(vec![made.cert.der().clone()], &key)
        .map_err(|e| NodeError::Tls(format!("self-signed certificate: {e}")))
}

/// Accepts TCP connections and hands over those whose TLS handshake completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `store`'s certificate on `listener` (HTTP/1.1).
    pub fn new(listener: TcpListener, store: Arc<CertStore>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_cert_resolver(store);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, remote) = cascade_roles::listen::accept(&listener, "an HTTPS connection").await;
        if ready.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, remote)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("cascade_tls_handshake_failures_total", "reason" => "refused")
                        .increment(1);
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("cascade_tls_handshake_failures_total", "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(%remote, "TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_load_reload_and_a_broken_file_keeps_the_old_certificate() {
        let dir = std::env::temp_dir().join(format!("cascade-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let write = |name: &str| {
            let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        };
        write("first.example");
        let store = CertStore::load(
            TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            &[],
        )
        .unwrap();
        let first = store.fingerprint();
        assert_eq!(first.len(), 32 * 3 - 1);
        write("second.example");
        store.reload().unwrap();
        let second = store.fingerprint();
        assert_ne!(first, second, "the new certificate is served");
        std::fs::write(&key, "not a key").unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        assert_eq!(store.fingerprint(), second, "the old certificate stays");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
