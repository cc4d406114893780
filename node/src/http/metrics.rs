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
    metrics::gauge!("cascade_streams_live").set(0.0);
    for kind in ["publisher", "viewer"] {
        metrics::counter!("cascade_sessions_started_total", "kind" => kind).absolute(0);
    }
}
