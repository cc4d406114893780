//! The stream actor: one per live stream on its origin.
//!
//! It owns the stream's lifecycle: who publishes (at most one at a time), who watches, the
//! reconnect grace period, and the figures the API shows. Its sessions are its linked children:
//! when one ends or crashes the actor hears it as a supervision event and cleans up.
//!
//! Publisher lifecycle (decided by [`PublisherSlot`], a pure state machine):
//! `Live` ─publisher ends→ `Waiting(deadline)` ─publisher returns→ `Live`
//!                                             └─deadline passes→ stream ends, viewers ended.
//! `Live` ─a new publisher arrives while the live one has been silent for
//! [`PUBLISHER_GONE_AFTER`]→ `Live` (the new one; the old session ends as `replaced`).
//!
//! What the API calls the stream: `connecting` until its publisher's first frame, `live` while
//! frames arrive from the current publisher, `reconnecting` while viewers wait for a publisher
//! that left. A stream that never received a frame ends as soon as its publisher does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cascade_protocol::StreamId;
use cascade_protocol::media::{TrackInfo, WebRtcPlan};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::StreamRegistry;
use super::observer::{Audience, StreamRun, StreamStarted};
use super::restream::{RestreamActor, RestreamArgs, RestreamInfo, RestreamMsg, RestreamStatus};
use crate::RoleError;
use crate::broadcast::Broadcast;
use crate::session::{
    Admission, Liveness, SessionActor, SessionArgs, SessionId, SessionKind, SessionMsg, Transport,
    outcome_label,
};
use cascade_protocol::rtmp::client::RtmpTarget;

/// Messages to a stream actor.
pub enum StreamMsg {
    /// Admit a new session; replies with its actor, or why not.
    Admit {
        /// Who asks.
        admission: Box<Admission>,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<ActorRef<SessionMsg>, RoleError>>,
    },
    /// A snapshot for the API.
    Info(RpcReplyPort<StreamInfo>),
    /// Every session of the stream, for the API.
    Sessions(RpcReplyPort<Vec<SessionInfo>>),
    /// The reconnect grace period of publisher generation `n` may have run out.
    GraceExpired(u64),
    /// Once a second: update bitrate figures.
    Tick,
    /// Push the stream to an RTMP target; replies with its status.
    AddRestream {
        /// Where to.
        target: RtmpTarget,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<RestreamInfo, RoleError>>,
    },
    /// Stop a restream; replies whether it existed.
    RemoveRestream {
        /// Its id.
        id: u64,
        /// Where the answer goes.
        reply: RpcReplyPort<bool>,
    },
    /// Every restream of the stream, for the API.
    Restreams(RpcReplyPort<Vec<RestreamInfo>>),
}

/// Most restream targets per stream.
pub const MAX_RESTREAMS: usize = 16;

struct Restream {
    id: u64,
    actor: ActorRef<RestreamMsg>,
    status: RestreamStatus,
}

/// One publisher or viewer session of a stream, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// `publisher` or `viewer`.
    pub kind: &'static str,
    /// Protocol, e.g. `"whip"` or `"whep"`.
    pub protocol: &'static str,
    /// The publisher's address as seen by the HTTP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<SocketAddr>,
    /// Its session id.
    pub session: String,
    /// `connecting` until ICE and DTLS complete, then `connected` (`relay` for a pull).
    pub state: &'static str,
    /// Seconds since it connected.
    pub connected_secs: f64,
}

/// A session that ended, as the admin API lists it (`GET /api/v1/sessions/ended`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndedSession {
    /// The stream it belonged to.
    pub stream: StreamId,
    /// `publisher` or `viewer`.
    pub kind: &'static str,
    /// Protocol, e.g. `"whip"`.
    pub protocol: &'static str,
    /// Its session id.
    pub session: String,
    /// The metric label of how it ended (`deleted`, `handshake_timeout`, `replaced`, ...).
    pub outcome: &'static str,
    /// The full reason, as logged.
    pub reason: String,
    /// Whether ICE and DTLS had completed.
    pub connected: bool,
    /// How long it lasted, seconds.
    pub lasted_secs: f64,
    /// When it ended, seconds since the Unix epoch.
    pub ended_at_unix: u64,
    /// The client's address, when the session had one (not a relay).
    pub remote: Option<SocketAddr>,
    /// Join time, freezes and loss as the node saw them (WebRTC sessions; empty for others).
    pub quality: crate::session::SessionQuality,
}

/// The publisher of a stream as the public API shows it: nothing that would let a visitor
/// find or end its session (no session id, no address; those are in the admin-only sessions
/// list).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublisherInfo {
    /// Protocol, e.g. `"whip"`.
    pub protocol: &'static str,
    /// Seconds since it connected.
    pub connected_secs: f64,
    /// Seconds since it last sent anything (media, RTCP, ICE consent): a live encoder is
    /// never quiet for long; a dead one that left its connection open shows here.
    pub silent_secs: f64,
}

/// A stream as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    /// The stream id.
    pub id: StreamId,
    /// `connecting` until the publisher's first frame, `live` while it sends, `reconnecting`
    /// while viewers wait for a publisher that left.
    pub state: &'static str,
    /// The current publisher, if any.
    pub publisher: Option<PublisherInfo>,
    /// Connected viewer sessions.
    pub viewers: usize,
    /// The catalog: every track with its codec and what is known of it.
    pub tracks: Vec<TrackInfo>,
    /// What WebRTC (WHEP) viewers get of it, or why they cannot watch it.
    pub webrtc: WebRtcView,
    /// Per video track, the timestamps of its last group starts (oldest first): a ladder
    /// whose rungs list the same times can be switched at any group boundary.
    pub keyframes: std::collections::BTreeMap<String, Vec<u64>>,
    /// Ingest bitrate over the last second, bits per second.
    pub bitrate_bps: u64,
    /// Seconds since the stream started.
    pub uptime_secs: f64,
    /// Start time, seconds since the Unix epoch.
    pub started_at_unix: u64,
}

/// What WebRTC viewers get of a stream, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebRtcView {
    /// Whether WHEP viewers are served at all.
    pub playable: bool,
    /// Which tracks they get and which they do not, with the reason.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub plan: Option<WebRtcPlan>,
    /// Why they cannot watch, when they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WebRtcView {
    fn of(plan: Result<WebRtcPlan, cascade_protocol::media::WebRtcUnfit>) -> Self {
        match plan {
            Ok(plan) => Self {
                playable: true,
                plan: Some(plan),
                reason: None,
            },
            Err(unfit) => Self {
                playable: false,
                plan: None,
                reason: Some(unfit.to_string()),
            },
        }
    }
}

/// The publisher side of a stream, as a pure state machine over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherSlot {
    /// A publisher is connected.
    Live {
        /// Its session.
        session: SessionId,
    },
    /// No publisher; viewers wait until the deadline.
    Waiting {
        /// When the stream ends if nobody publishes.
        deadline: Instant,
    },
}

/// A live publisher silent this long (no media, no RTCP, no ICE consent) is taken for gone:
/// a new publisher for its stream takes over at once instead of getting `409`. Browsers send
/// audio every 20 ms and consent checks every few seconds, so a live one is never this quiet.
pub const PUBLISHER_GONE_AFTER: Duration = Duration::from_millis(1500);

/// What the stream must do after a publisher event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// Accept the new publisher.
    Accept,
    /// Accept the new publisher and end this one, which went silent.
    TakeOver(SessionId),
    /// Refuse it: another one is live.
    Conflict,
    /// Nothing to do.
    Nothing,
    /// Wait for a returning publisher until the deadline.
    StartGrace(Instant),
    /// Nobody came back in time: end the stream.
    EndStream,
}

impl PublisherSlot {
    /// A publisher asks to publish; the live one (if any) has been silent for
    /// `live_silent_for`.
    pub fn on_publish(&mut self, session: SessionId, live_silent_for: Duration) -> SlotDecision {
        match self {
            PublisherSlot::Live { session: live } if live_silent_for >= PUBLISHER_GONE_AFTER => {
                let gone = *live;
                *self = PublisherSlot::Live { session };
                SlotDecision::TakeOver(gone)
            }
            PublisherSlot::Live { .. } => SlotDecision::Conflict,
            PublisherSlot::Waiting { .. } => {
                *self = PublisherSlot::Live { session };
                SlotDecision::Accept
            }
        }
    }

    /// A session ended at `now`.
    pub fn on_session_end(
        &mut self,
        session: SessionId,
        now: Instant,
        grace: Duration,
    ) -> SlotDecision {
        match self {
            PublisherSlot::Live { session: live } if *live == session => {
                let deadline = now + grace;
                *self = PublisherSlot::Waiting { deadline };
                SlotDecision::StartGrace(deadline)
            }
            _ => SlotDecision::Nothing,
        }
    }

    /// Time passed.
    pub fn on_tick(&self, now: Instant) -> SlotDecision {
        match self {
            PublisherSlot::Waiting { deadline } if now >= *deadline => SlotDecision::EndStream,
            _ => SlotDecision::Nothing,
        }
    }
}

/// The actor type.
pub struct StreamActor;

/// Arguments when spawning a stream actor.
pub struct StreamArgs {
    /// The stream's media.
    pub broadcast: Arc<Broadcast>,
    /// The node's registry, to remove the stream when it ends.
    pub registry: StreamRegistry,
    /// How long viewers wait for a publisher to come back.
    pub reconnect_grace: Duration,
}

struct Member {
    id: SessionId,
    kind: SessionKind,
    actor: ActorRef<SessionMsg>,
    protocol: &'static str,
    remote: Option<SocketAddr>,
    liveness: Option<Liveness>,
    transport: Transport,
    joined: Instant,
}

/// The actor's state.
pub struct StreamState {
    args: StreamArgs,
    slot: PublisherSlot,
    grace_generation: u64,
    members: HashMap<ActorId, Member>,
    started: Instant,
    started_unix: u64,
    last_bytes: u64,
    bitrate_bps: u64,
    /// Set when the stream ended; the actor stops once its last session is accounted for.
    ending: bool,
    /// Frames the broadcast had received when the current publisher was admitted: it is
    /// `connecting` until there are more.
    frames_at_publish: u64,
    restreams: Vec<Restream>,
    next_restream: u64,
    /// The run reported to the observer, from its first publisher (not a relay) on.
    run: Option<Run>,
}

/// A stream's run on its origin, for the observer.
struct Run {
    protocol: &'static str,
    started_unix: f64,
    audience: Audience,
    sampled_at: Instant,
    /// Frames received at the last tick, and when that count last moved: how long ingest
    /// has been stalled.
    frames_seen: u64,
    frames_moved_at: Instant,
}

impl StreamState {
    fn viewers(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.kind == SessionKind::Viewer)
            .count()
    }

    fn frames_in(&self) -> u64 {
        self.args.broadcast.frames_in()
    }

    /// Whether any publisher ever delivered a frame (the counts only grow).
    fn ever_live(&self) -> bool {
        self.frames_in() > 0
    }

    /// The live publisher's silence: zero when there is none, or when it has no transport
    /// to judge by (a relay pull).
    fn live_publisher_silence(&self, now: Instant) -> Duration {
        let PublisherSlot::Live { session } = &self.slot else {
            return Duration::ZERO;
        };
        self.members
            .values()
            .find(|m| m.id == *session)
            .and_then(|m| m.liveness.as_ref())
            .map_or(Duration::ZERO, |l| l.silent_for(now))
    }

    /// The first publisher that is not a relay starts the run this node reports.
    fn report_run_started(&mut self, protocol: &'static str) {
        if self.run.is_some() || protocol == "relay" {
            return;
        }
        let Some(observer) = self.args.registry.observer() else {
            return;
        };
        let started_unix = cascade_protocol::clock::unix_seconds();
        observer.started(StreamStarted {
            stream: self.args.broadcast.id().clone(),
            protocol,
            started_unix,
        });
        self.run = Some(Run {
            protocol,
            started_unix,
            audience: Audience::default(),
            sampled_at: Instant::now(),
            frames_seen: self.frames_in(),
            frames_moved_at: Instant::now(),
        });
    }

    /// Once a second: the viewers on other nodes, for the run's audience.
    fn sample_audience(&mut self, now: Instant) {
        let here = self.viewers() as u32;
        let (Some(run), Some(observer)) = (self.run.as_mut(), self.args.registry.observer()) else {
            return;
        };
        let elsewhere = observer.viewers_elsewhere(self.args.broadcast.id());
        let elapsed = now.saturating_duration_since(run.sampled_at);
        run.sampled_at = now;
        run.audience.sample_elsewhere(elsewhere, here, elapsed);
        let frames = self.args.broadcast.frames_in();
        if frames != run.frames_seen {
            run.frames_seen = frames;
            run.frames_moved_at = now;
        }
        metrics::gauge!("cascade_stream_ingest_stalled_seconds", "stream" => self.args.broadcast.id().to_string())
            .set(now.saturating_duration_since(run.frames_moved_at).as_secs_f64());
    }

    fn report_run_ended(&mut self) {
        let now = Instant::now();
        self.sample_audience(now);
        let (Some(run), Some(observer)) = (self.run.take(), self.args.registry.observer()) else {
            return;
        };
        metrics::gauge!("cascade_stream_ingest_stalled_seconds", "stream" => self.args.broadcast.id().to_string())
            .set(0.0);
        let still_watching: Duration = self
            .members
            .values()
            .filter(|m| m.kind == SessionKind::Viewer)
            .map(|m| now.saturating_duration_since(m.joined))
            .sum();
        observer.ended(StreamRun {
            stream: self.args.broadcast.id().clone(),
            protocol: run.protocol,
            started_unix: run.started_unix,
            ended_unix: cascade_protocol::clock::unix_seconds(),
            peak_viewers: run.audience.peak,
            viewer_minutes: run.audience.viewer_minutes(still_watching),
            bytes_in: self.args.broadcast.bytes_in(),
            tracks: self.args.broadcast.catalog(),
            total_viewers: run.audience.total,
        });
    }

    fn publish_viewer_gauge(&self) {
        metrics::gauge!("cascade_viewers", "stream" => self.args.broadcast.id().to_string())
            .set(self.viewers() as f64);
    }
}

impl Actor for StreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StreamArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || StreamMsg::Tick);
        tracing::info!(stream = %args.broadcast.id(), "stream created");
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(StreamState {
            // Until the first publisher is admitted the stream waits, like after a drop.
            slot: PublisherSlot::Waiting {
                deadline: Instant::now() + args.reconnect_grace,
            },
            args,
            grace_generation: 0,
            members: HashMap::new(),
            started: Instant::now(),
            started_unix,
            last_bytes: 0,
            bitrate_bps: 0,
            ending: false,
            frames_at_publish: 0,
            restreams: Vec::new(),
            next_restream: 1,
            run: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StreamMsg::Admit { admission, reply } => {
                let result = admit(&myself, state, admission).await;
                let _ = reply.send(result);
            }
            StreamMsg::Info(reply) => {
                let _ = reply.send(info(state));
            }
            StreamMsg::Sessions(reply) => {
                let mut sessions: Vec<SessionInfo> =
                    state.members.values().map(Member::info).collect();
                sessions.sort_by(|a, b| b.connected_secs.total_cmp(&a.connected_secs));
                let _ = reply.send(sessions);
            }
            StreamMsg::GraceExpired(generation) => {
                if generation == state.grace_generation
                    && !state.ending
                    && state.slot.on_tick(Instant::now()) == SlotDecision::EndStream
                {
                    end_stream(&myself, state);
                }
            }
            StreamMsg::AddRestream { target, reply } => {
                let _ = reply.send(add_restream(&myself, state, target).await);
            }
            StreamMsg::RemoveRestream { id, reply } => {
                let found = state.restreams.iter().position(|r| r.id == id);
                if let Some(at) = found {
                    let restream = state.restreams.remove(at);
                    restream.actor.stop(Some("removed".into()));
                }
                let _ = reply.send(found.is_some());
            }
            StreamMsg::Restreams(reply) => {
                let _ = reply.send(
                    state
                        .restreams
                        .iter()
                        .map(|r| r.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
                        .collect(),
                );
            }
            StreamMsg::Tick => {
                state.sample_audience(Instant::now());
                let bytes = state.args.broadcast.bytes_in();
                state.bitrate_bps = (bytes - state.last_bytes) * 8;
                state.last_bytes = bytes;
                // A stream nobody ever published to (a refused offer) also times out here.
                if !state.ending && state.slot.on_tick(Instant::now()) == SlotDecision::EndStream {
                    end_stream(&myself, state);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, outcome, reason): (ActorCell, &'static str, String) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let label = outcome_label(reason.as_deref());
                (cell, label, reason.unwrap_or_default())
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(stream = %state.args.broadcast.id(), %error, "session actor crashed");
                (cell, "crashed", error.to_string())
            }
            _ => return Ok(()),
        };
        let Some(member) = state.members.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.args.registry.record_ended(EndedSession {
            stream: state.args.broadcast.id().clone(),
            kind: member.kind.label(),
            protocol: member.protocol,
            session: member.id.to_string(),
            outcome,
            reason,
            connected: member.liveness.as_ref().is_none_or(Liveness::is_connected),
            lasted_secs: member.joined.elapsed().as_secs_f64(),
            ended_at_unix: unix_now(),
            remote: member.remote,
            quality: member
                .liveness
                .as_ref()
                .map(Liveness::quality)
                .unwrap_or_default(),
        });
        if member.kind == SessionKind::Viewer
            && let Some(run) = state.run.as_mut()
        {
            run.audience.viewer_left(member.joined.elapsed());
        }
        // The engine may still hold the media of a crashed session: make sure it is gone.
        member.transport.close(member.id);
        state.args.registry.forget_session(member.id);
        metrics::counter!("cascade_sessions_ended_total", "kind" => member.kind.label(), "outcome" => outcome)
            .increment(1);
        state.publish_viewer_gauge();
        if state.ending && state.members.is_empty() {
            myself.stop(Some("stream ended".into()));
            return Ok(());
        }
        let grace = state.args.reconnect_grace;
        if let SlotDecision::StartGrace(_) =
            state.slot.on_session_end(member.id, Instant::now(), grace)
        {
            if !state.ever_live() {
                // Nothing was ever published: nobody waits for this publisher to come back.
                tracing::info!(stream = %state.args.broadcast.id(), "the publisher left before sending media; ending the stream");
                end_stream(&myself, state);
                return Ok(());
            }
            state.grace_generation += 1;
            let generation = state.grace_generation;
            tracing::info!(
                stream = %state.args.broadcast.id(),
                grace_secs = grace.as_secs_f64(),
                viewers = state.viewers(),
                "publisher left; viewers wait for it to come back"
            );
            myself.send_after(grace, move || StreamMsg::GraceExpired(generation));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        for restream in state.restreams.drain(..) {
            restream.actor.stop(Some("stream ended".into()));
        }
        state
            .args
            .registry
            .forget_stream(state.args.broadcast.id(), &myself);
        metrics::gauge!("cascade_viewers", "stream" => state.args.broadcast.id().to_string())
            .set(0.0);
        state.report_run_ended();
        tracing::info!(stream = %state.args.broadcast.id(), "stream ended");
        Ok(())
    }
}

async fn admit(
    myself: &ActorRef<StreamMsg>,
    state: &mut StreamState,
    admission: Box<Admission>,
) -> Result<ActorRef<SessionMsg>, RoleError> {
    let Admission {
        kind,
        session,
        protocol,
        client,
        liveness,
        transport,
    } = *admission;
    let remote = client.remote;
    let stream = state.args.broadcast.id().clone();
    let silence = state.live_publisher_silence(Instant::now());
    if kind == SessionKind::Publisher {
        let mut candidate = state.slot.clone();
        if candidate.on_publish(session, silence) == SlotDecision::Conflict {
            return Err(RoleError::PublisherAlreadyLive(stream));
        }
    }
    let args = SessionArgs {
        id: session,
        kind,
        stream: stream.clone(),
        transport: transport.clone(),
        registry: state.args.registry.clone(),
        client,
    };
    let (actor, _) = Actor::spawn_linked(None, SessionActor, args, myself.get_cell())
        .await
        .map_err(|e| RoleError::Unavailable(format!("cannot start session actor: {e}")))?;
    if kind == SessionKind::Publisher {
        if let SlotDecision::TakeOver(gone) = state.slot.on_publish(session, silence)
            && let Some(old) = state.members.values().find(|m| m.id == gone)
        {
            tracing::info!(%stream, replaced = %gone, silent_secs = silence.as_secs_f64(), "a new publisher takes over from a silent one");
            // Closed in the engine before the new session is added (the engine takes
            // commands in order), so the old one cannot end the new one's tracks.
            old.transport.close(gone);
            let _ = old.actor.cast(SessionMsg::Replaced { silent: silence });
        }
        state.frames_at_publish = state.frames_in();
        state.grace_generation += 1; // cancels a pending grace expiry
        state.report_run_started(protocol);
        tracing::info!(%stream, session = %session, protocol, ?remote, "publisher live");
    }
    state.members.insert(
        actor.get_id(),
        Member {
            id: session,
            kind,
            actor: actor.clone(),
            protocol,
            remote,
            liveness,
            transport,
            joined: Instant::now(),
        },
    );
    state.publish_viewer_gauge();
    if kind == SessionKind::Viewer {
        let here = state.viewers() as u32;
        if let Some(run) = state.run.as_mut() {
            run.audience.viewer_joined(here);
        }
    }
    Ok(actor)
}

async fn add_restream(
    myself: &ActorRef<StreamMsg>,
    state: &mut StreamState,
    target: RtmpTarget,
) -> Result<RestreamInfo, RoleError> {
    if state.restreams.len() >= MAX_RESTREAMS {
        return Err(RoleError::BadIngest(format!(
            "stream {} already has {MAX_RESTREAMS} restreams",
            state.args.broadcast.id()
        )));
    }
    let id = state.next_restream;
    state.next_restream += 1;
    let status = Arc::new(std::sync::Mutex::new(RestreamInfo {
        id,
        target: target.redacted(),
        state: "connecting",
        bytes_sent: 0,
        attempts: 0,
        last_error: None,
        left_out: Vec::new(),
    }));
    let args = RestreamArgs {
        target,
        broadcast: state.args.broadcast.clone(),
        status: status.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, RestreamActor, args, myself.get_cell())
        .await
        .map_err(|e| RoleError::Unavailable(format!("cannot start the restream: {e}")))?;
    let info = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tracing::info!(stream = %state.args.broadcast.id(), target = %info.target, id, "restream added");
    state.restreams.push(Restream { id, actor, status });
    Ok(info)
}

fn end_stream(myself: &ActorRef<StreamMsg>, state: &mut StreamState) {
    tracing::info!(
        stream = %state.args.broadcast.id(),
        viewers = state.viewers(),
        "no publisher came back within the grace period; ending the stream"
    );
    // New publishers start a fresh stream from now on; this actor lingers only until each of
    // its sessions has ended and been counted.
    state.ending = true;
    state
        .args
        .registry
        .forget_stream(state.args.broadcast.id(), myself);
    for member in state.members.values() {
        let _ = member.actor.cast(SessionMsg::StreamEnded);
    }
    if state.members.is_empty() {
        myself.stop(Some("stream ended".into()));
    }
}

impl Member {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            kind: self.kind.label(),
            protocol: self.protocol,
            remote_addr: self.remote,
            session: self.id.to_string(),
            state: match &self.liveness {
                None => "relay",
                Some(l) if l.is_connected() => "connected",
                Some(_) => "connecting",
            },
            connected_secs: self.joined.elapsed().as_secs_f64(),
        }
    }
}

fn info(state: &StreamState) -> StreamInfo {
    let publisher =
        match &state.slot {
            PublisherSlot::Live { session } => state
                .members
                .values()
                .find(|m| m.id == *session)
                .map(|m| PublisherInfo {
                    protocol: m.protocol,
                    connected_secs: m.joined.elapsed().as_secs_f64(),
                    silent_secs: state.live_publisher_silence(Instant::now()).as_secs_f64(),
                }),
            PublisherSlot::Waiting { .. } => None,
        };
    let receiving = state.frames_in() > state.frames_at_publish;
    StreamInfo {
        id: state.args.broadcast.id().clone(),
        state: stream_state(publisher.is_some(), receiving, state.ever_live()),
        publisher,
        viewers: state.viewers(),
        tracks: state.args.broadcast.catalog(),
        webrtc: WebRtcView::of(state.args.broadcast.webrtc_plan()),
        keyframes: state.args.broadcast.recent_keyframes(),
        bitrate_bps: state.bitrate_bps,
        uptime_secs: state.started.elapsed().as_secs_f64(),
        started_at_unix: state.started_unix,
    }
}

/// What the API calls a stream: see the module header.
fn stream_state(has_publisher: bool, receiving: bool, ever_live: bool) -> &'static str {
    match (has_publisher, receiving, ever_live) {
        (true, true, _) => "live",
        (true, false, _) | (false, _, false) => "connecting",
        (false, _, true) => "reconnecting",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_slot_refuses_a_second_publisher_and_waits_for_a_returning_one() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let (a, b) = (SessionId(1), SessionId(2));
        let mut slot = PublisherSlot::Waiting {
            deadline: t0 + grace,
        };
        let heard = Duration::from_millis(100);
        assert_eq!(slot.on_publish(a, heard), SlotDecision::Accept);
        assert_eq!(slot.on_publish(b, heard), SlotDecision::Conflict);
        assert_eq!(
            slot.on_session_end(b, t0, grace),
            SlotDecision::Nothing,
            "a viewer or refused session"
        );
        assert_eq!(
            slot.on_session_end(a, t0, grace),
            SlotDecision::StartGrace(t0 + grace)
        );
        assert_eq!(
            slot.on_tick(t0 + Duration::from_secs(9)),
            SlotDecision::Nothing
        );
        assert_eq!(
            slot.on_publish(b, heard),
            SlotDecision::Accept,
            "the publisher came back in time"
        );
        assert_eq!(
            slot.on_tick(t0 + Duration::from_secs(60)),
            SlotDecision::Nothing
        );
        slot.on_session_end(b, t0, grace);
        assert_eq!(slot.on_tick(t0 + grace), SlotDecision::EndStream);
    }

    #[test]
    fn a_new_publisher_takes_over_from_one_silent_for_a_second_and_a_half() {
        let (a, b, c) = (SessionId(1), SessionId(2), SessionId(3));
        let mut slot = PublisherSlot::Live { session: a };
        assert_eq!(
            slot.on_publish(b, Duration::from_millis(1499)),
            SlotDecision::Conflict,
            "a publisher heard from 1.5 s ago keeps its stream"
        );
        assert_eq!(
            slot.on_publish(b, PUBLISHER_GONE_AFTER),
            SlotDecision::TakeOver(a)
        );
        assert_eq!(slot, PublisherSlot::Live { session: b });
        let t0 = Instant::now();
        assert_eq!(
            slot.on_session_end(a, t0, Duration::from_secs(10)),
            SlotDecision::Nothing,
            "the replaced session's end does not start a grace period"
        );
        assert_eq!(slot.on_publish(c, Duration::ZERO), SlotDecision::Conflict);
    }

    #[test]
    fn a_stream_is_connecting_until_its_first_frame_and_reconnecting_only_after_media() {
        assert_eq!(stream_state(true, false, false), "connecting");
        assert_eq!(stream_state(true, true, false), "live");
        assert_eq!(stream_state(false, false, true), "reconnecting");
        assert_eq!(
            stream_state(true, false, true),
            "connecting",
            "a returning publisher"
        );
        assert_eq!(stream_state(false, false, false), "connecting");
    }
}
