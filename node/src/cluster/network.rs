//! Node-to-node RPC over QUIC (ALPN `cascade-cluster/1`): Raft's three RPCs and the
//! once-a-second load report. One bidirectional stream per call: the request as JSON, FIN,
//! then the response as JSON, FIN. Connections are kept per peer and redialled on failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cascade_roles::quic::{ALPN_CLUSTER, NodeEndpoint};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};

use super::TypeConfig;
use super::load::{LoadReport, LoadTable};
use super::state::{Command, Outcome};

type NodeId = u64;
/// Largest RPC message accepted (a snapshot of the whole state travels in one).
pub const MAX_RPC_BYTES: usize = 64 * 1024 * 1024;

/// A request between nodes.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A node's soft state, to the leader; answered with every node's latest report.
    Load(LoadReport),
    /// A command for the leader to append (from a node that is not the leader).
    Write(Command),
    /// Add a learner (from the node that accepted a join, to the leader).
    AddLearner(NodeId, BasicNode),
    /// Take a node out of Raft's membership (operator's `node remove`, to the leader).
    RemoveMember(NodeId),
}

/// The answer to an [`Rpc`], variant for variant.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum RpcReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Load(LoadTable),
    /// The outcome of a [`Rpc::Write`], [`Rpc::AddLearner`] or [`Rpc::RemoveMember`].
    Written(Result<Outcome, String>),
    /// The receiver could not handle the request (not ready yet, malformed).
    Refused(String),
}

/// Dials peers and keeps one connection to each.
#[derive(Clone)]
pub struct Peers {
    endpoint: NodeEndpoint,
    connections: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
}

impl Peers {
    /// Peers reached through `endpoint`.
    pub fn new(endpoint: NodeEndpoint) -> Self {
        Self {
            endpoint,
            connections: Arc::default(),
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let cached = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        // The dial runs on its own task: Raft gives heartbeats 100 ms, and a handshake cut
        // short by that deadline would otherwise start again from scratch every time.
        let endpoint = self.endpoint.clone();
        let connections = self.connections.clone();
        let dial = tokio::spawn(async move {
            let connection = endpoint
                .dial(addr, ALPN_CLUSTER)
                .await
                .map_err(|e| e.to_string())?;
            connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr, connection.clone());
            Ok(connection)
        });
        dial.await.map_err(|e| format!("dial task failed: {e}"))?
    }

    /// Sends one RPC and waits for its reply, at most `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<RpcReply, String> {
        let request = serde_json::to_vec(rpc).map_err(|e| e.to_string())?;
        let attempt = async {
            let connection = self.connection(addr).await?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&request).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let bytes = recv
                .read_to_end(MAX_RPC_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<RpcReply>(&bytes).map_err(|e| format!("malformed reply: {e}"))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no reply from {addr} within {timeout:?}")),
        }
    }
}

/// Makes Raft's per-peer clients.
#[derive(Clone)]
pub struct NetworkFactory {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.parse().ok(),
            peers: self.peers.clone(),
        }
    }
}

/// Raft's client for one peer.
pub struct PeerClient {
    target: NodeId,
    addr: Option<SocketAddr>,
    peers: Peers,
}

fn unreachable<E: std::error::Error>(message: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::from(AnyError::error(message)))
}

fn network<E: std::error::Error>(message: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::from(AnyError::error(message)))
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        rpc: &Rpc,
        option: &RPCOption,
    ) -> Result<RpcReply, RPCError<NodeId, BasicNode, E>> {
        let addr = self.addr.ok_or_else(|| {
            unreachable(format!("node {} has no valid QUIC address", self.target))
        })?;
        self.peers
            .call(addr, rpc, option.hard_ttl())
            .await
            .map_err(unreachable)
    }

    /// Sends `rpc` and takes its answer out of the reply with `pick`; the peer's refusal
    /// becomes a remote error, anything else a network error.
    async fn ask<T, E: std::error::Error>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
        pick: impl FnOnce(RpcReply) -> Option<Result<T, E>>,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>> {
        match self.call(&rpc, option).await? {
            RpcReply::Refused(reason) => Err(network(reason)),
            reply => match pick(reply) {
                Some(answer) => {
                    answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
                }
                None => Err(network("mismatched reply".into())),
            },
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.ask(Rpc::AppendEntries(rpc), &option, |reply| match reply {
            RpcReply::AppendEntries(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.ask(Rpc::InstallSnapshot(rpc), &option, |reply| match reply {
            RpcReply::InstallSnapshot(answer) => Some(answer),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.ask(Rpc::Vote(rpc), &option, |reply| match reply {
            RpcReply::Vote(answer) => Some(answer),
            _ => None,
        })
        .await
    }
}

/// Answers the RPCs of one connection from another node until it closes.
pub async fn serve(cluster: super::Cluster, connection: quinn::Connection) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let reply = match recv.read_to_end(MAX_RPC_BYTES).await {
                Ok(bytes) => match serde_json::from_slice::<Rpc>(&bytes) {
                    Ok(rpc) => cluster.handle_rpc(rpc).await,
                    Err(e) => {
                        metrics::counter!("cascade_cluster_refusals_total", "reason" => "malformed_rpc").increment(1);
                        RpcReply::Refused(format!("malformed request: {e}"))
                    }
                },
                Err(e) => RpcReply::Refused(format!("request not read: {e}")),
            };
            if let Ok(bytes) = serde_json::to_vec(&reply) {
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        });
    }
}
