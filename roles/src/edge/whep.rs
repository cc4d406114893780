//! WHEP playback: an SDP offer from a viewer becomes a viewer session of a live stream.

use cascade_protocol::StreamId;

use crate::RoleError;
use crate::origin::StreamRegistry;
use crate::session::{Client, SessionKind};
use crate::webrtc::{Engines, NegotiatedSession, open_session};

/// Answers a WHEP offer for `stream`: 404 if the stream is not live, 400/406 for a bad offer,
/// 409/415 when its video cannot go to WebRTC viewers as it is ([`Broadcast::webrtc_plan`]).
///
/// [`Broadcast::webrtc_plan`]: crate::broadcast::Broadcast::webrtc_plan
pub async fn play(
    registry: &StreamRegistry,
    engines: &Engines,
    stream: &StreamId,
    offer_sdp: &str,
    client: Client,
) -> Result<NegotiatedSession, RoleError> {
    if let Some(broadcast) = registry.broadcast(stream)
        && let Err(unfit) = broadcast.webrtc_plan()
    {
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
