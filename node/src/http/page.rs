//! `GET /`: the page to publish (camera, microphone, screen) and watch, shipped in the binary;
//! `GET /healthz`: liveness for probes; `GET /readyz`: 200 once this node is a member of
//! a cluster with a Raft leader, 503 with the reason before.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
}

async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let listed = state
        .cluster
        .state()
        .nodes
        .contains_key(&state.cluster.id());
    let leader = state.cluster.raft_metrics().current_leader;
    match (listed, leader) {
        (true, Some(_)) => (StatusCode::OK, "ready\n".into()),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this node is not in the cluster state yet\n".into(),
        ),
        (true, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no Raft leader\n".into(),
        ),
    }
}
