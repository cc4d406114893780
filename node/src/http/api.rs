//! The REST API as JSON: `GET /api/v1/streams`, `GET /api/v1/streams/{stream}` and
//! `GET /api/v1/streams/{stream}/sessions`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cascade_protocol::StreamId;
use cascade_roles::origin::{SessionInfo, StreamInfo};

use super::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams", get(list))
        .route("/api/v1/streams/{stream}", get(one))
        .route("/api/v1/streams/{stream}/sessions", get(sessions))
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

fn stream_id(raw: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(raw).map_err(|e| {
        ApiError::new(
            "api",
            StatusCode::BAD_REQUEST,
            "invalid_stream_id",
            e.to_string(),
        )
    })
}

async fn one(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<StreamInfo>, ApiError> {
    let info = state
        .registry
        .info(&stream_id(&stream)?)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok(Json(info))
}

#[derive(serde::Serialize)]
struct SessionList {
    sessions: Vec<SessionInfo>,
}

async fn sessions(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<SessionList>, ApiError> {
    let sessions = state
        .registry
        .sessions(&stream_id(&stream)?)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok(Json(SessionList { sessions }))
}
