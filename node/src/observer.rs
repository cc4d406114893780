//! The node's [`StreamObserver`]: a stream run that starts or ends and a session that ends
//! become webhook events ([`crate::webhooks`]) and history records ([`crate::history`]), in
//! one JSON shape for both; the cluster says how many watch on other nodes.

use cascade_protocol::StreamId;
use cascade_roles::origin::EndedSession;
use cascade_roles::origin::observer::{StreamObserver, StreamRun, StreamStarted};

use crate::cluster::Cluster;
use crate::history::{History, Table};
use crate::webhooks::Webhooks;

/// Webhooks and history of this node's streams.
pub struct NodeObserver {
    /// Where events go.
    pub webhooks: Webhooks,
    /// Where runs and sessions are kept.
    pub history: History,
    /// Who reports viewers elsewhere.
    pub cluster: Cluster,
    /// This node's id, in every record.
    pub node: String,
}

impl StreamObserver for NodeObserver {
    fn started(&self, started: StreamStarted) {
        tracing::info!(stream = %started.stream, protocol = started.protocol, "stream run started");
        self.webhooks.emit(
            "stream.started",
            serde_json::json!({
                "stream": started.stream.as_str(),
                "protocol": started.protocol,
                "started_at": started.started_unix,
            }),
        );
    }

    fn ended(&self, run: StreamRun) {
        tracing::info!(
            stream = %run.stream,
            duration_secs = run.ended_unix - run.started_unix,
            peak_viewers = run.peak_viewers,
            viewer_minutes = run.viewer_minutes,
            "stream run ended"
        );
        let record = run_record(&run, &self.node);
        self.history
            .record(Table::Streams, run.ended_unix, record.clone());
        self.webhooks.emit("stream.ended", record);
    }

    fn viewers_elsewhere(&self, stream: &StreamId) -> u32 {
        self.cluster.viewers_elsewhere(stream.as_str())
    }

    fn session_ended(&self, ended: &EndedSession) {
        self.history.record(
            Table::Sessions,
            ended.ended_at_unix as f64,
            session_record(ended, &self.node),
        );
    }
}

/// A stream run: the `data` of `stream.ended` and a record of `GET /api/v1/history/streams`.
pub fn run_record(run: &StreamRun, node: &str) -> serde_json::Value {
    serde_json::json!({
        "stream": run.stream.as_str(),
        "node": node,
        "protocol": run.protocol,
        "started_at": run.started_unix,
        "ended_at": run.ended_unix,
        "duration_secs": (run.ended_unix - run.started_unix).max(0.0),
        "peak_viewers": run.peak_viewers,
        "total_viewers": run.total_viewers,
        "viewer_minutes": run.viewer_minutes,
        "bytes_in": run.bytes_in,
        "tracks": run.tracks,
    })
}

/// A session summary of `GET /api/v1/history/sessions`.
pub fn session_record(ended: &EndedSession, node: &str) -> serde_json::Value {
    let ended_at = ended.ended_at_unix as f64;
    serde_json::json!({
        "stream": ended.stream.as_str(),
        "node": node,
        "kind": ended.kind,
        "protocol": ended.protocol,
        "session": ended.session,
        "client": ended.remote.map(|a| a.to_string()),
        "joined_at": ended_at - ended.lasted_secs,
        "ended_at": ended_at,
        "duration_secs": ended.lasted_secs,
        "connected": ended.connected,
        "outcome": ended.outcome,
        "reason": ended.reason,
        "join_time_ms": ended.quality.join_time_ms,
        "keyframe_requests": ended.quality.keyframe_requests,
        "loss_percent": ended.quality.loss_percent,
    })
}

/// A finished recording of `GET /api/v1/history/recordings`: the data of `recording.ready`
/// with the node and, like every record, `started_at` and `ended_at` in seconds.
pub fn recording_record(ready: &serde_json::Value, node: &str) -> serde_json::Value {
    let mut record = ready.clone();
    record["node"] = node.into();
    record["started_at"] = (ready["started_at_ms"].as_f64().unwrap_or(0.0) / 1000.0).into();
    record["ended_at"] = ready["stopped_at_ms"]
        .as_f64()
        .map_or_else(cascade_protocol::clock::unix_seconds, |ms| ms / 1000.0)
        .into();
    record
}
