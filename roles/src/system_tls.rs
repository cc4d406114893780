//! TLS to the outside world (RTMPS restream targets, https:// webhook receivers): the
//! system's trusted roots (Debian's ca-certificates; `SSL_CERT_FILE` or `SSL_CERT_DIR` name
//! others, e.g. a private CA) on rustls' ring provider, loaded once per process.

use std::sync::Arc;

/// The client configuration, or why there is none (no roots on this machine).
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted root certificates on this machine for rtmps:// or https:// (install ca-certificates, or name a bundle in SSL_CERT_FILE){}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
            tracing::info!(roots = added, "trusted roots loaded for outgoing TLS");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    Arc::new(
                        builder
                            .with_root_certificates(roots)
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| format!("TLS client configuration: {e}"))
        })
        .clone()
}
