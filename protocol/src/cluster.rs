//! The cluster's decisions, as pure functions over the replicated state and the soft load
//! reports: which roles a node holds, where a new stream's origin goes, which edge a viewer is
//! sent to, and which learner replaces a lost voter. The caller (the Raft leader or the node
//! answering a request) applies what they return; nothing here has side effects, so every
//! rule is a table test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ProtocolError;

/// A node's id in the cluster (its Raft node id).
pub type NodeId = u64;

/// The roles a node can hold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Takes publishers in and owns a stream's source.
    Origin,
    /// Makes renditions.
    Transcoder,
    /// Writes LL-HLS.
    Packager,
    /// Serves viewers.
    Edge,
}

impl NodeRole {
    /// The name used in config (`--roles origin,edge`) and the API.
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Origin => "origin",
            NodeRole::Transcoder => "transcoder",
            NodeRole::Packager => "packager",
            NodeRole::Edge => "edge",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<NodeRole> {
        NodeRole::ALL.into_iter().find(|r| r.name() == name)
    }

    pub const ALL: [NodeRole; 4] = [
        NodeRole::Origin,
        NodeRole::Transcoder,
        NodeRole::Packager,
        NodeRole::Edge,
    ];
}

/// What the replicated state says about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Labels such as `region`.
    pub region: Option<String>,
    /// Roles the operator allows on it (`auto` = all of them).
    pub allowed: BTreeSet<NodeRole>,
    /// Draining: no new viewers or streams; its roles are handed over.
    pub draining: bool,
}

/// A node's soft state, reported to the leader every second (never in the Raft log).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Load {
    /// CPU use, 0–100 per node (all cores).
    pub cpu_pct: f32,
    pub viewers: u32,
    pub egress_bps: u64,
    pub streams: u32,
}

/// A node above this CPU share takes no new streams or viewers while another can.
pub const BUSY_CPU_PCT: f32 = 85.0;
/// The node answering a viewer keeps it unless another edge is this much less loaded
/// (CPU percentage points): a redirect costs the viewer a round trip.
pub const LOCAL_EDGE_MARGIN_PCT: f32 = 10.0;

/// The roles each node holds: what it is allowed, when it is healthy and not draining.
pub fn assign_roles(
    nodes: &[NodeInfo],
    healthy: &BTreeSet<NodeId>,
) -> BTreeMap<NodeId, BTreeSet<NodeRole>> {
    nodes
        .iter()
        .map(|node| {
            let roles = if healthy.contains(&node.id) && !node.draining {
                node.allowed.clone()
            } else {
                BTreeSet::new()
            };
            (node.id, roles)
        })
        .collect()
}

/// The nodes that can take new work in `role` now, with their load.
fn candidates<'a>(
    nodes: &'a [NodeInfo],
    loads: &'a BTreeMap<NodeId, Load>,
    healthy: &'a BTreeSet<NodeId>,
    role: NodeRole,
) -> impl Iterator<Item = (&'a NodeInfo, Load)> + 'a {
    nodes
        .iter()
        .filter(move |n| healthy.contains(&n.id) && !n.draining && n.allowed.contains(&role))
        .map(move |n| (n, loads.get(&n.id).copied().unwrap_or_default()))
}

/// Least loaded first: CPU, then viewers, then id (so that ties are stable).
fn less_loaded(a: &(&NodeInfo, Load), b: &(&NodeInfo, Load)) -> std::cmp::Ordering {
    a.1.cpu_pct
        .total_cmp(&b.1.cpu_pct)
        .then(a.1.viewers.cmp(&b.1.viewers))
        .then(a.0.id.cmp(&b.0.id))
}

/// Where a new stream's origin goes: the node the publisher reached, when it can be an
/// origin and is not busy (its media is already there); otherwise the least loaded origin.
pub fn place_stream(
    ingest: NodeId,
    nodes: &[NodeInfo],
    loads: &BTreeMap<NodeId, Load>,
    healthy: &BTreeSet<NodeId>,
) -> Result<NodeId, ProtocolError> {
    let mut options: Vec<_> = candidates(nodes, loads, healthy, NodeRole::Origin).collect();
    if let Some((node, load)) = options.iter().find(|(n, _)| n.id == ingest)
        && load.cpu_pct < BUSY_CPU_PCT
    {
        return Ok(node.id);
    }
    options.sort_by(less_loaded);
    options
        .first()
        .map(|(n, _)| n.id)
        .ok_or(ProtocolError::NoCandidate(NodeRole::Origin))
}

/// Which node pulls a source (an RTSP camera) nobody pulls yet, or whose puller died: the
/// origin with the fewest pulls (`pulls`: how many each node has now), then the least loaded.
pub fn place_pull(
    nodes: &[NodeInfo],
    loads: &BTreeMap<NodeId, Load>,
    healthy: &BTreeSet<NodeId>,
    pulls: &BTreeMap<NodeId, usize>,
) -> Result<NodeId, ProtocolError> {
    let mut options: Vec<_> = candidates(nodes, loads, healthy, NodeRole::Origin).collect();
    let count = |id: NodeId| pulls.get(&id).copied().unwrap_or(0);
    options.sort_by(|a, b| count(a.0.id).cmp(&count(b.0.id)).then(less_loaded(a, b)));
    options
        .first()
        .map(|(n, _)| n.id)
        .ok_or(ProtocolError::NoCandidate(NodeRole::Origin))
}

/// Which edge a viewer who asked `local` is given: `local` itself unless another edge is
/// clearly less loaded; within `region` when the request names one and an edge is there.
pub fn choose_edge(
    local: NodeId,
    region: Option<&str>,
    nodes: &[NodeInfo],
    loads: &BTreeMap<NodeId, Load>,
    healthy: &BTreeSet<NodeId>,
) -> Result<NodeId, ProtocolError> {
    let mut options: Vec<_> = candidates(nodes, loads, healthy, NodeRole::Edge).collect();
    if let Some(region) = region
        && options
            .iter()
            .any(|(n, _)| n.region.as_deref() == Some(region))
    {
        options.retain(|(n, _)| n.region.as_deref() == Some(region));
    }
    options.sort_by(less_loaded);
    let (best, best_load) = *options
        .first()
        .ok_or(ProtocolError::NoCandidate(NodeRole::Edge))?;
    match options.iter().find(|(n, _)| n.id == local) {
        Some((_, local_load))
            if local_load.cpu_pct <= best_load.cpu_pct + LOCAL_EDGE_MARGIN_PCT
                && local_load.cpu_pct < BUSY_CPU_PCT =>
        {
            Ok(local)
        }
        _ => Ok(best.id),
    }
}

/// Where a viewer goes when `full` (the edge it reached) cannot take it: the least loaded
/// other edge that is not busy, in `region` when one there can; `None` when no edge has room.
pub fn choose_edge_with_room(
    full: NodeId,
    region: Option<&str>,
    nodes: &[NodeInfo],
    loads: &BTreeMap<NodeId, Load>,
    healthy: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    let mut options: Vec<_> = candidates(nodes, loads, healthy, NodeRole::Edge)
        .filter(|(n, load)| n.id != full && load.cpu_pct < BUSY_CPU_PCT)
        .collect();
    options.sort_by(|a, b| {
        let in_region =
            |(n, _): &(&NodeInfo, Load)| region.is_some() && n.region.as_deref() == region;
        in_region(b).cmp(&in_region(a)).then(less_loaded(a, b))
    });
    options.first().map(|(n, _)| n.id)
}

/// A change to the Raft voter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Promote this learner (and demote the lost voter, if any).
    Promote {
        learner: NodeId,
        replaces: Option<NodeId>,
    },
}

/// Whether to change the voters: a voter unreachable for longer than `lost_after` is
/// replaced by the healthy learner with the lowest id; a cluster below `target` voters
/// promotes healthy learners until it has them. One change at a time (Raft's joint
/// consensus applies one membership change before the next).
pub fn plan_voters(
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    unreachable_for: &BTreeMap<NodeId, Duration>,
    lost_after: Duration,
    target: usize,
    healthy: &BTreeSet<NodeId>,
) -> Option<VoterChange> {
    let learner = learners
        .iter()
        .copied()
        .find(|l| healthy.contains(l) && !unreachable_for.contains_key(l))?;
    if voters.len() < target {
        return Some(VoterChange::Promote {
            learner,
            replaces: None,
        });
    }
    let lost = voters
        .iter()
        .copied()
        .find(|v| unreachable_for.get(v).is_some_and(|d| *d > lost_after))?;
    Some(VoterChange::Promote {
        learner,
        replaces: Some(lost),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, region: &str, roles: &[NodeRole], draining: bool) -> NodeInfo {
        NodeInfo {
            id,
            region: (!region.is_empty()).then(|| region.to_owned()),
            allowed: roles.iter().copied().collect(),
            draining,
        }
    }

    fn loads(cpu: &[(NodeId, f32)]) -> BTreeMap<NodeId, Load> {
        cpu.iter()
            .map(|&(id, cpu_pct)| {
                (
                    id,
                    Load {
                        cpu_pct,
                        ..Load::default()
                    },
                )
            })
            .collect()
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    use NodeRole::{Edge, Origin};

    /// Ingest node, CPU per node, healthy nodes, expected origin.
    type PlaceCase<'a> = (
        NodeId,
        &'a [(NodeId, f32)],
        &'a BTreeSet<NodeId>,
        Result<NodeId, ProtocolError>,
    );
    /// CPU per node, healthy nodes, pulls per node, expected puller.
    type PullCase<'a> = (
        &'a [(NodeId, f32)],
        &'a BTreeSet<NodeId>,
        BTreeMap<NodeId, usize>,
        Result<NodeId, ProtocolError>,
    );
    /// Local node, requested region, CPU per node, expected edge.
    type EdgeCase<'a> = (
        NodeId,
        Option<&'a str>,
        &'a [(NodeId, f32)],
        Result<NodeId, ProtocolError>,
    );
    /// Voters, learners, unreachable (id, seconds), healthy, expected change.
    type VoterCase<'a> = (
        &'a [NodeId],
        &'a [NodeId],
        &'a [(NodeId, u64)],
        &'a [NodeId],
        Option<VoterChange>,
    );

    #[test]
    fn roles_follow_what_is_allowed_health_and_draining() {
        let nodes = [
            node(1, "", &NodeRole::ALL, false),
            node(2, "", &[Edge], false),
            node(3, "", &NodeRole::ALL, true),
            node(4, "", &NodeRole::ALL, false),
        ];
        let roles = assign_roles(&nodes, &set(&[1, 2, 3]));
        assert_eq!(roles[&1], NodeRole::ALL.into_iter().collect());
        assert_eq!(roles[&2], [Edge].into_iter().collect());
        assert!(roles[&3].is_empty(), "draining");
        assert!(roles[&4].is_empty(), "unhealthy");
    }

    fn two_origins_an_edge_and_a_draining_origin() -> [NodeInfo; 4] {
        [
            node(1, "", &[Origin, Edge], false),
            node(2, "", &[Origin, Edge], false),
            node(3, "", &[Edge], false),
            node(4, "", &[Origin], true),
        ]
    }

    #[test]
    fn a_pull_goes_to_the_healthy_origin_with_fewest_pulls_then_least_load() {
        let nodes = two_origins_an_edge_and_a_draining_origin();
        let all = set(&[1, 2, 3, 4]);
        let pulls = |counts: &[(NodeId, usize)]| counts.iter().copied().collect();
        let cases: [PullCase; 5] = [
            (&[], &all, pulls(&[]), Ok(1)),
            (&[(1, 50.0)], &all, pulls(&[]), Ok(2)),
            (&[(2, 50.0)], &all, pulls(&[(1, 3), (2, 1)]), Ok(2)),
            (&[], &set(&[1, 3, 4]), pulls(&[(1, 9)]), Ok(1)),
            (
                &[],
                &set(&[3, 4]),
                pulls(&[]),
                Err(ProtocolError::NoCandidate(Origin)),
            ),
        ];
        for (i, (cpu, healthy, counts, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                place_pull(&nodes, &loads(cpu), healthy, &counts),
                expected,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_stream_stays_where_it_was_published_unless_that_node_cannot_take_it() {
        let nodes = two_origins_an_edge_and_a_draining_origin();
        let all = set(&[1, 2, 3, 4]);
        let cases: &[PlaceCase] = &[
            (1, &[(1, 50.0), (2, 10.0)], &all, Ok(1)), // ingest node is fine: keep it
            (1, &[(1, 90.0), (2, 10.0)], &all, Ok(2)), // busy: least loaded origin
            (3, &[(1, 30.0), (2, 20.0)], &all, Ok(2)), // not an origin: least loaded
            (4, &[(1, 30.0), (2, 30.0)], &all, Ok(1)), // draining; tie broken by id
            (1, &[], &set(&[3]), Err(ProtocolError::NoCandidate(Origin))),
        ];
        for (ingest, cpu, healthy, expected) in cases {
            assert_eq!(
                place_stream(*ingest, &nodes, &loads(cpu), healthy),
                *expected,
                "ingest {ingest}, cpu {cpu:?}"
            );
        }
    }

    #[test]
    fn a_viewer_is_kept_locally_unless_another_edge_is_clearly_less_loaded() {
        let nodes = [
            node(1, "eu", &[Origin, Edge], false),
            node(2, "eu", &[Edge], false),
            node(3, "us", &[Edge], false),
            node(4, "us", &[Edge], true),
            node(5, "eu", &[Origin], false),
        ];
        let all = set(&[1, 2, 3, 4, 5]);
        let cases: &[EdgeCase] = &[
            (1, None, &[(1, 40.0), (2, 35.0), (3, 50.0)], Ok(1)), // within the margin
            (1, None, &[(1, 60.0), (2, 35.0), (3, 50.0)], Ok(2)), // clearly busier
            (1, None, &[(1, 88.0), (2, 80.0), (3, 86.0)], Ok(2)), // local busy
            (5, None, &[(1, 20.0), (2, 30.0), (3, 10.0)], Ok(3)), // not an edge
            (1, Some("us"), &[(1, 10.0), (2, 10.0), (3, 70.0)], Ok(3)), // region asked
            (1, Some("ap"), &[(1, 10.0), (2, 5.0), (3, 1.0)], Ok(1)), // no edge there
            (4, Some("us"), &[(3, 50.0), (4, 0.0)], Ok(3)),       // draining edge sends away
        ];
        for (local, region, cpu, expected) in cases {
            assert_eq!(
                choose_edge(*local, *region, &nodes, &loads(cpu), &all),
                *expected,
                "local {local}, region {region:?}, cpu {cpu:?}"
            );
        }
        assert_eq!(
            choose_edge(1, None, &nodes, &loads(&[]), &set(&[5])),
            Err(ProtocolError::NoCandidate(Edge))
        );
    }

    #[test]
    fn a_viewer_an_edge_cannot_take_goes_to_the_least_loaded_other_edge_with_room() {
        let nodes = [
            node(1, "eu", &[Origin, Edge], false),
            node(2, "eu", &[Edge], false),
            node(3, "us", &[Edge], false),
            node(4, "eu", &[Edge], true),
        ];
        let all = set(&[1, 2, 3, 4]);
        let pick = |region, cpu: &[(NodeId, f32)]| {
            choose_edge_with_room(1, region, &nodes, &loads(cpu), &all)
        };
        assert_eq!(
            pick(None, &[(1, 10.0), (2, 40.0), (3, 30.0)]),
            Some(3),
            "never itself"
        );
        assert_eq!(
            pick(Some("eu"), &[(2, 40.0), (3, 30.0)]),
            Some(2),
            "its region first"
        );
        assert_eq!(
            pick(Some("eu"), &[(2, 90.0), (3, 30.0)]),
            Some(3),
            "unless that one is busy"
        );
        assert_eq!(
            pick(None, &[(2, 90.0), (3, 86.0), (4, 0.0)]),
            None,
            "busy or draining"
        );
        assert_eq!(
            choose_edge_with_room(1, None, &nodes, &loads(&[]), &set(&[1])),
            None,
            "alone"
        );
    }

    #[test]
    fn a_lost_voter_is_replaced_by_a_healthy_learner_one_change_at_a_time() {
        let secs = Duration::from_secs;
        let lost_after = secs(10);
        let cases: &[VoterCase] = &[
            // Healthy cluster: nothing to do.
            (&[1, 2, 3], &[4], &[], &[1, 2, 3, 4], None),
            // Voter 2 gone briefly: wait.
            (&[1, 2, 3], &[4], &[(2, 3)], &[1, 3, 4], None),
            // Voter 2 gone too long: learner 4 replaces it.
            (
                &[1, 2, 3],
                &[4, 5],
                &[(2, 30)],
                &[1, 3, 4, 5],
                Some(VoterChange::Promote {
                    learner: 4,
                    replaces: Some(2),
                }),
            ),
            // The first learner is unreachable too: the next one.
            (
                &[1, 2, 3],
                &[4, 5],
                &[(2, 30), (4, 30)],
                &[1, 3, 5],
                Some(VoterChange::Promote {
                    learner: 5,
                    replaces: Some(2),
                }),
            ),
            // Fewer voters than the target: promote.
            (
                &[1],
                &[2],
                &[],
                &[1, 2],
                Some(VoterChange::Promote {
                    learner: 2,
                    replaces: None,
                }),
            ),
            // No learner to promote.
            (&[1, 2, 3], &[], &[(2, 30)], &[1, 3], None),
        ];
        for (voters, learners, unreachable, healthy, expected) in cases {
            let unreachable: BTreeMap<NodeId, Duration> =
                unreachable.iter().map(|&(id, s)| (id, secs(s))).collect();
            assert_eq!(
                plan_voters(
                    &set(voters),
                    &set(learners),
                    &unreachable,
                    lost_after,
                    3,
                    &set(healthy)
                ),
                *expected,
                "voters {voters:?}, learners {learners:?}, unreachable {unreachable:?}"
            );
        }
    }
}
