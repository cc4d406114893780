//! The replicated cluster state and the commands that change it.
//!
//! [`apply`] is the whole state machine: a pure function from a state and a command to the
//! next state and an outcome. Raft only orders the commands; every node applies the same
//! ones and so holds the same state. Everything a command needs to be decided (which
//! origins count as gone, for instance) travels inside the command, so applying it never
//! depends on the node, the clock or the load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use cascade_protocol::cluster::{NodeId, NodeInfo, NodeRole};
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
}
