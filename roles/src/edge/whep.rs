//! WHEP playback: an SDP offer from a viewer becomes a viewer session of a live stream.

use cascade_protocol::StreamId;

use crate::RoleError;
use crate::origin::StreamRegistry;
use crate::session::{Client, SessionKind};
use crate::webrtc::{NegotiatedSession, open_session};

/// Answers a WHEP offer for `stream`: 404 if the stream is not live, 400/406 for a bad offer.
pub async fn play(
    registry: &StreamRegistry,
    stream: &StreamId,
    offer_sdp: &str,
    client: Client,
) -> Result<NegotiatedSession, RoleError> {
    open_session(
        registry,
        stream,
        SessionKind::Viewer,
        "whep",
        offer_sdp,
        client,
    )
    .await
}
