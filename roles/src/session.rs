//! One actor per publisher session and per viewer session: the lifecycle owner.
//!
//! The media of a session lives in the WebRTC engine (sans-IO `Rtc` driven by the shared UDP
//! socket); the actor owns everything else: its id, its end (DELETE, transport loss, the stream
//! ending) and the metric of how it ended. Session actors are linked to their stream actor, so
//! a session that crashes is reported to the stream, which cleans up and carries on.

use std::fmt;
use std::time::Instant;

use cascade_protocol::StreamId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::origin::StreamRegistry;
use crate::webrtc::WebRtcEngine;

/// An unguessable session id, shown as 16 hex digits in `Location` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Reads the hex form used in URLs.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok().map(Self))?
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Which side of a stream a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Sends media in (WHIP).
    Publisher,
    /// Receives media (WHEP).
    Viewer,
}

impl SessionKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            SessionKind::Publisher => "publisher",
            SessionKind::Viewer => "viewer",
        }
    }
}

/// What can happen to a session.
#[derive(Debug)]
pub enum SessionMsg {
    /// The client asked to end it (HTTP DELETE on its resource).
    Delete,
    /// The transport died (ICE timeout, DTLS close, peer gone); the reason says which.
    TransportClosed(String),
    /// The stream ended (its publisher did not come back within the grace period).
    StreamEnded,
}

/// The actor type.
pub struct SessionActor;

/// Arguments when spawning a session actor.
pub struct SessionArgs {
    /// This session.
    pub id: SessionId,
    /// Publisher or viewer.
    pub kind: SessionKind,
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Where its media lives.
    pub engine: WebRtcEngine,
    /// Where DELETE finds it.
    pub registry: StreamRegistry,
}

/// The actor's state.
pub struct SessionState {
    args: SessionArgs,
    started: Instant,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.registry
            .register_session(args.id, args.stream.clone(), myself);
        metrics::counter!("cascade_sessions_started_total", "kind" => args.kind.label())
            .increment(1);
        tracing::info!(stream = %args.stream, session = %args.id, kind = args.kind.label(), "session started");
        Ok(SessionState {
            args,
            started: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        _state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        let outcome = match msg {
            SessionMsg::Delete => "deleted".to_owned(),
            SessionMsg::TransportClosed(reason) => format!("transport_closed: {reason}"),
            SessionMsg::StreamEnded => "stream_ended".to_owned(),
        };
        myself.stop(Some(outcome));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.engine.close(state.args.id);
        state.args.registry.forget_session(state.args.id);
        tracing::info!(
            stream = %state.args.stream,
            session = %state.args.id,
            kind = state.args.kind.label(),
            seconds = state.started.elapsed().as_secs_f64(),
            "session ended"
        );
        Ok(())
    }
}

/// The metric label for how a session ended, from its stop reason.
pub fn outcome_label(reason: Option<&str>) -> &'static str {
    match reason {
        Some("deleted") => "deleted",
        Some("stream_ended") => "stream_ended",
        Some(r) if r.starts_with("transport_closed") => "transport_closed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_through_their_url_form() {
        let id = SessionId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!(SessionId::parse("00abcdef01234567"), Some(id));
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(SessionId::parse("00abcdef0123456g"), None);
    }
}
