//! WHEP playback: an SDP offer from a viewer becomes a viewer session of a live stream.

use std::time::{Duration, Instant};

use cascade_protocol::StreamId;

use crate::RoleError;
use crate::origin::StreamRegistry;
use crate::session::{Client, SessionKind};
use crate::webrtc::{Engines, NegotiatedSession, open_session};

/// A broadcast this young may still be getting its renditions.
const YOUNG_STREAM: Duration = Duration::from_secs(10);
/// How long a viewer of such a broadcast waits for one before `409`/`415`.
const RENDITION_WAIT: Duration = Duration::from_secs(5);

/// Answers a WHEP offer for `stream`: 404 if the stream is not live, 400/406 for a bad offer,
/// 409/415 when its video cannot go to WebRTC viewers as it is ([`Broadcast::webrtc_plan`])
/// and no rendition that can appeared within a few seconds of the stream's start; 400 when
/// the viewer pinned a `rendition` the stream does not have (or WebRTC cannot carry).
///
/// [`Broadcast::webrtc_plan`]: crate::broadcast::Broadcast::webrtc_plan
pub async fn play(
    registry: &StreamRegistry,
    engines: &Engines,
    stream: &StreamId,
    offer_sdp: &str,
    client: Client,
    rendition: Option<String>,
) -> Result<NegotiatedSession, RoleError> {
    if let Some(broadcast) = registry.broadcast(stream) {
        let asked = Instant::now();
        loop {
            let refusal = match (broadcast.webrtc_plan(), &rendition) {
                (Err(unfit), _) => Some(RoleError::NotForWebRtc {
                    stream: stream.clone(),
                    unfit,
                }),
                (Ok(_), Some(name)) => {
                    let available = webrtc_video_tracks(&broadcast);
                    (!available.contains(name)).then(|| RoleError::UnknownRendition {
                        stream: stream.clone(),
                        rendition: name.clone(),
                        available,
                    })
                }
                (Ok(_), None) => None,
            };
            let Some(refusal) = refusal else {
                break;
            };
            // A stream that just began may be waiting for its transcoder's renditions (on an
            // edge, for the catalog that lists them): wait for them a moment.
            if broadcast.age(asked) < YOUNG_STREAM && asked.elapsed() < RENDITION_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let RoleError::NotForWebRtc { unfit, .. } = &refusal {
                metrics::counter!("cascade_webrtc_unplayable_total", "reason" => match unfit {
                    cascade_protocol::media::WebRtcUnfit::BFrames => "b_frames",
                    cascade_protocol::media::WebRtcUnfit::Codec(_) => "codec",
                })
                .increment(1);
            }
            return Err(refusal);
        }
    }
    open_session(
        registry,
        engines,
        stream,
        SessionKind::Viewer,
        offer_sdp,
        client,
        rendition,
    )
    .await
}

/// The video tracks of `broadcast` a WebRTC viewer can be given.
fn webrtc_video_tracks(broadcast: &crate::broadcast::Broadcast) -> Vec<String> {
    broadcast
        .catalog()
        .into_iter()
        .filter(|t| {
            t.kind == cascade_protocol::media::MediaKind::Video && t.webrtc_unfit().is_none()
        })
        .map(|t| t.name)
        .collect()
}
