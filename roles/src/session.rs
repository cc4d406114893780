//! One actor per publisher session and per viewer session: the lifecycle owner.
//!
//! The media of a session lives in its [`Transport`] (the WebRTC engine, an RTMP or SRT
//! connection task, a relay pull); the actor owns everything else: its id, its end (DELETE, transport loss, the stream
//! ending) and the metric of how it ended. Session actors are linked to their stream actor, so
//! a session that crashes is reported to the stream, which cleans up and carries on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::origin::StreamRegistry;
use crate::webrtc::WebRtcEngine;

/// An unguessable session id, shown as 32 hex digits in `Location` URLs. Knowing it is what
/// lets a client end the session, so it carries 128 bits from a CSPRNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u128);

impl SessionId {
    /// A fresh random id from the thread's CSPRNG (ChaCha, seeded from the OS).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Reads the hex form used in URLs (exactly 32 lowercase or uppercase hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Who opened a session: where from, and what it must show again to end it.
///
/// The `Location` URL (a 128-bit id) is the capability to end a session; a session opened
/// with a Bearer token additionally needs that same token, so a leaked URL alone is not
/// enough. Only a digest of the token is kept.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The client's address as the HTTP server saw it.
    pub remote: Option<SocketAddr>,
    bearer_digest: Option<[u8; 32]>,
}

impl Client {
    /// A client at `remote` that presented `bearer` (if any).
    pub fn new(remote: Option<SocketAddr>, bearer: Option<&str>) -> Self {
        Self {
            remote,
            bearer_digest: bearer.map(digest),
        }
    }

    /// Whether a request carrying `bearer` may end this client's session.
    pub fn is_owner(&self, bearer: Option<&str>) -> bool {
        match (self.bearer_digest, bearer) {
            (None, _) => true,
            (Some(expected), Some(presented)) => {
                cascade_protocol::secret::constant_time_eq(&expected, &digest(presented))
            }
            (Some(_), None) => false,
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// What the WebRTC engine knows of a session's transport, shared with the session's stream
/// without a lock or a message: whether ICE and DTLS completed, when a datagram last came
/// from the peer (media, RTCP or an ICE consent check), and the session's quality as the node
/// saw it ([`SessionQuality`]). The engine writes, the stream reads.
#[derive(Debug, Clone)]
pub struct Liveness(Arc<LivenessCell>);

#[derive(Debug)]
struct LivenessCell {
    /// Milliseconds after [`epoch`] when the peer was last heard from.
    heard_ms: AtomicU64,
    connected: AtomicBool,
    /// Milliseconds after [`epoch`] when the session was created (its offer came).
    created_ms: u64,
    /// Milliseconds after [`epoch`] (plus one: 0 is "not yet") when media first flowed: a
    /// viewer's first keyframe sent, a publisher's first frame received.
    first_media_ms: AtomicU64,
    /// A viewer's keyframe requests after its start window: pictures it lost.
    keyframe_requests: AtomicU32,
    /// Sum of the fractions lost its receiver reports gave, in millionths, and how many.
    loss_millionths: AtomicU64,
    loss_reports: AtomicU32,
}

/// How long after a viewer's first keyframe its keyframe requests are part of starting (a
/// decoder asks while it settles, a keyframe can cross the DTLS handshake) rather than a
/// picture it lost.
pub const START_WINDOW: Duration = Duration::from_secs(2);

/// A session's quality as the node saw it, read when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SessionQuality {
    /// From its offer to its first keyframe sent (viewer) or frame received (publisher).
    pub join_time_ms: Option<u64>,
    /// A viewer's keyframe requests (PLI, FIR) after the start window: freezes, seen from the
    /// node.
    pub keyframe_requests: u32,
    /// The mean fraction of packets lost that the peer's receiver reports gave, in percent.
    pub loss_percent: Option<f64>,
}

/// The origin of [`Liveness`] timestamps (the first use in this process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

impl Liveness {
    /// A session created at `now`: not connected, counted as heard from at `now`.
    pub fn new(now: Instant) -> Self {
        Self(Arc::new(LivenessCell {
            heard_ms: AtomicU64::new(millis_since_epoch(now)),
            connected: AtomicBool::new(false),
            created_ms: millis_since_epoch(now),
            first_media_ms: AtomicU64::new(0),
            keyframe_requests: AtomicU32::new(0),
            loss_millionths: AtomicU64::new(0),
            loss_reports: AtomicU32::new(0),
        }))
    }

    /// Media flowed at `now`; the first time, returns the join time (offer to media).
    pub fn media_flowing(&self, now: Instant) -> Option<Duration> {
        // Called for every frame of a publisher: a plain load once media flows, not a
        // read-modify-write that takes the cache line each time.
        if self.0.first_media_ms.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let at = millis_since_epoch(now);
        self.0
            .first_media_ms
            .compare_exchange(0, at + 1, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| Duration::from_millis(at.saturating_sub(self.0.created_ms)))
    }

    /// The peer asked for a keyframe at `now`: counted once its start window is over.
    pub fn keyframe_requested(&self, now: Instant) {
        let first = self.0.first_media_ms.load(Ordering::Relaxed);
        let window = u64::try_from(START_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if first != 0 && millis_since_epoch(now) + 1 >= first + window {
            self.0.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cascade_viewer_freezes_total").increment(1);
        }
    }

    /// A receiver report's fraction lost (0 to 1).
    pub fn loss_reported(&self, fraction: f32) {
        let millionths = (f64::from(fraction).clamp(0.0, 1.0) * 1e6) as u64;
        self.0
            .loss_millionths
            .fetch_add(millionths, Ordering::Relaxed);
        self.0.loss_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// What the session's quality was.
    pub fn quality(&self) -> SessionQuality {
        let first = self.0.first_media_ms.load(Ordering::Relaxed);
        let reports = self.0.loss_reports.load(Ordering::Relaxed);
        SessionQuality {
            join_time_ms: (first != 0).then(|| (first - 1).saturating_sub(self.0.created_ms)),
            keyframe_requests: self.0.keyframe_requests.load(Ordering::Relaxed),
            loss_percent: (reports > 0).then(|| {
                self.0.loss_millionths.load(Ordering::Relaxed) as f64 / f64::from(reports) / 1e4
            }),
        }
    }

    /// A datagram from the peer arrived at `now` (one relaxed store).
    pub fn heard(&self, now: Instant) {
        self.0
            .heard_ms
            .store(millis_since_epoch(now), Ordering::Relaxed);
    }

    /// ICE and DTLS completed.
    pub fn set_connected(&self) {
        self.0.connected.store(true, Ordering::Relaxed);
    }

    /// Whether ICE and DTLS completed.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        let heard = self.0.heard_ms.load(Ordering::Relaxed);
        Duration::from_millis(millis_since_epoch(now).saturating_sub(heard))
    }
}

/// Where a session's media lives, so that whoever ends the session can end its media too.
#[derive(Clone)]
pub enum Transport {
    /// A WebRTC engine holds it (WHIP, WHEP).
    WebRtc(WebRtcEngine),
    /// A connection task of its own (RTMP, SRT, an RTSP pull): closing wakes the task, which
    /// ends its connection.
    Connection(Arc<tokio::sync::Notify>),
    /// A relay pull, which ends its own session.
    Relay,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::WebRtc(_) => "WebRtc",
            Transport::Connection(_) => "Connection",
            Transport::Relay => "Relay",
        })
    }
}

impl Transport {
    /// Ends the session's media (idempotent).
    pub fn close(&self, id: SessionId) {
        match self {
            Transport::WebRtc(engine) => engine.close(id),
            // A stored permit: the task sees it even if it was not waiting at this moment.
            Transport::Connection(closer) => closer.notify_one(),
            Transport::Relay => {}
        }
    }
}

/// A session asking to join a stream.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Publisher or viewer.
    pub kind: SessionKind,
    /// Its id.
    pub session: SessionId,
    /// Protocol, e.g. `"whip"`, `"whep"` or `"relay"`.
    pub protocol: &'static str,
    /// Who opened it.
    pub client: Client,
    /// Its transport's signs of life; `None` for sessions without one (a relay pull), which
    /// are never taken for gone by silence.
    pub liveness: Option<Liveness>,
    /// Where its media lives.
    pub transport: Transport,
}

/// Who asks to end a session.
#[derive(Debug, Clone, Copy)]
pub enum Ender<'a> {
    /// An operator who presented the admin token: may end any session.
    Operator,
    /// Whoever holds the `Location`, with the Bearer token the request carried.
    Holder(Option<&'a str>),
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
    /// ICE and DTLS did not complete within the handshake timeout.
    HandshakeTimedOut(Duration),
    /// A publisher that had gone silent was replaced by a new one for the same stream.
    Replaced {
        /// How long it had been silent.
        silent: Duration,
    },
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
    pub transport: Transport,
    /// Where DELETE finds it.
    pub registry: StreamRegistry,
    /// Who opened it.
    pub client: Client,
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
        args.registry.register_session(
            args.id,
            args.stream.clone(),
            args.kind,
            myself,
            args.client.clone(),
        );
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
            SessionMsg::HandshakeTimedOut(limit) => format!(
                "handshake_timeout: ICE and DTLS did not complete within {:.1} s",
                limit.as_secs_f64()
            ),
            SessionMsg::Replaced { silent } => format!(
                "replaced: silent for {:.1} s, a new publisher took the stream over",
                silent.as_secs_f64()
            ),
        };
        myself.stop(Some(outcome));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.transport.close(state.args.id);
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
        Some(r) if r.starts_with("handshake_timeout") => "handshake_timeout",
        Some(r) if r.starts_with("replaced") => "replaced",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_counts_join_time_once_keyframe_requests_after_the_start_window_and_mean_loss() {
        let offer = Instant::now();
        let liveness = Liveness::new(offer);
        assert_eq!(liveness.quality(), SessionQuality::default());
        liveness.keyframe_requested(offer + Duration::from_millis(100));
        assert_eq!(
            liveness.media_flowing(offer + Duration::from_millis(420)),
            Some(Duration::from_millis(420))
        );
        assert_eq!(liveness.media_flowing(offer + Duration::from_secs(1)), None);
        // A decoder settling asks within the window; a lost picture later does not.
        liveness.keyframe_requested(offer + Duration::from_millis(900));
        liveness.keyframe_requested(offer + Duration::from_millis(2_500));
        liveness.keyframe_requested(offer + Duration::from_secs(10));
        liveness.loss_reported(0.0);
        liveness.loss_reported(0.1);
        let quality = liveness.quality();
        assert_eq!(quality.join_time_ms, Some(420));
        assert_eq!(quality.keyframe_requests, 2);
        assert!(
            (quality.loss_percent.unwrap() - 5.0).abs() < 1e-9,
            "{quality:?}"
        );
    }

    #[test]
    fn liveness_measures_silence_from_the_last_datagram() {
        let t0 = Instant::now();
        let liveness = Liveness::new(t0);
        assert!(!liveness.is_connected());
        assert!(
            liveness.silent_for(t0 + Duration::from_millis(1500)) >= Duration::from_millis(1499)
        );
        liveness.heard(t0 + Duration::from_secs(2));
        assert!(liveness.silent_for(t0 + Duration::from_secs(2)) < Duration::from_millis(2));
        assert_eq!(
            liveness.silent_for(t0),
            Duration::ZERO,
            "time never runs backwards"
        );
        liveness.set_connected();
        assert!(liveness.clone().is_connected(), "clones share the cell");
    }

    #[test]
    fn every_end_reason_has_its_metric_label() {
        for (reason, label) in [
            ("deleted", "deleted"),
            ("stream_ended", "stream_ended"),
            ("transport_closed: ICE disconnected", "transport_closed"),
            (
                "handshake_timeout: ICE and DTLS did not complete within 15.0 s",
                "handshake_timeout",
            ),
            ("replaced: silent for 1.6 s", "replaced"),
        ] {
            assert_eq!(outcome_label(Some(reason)), label);
        }
        assert_eq!(outcome_label(None), "other");
    }

    #[test]
    fn only_the_token_that_opened_a_session_may_end_it() {
        let open = Client::new(None, None);
        assert!(open.is_owner(None), "no token: the Location alone suffices");
        assert!(open.is_owner(Some("anything")));
        let owned = Client::new(None, Some("s3cret"));
        assert!(owned.is_owner(Some("s3cret")));
        assert!(!owned.is_owner(Some("s3cret2")));
        assert!(!owned.is_owner(Some("")));
        assert!(!owned.is_owner(None));
    }

    #[test]
    fn session_ids_round_trip_through_their_url_form() {
        let id = SessionId(0x00ab_cdef_0123_4567_89ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef0123456789abcdef01234567");
        assert_eq!(
            SessionId::parse("00abcdef0123456789abcdef01234567"),
            Some(id)
        );
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(
            SessionId::parse("00abcdef01234567"),
            None,
            "64 bits are too few"
        );
        assert_eq!(SessionId::parse("00abcdef0123456789abcdef0123456g"), None);
        assert_eq!(SessionId::parse("+0abcdef0123456789abcdef01234567"), None);
    }
}
