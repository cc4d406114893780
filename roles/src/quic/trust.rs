//! The cluster's certificate authority and each node's identity under it.
//!
//! The first node creates the CA ([`ClusterCa::generate`]). A joining node makes a key pair
//! and a signing request ([`IdentityRequest::new`]); a member that accepted its join token
//! signs it ([`ClusterCa::sign`]) and hands back the CA certificate with the node's
//! certificate. All node-to-node QUIC then uses mutual TLS: each side presents its node
//! certificate and accepts only peers whose certificate chains to the cluster CA.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::RoleError;

/// The name every node certificate carries and every node dials: which node answers is
/// decided by address, whether it belongs to the cluster by the CA.
pub const NODE_SERVER_NAME: &str = "node.cascade.internal";

fn trust_error(what: &str, e: impl std::fmt::Display) -> RoleError {
    RoleError::Trust(format!("{what}: {e}"))
}

/// The cluster CA: its certificate and signing key, both PEM.
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ClusterCa {
    /// The CA certificate every node trusts.
    pub cert_pem: String,
    /// The CA's private key; only used to sign joining nodes.
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCa { .. }")
    }
}

impl ClusterCa {
    /// A fresh CA for a new cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, RoleError> {
        let key = KeyPair::generate().map_err(|e| trust_error("CA key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| trust_error("CA parameters", e))?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Cascade cluster CA {cluster_name}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params
            .self_signed(&key)
            .map_err(|e| trust_error("CA certificate", e))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's request: the certificate names the node and is valid for client and
    /// server use between nodes. What the request itself asks for is ignored except its key.
    pub fn sign(&self, request_pem: &str, node_id: u64) -> Result<String, RoleError> {
        let request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| trust_error("the node's certificate request", e))?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| trust_error("CA key", e))?;
        let issuer =
            Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| trust_error("CA", e))?;
        let params = node_params(node_id)?;
        let cert = params
            .signed_by(&request.public_key, &issuer)
            .map_err(|e| trust_error("signing the node certificate", e))?;
        Ok(cert.pem())
    }

    /// Makes an identity for `node_id` directly (the bootstrapping node signs its own).
    pub fn issue(&self, node_id: u64) -> Result<NodeIdentity, RoleError> {
        let request = IdentityRequest::new(node_id)?;
        let cert_pem = self.sign(&request.request_pem, node_id)?;
        Ok(request.complete(self.cert_pem.clone(), cert_pem))
    }
}

fn node_params(node_id: u64) -> Result<CertificateParams, RoleError> {
    let mut params = CertificateParams::new(vec![
        NODE_SERVER_NAME.to_owned(),
        format!("node-{node_id:016x}.cascade.internal"),
    ])
    .map_err(|e| trust_error("node certificate parameters", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("cascade node {node_id:016x}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// A joining node's key pair and the signing request it sends with its join token.
pub struct IdentityRequest {
    key_pem: String,
    /// The PKCS#10 request, PEM.
    pub request_pem: String,
}

impl IdentityRequest {
    /// A new key pair for `node_id` and its signing request.
    pub fn new(node_id: u64) -> Result<Self, RoleError> {
        let key = KeyPair::generate().map_err(|e| trust_error("node key", e))?;
        let request = node_params(node_id)?
            .serialize_request(&key)
            .map_err(|e| trust_error("certificate request", e))?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            request_pem: request
                .pem()
                .map_err(|e| trust_error("certificate request", e))?,
        })
    }

    /// The identity, once a member signed the request.
    pub fn complete(self, ca_cert_pem: String, cert_pem: String) -> NodeIdentity {
        NodeIdentity {
            ca_cert_pem,
            cert_pem,
            key_pem: self.key_pem,
        }
    }
}

/// What a node presents to and trusts in other nodes. Stored in its data dir.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    /// The cluster CA certificate.
    pub ca_cert_pem: String,
    /// This node's certificate, signed by the CA.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeIdentity { .. }")
    }
}

impl NodeIdentity {
    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RoleError> {
        let cert = pem_der(&self.cert_pem, "node certificate")?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| trust_error("node key", e))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert], key))
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, RoleError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_der(&self.ca_cert_pem, "CA certificate")?)
            .map_err(|e| trust_error("CA certificate", e))?;
        Ok(Arc::new(roots))
    }

    /// TLS for accepting node connections: a client certificate under the CA is required.
    pub fn server_tls(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, RoleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| trust_error("client verifier", e))?;
        let (chain, key) = self.chain()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| trust_error("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| trust_error("node certificate", e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// TLS for dialling other nodes: presents our certificate, trusts only the CA.
    pub fn client_tls(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, RoleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = self.chain()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| trust_error("TLS versions", e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| trust_error("node certificate", e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

fn pem_der(pem_text: &str, what: &str) -> Result<CertificateDer<'static>, RoleError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| trust_error(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_yields_tls_configs_and_a_malformed_one_is_refused() {
        let ca = ClusterCa::generate("test").unwrap();
        let identity = ca.issue(7).unwrap();
        identity.server_tls(&[b"x"]).unwrap();
        identity.client_tls(b"x").unwrap();
        let err = ca.sign("not a request", 8).unwrap_err().to_string();
        assert!(err.contains("certificate request"), "{err}");
    }
}
