//! The cluster: Raft (openraft) over node-to-node QUIC, the replicated state, soft load,
//! joining, and the routing decisions every request asks of it.
//!
//! | file | what |
//! |---|---|
//! | [`state`] | the replicated state and its pure state machine |
//! | [`store`] | Raft's log, vote and state machine in `raft.redb` |
//! | [`network`] | Raft RPCs and load reports over QUIC |
//! | [`load`] | soft state: load reports, health |
//! | [`pulls`] | the pulled sources (RTSP cameras) this node runs |
//! | [`identity`] | the node's id and certificate in its data dir; bootstrap and join |
//!
//! A single node is a cluster of one on the same path. Media never waits on Raft: a
//! viewer's frames flow through the relay whatever Raft is doing; only new placements and
//! membership changes need a leader.

pub mod identity;
pub mod load;
pub mod network;
pub mod pulls;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::cluster::{
    Load, NodeId, NodeInfo, NodeRole, VoterChange, assign_roles, choose_edge, place_stream,
    plan_voters,
};
use cascade_roles::origin::StreamRegistry;
use cascade_roles::quic::NodeEndpoint;
use cascade_roles::relay::{OriginLocator, Relay};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use tokio::sync::watch;

use crate::NodeError;
use load::{CpuMeter, LoadReport, LoadView};
use network::{NetworkFactory, Peers, Rpc, RpcReply};
use pulls::{LocalPulls, PULL_TAKEOVER_AFTER};
use state::{ClusterState, Command, Duty, NodeRecord, Outcome, plan_duty, plan_pulls};

/// How often each node reports its load to the leader (and learns everyone's).
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

openraft::declare_raft_types!(
    /// Raft's types for Cascade.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// How the cluster behaves; part of the node's config.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Raft voters to keep (1, 3 or 5).
    pub voters: usize,
    /// A voter silent this long is replaced by a healthy learner.
    pub voter_lost_after: Duration,
    /// This node's `region` label.
    pub region: Option<String>,
    /// Roles this node may hold.
    pub allowed: BTreeSet<NodeRole>,
    /// Streams get a standby transcoder on a second node (when this node leads).
    pub transcoder_standby: bool,
    /// Streams get a standby packager on a second node (when this node leads).
    pub packager_standby: bool,
}

/// Where a stream's LL-HLS is served from (see [`Cluster::packager_route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackagerRoute {
    /// This node packages it.
    Here,
    /// Fetch it from these nodes' QUIC addresses, in order.
    Upstream(Vec<SocketAddr>),
    /// Nobody has it.
    NotLive,
}

/// Where a request should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Serve it here.
    Local,
    /// Send the client to this node's HTTP address.
    Redirect {
        /// The node that serves it.
        node: NodeId,
        /// Its HTTP address.
        addr: SocketAddr,
    },
}

/// Why a route could not be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The stream is live on another origin (a second publisher).
    LiveElsewhere(NodeId),
    /// Nobody publishes the stream.
    NotLive,
    /// No node can take it now (no leader, no healthy node with the role).
    Unavailable(String),
    /// The stream is pulled from a source (a camera): nobody publishes it.
    Pulled,
}

/// The cluster as a publish request sees it: the state, the healthy nodes, the dead ones.
type Publishable = (Arc<ClusterState>, BTreeSet<NodeId>, BTreeSet<NodeId>);

/// This node's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    record: NodeRecord,
    config: ClusterConfig,
    raft: Raft<TypeConfig>,
    state: watch::Receiver<Arc<ClusterState>>,
    peers: Peers,
    loads: Mutex<LoadView>,
    /// Where `node.joined` and `node.lost` go, once the node has built its webhooks.
    webhooks: std::sync::OnceLock<crate::webhooks::Webhooks>,
    started: Instant,
    registry: StreamRegistry,
    pulls: Arc<LocalPulls>,
    /// What this node's transcoders said they need, for the next load report.
    transcode_wanted: Mutex<Vec<String>>,
}

impl Cluster {
    /// Starts Raft on `endpoint` with the store in `data_dir`.
    pub async fn start(
        identity: &identity::Prepared,
        record: NodeRecord,
        config: ClusterConfig,
        endpoint: NodeEndpoint,
        registry: StreamRegistry,
        data_dir: &std::path::Path,
    ) -> Result<Self, NodeError> {
        let (log_store, state_machine) =
            store::open(data_dir).map_err(|e| NodeError::Cluster(format!("raft store: {e}")))?;
        let state = state_machine.subscribe();
        let raft_config = openraft::Config {
            cluster_name: "cascade".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            install_snapshot_timeout: 2000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Cluster(format!("raft config: {e}")))?;
        let peers = Peers::new(endpoint);
        let raft = Raft::new(
            identity.node_id,
            Arc::new(raft_config),
            NetworkFactory {
                peers: peers.clone(),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| NodeError::Cluster(format!("raft: {e}")))?;
        let cluster = Self {
            inner: Arc::new(Inner {
                id: identity.node_id,
                record,
                config,
                raft,
                state,
                peers,
                loads: Mutex::default(),
                webhooks: std::sync::OnceLock::new(),
                started: Instant::now(),
                registry,
                pulls: Arc::default(),
                transcode_wanted: Mutex::default(),
            }),
        };
        if let Some(bootstrap) = &identity.bootstrap {
            cluster.bootstrap(bootstrap.clone()).await?;
        }
        tokio::spawn(cluster.clone().report_load());
        tokio::spawn(cluster.clone().lead());
        tokio::spawn(cluster.clone().place_while_leading());
        Ok(cluster)
    }

    async fn bootstrap(&self, bootstrap: identity::Bootstrap) -> Result<(), NodeError> {
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Cluster(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                self.inner.id,
                BasicNode::new(self.inner.record.quic_addr.to_string()),
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| NodeError::Cluster(format!("initializing raft: {e}")))?;
        }
        self.write(Command::Bootstrap {
            ca: bootstrap.ca,
            join_token_hash: state::token_hash(&bootstrap.join_token),
        })
        .await
        .map_err(NodeError::Cluster)?;
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The replicated state as last applied here.
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.state.borrow().clone()
    }

    fn loads(&self) -> MutexGuard<'_, LoadView> {
        self.inner.loads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raft's view: leader, term, voters, learners.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// Appends a command through the leader (forwarded if this node is not it) and waits
    /// until it is committed. Errors are for logs and HTTP 503 bodies.
    pub async fn write(&self, command: Command) -> Result<Outcome, String> {
        let started = Instant::now();
        let result = self.write_through_leader(command).await;
        metrics::histogram!("cascade_raft_commit_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn write_through_leader(&self, command: Command) -> Result<Outcome, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.inner.raft.client_write(command.clone()).await {
                Ok(response) => return Ok(response.data),
                Err(error) => {
                    let leader = error
                        .forward_to_leader::<BasicNode>()
                        .and_then(|f| f.leader_node.clone());
                    if let Some(leader) = leader
                        && let Ok(addr) = leader.addr.parse::<SocketAddr>()
                    {
                        let rpc = Rpc::Write(command.clone());
                        match self.ask_leader(addr, &rpc, Duration::from_secs(5)).await {
                            Ok(answer) => return answer,
                            Err(unreachable) if Instant::now() >= deadline => {
                                return Err(unreachable);
                            }
                            Err(_) => {}
                        }
                    } else if Instant::now() >= deadline {
                        return Err(format!("no Raft leader to write to: {error}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Sends a change to the leader at `addr`. The outer error: the leader could not be
    /// reached; the inner one: the leader refused the change.
    async fn ask_leader(
        &self,
        addr: SocketAddr,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<Result<Outcome, String>, String> {
        match self.inner.peers.call(addr, rpc, timeout).await {
            Ok(RpcReply::Written(answer)) => Ok(answer),
            Ok(_) => Ok(Err("the leader answered something else".into())),
            Err(e) => Err(format!("the leader is unreachable: {e}")),
        }
    }

    /// Handles an RPC from another node.
    pub async fn handle_rpc(&self, rpc: Rpc) -> RpcReply {
        let raft = &self.inner.raft;
        match rpc {
            Rpc::AppendEntries(request) => {
                RpcReply::AppendEntries(raft.append_entries(request).await)
            }
            Rpc::Vote(request) => RpcReply::Vote(raft.vote(request).await),
            Rpc::InstallSnapshot(request) => {
                RpcReply::InstallSnapshot(raft.install_snapshot(request).await)
            }
            Rpc::Load(report) => {
                let now = Instant::now();
                let mut loads = self.loads();
                loads.record(report, now);
                RpcReply::Load(loads.table(now))
            }
            Rpc::AddLearner(id, node) => self.add_learner(id, node).await,
            Rpc::RemoveMember(id) => RpcReply::Written(self.remove_member_here(id).await),
            Rpc::Write(command) => RpcReply::Written(match raft.client_write(command).await {
                Ok(response) => Ok(response.data),
                Err(e) => Err(format!("not written: {e}")),
            }),
        }
    }

    /// Adds a joining node as a learner and records it. Called on the node that accepted
    /// the join token.
    pub async fn admit(&self, record: NodeRecord) -> Result<(), String> {
        self.write(Command::UpsertNode(record.clone())).await?;
        let node = BasicNode::new(record.quic_addr.to_string());
        let raft = &self.inner.raft;
        // Non-blocking: the new node starts Raft only after it has its certificate, which
        // it gets from this answer.
        if let Err(e) = raft.add_learner(record.id, node.clone(), false).await {
            let leader = e
                .forward_to_leader::<BasicNode>()
                .and_then(|f| f.leader_node.clone())
                .and_then(|n| n.addr.parse::<SocketAddr>().ok());
            let Some(leader) = leader else {
                return Err(format!("cannot add the node to Raft: {e}"));
            };
            let rpc = Rpc::AddLearner(record.id, node);
            self.ask_leader(leader, &rpc, Duration::from_secs(5))
                .await??;
        }
        tracing::info!(node = %format_id(record.id), http = %record.http_addr, quic = %record.quic_addr, "node joined as a Raft learner");
        self.emit(
            "node.joined",
            serde_json::json!({
                "id": format_id(record.id),
                "http": record.http_addr.to_string(),
                "region": record.region,
            }),
        );
        Ok(())
    }

    /// Adds a learner on the leader (RPC from the node that accepted a join).
    pub async fn add_learner(&self, id: NodeId, node: BasicNode) -> RpcReply {
        RpcReply::Written(
            self.inner
                .raft
                .add_learner(id, node, false)
                .await
                .map(|_| Outcome::Done)
                .map_err(|e| e.to_string()),
        )
    }

    /// The leader's QUIC address, when a leader is known.
    fn leader_addr(&self) -> Option<(NodeId, SocketAddr)> {
        let metrics = self.raft_metrics();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .parse()
            .ok()?;
        Some((leader, addr))
    }

    /// Starts draining a node: no new viewers or streams go to it.
    pub async fn drain(&self, id: NodeId) -> Result<Outcome, String> {
        self.write(Command::SetDraining { id, draining: true })
            .await
    }

    /// Takes a node out of the cluster: out of Raft's membership, then out of the state
    /// (its placements with it).
    pub async fn remove(&self, id: NodeId) -> Result<Outcome, String> {
        let (leader, addr) = self
            .leader_addr()
            .ok_or_else(|| "no Raft leader right now; try again".to_owned())?;
        if leader == id {
            return Err("this node is the Raft leader; drain it and remove it once another node leads, or stop it first".into());
        }
        if leader == self.inner.id {
            self.remove_member_here(id).await?;
        } else {
            self.ask_leader(addr, &Rpc::RemoveMember(id), Duration::from_secs(10))
                .await??;
        }
        self.write(Command::RemoveNode { id }).await
    }

    async fn remove_member_here(&self, id: NodeId) -> Result<Outcome, String> {
        let metrics = self.raft_metrics();
        let membership = metrics.membership_config.membership();
        let raft = &self.inner.raft;
        if membership.voter_ids().any(|v| v == id) {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| format!("cannot remove the voter: {e}"))?;
        } else if membership.get_node(&id).is_some() {
            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| format!("cannot remove the learner: {e}"))?;
        }
        Ok(Outcome::Done)
    }

    /// Sends `node.joined` (from the node that admits a joiner) and `node.lost` (from the
    /// leader) to these webhooks.
    pub fn set_webhooks(&self, webhooks: crate::webhooks::Webhooks) {
        let _ = self.inner.webhooks.set(webhooks);
    }

    fn emit(&self, kind: &'static str, data: serde_json::Value) {
        if let Some(webhooks) = self.inner.webhooks.get() {
            webhooks.emit(kind, data);
        }
    }

    /// Viewers of `stream` on the other nodes, as they last reported.
    pub fn viewers_elsewhere(&self, stream: &str) -> u32 {
        self.loads()
            .viewers_elsewhere(self.inner.id, stream, Instant::now())
    }

    fn healthy(&self) -> BTreeSet<NodeId> {
        let mut healthy = self.loads().healthy(Instant::now());
        healthy.insert(self.inner.id); // we are here to answer, so we are alive
        healthy
    }

    fn nodes(state: &ClusterState) -> Vec<NodeInfo> {
        state.nodes.values().map(NodeRecord::info).collect()
    }

    /// Where a WHIP publish of `stream` arriving here should go; records the placement
    /// when it is this node.
    pub async fn route_publish(&self, stream: &StreamId) -> Result<Route, RouteError> {
        let (state, healthy, dead) = self.publishable(stream)?;
        let nodes = Self::nodes(&state);
        let loads = self.loads().loads();
        let origin = place_stream(self.inner.id, &nodes, &loads, &healthy)
            .map_err(|e| RouteError::Unavailable(e.to_string()))?;
        if origin != self.inner.id {
            let record = state
                .nodes
                .get(&origin)
                .ok_or_else(|| RouteError::Unavailable("the chosen origin left".into()))?;
            return Ok(Route::Redirect {
                node: origin,
                addr: record.http_addr,
            });
        }
        self.place_here(stream, dead).await.map(|()| Route::Local)
    }

    /// Makes this node the origin of `stream` for a publisher connected here by a protocol
    /// that cannot be redirected (RTMP, SRT): refused only when the stream is live on another
    /// healthy node.
    pub async fn claim_origin(&self, stream: &StreamId) -> Result<(), RouteError> {
        let (_, _, dead) = self.publishable(stream)?;
        self.place_here(stream, dead).await
    }

    /// The state, healthy nodes and dead nodes, unless `stream` is live on another healthy
    /// node (a placement on a dead one may be replaced).
    fn publishable(&self, stream: &StreamId) -> Result<Publishable, RouteError> {
        let state = self.state();
        let healthy = self.healthy();
        let dead: BTreeSet<NodeId> = state
            .nodes
            .keys()
            .copied()
            .filter(|n| !healthy.contains(n))
            .collect();
        if state.pulls.contains_key(stream.as_str()) {
            return Err(RouteError::Pulled);
        }
        if let Some(&origin) = state.placements.get(stream.as_str())
            && origin != self.inner.id
            && !dead.contains(&origin)
        {
            return Err(RouteError::LiveElsewhere(origin));
        }
        Ok((state, healthy, dead))
    }

    async fn place_here(
        &self,
        stream: &StreamId,
        replaceable: BTreeSet<NodeId>,
    ) -> Result<(), RouteError> {
        let outcome = self
            .write(Command::Place {
                stream: stream.as_str().to_owned(),
                origin: self.inner.id,
                replaceable,
            })
            .await
            .map_err(RouteError::Unavailable)?;
        match outcome {
            Outcome::Placed { .. } => Ok(()),
            Outcome::PlacedElsewhere { origin } => Err(RouteError::LiveElsewhere(origin)),
            other => Err(RouteError::Unavailable(format!(
                "placement refused: {other:?}"
            ))),
        }
    }

    /// Where a WHEP viewer of `stream` who asked this node should be served.
    pub fn route_play(&self, stream: &StreamId, region: Option<&str>) -> Result<Route, RouteError> {
        let state = self.state();
        if !state.placements.contains_key(stream.as_str()) {
            return Err(RouteError::NotLive);
        }
        let healthy = self.healthy();
        let nodes = Self::nodes(&state);
        let loads = self.loads().loads();
        let edge = choose_edge(self.inner.id, region, &nodes, &loads, &healthy)
            .map_err(|e| RouteError::Unavailable(e.to_string()))?;
        if edge == self.inner.id {
            return Ok(Route::Local);
        }
        state
            .nodes
            .get(&edge)
            .map(|n| Route::Redirect {
                node: edge,
                addr: n.http_addr,
            })
            .ok_or_else(|| RouteError::Unavailable("the chosen edge left".into()))
    }

    /// The key of route passes (`route_pass`), once the cluster CA is known.
    pub fn route_pass_key(&self) -> Option<[u8; 32]> {
        self.state()
            .ca
            .as_ref()
            .map(|ca| cascade_protocol::route_pass::derive_key(&ca.key_pem))
    }

    /// Another edge with room for a viewer this node cannot take, if there is one.
    pub fn edge_with_room(&self, region: Option<&str>) -> Option<Route> {
        let state = self.state();
        let nodes = Self::nodes(&state);
        let loads = self.loads().loads();
        let edge = cascade_protocol::cluster::choose_edge_with_room(
            self.inner.id,
            region,
            &nodes,
            &loads,
            &self.healthy(),
        )?;
        state.nodes.get(&edge).map(|n| Route::Redirect {
            node: edge,
            addr: n.http_addr,
        })
    }

    /// Where `stream`'s LL-HLS comes from, as seen from this node: packaged here (this node
    /// is its active or standby packager, or, before the leader assigned one, its origin),
    /// or fetched from these nodes (QUIC addresses), the active packager first.
    pub fn packager_route(&self, stream: &StreamId) -> PackagerRoute {
        let state = self.state();
        let (active, standby) = Duty::Packager.of(&state, stream.as_str());
        let here = self.inner.id;
        if active == Some(here) || standby == Some(here) {
            return PackagerRoute::Here;
        }
        let origin = state.placements.get(stream.as_str()).copied();
        let upstreams: Vec<SocketAddr> = match active {
            Some(_) => [active, standby]
                .into_iter()
                .flatten()
                .collect::<Vec<NodeId>>(),
            None if origin == Some(here) => return PackagerRoute::Here,
            None => origin.into_iter().collect(),
        }
        .into_iter()
        .filter_map(|node| state.nodes.get(&node).map(|n| n.quic_addr))
        .collect();
        if upstreams.is_empty() {
            PackagerRoute::NotLive
        } else {
            PackagerRoute::Upstream(upstreams)
        }
    }

    /// The active packager of `stream`, when this node is its standby: the node to align to.
    pub fn active_packager_for_standby(&self, stream: &StreamId) -> Option<SocketAddr> {
        let state = self.state();
        match Duty::Packager.of(&state, stream.as_str()) {
            (Some(active), Some(standby)) if standby == self.inner.id && active != standby => {
                state.nodes.get(&active).map(|n| n.quic_addr)
            }
            _ => None,
        }
    }

    /// The HTTP address of `stream`'s active packager (where its recordings are made).
    pub fn packager_http(&self, stream: &StreamId) -> Option<SocketAddr> {
        let state = self.state();
        let (active, _) = Duty::Packager.of(&state, stream.as_str());
        active
            .or_else(|| state.placements.get(stream.as_str()).copied())
            .and_then(|n| state.nodes.get(&n).map(|n| n.http_addr))
    }

    /// Streams this node is the active packager of (or the origin of, before the leader
    /// assigned a packager): where automatic recordings run. A standby records nothing.
    pub fn packaged_here(&self) -> Vec<StreamId> {
        let state = self.state();
        state
            .placements
            .iter()
            .filter(
                |(stream, origin)| match Duty::Packager.of(&state, stream).0 {
                    Some(active) => active == self.inner.id,
                    None => **origin == self.inner.id,
                },
            )
            .filter_map(|(stream, _)| StreamId::parse(stream).ok())
            .collect()
    }

    /// The standby packager of `stream` when it is another node (kept warm by requests).
    pub fn standby_packager(&self, stream: &StreamId) -> Option<SocketAddr> {
        let state = self.state();
        let (_, standby) = Duty::Packager.of(&state, stream.as_str());
        standby
            .filter(|n| *n != self.inner.id)
            .and_then(|n| state.nodes.get(&n).map(|n| n.quic_addr))
    }

    /// The origin of `stream`, when it is another node.
    pub fn remote_origin(&self, stream: &StreamId) -> Option<NodeId> {
        self.state()
            .placements
            .get(stream.as_str())
            .copied()
            .filter(|o| *o != self.inner.id)
    }

    /// Everything `GET /api/v1/cluster` shows.
    pub fn overview(&self) -> serde_json::Value {
        let state = self.state();
        let metrics = self.raft_metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let now = Instant::now();
        let healthy = self.healthy();
        let roles = assign_roles(&Self::nodes(&state), &healthy);
        let loads = self.loads();
        let nodes: Vec<serde_json::Value> = state
            .nodes
            .values()
            .map(|n| {
                let report = loads.report(n.id, now);
                serde_json::json!({
                    "id": format_id(n.id),
                    "http_addr": n.http_addr,
                    "quic_addr": n.quic_addr,
                    "region": n.region,
                    "allowed_roles": n.allowed.iter().map(|r| r.name()).collect::<Vec<_>>(),
                    "roles": roles.get(&n.id).map(|r| r.iter().map(|r| r.name()).collect::<Vec<_>>()).unwrap_or_default(),
                    "raft": if voters.contains(&n.id) { "voter" } else if learners.contains(&n.id) { "learner" } else { "none" },
                    "healthy": healthy.contains(&n.id),
                    "draining": n.draining,
                    "load": report.map(|(r, _)| r.load),
                    "load_age_ms": report.map(|(_, age)| age.as_millis() as u64),
                })
            })
            .collect();
        serde_json::json!({
            "this_node": format_id(self.inner.id),
            "leader": metrics.current_leader.map(format_id),
            "term": metrics.current_term,
            "voters": voters.iter().copied().map(format_id).collect::<Vec<_>>(),
            "learners": learners.iter().copied().map(format_id).collect::<Vec<_>>(),
            "nodes": nodes,
            "placements": state.placements.iter().map(|(s, o)| (s.clone(), format_id(*o))).collect::<BTreeMap<_, _>>(),
            "transcoders": state.transcoders.iter().map(|(s, n)| (s.clone(), format_id(*n))).collect::<BTreeMap<_, _>>(),
            "transcoder_standbys": state.transcoder_standbys.iter().map(|(s, n)| (s.clone(), format_id(*n))).collect::<BTreeMap<_, _>>(),
            "packagers": state.packagers.iter().map(|(s, n)| (s.clone(), format_id(*n))).collect::<BTreeMap<_, _>>(),
            "packager_standbys": state.packager_standbys.iter().map(|(s, n)| (s.clone(), format_id(*n))).collect::<BTreeMap<_, _>>(),
        })
    }

    /// Every [`REPORT_EVERY`]: measure this node, report to the leader, learn everyone's
    /// load, and release placements of streams this node no longer has.
    async fn report_load(self) {
        let mut cpu = CpuMeter::default();
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut missing: BTreeMap<String, u32> = BTreeMap::new();
        loop {
            tick.tick().await;
            let streams = self.inner.registry.list().await;
            let live: Vec<String> = streams
                .iter()
                .filter(|s| s.publisher.as_ref().is_some_and(|p| p.protocol != "relay"))
                .map(|s| s.id.as_str().to_owned())
                .collect();
            let report = LoadReport {
                node: self.inner.id,
                load: Load {
                    cpu_pct: cpu.sample(),
                    viewers: streams.iter().map(|s| s.viewers as u32).sum(),
                    egress_bps: 0,
                    streams: live.len() as u32,
                },
                live_streams: live.clone(),
                pulls: self.inner.pulls.statuses(),
                transcode_wanted: self
                    .inner
                    .transcode_wanted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                stream_viewers: streams
                    .iter()
                    .filter(|s| s.viewers > 0)
                    .map(|s| (s.id.as_str().to_owned(), s.viewers as u32))
                    .collect(),
            };
            metrics::gauge!("cascade_node_cpu_percent").set(f64::from(report.load.cpu_pct));
            self.keep_own_record().await;
            self.exchange_load(report).await;
            self.release_ended_streams(&live, &mut missing).await;
            self.publish_raft_metrics();
        }
    }

    /// Makes sure the state lists this node with its current addresses and labels (first
    /// start, restart with new flags). Draining is the operator's and is kept.
    async fn keep_own_record(&self) {
        let state = self.state();
        if state.ca.is_none() || self.inner.raft.current_leader().await.is_none() {
            return;
        }
        let mut wanted = self.inner.record.clone();
        if let Some(known) = state.nodes.get(&self.inner.id) {
            wanted.draining = known.draining;
            if *known == wanted {
                return;
            }
        }
        if let Err(e) = self.write(Command::UpsertNode(wanted)).await {
            tracing::debug!(error = %e, "could not record this node in the cluster state yet");
        }
    }

    async fn exchange_load(&self, report: LoadReport) {
        let now = Instant::now();
        self.loads().record(report.clone(), now);
        let metrics = self.raft_metrics();
        let Some(leader) = metrics.current_leader.filter(|l| *l != self.inner.id) else {
            return;
        };
        let Some(addr) = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .and_then(|n| n.addr.parse().ok())
        else {
            return;
        };
        match self
            .inner
            .peers
            .call(addr, &Rpc::Load(report), Duration::from_secs(1))
            .await
        {
            Ok(RpcReply::Load(table)) => self.loads().merge(table, Instant::now()),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "load report to the leader failed"),
        }
    }

    /// A placement on this node whose stream has not been live here for six reports (its
    /// publisher left for good) is released, so the stream can start elsewhere. Pulled
    /// streams keep theirs: the node is their puller whether or not the camera answers.
    async fn release_ended_streams(&self, live: &[String], missing: &mut BTreeMap<String, u32>) {
        let state = self.state();
        let mine: Vec<&String> = state
            .placements
            .iter()
            .filter(|(s, o)| **o == self.inner.id && !state.pulls.contains_key(*s))
            .map(|(s, _)| s)
            .collect();
        missing.retain(|s, _| mine.contains(&s));
        for stream in mine {
            if live.contains(stream) {
                missing.remove(stream);
                continue;
            }
            let count = missing.entry(stream.clone()).or_insert(0);
            *count += 1;
            if *count >= 6 {
                missing.remove(stream);
                let _ = self
                    .write(Command::Unplace {
                        stream: stream.clone(),
                        origin: self.inner.id,
                    })
                    .await;
            }
        }
    }

    fn publish_raft_metrics(&self) {
        for (node, load) in self.loads().loads() {
            let node = format_id(node);
            metrics::gauge!("cascade_cluster_node_cpu_percent", "node" => node.clone())
                .set(f64::from(load.cpu_pct));
            metrics::gauge!("cascade_cluster_node_viewers", "node" => node)
                .set(f64::from(load.viewers));
        }
        let metrics = self.raft_metrics();
        metrics::gauge!("cascade_raft_term").set(metrics.current_term as f64);
        metrics::gauge!("cascade_raft_is_leader")
            .set(f64::from(u8::from(metrics.state == ServerState::Leader)));
        metrics::gauge!("cascade_raft_last_applied")
            .set(metrics.last_applied.map_or(0.0, |l| l.index as f64));
        metrics::gauge!("cascade_cluster_nodes").set(self.state().nodes.len() as f64);
        metrics::gauge!("cascade_cluster_nodes_healthy").set(self.healthy().len() as f64);
    }

    /// On the leader, once a second: keep the voter set at its target size, replacing a
    /// voter that has been silent too long by a healthy learner.
    async fn lead(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut leader_changes = self.inner.raft.metrics();
        let mut last_leader = None;
        let mut was_healthy: BTreeSet<NodeId> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = leader_changes.changed() => {
                    if changed.is_err() { return; }
                    let leader = leader_changes.borrow().current_leader;
                    if leader != last_leader {
                        metrics::counter!("cascade_raft_leader_changes_total").increment(1);
                        tracing::info!(leader = ?leader.map(format_id), "Raft leader changed");
                        last_leader = leader;
                    }
                    continue;
                }
            }
            let metrics = self.raft_metrics();
            if metrics.state != ServerState::Leader {
                was_healthy.clear();
                continue;
            }
            let healthy_now = self.healthy();
            for lost in was_healthy.difference(&healthy_now) {
                tracing::warn!(node = %format_id(*lost), silent_for_secs = load::HEALTHY_WITHIN.as_secs(), "node stopped reporting: no new viewers or streams go to it; its streams may be published elsewhere");
                self.emit(
                    "node.lost",
                    serde_json::json!({
                        "id": format_id(*lost),
                        "silent_for_secs": load::HEALTHY_WITHIN.as_secs(),
                    }),
                );
            }
            for back in healthy_now.difference(&was_healthy) {
                if !was_healthy.is_empty() {
                    tracing::info!(node = %format_id(*back), "node is reporting again");
                }
            }
            was_healthy = healthy_now;
            let membership = metrics.membership_config.membership().clone();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
            let now = Instant::now();
            let members: BTreeSet<NodeId> = voters
                .union(&learners)
                .copied()
                .filter(|n| *n != self.inner.id)
                .collect();
            let silent = self
                .loads()
                .unreachable_for(&members, self.inner.started, now);
            let healthy = self.healthy();
            let change = plan_voters(
                &voters,
                &learners,
                &silent,
                self.inner.config.voter_lost_after,
                self.inner.config.voters,
                &healthy,
            );
            let Some(VoterChange::Promote { learner, replaces }) = change else {
                continue;
            };
            let mut next = voters.clone();
            next.insert(learner);
            if let Some(lost) = replaces {
                next.remove(&lost);
            }
            tracing::info!(promote = %format_id(learner), replaces = ?replaces.map(format_id), "changing Raft voters");
            // `retain`: a replaced voter stays a learner and can be promoted again.
            if let Err(e) = self
                .inner
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(next), true)
                .await
            {
                tracing::warn!(error = %e, "voter change failed; will retry");
            } else {
                metrics::counter!("cascade_raft_voter_changes_total").increment(1);
            }
        }
    }

    /// On the leader, four times a second: places pulls nobody runs, or whose node went
    /// silent, and transcoders (a takeover within a few seconds, or renditions soon after a
    /// stream starts, need a quicker look than voter changes).
    async fn place_while_leading(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.raft_metrics().state == ServerState::Leader {
                self.place_pulls().await;
                self.assign_duties().await;
            }
        }
    }

    /// Writes the transcoder and packager assignments [`plan_duty`] decides: transcoders for
    /// the streams whose origins say they need renditions, packagers for every placed
    /// stream (a packager packages only while someone asks for its HLS).
    async fn assign_duties(&self) {
        let state = self.state();
        let now = Instant::now();
        let settled =
            now.duration_since(self.inner.started) >= PULL_TAKEOVER_AFTER + 2 * REPORT_EVERY;
        let mut alive = self.loads().heard_within(PULL_TAKEOVER_AFTER, now);
        alive.insert(self.inner.id);
        if !settled {
            // Too soon to have heard from everyone: nobody counts as gone yet.
            alive.extend(state.nodes.keys().copied());
        }
        let mut placed: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for (stream, origin) in &state.placements {
            placed.entry(*origin).or_default().push(stream.clone());
        }
        let duties = [
            (
                Duty::Transcoder,
                self.loads().transcode_wanted(PULL_TAKEOVER_AFTER, now),
                self.inner.config.transcoder_standby,
            ),
            (Duty::Packager, placed, self.inner.config.packager_standby),
        ];
        for (duty, wanted, standby) in duties {
            if wanted.values().all(Vec::is_empty) && duty.assignments(&state).0.is_empty() {
                continue;
            }
            for command in plan_duty(duty, &state, &wanted, &alive, standby, settled) {
                if let Command::AssignTranscoder {
                    stream,
                    node,
                    standby,
                }
                | Command::AssignPackager {
                    stream,
                    node,
                    standby,
                } = &command
                {
                    tracing::info!(?duty, %stream, node = ?node.map(format_id), standby = ?standby.map(format_id), "assigning a stream's duty");
                }
                if let Err(e) = self.write(command).await {
                    tracing::warn!(?duty, error = %e, "could not write an assignment; will retry");
                    return;
                }
            }
        }
    }

    /// Writes the placements [`plan_pulls`] decides.
    async fn place_pulls(&self) {
        let state = self.state();
        if state.pulls.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut alive = self.loads().heard_within(PULL_TAKEOVER_AFTER, now);
        alive.insert(self.inner.id);
        if now.duration_since(self.inner.started) < PULL_TAKEOVER_AFTER + 2 * REPORT_EVERY {
            // Too soon to have heard from everyone (this node just started): place pulls
            // nobody runs, but take none away.
            alive.extend(state.placements.values().copied());
        }
        let loads = self.loads().loads();
        for command in plan_pulls(&state, &alive, &loads) {
            if let Command::Place {
                stream,
                origin,
                replaceable,
            } = &command
            {
                tracing::info!(%stream, node = %format_id(*origin), replaces = ?replaceable.iter().map(|n| format_id(*n)).collect::<Vec<_>>(), "placing a pull");
            }
            if let Err(e) = self.write(command).await {
                tracing::warn!(error = %e, "could not place a pull; will retry");
                return;
            }
            metrics::counter!("cascade_pull_placements_total").increment(1);
        }
    }

    /// Starts running the pulls the cluster places on this node; `gate` admits each as its
    /// stream's publisher.
    pub fn run_pulls(&self, gate: Arc<dyn cascade_roles::origin::ingest::PublishGate>) {
        tokio::spawn(self.inner.pulls.clone().supervise(
            self.inner.id,
            self.inner.registry.clone(),
            gate,
            self.inner.state.clone(),
        ));
    }

    /// Whether `stream` is placed on this node.
    pub fn placed_here(&self, stream: &StreamId) -> bool {
        self.state().placements.get(stream.as_str()) == Some(&self.inner.id)
    }

    /// Adds a pulled stream (the API's `POST /api/v1/streams`).
    pub async fn add_pull(
        &self,
        stream: &StreamId,
        spec: cascade_protocol::pull::PullSpec,
    ) -> Result<Outcome, String> {
        self.write(Command::AddPull {
            stream: stream.as_str().to_owned(),
            spec,
        })
        .await
    }

    /// Removes a pulled stream.
    pub async fn remove_pull(&self, stream: &StreamId) -> Result<Outcome, String> {
        self.write(Command::RemovePull {
            stream: stream.as_str().to_owned(),
        })
        .await
    }

    /// Each pull as the node placed to run it last reported it (a node that lost a pull may
    /// still list it in an old report).
    pub fn pull_statuses(&self) -> BTreeMap<String, cascade_protocol::pull::PullStatus> {
        let state = self.state();
        let placed_on = |stream: &str, node: NodeId| state.placements.get(stream) == Some(&node);
        let mut statuses: BTreeMap<String, cascade_protocol::pull::PullStatus> = self
            .loads()
            .pulls()
            .filter(|(node, status)| placed_on(&status.stream, *node))
            .map(|(_, status)| (status.stream.clone(), status.clone()))
            .collect();
        // This node's own are the freshest.
        for status in self.inner.pulls.statuses() {
            if placed_on(&status.stream, self.inner.id) {
                statuses.insert(status.stream.clone(), status);
            }
        }
        statuses
    }

    /// Stops Raft (on shutdown).
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
    }
}

impl OriginLocator for Cluster {
    fn origin_of(&self, stream: &StreamId) -> Option<SocketAddr> {
        let origin = self.remote_origin(stream)?;
        self.state().nodes.get(&origin).map(|n| n.quic_addr)
    }
}

/// Wires the relay into routing: the relay pulls from the origins the cluster names.
pub fn relay(endpoint: NodeEndpoint, registry: StreamRegistry, cluster: &Cluster) -> Relay {
    Relay::new(endpoint, registry, Arc::new(cluster.clone()))
}

/// A node id as shown to operators: 16 hex digits.
pub fn format_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Parses a node id as [`format_id`] writes it.
pub fn parse_id(text: &str) -> Option<NodeId> {
    u64::from_str_radix(text, 16).ok()
}

/// The transcoders ask the cluster: their wishes go in the load reports, the leader's
/// assignments come back through Raft.
impl cascade_roles::transcoder::TranscoderPlacement for Cluster {
    fn wanted(&self, streams: Vec<String>) {
        *self
            .inner
            .transcode_wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = streams;
    }

    fn assigned_here(&self) -> std::collections::HashSet<StreamId> {
        let state = self.state();
        state
            .transcoders
            .iter()
            .chain(&state.transcoder_standbys)
            .filter(|(_, node)| **node == self.inner.id)
            .filter_map(|(stream, _)| StreamId::parse(stream).ok())
            .collect()
    }

    fn transcoders_elsewhere(&self, stream: &StreamId) -> Vec<SocketAddr> {
        let state = self.state();
        [
            state.transcoders.get(stream.as_str()),
            state.transcoder_standbys.get(stream.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter(|node| **node != self.inner.id)
        .filter_map(|node| state.nodes.get(node).map(|n| n.quic_addr))
        .collect()
    }
}
