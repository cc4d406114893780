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
    /// ([`plan_duty`]).
    #[serde(default)]
    pub transcoders: BTreeMap<String, NodeId>,
    /// Stream id → the node that runs a second, standby transcoder of it (with
    /// `--transcoder-standby`): its origin takes whichever group starts first.
    #[serde(default)]
    pub transcoder_standbys: BTreeMap<String, NodeId>,
    /// Stream id → the node that packages it as LL-HLS ([`plan_duty`]); other nodes fetch
    /// its playlists and parts from there.
    #[serde(default)]
    pub packagers: BTreeMap<String, NodeId>,
    /// Stream id → the node that packages it too (with `--packager-standby`), numbering its
    /// segments and parts the same way, so that edges can switch to it mid-stream.
    #[serde(default)]
    pub packager_standbys: BTreeMap<String, NodeId>,
}

/// A per-stream job the leader hands to nodes, with an optional standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Making the stream's renditions.
    Transcoder,
    /// Packaging the stream as LL-HLS.
    Packager,
}

impl Duty {
    /// The role a node must be allowed to take the duty.
    pub fn role(self) -> NodeRole {
        match self {
            Duty::Transcoder => NodeRole::Transcoder,
            Duty::Packager => NodeRole::Packager,
        }
    }

    /// Stream → active node and stream → standby node.
    pub fn assignments(
        self,
        state: &ClusterState,
    ) -> (&BTreeMap<String, NodeId>, &BTreeMap<String, NodeId>) {
        match self {
            Duty::Transcoder => (&state.transcoders, &state.transcoder_standbys),
            Duty::Packager => (&state.packagers, &state.packager_standbys),
        }
    }

    fn assignments_mut(
        self,
        state: &mut ClusterState,
    ) -> (&mut BTreeMap<String, NodeId>, &mut BTreeMap<String, NodeId>) {
        match self {
            Duty::Transcoder => (&mut state.transcoders, &mut state.transcoder_standbys),
            Duty::Packager => (&mut state.packagers, &mut state.packager_standbys),
        }
    }

    /// The command that assigns it.
    pub fn command(self, stream: String, node: Option<NodeId>, standby: Option<NodeId>) -> Command {
        match self {
            Duty::Transcoder => Command::AssignTranscoder {
                stream,
                node,
                standby,
            },
            Duty::Packager => Command::AssignPackager {
                stream,
                node,
                standby,
            },
        }
    }

    /// The active and standby node of `stream`.
    pub fn of(self, state: &ClusterState, stream: &str) -> (Option<NodeId>, Option<NodeId>) {
        let (active, standby) = self.assignments(state);
        (active.get(stream).copied(), standby.get(stream).copied())
    }
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
    /// `node` transcodes `stream`, and `standby` keeps a second transcoder of it running;
    /// `None`: nobody does.
    AssignTranscoder {
        stream: String,
        node: Option<NodeId>,
        #[serde(default)]
        standby: Option<NodeId>,
    },
    /// `node` packages `stream` as LL-HLS, and `standby` does too; `None`: nobody does.
    AssignPackager {
        stream: String,
        node: Option<NodeId>,
        standby: Option<NodeId>,
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
            for duty in [Duty::Transcoder, Duty::Packager] {
                let (active, standby) = duty.assignments_mut(state);
                standby.retain(|_, node| *node != id);
                // The standby of a removed active takes over at once.
                let orphaned: Vec<String> = active
                    .iter()
                    .filter(|(_, node)| **node == id)
                    .map(|(stream, _)| stream.clone())
                    .collect();
                for stream in orphaned {
                    match standby.remove(&stream) {
                        Some(promoted) => active.insert(stream, promoted),
                        None => active.remove(&stream),
                    };
                }
            }
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
        Command::AssignTranscoder {
            stream,
            node,
            standby,
        } => assign(state, Duty::Transcoder, stream, node, standby),
        Command::AssignPackager {
            stream,
            node,
            standby,
        } => assign(state, Duty::Packager, stream, node, standby),
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

/// Applies an assignment of `duty` for `stream`.
fn assign(
    state: &mut ClusterState,
    duty: Duty,
    stream: String,
    node: Option<NodeId>,
    standby: Option<NodeId>,
) -> Outcome {
    let known = |n: &Option<NodeId>| n.is_none_or(|n| state.nodes.contains_key(&n));
    if !known(&node) || !known(&standby) {
        return Outcome::Ignored;
    }
    let standby = standby.filter(|_| node.is_some());
    let before = duty.of(state, &stream);
    let (actives, standbys) = duty.assignments_mut(state);
    match node {
        Some(node) => actives.insert(stream.clone(), node),
        None => actives.remove(&stream),
    };
    match standby {
        Some(standby) => standbys.insert(stream, standby),
        None => standbys.remove(&stream),
    };
    if before == (node, standby) {
        Outcome::Ignored
    } else {
        Outcome::Done
    }
}

/// Who transcodes (or packages) which stream: the leader's decision, from the streams each origin says
/// need renditions (`wanted`, from load reports) and the nodes heard from lately (`alive`).
///
/// Candidates are alive, not draining, and allowed the duty's role (`--roles`).
/// Without `standby`, a stream's origin transcodes it when it is a candidate (no relay hop),
/// else the candidate transcoding the fewest streams. With `standby`, two nodes other than
/// the origin (when there are two) transcode it, so that either's death leaves the other:
/// a dead active's standby becomes the active, and a new standby is chosen. An assignment
/// whose node is still a candidate stays (a drained node's goes). A stream nobody wants
/// any more loses its assignment, unless the leader is not `settled` (it has not heard
/// from everyone yet).
pub fn plan_duty(
    duty: Duty,
    state: &ClusterState,
    wanted: &BTreeMap<NodeId, Vec<String>>,
    alive: &BTreeSet<NodeId>,
    standby: bool,
    settled: bool,
) -> Vec<Command> {
    let candidates: Vec<NodeId> = state
        .nodes
        .values()
        .filter(|n| alive.contains(&n.id) && !n.draining && n.allowed.contains(&duty.role()))
        .map(|n| n.id)
        .collect();
    let (actives, standbys) = duty.assignments(state);
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for node in actives.values().chain(standbys.values()) {
        *load.entry(*node).or_default() += 1;
    }
    let mut desired: BTreeMap<&str, (Option<NodeId>, Option<NodeId>)> = BTreeMap::new();
    for (origin, streams) in wanted {
        for stream in streams {
            if state.placements.get(stream) != Some(origin) {
                continue;
            }
            let current = duty.of(state, stream);
            let chosen = choose_nodes(&candidates, &mut load, *origin, current, standby);
            desired.insert(stream, chosen);
        }
    }
    let mut commands: Vec<Command> = desired
        .iter()
        .filter(|(stream, chosen)| duty.of(state, stream) != **chosen)
        .map(|(stream, (node, standby))| duty.command((*stream).to_owned(), *node, *standby))
        .collect();
    if settled {
        commands.extend(
            actives
                .keys()
                .filter(|stream| !desired.contains_key(stream.as_str()))
                .map(|stream| duty.command(stream.clone(), None, None)),
        );
    }
    commands
}

/// The active and standby node of one stream's duty (see [`plan_duty`]); `load` counts
/// assignments per node and is updated with the choice.
fn choose_nodes(
    candidates: &[NodeId],
    load: &mut BTreeMap<NodeId, usize>,
    origin: NodeId,
    (active, spare): (Option<NodeId>, Option<NodeId>),
    standby: bool,
) -> (Option<NodeId>, Option<NodeId>) {
    let usable = |n: &Option<NodeId>| n.filter(|n| candidates.contains(n));
    let others = candidates.iter().filter(|n| **n != origin).count();
    // With a standby, the origin transcodes only when it is the one candidate left.
    let origin_fits = !standby || others == 0;
    let least_loaded = |load: &BTreeMap<NodeId, usize>, exclude: &[Option<NodeId>]| {
        candidates
            .iter()
            .filter(|n| !exclude.contains(&Some(**n)))
            .filter(|n| origin_fits || **n != origin)
            .min_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))
            .copied()
    };
    // A node newly given this stream counts one more (a promoted standby already did).
    let take = |load: &mut BTreeMap<NodeId, usize>, node: Option<NodeId>| {
        if let Some(n) = node
            && Some(n) != active
            && Some(n) != spare
        {
            *load.entry(n).or_default() += 1;
        }
        node
    };
    let keep_active = usable(&active).filter(|n| origin_fits || *n != origin);
    let next_active = keep_active
        .or_else(|| usable(&spare).filter(|n| origin_fits || *n != origin))
        .or_else(|| (!standby && candidates.contains(&origin)).then_some(origin))
        .or_else(|| least_loaded(load, &[]));
    let next_active = take(load, next_active);
    if !standby {
        return (next_active, None);
    }
    let next_spare = usable(&spare)
        .filter(|n| Some(*n) != next_active && *n != origin)
        .or_else(|| least_loaded(load, &[next_active, Some(origin)]));
    let next_spare = take(load, next_spare);
    (next_active, next_spare)
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
        assign_with_standby(stream, node, None)
    }

    fn assign_with_standby(stream: &str, node: Option<NodeId>, standby: Option<NodeId>) -> Command {
        Command::AssignTranscoder {
            stream: stream.into(),
            node,
            standby,
        }
    }

    fn everyone() -> BTreeSet<NodeId> {
        (1..=9).collect()
    }

    #[test]
    fn a_stream_whose_origin_may_not_transcode_is_transcoded_by_the_least_busy_other_node() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        let mut origin_only = node(1);
        origin_only.allowed = [NodeRole::Origin, NodeRole::Edge].into();
        apply(&mut state, Command::UpsertNode(origin_only));
        state.placements.insert("show".into(), 1);
        state.placements.insert("talk".into(), 1);
        let wanted: BTreeMap<NodeId, Vec<String>> =
            [(1, vec!["show".to_owned(), "talk".to_owned()])].into();
        let commands = plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, true);
        assert_eq!(
            commands,
            vec![assign("show", Some(2)), assign("talk", Some(3))],
            "spread over the nodes that may"
        );
        for command in commands {
            apply(&mut state, command);
        }
        // Node 2 drains: show moves to node 3; node 3 dies: both go to node 2's... nobody.
        apply(
            &mut state,
            Command::SetDraining {
                id: 2,
                draining: true,
            },
        );
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, true),
            vec![assign("show", Some(3))],
            "a draining node hands its transcoding over"
        );
        let alive: BTreeSet<NodeId> = [1, 2].into();
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &alive, false, true),
            vec![assign("show", None), assign("talk", None)],
            "no candidate left: nobody transcodes (and the origin may not)"
        );
    }

    #[test]
    fn with_a_standby_two_nodes_other_than_the_origin_transcode_and_the_standby_takes_over() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3, 4] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        state.placements.insert("show".into(), 1);
        let wanted: BTreeMap<NodeId, Vec<String>> = [(1, vec!["show".to_owned()])].into();
        let commands = plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), true, true);
        assert_eq!(
            commands,
            vec![assign_with_standby("show", Some(2), Some(3))]
        );
        for command in commands {
            apply(&mut state, command);
        }
        assert!(plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), true, true).is_empty());

        // The active's node dies: its standby is promoted, node 4 becomes the standby.
        let alive: BTreeSet<NodeId> = [1, 3, 4].into();
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &alive, true, true),
            vec![assign_with_standby("show", Some(3), Some(4))]
        );
        // Only the origin and one other node: that node is active, no standby.
        let alive: BTreeSet<NodeId> = [1, 3].into();
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &alive, true, true),
            vec![assign_with_standby("show", Some(3), None)]
        );
        // Only the origin: it transcodes alone.
        let alive: BTreeSet<NodeId> = [1].into();
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &alive, true, true),
            vec![assign_with_standby("show", Some(1), None)]
        );
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
        let commands = plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, true);
        assert_eq!(
            commands,
            vec![
                assign("cam", Some(1)),
                assign("show", Some(1)),
                assign("talk", Some(2))
            ],
            "cam's origin may not transcode: the least busy node that may does"
        );
        for command in commands {
            apply(&mut state, command);
        }
        assert!(
            plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, true).is_empty(),
            "stable"
        );

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
            plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, false),
            vec![assign("show", Some(2))],
            "an unsettled leader assigns but removes nothing"
        );
        assert_eq!(
            plan_duty(Duty::Transcoder, &state, &wanted, &everyone(), false, true),
            vec![assign("show", Some(2)), assign("talk", None)]
        );
    }

    #[test]
    fn packagers_are_planned_apart_from_transcoders_and_a_dead_packagers_standby_takes_over() {
        let mut state = ClusterState::default();
        for id in [1, 2, 3, 4] {
            apply(&mut state, Command::UpsertNode(node(id)));
        }
        let mut no_packaging = node(4);
        no_packaging.allowed.remove(&NodeRole::Packager);
        apply(&mut state, Command::UpsertNode(no_packaging));
        state.placements.insert("show".into(), 1);
        state.transcoders.insert("show".into(), 2);
        let wanted: BTreeMap<NodeId, Vec<String>> = [(1, vec!["show".to_owned()])].into();
        let package = |node, standby| Duty::Packager.command("show".into(), node, standby);

        assert_eq!(
            plan_duty(Duty::Packager, &state, &wanted, &everyone(), false, true),
            vec![package(Some(1), None)],
            "without a standby the origin packages (no relay hop)"
        );
        let commands = plan_duty(Duty::Packager, &state, &wanted, &everyone(), true, true);
        assert_eq!(
            commands,
            vec![package(Some(2), Some(3))],
            "with a standby, two nodes other than the origin that may package"
        );
        for command in commands {
            apply(&mut state, command);
        }
        assert_eq!(
            state.transcoders.get("show"),
            Some(&2),
            "transcoders untouched"
        );
        let alive: BTreeSet<NodeId> = [1, 3, 4].into();
        assert_eq!(
            plan_duty(Duty::Packager, &state, &wanted, &alive, true, true),
            vec![package(Some(3), None)],
            "the standby is promoted; node 4 may not package and the origin is kept out"
        );
        apply(&mut state, Command::RemoveNode { id: 2 });
        assert_eq!(Duty::Packager.of(&state, "show"), (Some(3), None));
    }
}
