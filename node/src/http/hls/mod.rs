//! `GET /hls/{stream}/…`: LL-HLS on the stream's origin (`cascade_roles::packager`).
//!
//! | path | what |
//! |---|---|
//! | `/hls/{stream}/index.m3u8` | the multivariant playlist (every H.264 rendition) |
//! | `/hls/{stream}/{rendition}/index.m3u8` | a media playlist; `_HLS_msn`, `_HLS_part` block until it has them (`400` too far ahead), `_HLS_skip=YES` asks for a delta update |
//! | `/hls/{stream}/{rendition}/init-{tag}.mp4` | the CMAF initialisation segment, named by its content (immutable); `init.mp4` is the current one |
//! | `/hls/{stream}/{rendition}/seg{msn}.m4s`, `part{msn}.{i}.m4s` | segments and parts |
//!
//! Every node answers these. The stream's packager (the cluster assigns one, and maybe a
//! standby; see `Cluster::packager_route`) serves what it packages; any other node is an
//! edge that fetches from the packager over QUIC and caches ([`edge`]), collapsing
//! identical requests into one fetch. Caching follows MediaPackage's rules: media playlists
//! `max-age=1`, the multivariant playlist `max-age=2`, parts and segments immutable, errors
//! `max-age=1`.
//!
//! | file | what |
//! |---|---|
//! | `edge.rs` | the edge cache, request collapsing, failover to the standby packager |
//! | `upstream.rs` | the packager's side of fetches from other nodes |

pub mod edge;
pub mod upstream;

use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cascade_protocol::StreamId;
use cascade_protocol::hls::playlist::{Reload, render_media, render_multivariant};

use super::{ApiError, AppState};
use crate::cluster::PackagerRoute;
use upstream::InternalFetch;

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

/// Where a request's answer comes from.
enum Source {
    /// This node packages the stream.
    Local(std::sync::Arc<cascade_roles::packager::StreamPackager>),
    /// The stream's packagers on other nodes (QUIC addresses, the active one first).
    Edge(Vec<std::net::SocketAddr>),
}

/// The stream, checked for a play token (unless another node's edge asks), and where its
/// HLS comes from; `Err` is the refusal to send.
async fn locate(
    state: &AppState,
    stream: &str,
    query: &HlsQuery,
    headers: &HeaderMap,
    internal: bool,
) -> Result<Source, Box<Response>> {
    let fail = |e: ApiError| Box::new(error_cached(e));
    let stream = StreamId::parse(stream).map_err(|e| {
        fail(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_stream_id",
            e.to_string(),
        ))
    })?;
    if !internal {
        super::require_play(state, &stream, headers, query.token.as_deref(), "hls")
            .map_err(|e| Box::new(e.into_response()))?;
    }
    let not_live = || {
        fail(refuse(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("stream {stream} is not live"),
        ))
    };
    let route = state.cluster.packager_route(&stream);
    if route != PackagerRoute::NotLive
        && let Some(standby) = state.cluster.standby_packager(&stream)
    {
        state.hls_edge.warm(stream.as_str(), standby);
    }
    match route {
        PackagerRoute::Here => match state.packagers.stream(&stream).await {
            Some(packager) => Ok(Source::Local(packager)),
            None => Err(not_live()),
        },
        // Another node's edge asked a node that does not package the stream (the
        // assignment moved meanwhile): never pass it on again.
        PackagerRoute::Upstream(_) if internal => Err(fail(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_packaged_here",
            format!("stream {stream} is not packaged on this node"),
        ))),
        PackagerRoute::Upstream(upstreams) => Ok(Source::Edge(upstreams)),
        PackagerRoute::NotLive => Err(not_live()),
    }
}

/// Answers from the edge cache (fetching from the packager once for everyone asking).
async fn from_edge(state: &AppState, key: &str, upstreams: &[std::net::SocketAddr]) -> Response {
    let (fetched, served) = state.hls_edge.get(key, upstreams).await;
    let mut response = (
        StatusCode::from_u16(fetched.head.status).unwrap_or(StatusCode::BAD_GATEWAY),
        fetched.body.clone(),
    )
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, &fetched.content_type),
        (header::CACHE_CONTROL, &fetched.cache_control),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
    headers.insert(
        "x-cache",
        HeaderValue::from_static(match served {
            edge::Served::Hit => "hit",
            edge::Served::Collapsed => "collapsed",
            edge::Served::Fetched => "miss",
        }),
    );
    response
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
    internal: Option<Extension<InternalFetch>>,
    headers: HeaderMap,
) -> Response {
    let packager = match locate(&state, &stream, &query, &headers, internal.is_some()).await {
        Ok(Source::Local(p)) => p,
        Ok(Source::Edge(upstreams)) => {
            let key = format!("/hls/{stream}/index.m3u8");
            return from_edge(&state, &key, &upstreams).await;
        }
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
        // Not a server error: the stream (a WHIP publisher that has sent no video yet, an
        // audio-only one) has nothing to package, as far as a player is concerned none yet.
        return error_cached(refuse(
            StatusCode::NOT_FOUND,
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
    internal: Option<Extension<InternalFetch>>,
    headers: HeaderMap,
) -> Response {
    let packager = match locate(&state, &stream, &query, &headers, internal.is_some()).await {
        Ok(Source::Local(p)) => p,
        Ok(Source::Edge(upstreams)) => {
            let path = format!("/hls/{stream}/{rendition}/{file}");
            let key = edge::cache_key(&path, query.msn, query.part, query.skip.as_deref());
            return from_edge(&state, &key, &upstreams).await;
        }
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
    if file == "alignment" && internal.is_some() {
        // A standby packager on another node asks where this one is (`edge::StandbyAligner`).
        return match rendition.alignment() {
            Some(a) => cached(
                format!("{} {}", a.msn, a.segment_start),
                "text/plain",
                "no-store",
            ),
            None => not_found(),
        };
    }
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
    let versioned_init = file.starts_with("init-") && file.ends_with(".mp4");
    let bytes: Option<Bytes> = if versioned_init {
        rendition.init_named(&file)
    } else if file == "init.mp4" {
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
        Some(bytes) if versioned_init => cached(bytes, "video/mp4", IMMUTABLE),
        Some(bytes) if file == "init.mp4" => cached(bytes, "video/mp4", "max-age=2"),
        Some(bytes) => cached(bytes, "video/iso.segment", IMMUTABLE),
        None => not_found(),
    }
}
