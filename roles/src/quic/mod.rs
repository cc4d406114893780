//! Node-to-node QUIC: one UDP port (`quic-addr`) carries Raft, the media relay and HLS
//! fetches, told apart by ALPN, always with mutual TLS under the cluster CA ([`trust`]).
//!
//! [`NodeEndpoint`] binds the port and dials peers; the node accepts incoming connections
//! with [`NodeEndpoint::accept`] and hands each to the service its ALPN names.

pub mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::RoleError;
use trust::{NODE_SERVER_NAME, NodeIdentity};

/// ALPN of the media relay (`docs/relay.md`).
pub const ALPN_RELAY: &[u8] = b"cascade-relay/1";
/// ALPN of Raft RPCs and load reports.
pub const ALPN_CLUSTER: &[u8] = b"cascade-cluster/1";
/// ALPN of HLS fetches from a stream's packager (`cascade_protocol::hls::fetch`).
pub const ALPN_HLS: &[u8] = cascade_protocol::hls::fetch::ALPN_HLS;

/// Group streams open at once per connection: one per group per subscription, and older
/// groups linger until written or reset.
const MAX_UNI_STREAMS: u32 = 1024;
/// Unacknowledged bytes a connection may buffer. Kept small on purpose: a group counts as
/// written once its bytes are buffered, so a large window would hide a slow subscriber from
/// the late-drop rule.
const SEND_WINDOW: u64 = 2 * 1024 * 1024;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .max_concurrent_bidi_streams(256u32.into())
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(
            Duration::from_secs(3)
                .try_into()
                .expect("3 s is a valid idle timeout"),
        ));
    Arc::new(transport)
}

/// This node's QUIC endpoint.
#[derive(Clone)]
pub struct NodeEndpoint {
    endpoint: quinn::Endpoint,
    identity: Arc<NodeIdentity>,
}

impl NodeEndpoint {
    /// Binds `addr` and accepts relay and cluster connections from nodes of the cluster.
    pub fn bind(addr: SocketAddr, identity: NodeIdentity) -> Result<Self, RoleError> {
        let tls = identity.server_tls(&[ALPN_RELAY, ALPN_CLUSTER, ALPN_HLS])?;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| RoleError::Trust(format!("QUIC server TLS: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport());
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| RoleError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            identity: Arc::new(identity),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Dials a node for the service `alpn`.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<quinn::Connection, RoleError> {
        let tls = self.identity.client_tls(alpn)?;
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| RoleError::Trust(format!("QUIC client TLS: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport());
        let connecting = self
            .endpoint
            .connect_with(client, addr, NODE_SERVER_NAME)
            .map_err(|e| RoleError::Unavailable(format!("cannot dial node {addr}: {e}")))?;
        connecting.await.map_err(|e| {
            RoleError::Unavailable(format!("node {addr} did not answer over QUIC: {e}"))
        })
    }

    /// The next connection attempt; finish it with [`handshake`] on its own task so that a
    /// slow peer does not hold up the others.
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}

/// Completes an incoming connection's mutual TLS and returns it with its ALPN. A handshake
/// that fails (no certificate, one from another CA) is logged, counted and dropped.
pub async fn handshake(incoming: quinn::Incoming) -> Option<(quinn::Connection, Vec<u8>)> {
    let remote = incoming.remote_address();
    match incoming.await {
        Ok(connection) => {
            let alpn = connection
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol)
                .unwrap_or_default();
            Some((connection, alpn))
        }
        Err(error) if is_trust_failure(&error) => {
            metrics::counter!("cascade_cluster_refusals_total", "reason" => "tls").increment(1);
            tracing::warn!(%remote, %error, "refused a node connection: its TLS handshake failed (no certificate, or not one signed by this cluster's CA)");
            None
        }
        Err(error) => {
            tracing::debug!(%remote, %error, "a node connection was abandoned during its handshake");
            None
        }
    }
}

/// Whether a failed handshake was a certificate problem (ours or the peer's verdict) rather
/// than a dialler that gave up or timed out. TLS alerts are QUIC errors 0x100–0x1ff.
fn is_trust_failure(error: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) => crypto(e.code),
        quinn::ConnectionError::ConnectionClosed(frame) => crypto(frame.error_code),
        _ => false,
    }
}
