//! The REST API as JSON: `GET /api/v1/streams`, `GET /api/v1/streams/{stream}` (public: no
//! session ids, no client addresses) and `GET /api/v1/streams/{stream}/sessions` (admin: every
//! session with its id and address) and `GET /api/v1/sessions/ended` (admin: the last 256
//! session ends on this node with their reasons), and the restreams of a stream (admin:
//! `GET`/`POST /api/v1/streams/{stream}/restreams`, `DELETE .../restreams/{id}`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cascade_protocol::StreamId;
use cascade_roles::origin::restream::RestreamInfo;
use cascade_roles::origin::{EndedSession, SessionInfo, StreamInfo};

use super::{ApiError, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams", get(list))
        .route("/api/v1/streams/{stream}", get(one))
        .route("/api/v1/streams/{stream}/sessions", get(sessions))
        .route("/api/v1/sessions/ended", get(ended_sessions))
        .route(
            "/api/v1/streams/{stream}/restreams",
            get(restreams).post(add_restream),
        )
        .route(
            "/api/v1/streams/{stream}/restreams/{id}",
            axum::routing::delete(remove_restream),
        )
}

#[derive(serde::Deserialize)]
struct NewRestream {
    url: String,
}

#[derive(serde::Serialize)]
struct RestreamList {
    restreams: Vec<RestreamInfo>,
}

/// What every restream request checks first: the admin token and the stream id. The `Err`
/// is the answer: a refusal, or the `307` to the stream's origin, where restreams run.
fn restream_request(
    state: &AppState,
    headers: &HeaderMap,
    raw_stream: &str,
    suffix: &str,
) -> Result<StreamId, Box<Response>> {
    let refused = |e: ApiError| Box::new(e.into_response());
    super::require_admin(state, headers, "api").map_err(refused)?;
    let stream = stream_id(raw_stream).map_err(refused)?;
    match to_origin(
        state,
        &stream,
        &format!("/api/v1/streams/{stream}/restreams{suffix}"),
    ) {
        Some(redirect) => Err(Box::new(redirect)),
        None => Ok(stream),
    }
}

/// Restreams run on the stream's origin: a request that reached another node is sent there.
fn to_origin(state: &AppState, stream: &StreamId, path: &str) -> Option<Response> {
    let origin = state.cluster.remote_origin(stream)?;
    let addr = state.cluster.state().nodes.get(&origin)?.http_addr;
    let location = format!("{}://{addr}{path}", state.scheme);
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Some(response)
}

/// `POST /api/v1/streams/{stream}/restreams {"url": "rtmp://..."}` (admin): push the stream
/// out; `201` with the restream's status.
async fn add_restream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NewRestream>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let stream = match restream_request(&state, &headers, &stream, "") {
        Ok(stream) => stream,
        Err(answer) => return Ok(*answer),
    };
    let Json(request) = body.map_err(|e| {
        ApiError::new(
            "api",
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("send {{\"url\": \"rtmp://host/app/key\"}}: {e}"),
        )
    })?;
    let info = state
        .registry
        .add_restream(&stream, &request.url)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `GET /api/v1/streams/{stream}/restreams` (admin): each target's state, bytes and last error.
async fn restreams(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stream = match restream_request(&state, &headers, &stream, "") {
        Ok(stream) => stream,
        Err(answer) => return Ok(*answer),
    };
    let restreams = state
        .registry
        .restreams(&stream)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    Ok(Json(RestreamList { restreams }).into_response())
}

/// `DELETE /api/v1/streams/{stream}/restreams/{id}` (admin): stop pushing to that target.
async fn remove_restream(
    State(state): State<AppState>,
    Path((stream, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let stream = match restream_request(&state, &headers, &stream, &format!("/{id}")) {
        Ok(stream) => stream,
        Err(answer) => return Ok(*answer),
    };
    let not_found = || {
        ApiError::new(
            "api",
            StatusCode::NOT_FOUND,
            "unknown_restream",
            format!("stream {stream} has no restream {id}"),
        )
    };
    let id: u64 = id.parse().map_err(|_| not_found())?;
    let removed = state
        .registry
        .remove_restream(&stream, id)
        .await
        .map_err(|e| ApiError::from_role("api", e))?;
    if !removed {
        return Err(not_found());
    }
    Ok(StatusCode::OK.into_response())
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
