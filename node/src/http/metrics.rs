//! `GET /metrics` in Prometheus text format, and the description of every metric.
//!
//! Labels: `stream` is the only per-stream label; nothing is ever labelled per viewer.

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/metrics",
        get(|State(state): State<AppState>| async move { state.metrics.render() }),
    )
}

/// Registers help texts, and zero values so that dashboards see every series from the start.
pub fn describe() {
    // Series with fixed labels that the dashboard and the alerts read exist from the start,
    // at 0, on every node (a single node has no relay traffic, a quiet one no keyframe
    // requests): "0" is an answer, "no data" is a question.
    for outcome in ["forwarded", "coalesced"] {
        metrics::counter!("cascade_keyframe_requests_total", "outcome" => outcome).increment(0);
    }
    for direction in ["in", "out"] {
        metrics::counter!("cascade_relay_bytes_total", "direction" => direction).increment(0);
    }
    for side in ["pulled", "served"] {
        metrics::gauge!("cascade_relay_subscriptions", "side" => side).increment(0.0);
    }
    for cause in ["late", "superseded"] {
        metrics::counter!("cascade_relay_group_drops_total", "cause" => cause).increment(0);
    }
    metrics::counter!("cascade_relay_pull_interruptions_total").increment(0);
    metrics::counter!("cascade_viewer_freezes_total").increment(0);
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "cascade_streams_live",
        "Live streams on this node (publishing or within the reconnect grace period)."
    );
    describe_gauge!("cascade_viewers", "Connected viewer sessions, per stream.");
    describe_counter!(
        "cascade_sessions_started_total",
        "Sessions started, by kind (publisher, viewer)."
    );
    describe_counter!(
        "cascade_sessions_ended_total",
        "Sessions ended, by kind and outcome (deleted, transport_closed, stream_ended, crashed)."
    );
    describe_counter!(
        "cascade_ingest_packets_total",
        "Media frames received from publishers, per stream."
    );
    describe_counter!(
        "cascade_ingest_bytes_total",
        "Media payload bytes received from publishers, per stream."
    );
    describe_counter!(
        "cascade_egress_packets_total",
        "UDP datagrams sent to WebRTC peers, per stream."
    );
    describe_counter!(
        "cascade_egress_bytes_total",
        "UDP bytes sent to WebRTC peers, per stream."
    );
    describe_counter!(
        "cascade_keyframe_requests_total",
        "Keyframe requests from viewers, by outcome (forwarded to the publisher, coalesced)."
    );
    describe_counter!(
        "cascade_dropped_groups_total",
        "Groups skipped by a consumer that fell behind, per stream."
    );
    describe_counter!(
        "cascade_http_rejections_total",
        "Refused HTTP requests, by endpoint and reason."
    );
    describe_counter!(
        "cascade_udp_dropped_total",
        "UDP datagrams dropped on arrival, by reason."
    );
    describe_cluster();
    describe_hls();
    describe_transcoder();
    metrics::describe_counter!(
        "cascade_abr_switches_total",
        "Rendition switches of adaptive WebRTC viewers (at group boundaries)."
    );
    metrics::gauge!("cascade_streams_live").set(0.0);
    for kind in ["publisher", "viewer"] {
        metrics::counter!("cascade_sessions_started_total", "kind" => kind).absolute(0);
    }
}

fn describe_transcoder() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "cascade_transcoders",
        "Transcoders (one child process each) running on this node."
    );
    describe_counter!(
        "cascade_transcoder_restarts_total",
        "Transcoder processes started again after one ended (crash, kill, bad output)."
    );
    describe_counter!(
        "cascade_transcoder_frames_out_total",
        "Rendition frames published, per track name."
    );
    describe_histogram!(
        "cascade_transcoder_latency_seconds",
        metrics::Unit::Seconds,
        "From a source video frame handed to the transcoder to its rendition frame back, per track name."
    );
}

fn describe_hls() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "cascade_hls_playlist_age_seconds",
        metrics::Unit::Seconds,
        "Now minus the arrival of the newest LL-HLS part's first frame, per stream packaged here (0 once no longer packaged)."
    );
    describe_histogram!(
        "cascade_hls_part_listing_delay_seconds",
        metrics::Unit::Seconds,
        "From the arrival of a part's last frame at the packager to the part being listed (it closes when the next frame comes)."
    );
    describe_counter!(
        "cascade_hls_edge_requests_total",
        "HLS requests this node answered as an edge, by result: hit (cache), collapsed (waited on another request's fetch), fetched."
    );
    describe_counter!(
        "cascade_hls_edge_upstream_fetches_total",
        "HLS fetches this edge sent to packagers over QUIC (one per object, however many players asked)."
    );
    describe_counter!(
        "cascade_hls_edge_upstream_failures_total",
        "HLS fetches from a packager that failed (silent connection, no answer); the next packager is tried."
    );
    describe_counter!(
        "cascade_hls_upstream_requests_total",
        "HLS fetches other nodes' edges sent to this packager, by status."
    );
    describe_gauge!(
        "cascade_recordings_active",
        "Recordings being written on this node."
    );
    describe_counter!(
        "cascade_recording_write_errors_total",
        "Recorded segments that could not be written (disk full, permissions)."
    );
}

fn describe_cluster() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "cascade_raft_term",
        "Current Raft term as this node sees it."
    );
    describe_gauge!(
        "cascade_raft_is_leader",
        "1 on the Raft leader, 0 elsewhere."
    );
    describe_gauge!(
        "cascade_raft_last_applied",
        "Index of the last Raft entry applied here."
    );
    describe_counter!(
        "cascade_raft_leader_changes_total",
        "Changes of Raft leader seen by this node."
    );
    describe_counter!(
        "cascade_raft_voter_changes_total",
        "Voter set changes made by this node as leader."
    );
    describe_histogram!(
        "cascade_raft_commit_seconds",
        "Time from proposing a cluster command to its commit (forwarding to the leader included)."
    );
    describe_gauge!(
        "cascade_cluster_nodes",
        "Nodes in the replicated cluster state."
    );
    describe_gauge!(
        "cascade_cluster_nodes_healthy",
        "Nodes this node has heard a load report from within 3 s (itself included)."
    );
    describe_counter!(
        "cascade_access_refusals_total",
        "Publishers and viewers refused for their token, by action, reason (missing_token, wrong_token, expired, bad_signature, wrong_stream, ...) and door (whip, whep, hls, rtmp, srt, ...)."
    );
    describe_gauge!(
        "cascade_webhook_backlog",
        "Webhook events waiting for each receiver (its position among --webhook-url)."
    );
    describe_counter!(
        "cascade_webhook_deliveries_total",
        "Webhook delivery attempts, by receiver and result (delivered, failed)."
    );
    describe_counter!(
        "cascade_webhook_dropped_total",
        "Webhook events dropped, by reason (outbox_full, write_queue_full, outbox_error)."
    );
    describe_gauge!(
        "cascade_stream_ingest_stalled_seconds",
        "Seconds since a stream's publisher last delivered a frame, on its origin (0 while it flows)."
    );
    describe_counter!(
        "cascade_history_records_total",
        "Records written to the node's history, by table (streams, sessions, recordings)."
    );
    describe_histogram!(
        "cascade_viewer_join_seconds",
        "WebRTC viewers' join time: from the offer to the first keyframe sent (quantiles)."
    );
    describe_counter!(
        "cascade_viewer_freezes_total",
        "WebRTC viewers' keyframe requests after their first 2 s: pictures they lost."
    );
    describe_gauge!(
        "cascade_history_mongodb_queued",
        "History records waiting on disk for MongoDB (0 without --mongodb-uri)."
    );
    describe_counter!(
        "cascade_history_mongodb_written_total",
        "History records MongoDB acknowledged."
    );
    describe_counter!(
        "cascade_history_mongodb_dropped_total",
        "History records dropped before reaching MongoDB (the queue was full, or the record cannot be a document)."
    );
    describe_counter!(
        "cascade_history_dropped_total",
        "History records not written (queue full or store error), by table."
    );
    describe_counter!(
        "cascade_on_publish_total",
        "Publish callback decisions (admitted, denied, refused_fail_closed, admitted_fail_open)."
    );
    describe_counter!(
        "cascade_cluster_refusals_total",
        "Refused node-to-node attempts, by reason (tls: no or foreign certificate; token: wrong join token; malformed_rpc)."
    );
    describe_gauge!(
        "cascade_node_cpu_percent",
        "This node's CPU use, percent of the machine."
    );
    describe_gauge!(
        "cascade_cluster_node_cpu_percent",
        "Each node's last reported CPU use, per node."
    );
    describe_gauge!(
        "cascade_cluster_node_viewers",
        "Each node's last reported viewers, per node."
    );
    describe_gauge!(
        "cascade_relay_connections",
        "Open relay (QUIC) connections to other nodes."
    );
    describe_gauge!(
        "cascade_relay_subscriptions",
        "Relay subscriptions, by side (served: other nodes pull from us; pulled: we pull)."
    );
    describe_counter!(
        "cascade_relay_bytes_total",
        "Relay group-stream bytes, by direction (in, out)."
    );
    describe_counter!(
        "cascade_relay_group_drops_total",
        "Relay groups given up, by cause (late: the subscriber fell behind; superseded)."
    );
    describe_counter!(
        "cascade_relay_subscribe_refusals_total",
        "Relay subscriptions this node refused, by reason."
    );
    describe_counter!(
        "cascade_relay_pull_interruptions_total",
        "Relay pulls that lost their upstream and looked for the origin again."
    );
    describe_counter!(
        "cascade_http_redirects_total",
        "WHIP/WHEP requests answered 307 to another node, by endpoint."
    );
}
