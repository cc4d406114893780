//! `GET /`: the page to publish (camera, microphone, screen) and watch, shipped in the binary;
//! `GET /vendor/hls.min.js` and `/vendor/hls.js-LICENSE`: hls.js, the page's LL-HLS player
//! when WebRTC cannot connect, as the install step fetched it from npm (`.deps/hls.js`, or
//! `CASCADE_HLS_JS_DIR`); `GET /healthz`: liveness for probes; `GET /readyz`: 200 once this
//! node is a member of a cluster with a Raft leader, 503 with the reason before.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/vendor/hls.min.js",
            get(|| vendor("hls.min.js", "text/javascript")),
        )
        .route(
            "/vendor/hls.js-LICENSE",
            get(|| vendor("LICENSE", "text/plain; charset=utf-8")),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
}

/// Where the install step put hls.js: `CASCADE_HLS_JS_DIR`, else the repository's `.deps`.
fn hls_js_dir() -> std::path::PathBuf {
    std::env::var_os("CASCADE_HLS_JS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/hls.js"))
}

async fn vendor(file: &'static str, content_type: &'static str) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let path = hls_js_dir().join(file);
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!(
                "hls.js is not installed ({}: {e}): run scripts/install-deps.sh run\n",
                path.display()
            ),
        )
            .into_response(),
    }
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
