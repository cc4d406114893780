//! `GET /hls/{stream}/…`: LL-HLS on the stream's origin (`cascade_roles::packager`).
//!
//! | path | what |
//! |---|---|
//! | `/hls/{stream}/index.m3u8` | the multivariant playlist (every H.264 rendition) |
//! | `/hls/{stream}/{rendition}/index.m3u8` | a media playlist; `_HLS_msn`, `_HLS_part` block until it has them (`400` too far ahead), `_HLS_skip=YES` asks for a delta update |
//! | `/hls/{stream}/{rendition}/init.mp4` | the CMAF initialisation segment |
//! | `/hls/{stream}/{rendition}/seg{msn}.m4s`, `part{msn}.{i}.m4s` | segments and parts |
//!
//! A node that is not the stream's origin answers `307` to the origin (edges that fetch and
//! cache for their players come later). Caching follows MediaPackage's rules: media
//! playlists `max-age=1`, the multivariant playlist `max-age=2`, parts and segments
//! immutable, errors `max-age=1`.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cascade_protocol::StreamId;
use cascade_protocol::hls::playlist::{Reload, render_media, render_multivariant};

use super::{ApiError, AppState};
use crate::access::Action;

/// The longest a blocking playlist reload is held (three target durations is what the spec
/// has players wait).
const BLOCK_LIMIT: Duration = Duration::from_secs(6);
/// How long a first request waits for a stream's first segment (its packager just started).
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(8);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hls/{stream}/index.m3u8", get(multivariant))
        .route("/hls/{stream}/{rendition}/{file}", get(rendition_file))
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct HlsQuery {
    token: Option<String>,
    #[serde(rename = "_HLS_msn")]
    msn: Option<u64>,
    #[serde(rename = "_HLS_part")]
    part: Option<u64>,
    #[serde(rename = "_HLS_skip")]
    skip: Option<String>,
}

fn refuse(status: StatusCode, reason: &'static str, message: String) -> ApiError {
    ApiError::new("hls", status, reason, message)
}

/// The stream, checked for a play token; `Err` also carries a redirect to its origin.
fn stream_here(
    state: &AppState,
    stream: &str,
    query: &HlsQuery,
    headers: &HeaderMap,
    path: &str,
) -> Result<std::sync::Arc<cascade_roles::packager::StreamPackager>, Box<Response>> {
    let fail = |e: ApiError| Box::new(e.into_response());
    let stream = StreamId::parse(stream).map_err(|e| {
        fail(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_stream_id",
            e.to_string(),
        ))
    })?;
    let token = super::bearer(headers).or(query.token.as_deref());
    state
        .access
        .check(&stream, Action::Play, token)
        .map_err(|_| {
            fail(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this stream needs a play token: ?token=<token> or Authorization: Bearer <token>"
                    .into(),
            ))
        })?;
    if let Some(packager) = state.packagers.stream(&stream) {
        return Ok(packager);
    }
    if let Some(origin) = state.cluster.remote_origin(&stream)
        && let Some(node) = state.cluster.state().nodes.get(&origin)
    {
        let location = format!("{}://{}{path}", state.scheme, node.http_addr);
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return Err(Box::new(response));
    }
    Err(fail(refuse(
        StatusCode::NOT_FOUND,
        "stream_not_found",
        format!("stream {stream} is not live"),
    )))
}

fn cached(
    body: impl Into<axum::body::Body>,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn error_cached(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
    response
}

const PLAYLIST: &str = "application/vnd.apple.mpegurl";
const IMMUTABLE: &str = "max-age=31536000, immutable";

async fn multivariant(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<HlsQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/hls/{stream}/index.m3u8");
    let packager = match stream_here(&state, &stream, &query, &headers, &path) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    // A packager that just started has no segment yet: a player asking now waits for the
    // first (a player would otherwise see an empty list and give up).
    let deadline = tokio::time::Instant::now() + FIRST_SEGMENT_WAIT;
    loop {
        let renditions = packager.renditions();
        if !renditions.is_empty() {
            let mut ready = true;
            for rendition in &renditions {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                ready &= rendition.wait_first_segment(left).await;
            }
            if ready || tokio::time::Instant::now() >= deadline {
                break;
            }
        } else if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let playlist = packager.multivariant();
    if playlist.variants.is_empty() {
        return error_cached(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_renditions",
            format!("stream {stream} has no H.264 video to package yet"),
        ));
    }
    cached(render_multivariant(&playlist), PLAYLIST, "max-age=2")
}

async fn rendition_file(
    State(state): State<AppState>,
    Path((stream, rendition, file)): Path<(String, String, String)>,
    Query(query): Query<HlsQuery>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/hls/{stream}/{rendition}/{file}");
    let packager = match stream_here(&state, &stream, &query, &headers, &path) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    let Some(rendition) = packager.rendition(&rendition) else {
        return error_cached(refuse(
            StatusCode::NOT_FOUND,
            "rendition_not_found",
            format!("stream {stream} has no rendition {rendition}"),
        ));
    };
    let not_found = || {
        error_cached(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{file} is not (or no longer) in the playlist"),
        ))
    };
    if file == "index.m3u8" {
        let playlist = match query.msn {
            Some(msn) => match rendition.wait_for(msn, query.part, BLOCK_LIMIT).await {
                (Reload::TooFarAhead, _) => {
                    return error_cached(refuse(
                        StatusCode::BAD_REQUEST,
                        "too_far_ahead",
                        format!(
                            "_HLS_msn={msn} _HLS_part={:?} is too far ahead of the playlist",
                            query.part
                        ),
                    ));
                }
                (Reload::Wait, _) => {
                    return error_cached(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_yet",
                        format!("segment {msn} did not come within {BLOCK_LIMIT:?}"),
                    ));
                }
                (Reload::Ready, playlist) => playlist,
            },
            None => {
                if !rendition.wait_first_segment(FIRST_SEGMENT_WAIT).await {
                    return not_found();
                }
                rendition.playlist()
            }
        };
        let mut playlist = playlist;
        playlist.rendition_reports = packager.rendition_reports(&rendition.name);
        let skip = query
            .skip
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("YES") || s.eq_ignore_ascii_case("v2"));
        return cached(render_media(&playlist, skip), PLAYLIST, "max-age=1");
    }
    let bytes: Option<Bytes> = if file == "init.mp4" {
        rendition.init()
    } else if let Some(msn) = file
        .strip_prefix("seg")
        .and_then(|f| f.strip_suffix(".m4s"))
        .and_then(|n| n.parse::<u64>().ok())
    {
        rendition.segment(msn)
    } else if let Some((msn, index)) = file
        .strip_prefix("part")
        .and_then(|f| f.strip_suffix(".m4s"))
        .and_then(|n| n.split_once('.'))
        .and_then(|(m, i)| Some((m.parse::<u64>().ok()?, i.parse::<usize>().ok()?)))
    {
        // A preload hint names the part before it exists: hold the request until it does.
        if rendition.part(msn, index).is_none() {
            let _ = rendition
                .wait_for(msn, Some(index as u64), BLOCK_LIMIT)
                .await;
        }
        rendition.part(msn, index)
    } else {
        None
    };
    match bytes {
        // The init segment changes with a new publisher (its SPS): not immutable.
        Some(bytes) if file == "init.mp4" => cached(bytes, "video/mp4", "max-age=2"),
        Some(bytes) => cached(bytes, "video/iso.segment", IMMUTABLE),
        None => not_found(),
    }
}
