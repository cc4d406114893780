//! The REST API: `GET /api/v1/streams` and `GET /api/v1/streams/{stream}` as JSON.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cascade_protocol::StreamId;
use cascade_roles::origin::StreamInfo;

use super::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams", get(list))
        .route("/api/v1/streams/{stream}", get(one))
}

#[derive(serde::Serialize)]
struct StreamList {
    streams: Vec<StreamInfo>,
}

async fn list(State(state): State<AppState>) -> Json<StreamList> {
    Json(StreamList {
        streams: state.registry.list().await,
    })
}

async fn one(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamInfo>, ApiError> {
    let stream = StreamId::parse(&stream).map_err(|e| {
        ApiError::new(
            "api",
            StatusCode::BAD_REQUEST,
            "invalid_stream_id",
            e.to_string(),
        )
    })?;
    let info = state
        .registry
        .info(&stream)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok(Json(info))
}
