//! Who this node is: its id and certificate, kept in `identity.json` in the data dir so that
//! a restarted node rejoins as itself.
//!
//! With no identity yet, a node either bootstraps a new cluster (creates the CA, signs its
//! own certificate, takes or generates the join token) or joins one: it sends its join
//! token, its record and a certificate signing request to any member's
//! `POST /api/v1/cluster/join` and keeps the certificate it gets back.

use std::path::{Path, PathBuf};

use cascade_protocol::cluster::NodeId;
use cascade_roles::quic::trust::{ClusterCa, IdentityRequest, NodeIdentity};
use rand::Rng;

use super::state::NodeRecord;
use crate::NodeError;

/// What a new first node needs to write into the fresh cluster.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The new cluster CA.
    pub ca: ClusterCa,
    /// The join token other nodes present.
    pub join_token: String,
}

/// The node's identity, ready to start.
#[derive(Debug)]
pub struct Prepared {
    /// Its Raft node id.
    pub node_id: NodeId,
    /// Its certificate and the CA's.
    pub identity: NodeIdentity,
    /// Set when this start created the cluster.
    pub bootstrap: Option<Bootstrap>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    node_id: NodeId,
    identity: NodeIdentity,
}

/// `POST /api/v1/cluster/join` body.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct JoinRequest {
    /// The cluster's join token.
    pub token: String,
    /// The joining node as it wants to be recorded.
    pub node: NodeRecord,
    /// Its certificate signing request, PEM.
    pub csr_pem: String,
}

/// `POST /api/v1/cluster/join` answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct JoinReply {
    /// The cluster CA certificate.
    pub ca_cert_pem: String,
    /// The node's certificate, signed by the CA.
    pub cert_pem: String,
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

/// A fresh random node id.
pub fn new_node_id() -> NodeId {
    // Zero is avoided only because it reads like "unset" in logs.
    rand::rng().random_range(1..=u64::MAX)
}

/// The id stored in `data_dir`, if the node has been started there before.
pub fn stored_node_id(data_dir: &Path) -> Option<NodeId> {
    let text = std::fs::read_to_string(identity_path(data_dir)).ok()?;
    serde_json::from_str::<Stored>(&text)
        .ok()
        .map(|s| s.node_id)
}

/// Loads the stored identity, or bootstraps, or joins through `join` (an HTTP address).
/// `record` is this node as it should be recorded; its `id` is used when one is stored.
pub async fn prepare(
    data_dir: &Path,
    record: &NodeRecord,
    join: Option<&str>,
    token: Option<&str>,
) -> Result<Prepared, NodeError> {
    let path = identity_path(data_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let stored: Stored = serde_json::from_str(&text).map_err(|e| {
            NodeError::Cluster(format!(
                "{} is unreadable ({e}); move it away to join afresh",
                path.display()
            ))
        })?;
        tracing::info!(node = %super::format_id(stored.node_id), "resuming with the identity in the data dir");
        return Ok(Prepared {
            node_id: stored.node_id,
            identity: stored.identity,
            bootstrap: None,
        });
    }
    let prepared = match join {
        Some(member) => {
            let token = token.ok_or_else(|| {
                NodeError::Cluster(
                    "--join needs --token: the join token the first node printed".into(),
                )
            })?;
            join_cluster(member, token, record).await?
        }
        None => {
            let ca = ClusterCa::generate(&super::format_id(record.id))
                .map_err(|e| NodeError::Cluster(e.to_string()))?;
            let identity = ca
                .issue(record.id)
                .map_err(|e| NodeError::Cluster(e.to_string()))?;
            let join_token = match token {
                Some(t) => t.to_owned(),
                None => {
                    let t = generate_token();
                    println!("Join token for new nodes: {t}");
                    println!("  cascade run --join <this node's HTTP address> --token {t} ...");
                    t
                }
            };
            Prepared {
                node_id: record.id,
                identity,
                bootstrap: Some(Bootstrap { ca, join_token }),
            }
        }
    };
    let stored = Stored {
        node_id: prepared.node_id,
        identity: prepared.identity.clone(),
    };
    let text =
        serde_json::to_string_pretty(&stored).map_err(|e| NodeError::Cluster(e.to_string()))?;
    std::fs::write(&path, text).map_err(|source| NodeError::DataDir {
        path: path.clone(),
        source,
    })?;
    Ok(prepared)
}

/// A random join token: 32 hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn join_cluster(
    member: &str,
    token: &str,
    record: &NodeRecord,
) -> Result<Prepared, NodeError> {
    let request = IdentityRequest::new(record.id).map_err(|e| NodeError::Cluster(e.to_string()))?;
    let base = if member.starts_with("http://") || member.starts_with("https://") {
        member.trim_end_matches('/').to_owned()
    } else {
        format!("http://{member}")
    };
    let url = format!("{base}/api/v1/cluster/join");
    let body = JoinRequest {
        token: token.to_owned(),
        node: record.clone(),
        csr_pem: request.request_pem.clone(),
    };
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let reply = loop {
        let attempt = client.post(&url).json(&body).send().await;
        match attempt {
            Ok(response) if response.status().is_success() => {
                break response.json::<JoinReply>().await.map_err(|e| {
                    NodeError::Cluster(format!(
                        "{url} answered the join with something unreadable: {e}"
                    ))
                })?;
            }
            Ok(response)
                if response.status() == reqwest::StatusCode::FORBIDDEN
                    || response.status() == reqwest::StatusCode::BAD_REQUEST =>
            {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(NodeError::Cluster(format!(
                    "{url} refused the join ({status}): {}",
                    text.trim()
                )));
            }
            other => {
                let why = match other {
                    Ok(r) => format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default().trim()
                    ),
                    Err(e) => e.to_string(),
                };
                if std::time::Instant::now() >= deadline {
                    return Err(NodeError::Cluster(format!(
                        "cannot join through {url}: {why}"
                    )));
                }
                tracing::info!(%url, %why, "join not possible yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    tracing::info!(node = %super::format_id(record.id), via = %url, "joined the cluster");
    Ok(Prepared {
        node_id: record.id,
        identity: request.complete(reply.ca_cert_pem, reply.cert_pem),
        bootstrap: None,
    })
}
