//! The REST API as JSON: `GET /api/v1/streams`, `GET /api/v1/streams/{stream}` (public: no
//! session ids, no client addresses) and `GET /api/v1/streams/{stream}/sessions` (admin: every
//! session with its id and address) and `GET /api/v1/sessions/ended` (admin: the last 256
//! session ends on this node with their reasons).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use cascade_protocol::StreamId;
use cascade_roles::origin::{EndedSession, SessionInfo, StreamInfo};

use super::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams", get(list))
        .route("/api/v1/streams/{stream}", get(one))
        .route("/api/v1/streams/{stream}/sessions", get(sessions))
        .route("/api/v1/sessions/ended", get(ended_sessions))
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
    headers: HeaderMap,
) -> Result<Json<SessionList>, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    let sessions = state
        .registry
        .sessions(&stream_id(&stream)?)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok(Json(SessionList { sessions }))
}

#[derive(serde::Serialize)]
struct EndedList {
    sessions: Vec<EndedSession>,
}

/// The most recent session ends on this node and why (admin): what an operator reads when a
/// publisher says "it connected and then nothing".
async fn ended_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<EndedList>, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    Ok(Json(EndedList {
        sessions: state.registry.ended_sessions(),
    }))
}
