//! WHIP ingest (RFC 9725): an SDP offer from a publisher becomes a live stream's source.

use cascade_protocol::StreamId;

use super::StreamRegistry;
use crate::RoleError;
use crate::session::{Client, SessionKind};
use crate::webrtc::{Engines, NegotiatedSession, open_session};

/// Answers a WHIP offer for `stream`: 409 if another publisher is live, 400/406 for a bad offer.
pub async fn publish(
    registry: &StreamRegistry,
    engines: &Engines,
    stream: &StreamId,
    offer_sdp: &str,
    client: Client,
) -> Result<NegotiatedSession, RoleError> {
    open_session(
        registry,
        engines,
        stream,
        SessionKind::Publisher,
        offer_sdp,
        client,
        None,
    )
    .await
}
