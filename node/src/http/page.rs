//! `GET /`: the page to publish (camera, microphone, screen) and watch, shipped in the binary;
//! `GET /healthz`: liveness for probes.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { "ok\n" }))
}
