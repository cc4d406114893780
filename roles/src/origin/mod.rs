//! The origin role: live streams on this node, each owned by a stream actor, their ingest
//! (WHIP in [`whip`] and, on the WebRTC engine, [`webrtc_ingest`]; RTMP in [`rtmp`], SRT in
//! [`srt`], what they share in [`ingest`]) and
//! their restreams ([`restream`]), and the renditions their transcoders on other nodes make
//! ([`renditions`]).
//!
//! [`StreamRegistry`] is the node's table of streams and sessions, whatever their protocol: it
//! knows no transport (each session brings its own, [`crate::session::Transport`]). It is control-plane only
//! (touched when sessions start and end, never per packet), so a mutex-guarded map is enough.

pub mod ingest;
pub mod observer;
pub mod renditions;
pub mod restream;
pub mod rtmp;
pub mod rtsp;
pub mod srt;
pub mod stream;
pub(crate) mod webrtc_ingest;
pub mod whip;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cascade_protocol::StreamId;
use ractor::{Actor, ActorRef};

use crate::RoleError;
use crate::admission::{self, EngineLoad, Limits};
use crate::broadcast::Broadcast;
use crate::session::{Admission, Client, Ender, SessionId, SessionKind, SessionMsg};

pub use stream::{EndedSession, PublisherInfo, SessionInfo, StreamActor, StreamInfo, StreamMsg};

struct StreamEntry {
    actor: ActorRef<StreamMsg>,
    broadcast: Arc<Broadcast>,
}

struct SessionEntry {
    stream: StreamId,
    kind: SessionKind,
    actor: ActorRef<SessionMsg>,
    client: Client,
}

#[derive(Default)]
struct Tables {
    streams: HashMap<StreamId, StreamEntry>,
    sessions: HashMap<SessionId, SessionEntry>,
    /// The most recent session ends, newest last.
    ended: VecDeque<EndedSession>,
    /// Viewer and publisher sessions (WebRTC and relay) on this node.
    viewers: usize,
    publishers: usize,
}

impl Tables {
    fn count(&mut self, kind: SessionKind, added: bool) {
        let counter = match kind {
            SessionKind::Viewer => &mut self.viewers,
            SessionKind::Publisher => &mut self.publishers,
        };
        *counter = if added {
            *counter + 1
        } else {
            counter.saturating_sub(1)
        };
    }
}

/// Ended sessions the admin API remembers.
const ENDED_SESSIONS_KEPT: usize = 256;

/// The streams and sessions of this node. Cheap to clone.
#[derive(Clone)]
pub struct StreamRegistry {
    tables: Arc<Mutex<Tables>>,
    /// The viewers' WebRTC engine's load: past a point the node takes no more sessions.
    viewer_engine_load: Arc<EngineLoad>,
    reconnect_grace: Duration,
    limits: Limits,
    /// Who learns of stream runs; set once the node has built it (it needs the cluster,
    /// which needs the registry).
    observer: Arc<std::sync::OnceLock<Arc<dyn observer::StreamObserver>>>,
}

/// A session that was admitted by its stream and now needs its media attached.
pub struct AdmittedSession {
    /// The stream's broadcast.
    pub broadcast: Arc<Broadcast>,
    /// The session's actor.
    pub actor: ActorRef<SessionMsg>,
}

impl StreamRegistry {
    /// An empty registry. A publisher that drops may come back within `reconnect_grace`.
    /// Beyond `limits` (or while the viewers' engine lags, `viewer_engine_load`) new sessions
    /// are refused.
    pub fn new(
        viewer_engine_load: Arc<EngineLoad>,
        reconnect_grace: Duration,
        limits: Limits,
    ) -> Self {
        Self {
            tables: Arc::default(),
            viewer_engine_load,
            reconnect_grace,
            limits,
            observer: Arc::default(),
        }
    }

    /// Sets who learns of stream runs started on this node (once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn observer::StreamObserver>) {
        let _ = self.observer.set(observer);
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn observer::StreamObserver>> {
        self.observer.get()
    }

    /// Whether one more session of `kind` fits on this node now ([`crate::admission`]).
    pub fn check_capacity(&self, kind: SessionKind) -> Result<(), RoleError> {
        let (viewers, publishers) = {
            let tables = self.lock();
            (tables.viewers, tables.publishers)
        };
        admission::decide(kind, viewers, publishers, self.limits, self.viewer_engine_load.get()).map_err(
            |overload| {
                metrics::counter!("cascade_admission_refusals_total", "kind" => kind.label(), "reason" => overload.label())
                    .increment(1);
                RoleError::Overloaded(overload)
            },
        )
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Plain maps; a panic elsewhere cannot leave them half-updated.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a session on a stream: a publisher creates the stream if needed (and is refused
    /// if one is live), a viewer needs the stream to exist.
    ///
    /// A publisher refused because another one is live is asked again once
    /// [`stream::PUBLISHER_GONE_AFTER`] later: an encoder that crashed and reconnects at once
    /// finds its old session still live, and without the second look it would be locked out
    /// until a timeout noticed. If the old one is still sending, the answer is `409` as before.
    pub async fn admit(
        &self,
        stream: &StreamId,
        admission: Admission,
    ) -> Result<AdmittedSession, RoleError> {
        match self.admit_once(stream, admission.clone()).await {
            Err(RoleError::PublisherAlreadyLive(_)) if admission.kind == SessionKind::Publisher => {
                tokio::time::sleep(stream::PUBLISHER_GONE_AFTER).await;
                self.admit_once(stream, admission).await
            }
            other => other,
        }
    }

    async fn admit_once(
        &self,
        stream: &StreamId,
        admission: Admission,
    ) -> Result<AdmittedSession, RoleError> {
        let kind = admission.kind;
        // A stream actor that just stopped may still be listed: retry once with a fresh one.
        for _ in 0..2 {
            let (actor, broadcast) = match self.lookup(stream) {
                Some(found) => found,
                None if kind == SessionKind::Publisher => self.create(stream).await?,
                None => return Err(RoleError::StreamNotFound(stream.clone())),
            };
            let reply = ractor::call!(actor, |reply| StreamMsg::Admit {
                admission: Box::new(admission.clone()),
                reply
            });
            match reply {
                Ok(result) => {
                    let actor = result?;
                    return Ok(AdmittedSession { broadcast, actor });
                }
                Err(_) => self.forget_stream(stream, &actor),
            }
        }
        Err(RoleError::Unavailable(format!(
            "stream {stream} is restarting, try again"
        )))
    }

    /// The broadcast of a live stream on this node.
    pub fn broadcast(&self, stream: &StreamId) -> Option<Arc<Broadcast>> {
        self.lock().streams.get(stream).map(|e| e.broadcast.clone())
    }

    fn lookup(&self, stream: &StreamId) -> Option<(ActorRef<StreamMsg>, Arc<Broadcast>)> {
        self.lock()
            .streams
            .get(stream)
            .map(|e| (e.actor.clone(), e.broadcast.clone()))
    }

    async fn create(
        &self,
        stream: &StreamId,
    ) -> Result<(ActorRef<StreamMsg>, Arc<Broadcast>), RoleError> {
        let broadcast = Broadcast::new(stream.clone());
        let args = stream::StreamArgs {
            broadcast: broadcast.clone(),
            registry: self.clone(),
            reconnect_grace: self.reconnect_grace,
        };
        let (actor, _) = Actor::spawn(None, StreamActor, args)
            .await
            .map_err(|e| RoleError::Unavailable(format!("cannot start stream actor: {e}")))?;
        let mut tables = self.lock();
        // Two publishers racing to create the same stream: the first one wins, the other's
        // fresh actor is stopped and it is admitted (or refused) by the winner.
        if let Some(existing) = tables.streams.get(stream) {
            actor.stop(None);
            return Ok((existing.actor.clone(), existing.broadcast.clone()));
        }
        tables.streams.insert(
            stream.clone(),
            StreamEntry {
                actor: actor.clone(),
                broadcast: broadcast.clone(),
            },
        );
        metrics::gauge!("cascade_streams_live").set(tables.streams.len() as f64);
        Ok((actor, broadcast))
    }

    pub(crate) fn forget_stream(&self, stream: &StreamId, actor: &ActorRef<StreamMsg>) {
        let mut tables = self.lock();
        if tables
            .streams
            .get(stream)
            .is_some_and(|e| e.actor.get_id() == actor.get_id())
        {
            tables.streams.remove(stream);
        }
        metrics::gauge!("cascade_streams_live").set(tables.streams.len() as f64);
    }

    pub(crate) fn register_session(
        &self,
        id: SessionId,
        stream: StreamId,
        kind: SessionKind,
        actor: ActorRef<SessionMsg>,
        client: Client,
    ) {
        let mut tables = self.lock();
        let previous = tables.sessions.insert(
            id,
            SessionEntry {
                stream,
                kind,
                actor,
                client,
            },
        );
        if previous.is_none() {
            tables.count(kind, true);
        }
    }

    pub(crate) fn forget_session(&self, id: SessionId) {
        let mut tables = self.lock();
        if let Some(entry) = tables.sessions.remove(&id) {
            tables.count(entry.kind, false);
        }
    }

    /// Ends a session at the request of its owner or an operator (HTTP DELETE). The stream
    /// the id and the kind (WHIP or WHEP) must all match the `Location` it was created with.
    pub fn end_session(
        &self,
        stream: &StreamId,
        kind: SessionKind,
        session: &str,
        ender: Ender<'_>,
    ) -> Result<(), RoleError> {
        let not_found = || RoleError::SessionNotFound {
            stream: stream.clone(),
            session: session.chars().take(40).collect(),
        };
        let id = SessionId::parse(session).ok_or_else(not_found)?;
        let tables = self.lock();
        let entry = tables
            .sessions
            .get(&id)
            .filter(|e| &e.stream == stream && e.kind == kind)
            .ok_or_else(not_found)?;
        let allowed = match ender {
            Ender::Operator => true,
            Ender::Holder(bearer) => entry.client.is_owner(bearer),
        };
        if !allowed {
            return Err(RoleError::NotSessionOwner {
                stream: stream.clone(),
            });
        }
        let _ = entry.actor.cast(SessionMsg::Delete);
        Ok(())
    }

    pub(crate) fn record_ended(&self, ended: EndedSession) {
        if let Some(observer) = self.observer() {
            observer.session_ended(&ended);
        }
        let mut tables = self.lock();
        if tables.ended.len() == ENDED_SESSIONS_KEPT {
            tables.ended.pop_front();
        }
        tables.ended.push_back(ended);
    }

    /// The most recent session ends on this node, newest first.
    pub fn ended_sessions(&self) -> Vec<EndedSession> {
        self.lock().ended.iter().rev().cloned().collect()
    }

    /// What every live stream looks like now.
    pub async fn list(&self) -> Vec<StreamInfo> {
        let actors: Vec<ActorRef<StreamMsg>> = self
            .lock()
            .streams
            .values()
            .map(|e| e.actor.clone())
            .collect();
        let mut infos = Vec::with_capacity(actors.len());
        for actor in actors {
            if let Ok(info) = ractor::call!(actor, StreamMsg::Info) {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        infos
    }

    /// What one stream looks like now.
    pub async fn info(&self, stream: &StreamId) -> Result<StreamInfo, RoleError> {
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, StreamMsg::Info).map_err(|_| RoleError::StreamNotFound(stream.clone()))
    }

    /// Starts pushing a live stream to the RTMP target at `url`.
    pub async fn add_restream(
        &self,
        stream: &StreamId,
        url: &str,
    ) -> Result<restream::RestreamInfo, RoleError> {
        let target = cascade_protocol::rtmp::client::RtmpTarget::parse(url)
            .map_err(|e| RoleError::BadIngest(e.to_string()))?;
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, |reply| StreamMsg::AddRestream { target, reply })
            .map_err(|_| RoleError::StreamNotFound(stream.clone()))?
    }

    /// Stops restream `id` of a stream; `Ok(false)` when it has no such restream.
    pub async fn remove_restream(&self, stream: &StreamId, id: u64) -> Result<bool, RoleError> {
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, |reply| StreamMsg::RemoveRestream { id, reply })
            .map_err(|_| RoleError::StreamNotFound(stream.clone()))
    }

    /// The restreams of a stream and how each is doing.
    pub async fn restreams(
        &self,
        stream: &StreamId,
    ) -> Result<Vec<restream::RestreamInfo>, RoleError> {
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, StreamMsg::Restreams)
            .map_err(|_| RoleError::StreamNotFound(stream.clone()))
    }

    /// Every publisher and viewer session of a live stream, longest-connected first.
    pub async fn sessions(&self, stream: &StreamId) -> Result<Vec<SessionInfo>, RoleError> {
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, StreamMsg::Sessions)
            .map_err(|_| RoleError::StreamNotFound(stream.clone()))
    }
}
