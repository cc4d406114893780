//! The stream actor: one per live stream on its origin.
//!
//! It owns the stream's lifecycle: who publishes (at most one at a time), who watches, the
//! reconnect grace period, and the figures the API shows. Its sessions are its linked children:
//! when one ends or crashes the actor hears it as a supervision event and cleans up.
//!
//! Publisher lifecycle (decided by [`PublisherSlot`], a pure state machine):
//! `Live` ─publisher ends→ `Waiting(deadline)` ─publisher returns→ `Live`
//!                                             └─deadline passes→ stream ends, viewers ended.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cascade_protocol::StreamId;
use cascade_protocol::media::TrackInfo;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::StreamRegistry;
use crate::RoleError;
use crate::broadcast::Broadcast;
use crate::session::{
    SessionActor, SessionArgs, SessionId, SessionKind, SessionMsg, outcome_label,
};

/// Messages to a stream actor.
pub enum StreamMsg {
    /// Admit a new session; replies with its actor, or why not.
    Admit {
        /// Publisher or viewer.
        kind: SessionKind,
        /// Its id.
        session: SessionId,
        /// Ingest protocol (for publishers), e.g. `"whip"`.
        protocol: &'static str,
        /// The client's address, if known.
        remote: Option<SocketAddr>,
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
    /// Seconds since it connected.
    pub connected_secs: f64,
}

/// A stream as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    /// The stream id.
    pub id: StreamId,
    /// `live` while a publisher sends, `reconnecting` during the grace period.
    pub state: &'static str,
    /// The current publisher, if any.
    pub publisher: Option<SessionInfo>,
    /// Connected viewer sessions.
    pub viewers: usize,
    /// Tracks with codec and, once known, resolution.
    pub tracks: Vec<TrackInfo>,
    /// Ingest bitrate over the last second, bits per second.
    pub bitrate_bps: u64,
    /// Seconds since the stream started.
    pub uptime_secs: f64,
    /// Start time, seconds since the Unix epoch.
    pub started_at_unix: u64,
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

/// What the stream must do after a publisher event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// Accept the new publisher.
    Accept,
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
    /// A publisher asks to publish at `now`.
    pub fn on_publish(&mut self, session: SessionId) -> SlotDecision {
        match self {
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
}

impl StreamState {
    fn viewers(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.kind == SessionKind::Viewer)
            .count()
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
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StreamMsg::Admit {
                kind,
                session,
                protocol,
                remote,
                reply,
            } => {
                let result = admit(&myself, state, kind, session, protocol, remote).await;
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
            StreamMsg::Tick => {
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
        let (cell, outcome): (ActorCell, &'static str) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let label = outcome_label(reason.as_deref());
                (cell, label)
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(stream = %state.args.broadcast.id(), %error, "session actor crashed");
                (cell, "crashed")
            }
            _ => return Ok(()),
        };
        let Some(member) = state.members.remove(&cell.get_id()) else {
            return Ok(());
        };
        // The engine may still hold the media of a crashed session: make sure it is gone.
        state.args.registry.engine().close(member.id);
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
        state
            .args
            .registry
            .forget_stream(state.args.broadcast.id(), &myself);
        metrics::gauge!("cascade_viewers", "stream" => state.args.broadcast.id().to_string())
            .set(0.0);
        tracing::info!(stream = %state.args.broadcast.id(), "stream ended");
        Ok(())
    }
}

async fn admit(
    myself: &ActorRef<StreamMsg>,
    state: &mut StreamState,
    kind: SessionKind,
    session: SessionId,
    protocol: &'static str,
    remote: Option<SocketAddr>,
) -> Result<ActorRef<SessionMsg>, RoleError> {
    let stream = state.args.broadcast.id().clone();
    if kind == SessionKind::Publisher {
        let mut candidate = state.slot.clone();
        if candidate.on_publish(session) == SlotDecision::Conflict {
            return Err(RoleError::PublisherAlreadyLive(stream));
        }
    }
    let args = SessionArgs {
        id: session,
        kind,
        stream: stream.clone(),
        engine: state.args.registry.engine().clone(),
        registry: state.args.registry.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, SessionActor, args, myself.get_cell())
        .await
        .map_err(|e| RoleError::Unavailable(format!("cannot start session actor: {e}")))?;
    if kind == SessionKind::Publisher {
        state.slot.on_publish(session);
        state.grace_generation += 1; // cancels a pending grace expiry
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
            joined: Instant::now(),
        },
    );
    state.publish_viewer_gauge();
    Ok(actor)
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
            connected_secs: self.joined.elapsed().as_secs_f64(),
        }
    }
}

fn info(state: &StreamState) -> StreamInfo {
    let publisher = match &state.slot {
        PublisherSlot::Live { session } => state
            .members
            .values()
            .find(|m| m.id == *session)
            .map(Member::info),
        PublisherSlot::Waiting { .. } => None,
    };
    StreamInfo {
        id: state.args.broadcast.id().clone(),
        state: if publisher.is_some() {
            "live"
        } else {
            "reconnecting"
        },
        publisher,
        viewers: state.viewers(),
        tracks: state
            .args
            .broadcast
            .tracks()
            .iter()
            .filter_map(|t| t.info())
            .collect(),
        bitrate_bps: state.bitrate_bps,
        uptime_secs: state.started.elapsed().as_secs_f64(),
        started_at_unix: state.started_unix,
    }
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
        assert_eq!(slot.on_publish(a), SlotDecision::Accept);
        assert_eq!(slot.on_publish(b), SlotDecision::Conflict);
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
            slot.on_publish(b),
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
}
