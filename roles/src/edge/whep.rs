//! WHEP playback: an SDP offer from a viewer becomes a viewer session of a live stream.

use std::net::SocketAddr;

use cascade_protocol::StreamId;

use crate::RoleError;
use crate::origin::StreamRegistry;
use crate::session::SessionKind;
use crate::webrtc::{NegotiatedSession, open_session};

/// Answers a WHEP offer for `stream`: 404 if the stream is not live, 400/406 for a bad offer.
pub async fn play(
    registry: &StreamRegistry,
    stream: &StreamId,
    offer_sdp: &str,
    remote: Option<SocketAddr>,
) -> Result<NegotiatedSession, RoleError> {
    open_session(
        registry,
        stream,
        SessionKind::Viewer,
        "whep",
        offer_sdp,
        remote,
    )
    .await
}
