//! The replicated cluster state and the commands that change it.
//!
//! [`apply`] is the whole state machine: a pure function from a state and a command to the
//! next state and an outcome. Raft only orders the commands; every node applies the same
//! ones and so holds the same state. Everything a command needs to be decided (which
//! origins count as gone, for instance) travels inside the command, so applying it never
//! depends on the node, the clock or the load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use cascade_protocol::cluster::{Load, NodeId, NodeInfo, NodeRole, place_pull};
use cascade_protocol::pull::PullSpec;
use cascade_roles::quic::trust::ClusterCa;

/// One node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Its Raft node id.
    pub id: NodeId,
    /// WHIP, WHEP, API.
    pub http_addr: SocketAddr,
    /// Raft and relay.
    pub quic_addr: SocketAddr,
    /// The `region` label, if any.
    pub region: Option<String>,
    /// Roles the operator allows it (`--roles`).
    pub allowed: BTreeSet<NodeRole>,
    /// No new viewers or streams; its roles are handed over.
    pub draining: bool,
}

impl NodeRecord {
    /// What the planning functions need of it.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id,
            region: self.region.clone(),
            allowed: self.allowed.clone(),
            draining: self.draining,
        }
    }
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    /// The cluster CA, set once at bootstrap. Replicated so that any leader can sign a
    /// joining node's certificate.
    pub ca: Option<ClusterCa>,
    /// SHA-256 (hex) of every join token the cluster accepts.
    pub join_token_hashes: BTreeSet<String>,
    /// Every member node.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Stream id → the node that is its origin.
    pub placements: BTreeMap<String, NodeId>,
    /// Stream id → the source its origin pulls (RTSP cameras). A pulled stream's origin is
    /// its placement, chosen by the leader ([`plan_pulls`]).
    #[serde(default)]
    pub pulls: BTreeMap<String, PullSpec>,
    /// Stream id → the node that transcodes it, chosen by the leader
    /// ([`plan_transcoders`]).
    #[serde(default)]
    pub transcoders: BTreeMap<String, NodeId>,
}

/// A change to the state; Raft's log entries carry these.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// The first node creates the cluster.
    Bootstrap {
        ca: ClusterCa,
        join_token_hash: String,
    },
    /// One more join token is accepted.
    AddJoinToken { hash: String },
    /// A node joins, or its addresses, labels or allowed roles change.
    UpsertNode(NodeRecord),
    /// A node leaves; its placements are dropped.
    RemoveNode { id: NodeId },
    /// Starts or stops draining a node.
    SetDraining { id: NodeId, draining: bool },
    /// `origin` becomes the origin of `stream`, unless another node is and that node is
    /// not in `replaceable` (dead, or it no longer has the stream live).
    Place {
        stream: String,
        origin: NodeId,
        replaceable: BTreeSet<NodeId>,
    },
    /// `origin` no longer has `stream` (its publisher left for good).
    Unplace { stream: String, origin: NodeId },
    /// `node` transcodes `stream`; `None`: nobody does.
    AssignTranscoder {
        stream: String,
        node: Option<NodeId>,
    },
    /// `stream` is pulled from `spec.source` from now on, unless it is pushed live or
    /// already pulled from elsewhere.
    AddPull { stream: String, spec: PullSpec },
    /// `stream` is no longer pulled; its placement goes with it.
    RemovePull { stream: String },
}

/// What applying a command decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Refused: the cluster already exists, or the node is unknown.
    Ignored,
    /// The stream's origin is this node (newly or already).
    Placed { origin: NodeId },
    /// The stream already has another live origin.
    PlacedElsewhere { origin: NodeId },
    /// The stream is already pulled, from this source.
    PulledAs(PullSpec),
}

/// Applies one command.
pub fn apply(state: &mut ClusterState, command: Command) -> Outcome {
    match command {
        Command::Bootstrap {
            ca,
            join_token_hash,
        } => {
            if state.ca.is_some() {
                return Outcome::Ignored;
            }
            state.ca = Some(ca);
            state.join_token_hashes.insert(join_token_hash);
            Outcome::Done
        }
        Command::AddJoinToken { hash } => {
            state.join_token_hashes.insert(hash);
            Outcome::Done
        }
        Command::UpsertNode(record) => {
            state.nodes.insert(record.id, record);
            Outcome::Done
        }
        Command::RemoveNode { id } => {
            if state.nodes.remove(&id).is_none() {
                return Outcome::Ignored;
            }
            state.placements.retain(|_, origin| *origin != id);
            state.transcoders.retain(|_, node| *node != id);
            Outcome::Done
        }
        Command::SetDraining { id, draining } => match state.nodes.get_mut(&id) {
            Some(node) => {
                node.draining = draining;
                Outcome::Done
            }
            None => Outcome::Ignored,
        },
        Command::Place {
            stream,
            origin,
            replaceable,
        } => {
            if !state.nodes.contains_key(&origin) {
                return Outcome::Ignored;
            }
            match state.placements.get(&stream) {
                Some(&current) if current != origin && !replaceable.contains(&current) => {
                    Outcome::PlacedElsewhere { origin: current }
                }
                _ => {
                    state.placements.insert(stream, origin);
                    Outcome::Placed { origin }
                }
            }
        }
        Command::AddPull { stream, spec } => {
            if let Some(existing) = state.pulls.get(&stream) {
                return if *existing == spec {
                    Outcome::Done
                } else {
                    Outcome::PulledAs(existing.clone())
                };
            }
            if let Some(&origin) = state.placements.get(&stream) {
                return Outcome::PlacedElsewhere { origin };
            }
            state.pulls.insert(stream, spec);
            Outcome::Done
        }
        Command::RemovePull { stream } => {
            if state.pulls.remove(&stream).is_none() {
                return Outcome::Ignored;
            }
            state.placements.remove(&stream);
            Outcome::Done
        }
        Command::AssignTranscoder { stream, node } => match node {
            Some(node) if state.nodes.contains_key(&node) => {
                state.transcoders.insert(stream, node);
                Outcome::Done
            }
            Some(_) => Outcome::Ignored,
            None => match state.transcoders.remove(&stream) {
                Some(_) => Outcome::Done,
                None => Outcome::Ignored,
            },
        },
        Command::Unplace { stream, origin } => {
            if state.placements.get(&stream) == Some(&origin) {
                state.placements.remove(&stream);
                Outcome::Done
            } else {
                Outcome::Ignored
            }
        }
    }
}

/// The leader's decision for pulled sources: each pull nobody runs, or whose node is not in
/// `alive`, is placed on the origin [`place_pull`] picks. The commands carry the node they
/// replace, so a pull moved meanwhile is not moved twice.
pub fn plan_pulls(
    state: &ClusterState,
    alive: &BTreeSet<NodeId>,
    loads: &BTreeMap<NodeId, Load>,
) -> Vec<Command> {
    let nodes: Vec<NodeInfo> = state.nodes.values().map(NodeRecord::info).collect();
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for stream in state.pulls.keys() {
        if let Some(node) = state.placements.get(stream).filter(|n| alive.contains(n)) {
            *counts.entry(*node).or_default() += 1;
        }
    }
    let mut commands = Vec::new();
    for stream in state.pulls.keys() {
        let current = state.placements.get(stream).copied();
        if current.is_some_and(|n| alive.contains(&n)) {
            continue;
        }
        let Ok(origin) = place_pull(&nodes, loads, alive, &counts) else {
            break;
        };
        *counts.entry(origin).or_default() += 1;
        commands.push(Command::Place {
            stream: stream.clone(),
            origin,
            replaceable: current.into_iter().collect(),
        });
    }
    commands
}

/// The leader's decision for transcoders. `wanted` is, per node heard from lately, the
/// streams it is the origin of that need renditions (it says so in its load reports). Each
/// such stream is transcoded by its origin when the origin may hold the `transcoder` role
/// (`--roles`): the source is there, so renditions cost no relay hop. A stream whose origin
/// may not, or that no node heard from wants any more, has its assignment removed. With
/// `settled` false (a leader that has not heard from everyone yet) nothing is removed.
pub fn plan_transcoders(
    state: &ClusterState,
    wanted: &BTreeMap<NodeId, Vec<String>>,
    settled: bool,
) -> Vec<Command> {
    let mut desired: BTreeMap<&str, NodeId> = BTreeMap::new();
    for (node, streams) in wanted {
        let may = state
            .nodes
            .get(node)
            .is_some_and(|n| n.allowed.contains(&NodeRole::Transcoder));
        for stream in streams {
            if may && state.placements.get(stream) == Some(node) {
                desired.insert(stream, *node);
            }
        }
    }
    let mut commands: Vec<Command> = desired
        .iter()
        .filter(|(stream, node)| state.transcoders.get(**stream) != Some(node))
        .map(|(stream, node)| Command::AssignTranscoder {
            stream: (*stream).to_owned(),
            node: Some(*node),
        })
        .collect();
    if settled {
        commands.extend(
            state
                .transcoders
                .keys()
                .filter(|stream| !desired.contains_key(stream.as_str()))
                .map(|stream| Command::AssignTranscoder {
                    stream: stream.clone(),
                    node: None,
                }),
        );
    }
    commands
}

/// SHA-256 of a join token, hex: only hashes are replicated and stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId) -> NodeRecord {
        NodeRecord {
            id,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000 + id as u16)),
            quic_addr: SocketAddr::from(([127, 0, 0, 1], 4000 + id as u16)),
            region: None,
            allowed: NodeRole::ALL.into_iter().collect(),
            draining: false,
        }
    }

    fn place(stream: &str, origin: NodeId, replaceable: &[NodeId]) -> Command {
        Command::Place {
            stream: stream.into(),
            origin,
            replaceable: replaceable.iter().copied().collect(),
        }
    }

    #[test]
    fn a_stream_has_one_origin_until_that_origin_is_replaceable_or_gone() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        let cases: Vec<(Command, Outcome)> = vec![
            (place("cam", 1, &[]), Outcome::Placed { origin: 1 }),
            (place("cam", 1, &[]), Outcome::Placed { origin: 1 }),
            (place("cam", 2, &[]), Outcome::PlacedElsewhere { origin: 1 }),
            (
                place("cam", 2, &[3]),
                Outcome::PlacedElsewhere { origin: 1 },
            ),
            (place("cam", 2, &[1]), Outcome::Placed { origin: 2 }),
            (place("cam", 9, &[2]), Outcome::Ignored),
            (
                Command::Unplace {
                    stream: "cam".into(),
                    origin: 1,
                },
                Outcome::Ignored,
            ),
            (
                Command::Unplace {
                    stream: "cam".into(),
                    origin: 2,
                },
                Outcome::Done,
            ),
            (place("cam", 3, &[]), Outcome::Placed { origin: 3 }),
            (Command::RemoveNode { id: 3 }, Outcome::Done),
            (place("cam", 1, &[]), Outcome::Placed { origin: 1 }),
        ];
        for (i, (command, expected)) in cases.into_iter().enumerate() {
            assert_eq!(apply(&mut state, command), expected, "step {i}");
        }
    }

    fn pull(source: &str) -> PullSpec {
        PullSpec {
            source: source.into(),
            transport: Default::default(),
            on_demand: false,
        }
    }

    #[test]
    fn a_stream_is_pulled_from_one_source_and_never_while_it_is_pushed() {
        let mut state = ClusterState::default();
        apply(&mut state, Command::UpsertNode(node(1)));
        let add = |stream: &str, source: &str| Command::AddPull {
            stream: stream.into(),
            spec: pull(source),
        };
        let cases: Vec<(Command, Outcome)> = vec![
            (add("cam", "rtsp://a/1"), Outcome::Done),
            (add("cam", "rtsp://a/1"), Outcome::Done),
            (
                add("cam", "rtsp://b/2"),
                Outcome::PulledAs(pull("rtsp://a/1")),
            ),
            (place("show", 1, &[]), Outcome::Placed { origin: 1 }),
            (
                add("show", "rtsp://a/1"),
                Outcome::PlacedElsewhere { origin: 1 },
            ),
            (place("cam", 1, &[]), Outcome::Placed { origin: 1 }),
            (
                Command::RemovePull {
                    stream: "cam".into(),
                },
                Outcome::Done,
            ),
            (
                Command::RemovePull {
                    stream: "cam".into(),
                },
                Outcome::Ignored,
            ),
        ];
        for (i, (command, expected)) in cases.into_iter().enumerate() {
            assert_eq!(apply(&mut state, command), expected, "step {i}");
        }
        assert!(
            !state.placements.contains_key("cam"),
            "the placement went with the pull"
        );
    }

    #[test]
    fn pulls_without_a_live_node_are_placed_and_spread_over_the_origins() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        for cam in ["a", "b", "c", "d"] {
            state.pulls.insert(cam.into(), pull("rtsp://cam/x"));
        }
        state.placements.insert("a".into(), 1);
        state.placements.insert("b".into(), 3);
        let alive: BTreeSet<NodeId> = [1, 2].into_iter().collect();
        let commands = plan_pulls(&state, &alive, &BTreeMap::new());
        assert_eq!(
            commands,
            vec![place("b", 2, &[3]), place("c", 1, &[]), place("d", 2, &[])]
        );
        for command in commands {
            apply(&mut state, command);
        }
        assert!(plan_pulls(&state, &alive, &BTreeMap::new()).is_empty());
        assert!(plan_pulls(&state, &BTreeSet::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn bootstrap_happens_once_and_tokens_are_stored_as_hashes() {
        let mut state = ClusterState::default();
        let ca = ClusterCa {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        let first = Command::Bootstrap {
            ca: ca.clone(),
            join_token_hash: token_hash("secret"),
        };
        assert_eq!(apply(&mut state, first.clone()), Outcome::Done);
        assert_eq!(apply(&mut state, first), Outcome::Ignored);
        assert!(state.join_token_hashes.contains(&token_hash("secret")));
        assert!(!state.join_token_hashes.contains("secret"));
        assert_eq!(token_hash("secret").len(), 64);
    }

    fn assign(stream: &str, node: Option<NodeId>) -> Command {
        Command::AssignTranscoder {
            stream: stream.into(),
            node,
        }
    }

    #[test]
    fn a_stream_is_transcoded_by_its_origin_when_the_origin_may_transcode() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        let mut no_transcoding = node(3);
        no_transcoding.allowed.remove(&NodeRole::Transcoder);
        apply(&mut state, Command::UpsertNode(no_transcoding));
        for (stream, origin) in [("show", 1), ("talk", 2), ("cam", 3)] {
            state.placements.insert(stream.into(), origin);
        }
        let wanted: BTreeMap<NodeId, Vec<String>> = [
            (1, vec!["show".to_owned()]),
            // Node 2 says it wants `show` too, but it is not show's origin.
            (2, vec!["talk".to_owned(), "show".to_owned()]),
            (3, vec!["cam".to_owned()]),
        ]
        .into();
        let commands = plan_transcoders(&state, &wanted, true);
        assert_eq!(
            commands,
            vec![assign("show", Some(1)), assign("talk", Some(2))],
            "cam's origin may not transcode: nobody does"
        );
        for command in commands {
            apply(&mut state, command);
        }
        assert!(plan_transcoders(&state, &wanted, true).is_empty(), "stable");

        // talk no longer needs renditions; show's origin moved to node 2 (node 1 died).
        apply(&mut state, Command::RemoveNode { id: 1 });
        assert_eq!(
            state.transcoders.get("show"),
            None,
            "a removed node transcodes nothing"
        );
        state.placements.insert("show".into(), 2);
        let wanted: BTreeMap<NodeId, Vec<String>> = [(2, vec!["show".to_owned()])].into();
        assert_eq!(
            plan_transcoders(&state, &wanted, false),
            vec![assign("show", Some(2))],
            "an unsettled leader assigns but removes nothing"
        );
        assert_eq!(
            plan_transcoders(&state, &wanted, true),
            vec![assign("show", Some(2)), assign("talk", None)]
        );
    }
}
