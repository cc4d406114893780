//! Pulled sources on this node: the node runs exactly the pulls the replicated state places
//! on it, and reports how each is doing.
//!
//! The leader places pulls ([`super::state::plan_pulls`]): one nobody runs, or whose node
//! stopped reporting for [`PULL_TAKEOVER_AFTER`], goes to the origin with the fewest. Every
//! node then acts on the state alone: it starts the pulls placed on it and stops those that
//! moved away or were removed. Statuses travel in load reports (soft state), so any node's
//! API can show every pull.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_protocol::StreamId;
use cascade_protocol::cluster::NodeId;
use cascade_protocol::pull::PullStatus;
use cascade_roles::origin::StreamRegistry;
use cascade_roles::origin::ingest::PublishGate;
use cascade_roles::origin::rtsp::Pull;
use tokio::sync::{Mutex, watch};

use super::state::ClusterState;

/// A node whose load reports stop for this long loses its pulls to another origin. Reports
/// come every [`super::REPORT_EVERY`]: three missed in a row.
pub const PULL_TAKEOVER_AFTER: Duration = Duration::from_millis(1500);

/// The pulls this node runs.
#[derive(Default)]
pub struct LocalPulls {
    running: Mutex<BTreeMap<String, Pull>>,
    /// Each running pull's status, read when asked (never stale).
    statuses: std::sync::Mutex<BTreeMap<String, watch::Receiver<PullStatus>>>,
}

impl LocalPulls {
    /// How each pull on this node is doing now.
    pub fn statuses(&self) -> Vec<PullStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|status| status.borrow().clone())
            .collect()
    }

    /// Runs the pulls `state` places on `me`, until the state channel closes.
    pub async fn supervise(
        self: Arc<Self>,
        me: NodeId,
        registry: StreamRegistry,
        gate: Arc<dyn PublishGate>,
        mut state: watch::Receiver<Arc<ClusterState>>,
    ) {
        loop {
            let current = state.borrow_and_update().clone();
            self.reconcile(me, &registry, &gate, &current).await;
            // A state change acts at once; the tick is a safety net.
            tokio::select! {
                changed = state.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let running = std::mem::take(&mut *self.running.lock().await);
        for (_, pull) in running {
            pull.stop().await;
        }
    }

    async fn reconcile(
        &self,
        me: NodeId,
        registry: &StreamRegistry,
        gate: &Arc<dyn PublishGate>,
        state: &ClusterState,
    ) {
        let mut running = self.running.lock().await;
        let wanted: BTreeMap<&String, _> = state
            .pulls
            .iter()
            .filter(|(stream, _)| state.placements.get(*stream) == Some(&me))
            .collect();
        let gone: Vec<String> = running
            .iter()
            .filter(|(stream, pull)| wanted.get(stream).is_none_or(|spec| *spec != pull.spec()))
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in gone {
            if let Some(pull) = running.remove(&stream) {
                tracing::info!(%stream, "this node no longer pulls the stream");
                pull.stop().await;
            }
        }
        for (stream, spec) in wanted {
            if running.contains_key(stream) {
                continue;
            }
            let Ok(id) = StreamId::parse(stream) else {
                continue;
            };
            tracing::info!(%stream, source = %cascade_protocol::pull::redact(&spec.source), "this node pulls the stream");
            running.insert(
                stream.clone(),
                Pull::spawn(registry.clone(), gate.clone(), id, spec.clone()),
            );
        }
        let statuses = running
            .iter()
            .map(|(stream, pull)| (stream.clone(), pull.watch_status()))
            .collect();
        *self.statuses.lock().unwrap_or_else(|e| e.into_inner()) = statuses;
        metrics::gauge!("cascade_pulls").set(running.len() as f64);
    }
}
