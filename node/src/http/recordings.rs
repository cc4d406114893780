//! Recordings over HTTP (`cascade_roles::packager::recording`):
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/streams/{stream}/recording` | admin: start recording; `201` with the recording |
//! | `DELETE /api/v1/streams/{stream}/recording` | admin: stop it; `200` once it is closed |
//! | `GET /api/v1/recordings`, `GET /api/v1/recordings/{id}` | admin: this node's recordings |
//! | `GET /recordings/{id}/index.m3u8`, `/recordings/{id}/{rendition}/{file}` | the recording as HLS (VOD once stopped), with the stream's play token |
//!
//! Recordings are made on the stream's packager: a start or stop that reaches another node
//! is answered `307` to it; each node lists the recordings it holds.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cascade_protocol::StreamId;

use super::{ApiError, AppState};
use crate::cluster::PackagerRoute;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/streams/{stream}/recording",
            post(start).delete(stop),
        )
        .route("/api/v1/recordings", get(list))
        .route("/api/v1/recordings/{id}", get(one))
        .route("/recordings/{id}/index.m3u8", get(multivariant))
        .route("/recordings/{id}/{rendition}/{file}", get(rendition_file))
}

fn refuse(status: StatusCode, reason: &'static str, message: String) -> ApiError {
    ApiError::new("recordings", status, reason, message)
}

/// The stream of a start or stop, when it is packaged here; else the answer (a refusal, or a
/// `307` to its packager).
fn packaged_here(
    state: &AppState,
    headers: &HeaderMap,
    raw: &str,
) -> Result<StreamId, Box<Response>> {
    super::require_admin(state, headers, "recordings").map_err(|e| Box::new(e.into_response()))?;
    let stream = StreamId::parse(raw).map_err(|e| {
        Box::new(
            refuse(StatusCode::BAD_REQUEST, "invalid_stream_id", e.to_string()).into_response(),
        )
    })?;
    match state.cluster.packager_route(&stream) {
        PackagerRoute::Here => Ok(stream),
        PackagerRoute::NotLive => Err(Box::new(
            refuse(
                StatusCode::NOT_FOUND,
                "stream_not_found",
                format!("stream {stream} is not live"),
            )
            .into_response(),
        )),
        PackagerRoute::Upstream(_) => {
            let Some(addr) = state.cluster.packager_http(&stream) else {
                return Err(Box::new(
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_packager",
                        format!("stream {stream} has no packager right now"),
                    )
                    .into_response(),
                ));
            };
            let location = format!(
                "{}://{addr}/api/v1/streams/{stream}/recording",
                state.scheme
            );
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Err(Box::new(response))
        }
    }
}

async fn start(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    control(&state, &headers, &stream, true).await
}

async fn stop(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    control(&state, &headers, &stream, false).await
}

/// Starts (`201`) or stops (`200`, once closed) the recording of `raw`, packaged here.
async fn control(
    state: &AppState,
    headers: &HeaderMap,
    raw: &str,
    start: bool,
) -> Result<Response, ApiError> {
    let stream = match packaged_here(state, headers, raw) {
        Ok(stream) => stream,
        Err(answer) => return Ok(*answer),
    };
    let (status, outcome) = if start {
        (
            StatusCode::CREATED,
            state.recordings.start(&stream, "api").await,
        )
    } else {
        (StatusCode::OK, state.recordings.stop(&stream).await)
    };
    let info = outcome.map_err(|e| ApiError::from_role("recordings", e))?;
    Ok((status, Json(info)).into_response())
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    super::require_admin(&state, &headers, "recordings")?;
    Ok(Json(serde_json::json!({ "recordings": state.recordings.list() })).into_response())
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::require_admin(&state, &headers, "recordings")?;
    state
        .recordings
        .list()
        .into_iter()
        .find(|r| r.header.id == id)
        .map(|r| Json(r).into_response())
        .ok_or_else(|| not_found(&id))
}

fn not_found(id: &str) -> ApiError {
    refuse(
        StatusCode::NOT_FOUND,
        "recording_not_found",
        format!("no recording {id} on this node"),
    )
}

#[derive(serde::Deserialize, Default)]
struct TokenQuery {
    token: Option<String>,
}

async fn multivariant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &id, None, "index.m3u8", &query, &headers).await
}

async fn rendition_file(
    State(state): State<AppState>,
    Path((id, rendition, file)): Path<(String, String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &id, Some(&rendition), &file, &query, &headers).await
}

async fn serve(
    state: &AppState,
    id: &str,
    rendition: Option<&str>,
    file: &str,
    query: &TokenQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let manifest = state.recordings.manifest(id).ok_or_else(|| not_found(id))?;
    let stream = StreamId::parse(&manifest.header.stream).map_err(|_| not_found(id))?;
    super::require_play(
        state,
        &stream,
        headers,
        query.token.as_deref(),
        "recordings",
    )?;
    let path = state
        .recordings
        .file(id, rendition, file)
        .ok_or_else(|| not_found(id))?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{file} is not part of recording {id}"),
        )
    })?;
    let playlist = file.ends_with(".m3u8");
    let finished =
        manifest.header.state != cascade_roles::packager::recording::RecordingState::Recording;
    let (content_type, cache) = match (playlist, finished) {
        (true, false) => ("application/vnd.apple.mpegurl", "max-age=1"),
        (true, true) => ("application/vnd.apple.mpegurl", "max-age=3600"),
        (false, _) if file.ends_with(".mp4") => ("video/mp4", "max-age=31536000, immutable"),
        (false, _) => ("video/iso.segment", "max-age=31536000, immutable"),
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}
