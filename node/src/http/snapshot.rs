//! `GET /api/v1/streams/{stream}/snapshot.jpg`: the stream's newest picture as a JPEG.
//!
//! The current group (its keyframe and every frame since) is decoded by GStreamer in a child
//! process (`gst-launch-1.0`), never in the node: a decoder that crashes on a bad frame ends
//! that process, not the node. One decode runs at a time per node (a cached picture never
//! waits for it), and each stream's picture is kept for a second, so a dashboard polling a wall of streams costs a bounded amount of CPU.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cascade_protocol::{Codec, MediaKind, StreamId};
use tokio::io::AsyncWriteExt;

use super::{ApiError, AppState};

/// A picture this young is served again instead of decoding a new one.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// A decode that takes longer is abandoned (its process killed).
const DECODE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/streams/{stream}/snapshot.jpg", get(snapshot))
}

#[derive(serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// The newest picture of each stream (held only to look up or store, never across a decode).
type Pictures = std::sync::Mutex<HashMap<StreamId, (Instant, Bytes)>>;

fn pictures() -> &'static Pictures {
    static PICTURES: std::sync::OnceLock<Pictures> = std::sync::OnceLock::new();
    PICTURES.get_or_init(Pictures::default)
}

/// One decode at a time on this node.
fn decoding() -> &'static tokio::sync::Mutex<()> {
    static DECODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &DECODING
}

/// `stream`'s picture if it is younger than [`FRESH_FOR`].
fn fresh_picture(stream: &StreamId) -> Option<Bytes> {
    let pictures = pictures().lock().unwrap_or_else(|p| p.into_inner());
    pictures
        .get(stream)
        .filter(|(at, _)| at.elapsed() < FRESH_FOR)
        .map(|(_, jpeg)| jpeg.clone())
}

async fn snapshot(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let refuse =
        |status, reason, message: String| ApiError::new("snapshot", status, reason, message);
    let stream = StreamId::parse(&stream)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid_stream_id", e.to_string()))?;
    super::require_play(
        &state,
        &stream,
        &headers,
        query.token.as_deref(),
        "snapshot",
    )?;
    let Some(broadcast) = state.registry.broadcast(&stream) else {
        // The stream's media is on its origin: the picture is made there.
        if let Some(origin) = state.cluster.remote_origin(&stream)
            && let Some(node) = state.cluster.state().nodes.get(&origin)
        {
            let location = format!(
                "{}://{}/api/v1/streams/{stream}/snapshot.jpg",
                state.scheme, node.http_addr
            );
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return Ok(response);
        }
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "stream_not_found",
            format!("stream {stream} is not live"),
        ));
    };
    let video = broadcast.source(MediaKind::Video);
    let codec = video.info().map(|i| i.codec);
    let decoder = match codec {
        Some(Codec::H264) => "h264parse ! avdec_h264",
        Some(Codec::H265) => "h265parse ! avdec_h265",
        Some(other) => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_codec",
                format!("snapshots of {} video are not supported yet", other.name()),
            ));
        }
        None => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "no_video",
                format!("stream {stream} has no video yet"),
            ));
        }
    };

    if let Some(jpeg) = fresh_picture(&stream) {
        return Ok(jpeg_response(jpeg));
    }
    let _decoding = decoding().lock().await;
    // Requests that waited for another decode of this stream take its picture.
    if let Some(jpeg) = fresh_picture(&stream) {
        return Ok(jpeg_response(jpeg));
    }
    let group = video.current_group();
    if group.is_empty() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "no_picture",
            format!("stream {stream} has sent no keyframe yet"),
        ));
    }
    let mut annex_b = Vec::with_capacity(group.iter().map(|f| f.payload.len()).sum());
    for frame in &group {
        annex_b.extend_from_slice(&frame.payload);
    }
    let jpeg = decode_newest(decoder, annex_b).await.map_err(|why| {
        tracing::warn!(%stream, error = %why, "snapshot failed");
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "decode_failed",
            format!("no picture could be made: {why}"),
        )
    })?;
    metrics::counter!("cascade_snapshots_total").increment(1);
    let mut pictures = pictures().lock().unwrap_or_else(|p| p.into_inner());
    pictures.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
    pictures.insert(stream, (Instant::now(), jpeg.clone()));
    Ok(jpeg_response(jpeg))
}

fn jpeg_response(jpeg: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=1"),
        ],
        jpeg,
    )
        .into_response()
}

/// Decodes an Annex B run of access units (a keyframe first) in a `gst-launch-1.0` child
/// and returns the last picture as a JPEG.
async fn decode_newest(decoder: &str, annex_b: Vec<u8>) -> Result<Bytes, String> {
    let pipeline =
        format!("fdsrc fd=0 ! {decoder} ! videoconvert ! jpegenc quality=85 ! fdsink fd=1");
    let mut child = tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start gst-launch-1.0 (install gstreamer1.0-tools): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let feed = async move {
        // A decoder that dies early closes its stdin: what it printed says why.
        let _ = stdin.write_all(&annex_b).await;
        drop(stdin);
    };
    let (_, output) = tokio::time::timeout(DECODE_TIMEOUT, async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await
    .map_err(|_| {
        format!(
            "the decoder took longer than {} s",
            DECODE_TIMEOUT.as_secs()
        )
    })?;
    let output = output.map_err(|e| e.to_string())?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "the decoder failed ({}): {}",
            output.status,
            said.lines().last().unwrap_or_default()
        ));
    }
    newest_jpeg(&output.stdout)
        .map(Bytes::copy_from_slice)
        .ok_or_else(|| "the decoder produced no picture".into())
}

/// The last JPEG in a run of concatenated ones (each starts with SOI, `FF D8 FF`; entropy
/// coded data never holds `FF D8`, because every `FF` in it is stuffed).
fn newest_jpeg(run: &[u8]) -> Option<&[u8]> {
    let start = run.windows(3).rposition(|w| w == [0xff, 0xd8, 0xff])?;
    Some(&run[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_of_concatenated_pictures_is_the_last_one() {
        let first = [0xff, 0xd8, 0xff, 0xe0, 1, 2, 0xff, 0xd9];
        let second = [0xff, 0xd8, 0xff, 0xdb, 3, 0xff, 0x00, 0xff, 0xd9];
        let run = [&first[..], &second[..]].concat();
        assert_eq!(newest_jpeg(&run), Some(&second[..]));
        assert_eq!(newest_jpeg(&first), Some(&first[..]));
        assert_eq!(newest_jpeg(&[1, 2, 3]), None);
    }
}
