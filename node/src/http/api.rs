//! The REST API as JSON: `GET /api/v1/streams`, `GET /api/v1/streams/{stream}` (public: no
//! session ids, no client addresses) and `GET /api/v1/streams/{stream}/sessions` (admin: every
//! session with its id and address) and `GET /api/v1/sessions/ended` (admin: the last 256
//! session ends on this node with their reasons), and the restreams of a stream (admin:
//! `GET`/`POST /api/v1/streams/{stream}/restreams`, `DELETE .../restreams/{id}`), and pulled
//! streams (admin: `POST /api/v1/streams {"id", "source": "rtsp://..."}`, `DELETE
//! /api/v1/streams/{stream}`; every node lists every pull with its state).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cascade_protocol::StreamId;
use cascade_protocol::pull::{PullSpec, PullState, PullTransport, RtspSource, redact};
use cascade_roles::origin::restream::RestreamInfo;
use cascade_roles::origin::{EndedSession, SessionInfo, StreamInfo};

use super::{ApiError, AppState};
use crate::cluster::format_id;
use crate::cluster::state::Outcome;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/streams", get(list).post(add_pull))
        .route("/api/v1/streams/{stream}", get(one).delete(remove_pull))
        .route("/api/v1/streams/{stream}/sessions", get(sessions))
        .route("/api/v1/sessions/ended", get(ended_sessions))
        .route("/api/v1/webhooks", get(webhooks))
        .route("/api/v1/history/{table}", get(history))
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
    /// Streams on this node.
    streams: Vec<StreamInfo>,
    /// Every pulled stream of the cluster, wherever it is pulled.
    pulls: Vec<PullView>,
}

/// A pulled stream as the API shows it: the source without its password.
#[derive(serde::Serialize)]
struct PullView {
    id: String,
    protocol: &'static str,
    source: String,
    transport: PullTransport,
    on_demand: bool,
    /// The node that pulls it, when one is placed.
    node: Option<String>,
    /// `connecting`, `live`, `reconnecting`; `null` until its node first reports.
    state: Option<PullState>,
    last_error: Option<String>,
    failures: u32,
}

fn pull_views(state: &AppState, only: Option<&str>) -> Vec<PullView> {
    let cluster = state.cluster.state();
    let statuses = state.cluster.pull_statuses();
    cluster
        .pulls
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
        .map(|(id, spec)| {
            let status = statuses.get(id);
            PullView {
                id: id.clone(),
                protocol: "rtsp",
                source: redact(&spec.source),
                transport: spec.transport,
                on_demand: spec.on_demand,
                node: cluster.placements.get(id).map(|n| format_id(*n)),
                state: status.map(|s| s.state),
                last_error: status.and_then(|s| s.last_error.clone()),
                failures: status.map_or(0, |s| s.failures),
            }
        })
        .collect()
}

async fn list(State(state): State<AppState>) -> Json<StreamList> {
    Json(StreamList {
        streams: state.registry.list().await,
        pulls: pull_views(&state, None),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPull {
    id: String,
    source: String,
    #[serde(default)]
    transport: PullTransport,
    #[serde(default)]
    on_demand: bool,
}

/// `POST /api/v1/streams {"id": "cam1", "source": "rtsp://user:pass@camera/stream",
/// "transport": "tcp"|"udp", "on_demand": false}` (admin): the cluster pulls the camera as stream `cam1`; `201`
/// with the pull as listed.
async fn add_pull(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewPull>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    let bad = |reason: &'static str, message: String| {
        ApiError::new("api", StatusCode::BAD_REQUEST, reason, message)
    };
    let Json(request) = body.map_err(|e| {
        bad(
            "bad_json",
            format!(
                "send {{\"id\": \"cam1\", \"source\": \"rtsp://user:pass@camera/stream\", \"transport\": \"tcp\"}}: {e}"
            ),
        )
    })?;
    let stream = stream_id(&request.id)?;
    RtspSource::parse(&request.source).map_err(|e| bad("invalid_source", e.to_string()))?;
    let spec = PullSpec {
        source: request.source,
        transport: request.transport,
        on_demand: request.on_demand,
    };
    let conflict =
        |message: String| ApiError::new("api", StatusCode::CONFLICT, "stream_exists", message);
    match state.cluster.add_pull(&stream, spec).await {
        Ok(Outcome::Done) => {}
        Ok(Outcome::PulledAs(existing)) => {
            return Err(conflict(format!(
                "stream {stream} is already pulled from {}; delete it first to change its source",
                redact(&existing.source)
            )));
        }
        Ok(Outcome::PlacedElsewhere { origin }) => {
            return Err(conflict(format!(
                "stream {stream} is published live on node {}; use another stream id",
                format_id(origin)
            )));
        }
        Ok(other) => {
            return Err(ApiError::new(
                "api",
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster did not take the pull: {other:?}"),
            ));
        }
        Err(e) => {
            return Err(ApiError::new(
                "api",
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster cannot take the pull now: {e}"),
            ));
        }
    }
    tracing::info!(%stream, "pulled stream added");
    let view = pull_views(&state, Some(stream.as_str())).pop();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `DELETE /api/v1/streams/{stream}` (admin): the cluster stops pulling it.
async fn remove_pull(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    let stream = stream_id(&stream)?;
    match state.cluster.remove_pull(&stream).await {
        Ok(Outcome::Done) => {
            tracing::info!(%stream, "pulled stream removed");
            Ok(StatusCode::OK.into_response())
        }
        Ok(_) => Err(ApiError::new(
            "api",
            StatusCode::NOT_FOUND,
            "not_pulled",
            format!(
                "stream {stream} is not a pulled stream (published streams end when their publisher leaves)"
            ),
        )),
        Err(e) => Err(ApiError::new(
            "api",
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("the cluster cannot remove the pull now: {e}"),
        )),
    }
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

/// One stream: what this node has of it, and its pull when it is pulled.
async fn one(
    State(state): State<AppState>,
    Path(stream): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stream = stream_id(&stream)?;
    let pull = pull_views(&state, Some(stream.as_str())).pop();
    let local = state.registry.info(&stream).await;
    let mut json = match (local, &pull) {
        (Ok(info), _) => serde_json::to_value(info).unwrap_or_default(),
        // Pulled elsewhere, or not yet: the pull says where it is.
        (Err(_), Some(_)) => serde_json::json!({ "id": stream.as_str() }),
        (Err(e), None) => return Err(ApiError::from_role("api", e)),
    };
    if let (Some(pull), Some(object)) = (pull, json.as_object_mut()) {
        object.insert(
            "pull".into(),
            serde_json::to_value(pull).unwrap_or_default(),
        );
    }
    let feeding = state.rendition_feeds.feeding(&stream);
    if let (false, Some(object)) = (feeding.is_empty(), json.as_object_mut()) {
        let nodes = state.cluster.state().nodes.clone();
        let by_node: std::collections::BTreeMap<String, String> = feeding
            .into_iter()
            .map(|(track, addr)| {
                let node = nodes
                    .values()
                    .find(|n| n.quic_addr == addr)
                    .map_or_else(|| addr.to_string(), |n| crate::cluster::format_id(n.id));
                (track, node)
            })
            .collect();
        object.insert(
            "renditions_from".into(),
            serde_json::to_value(by_node).unwrap_or_default(),
        );
    }
    let transcoder = state.transcoders.as_ref().and_then(|t| t.info(&stream));
    if let (Some(transcoder), Some(object)) = (transcoder, json.as_object_mut()) {
        object.insert(
            "transcoder".into(),
            serde_json::to_value(transcoder).unwrap_or_default(),
        );
    }
    Ok(Json(json))
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
#[derive(serde::Serialize)]
struct WebhookList {
    receivers: Vec<crate::webhooks::ReceiverStatus>,
}

/// Each webhook receiver's delivery state (admin: receiver URLs may carry credentials).
async fn webhooks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WebhookList>, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    Ok(Json(WebhookList {
        receivers: state.webhooks.status(),
    }))
}

/// What ended on this node, newest first (admin: sessions carry client addresses): stream
/// runs (of streams it was the origin of), session summaries or finished recordings.
async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(table): Path<String>,
    axum::extract::Query(query): axum::extract::Query<crate::history::Query>,
) -> Result<Json<crate::history::Page>, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    let Some(table) = crate::history::Table::from_label(&table) else {
        return Err(ApiError::new(
            "api",
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no history of {table:?}: streams, sessions or recordings"),
        ));
    };
    state.history.query(table, &query).map(Json).map_err(|e| {
        ApiError::new(
            "api",
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            format!("the history store cannot be read: {e}"),
        )
    })
}

async fn ended_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<EndedList>, ApiError> {
    super::require_admin(&state, &headers, "api")?;
    Ok(Json(EndedList {
        sessions: state.registry.ended_sessions(),
    }))
}
