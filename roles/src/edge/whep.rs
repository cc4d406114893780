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
/// and no rendition that can appeared within a few seconds of the stream's start.
///
/// [`Broadcast::webrtc_plan`]: crate::broadcast::Broadcast::webrtc_plan
pub async fn play(
    registry: &StreamRegistry,
    engines: &Engines,
    stream: &StreamId,
    offer_sdp: &str,
    client: Client,
) -> Result<NegotiatedSession, RoleError> {
    if let Some(broadcast) = registry.broadcast(stream) {
        let asked = Instant::now();
        while let Err(unfit) = broadcast.webrtc_plan() {
            // A stream that just began may be waiting for its transcoder's WebRTC-safe
            // rendition (on an edge, for the catalog that lists it): wait for it a moment.
            if broadcast.age(asked) < YOUNG_STREAM && asked.elapsed() < RENDITION_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            metrics::counter!("cascade_webrtc_unplayable_total", "reason" => match unfit {
                cascade_protocol::media::WebRtcUnfit::BFrames => "b_frames",
                cascade_protocol::media::WebRtcUnfit::Codec(_) => "codec",
            })
            .increment(1);
            return Err(RoleError::NotForWebRtc {
                stream: stream.clone(),
                unfit,
            });
        }
    }
    open_session(
        registry,
        engines,
        stream,
        SessionKind::Viewer,
        "whep",
        offer_sdp,
        client,
    )
    .await
}
