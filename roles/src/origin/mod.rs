//! The origin role: live streams on this node, each owned by a stream actor, and WHIP ingest.
//!
//! [`StreamRegistry`] is the node's table of streams and sessions. It is control-plane only
//! (touched when sessions start and end, never per packet), so a mutex-guarded map is enough.

pub mod stream;
pub mod whip;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cascade_protocol::StreamId;
use ractor::{Actor, ActorRef};

use crate::RoleError;
use crate::broadcast::Broadcast;
use crate::session::{SessionId, SessionKind, SessionMsg};
use crate::webrtc::WebRtcEngine;

pub use stream::{SessionInfo, StreamActor, StreamInfo, StreamMsg};

struct StreamEntry {
    actor: ActorRef<StreamMsg>,
    broadcast: Arc<Broadcast>,
}

#[derive(Default)]
struct Tables {
    streams: HashMap<StreamId, StreamEntry>,
    sessions: HashMap<SessionId, (StreamId, ActorRef<SessionMsg>)>,
}

/// The streams and sessions of this node. Cheap to clone.
#[derive(Clone)]
pub struct StreamRegistry {
    tables: Arc<Mutex<Tables>>,
    engine: WebRtcEngine,
    reconnect_grace: Duration,
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
    pub fn new(engine: WebRtcEngine, reconnect_grace: Duration) -> Self {
        Self {
            tables: Arc::default(),
            engine,
            reconnect_grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Plain maps; a panic elsewhere cannot leave them half-updated.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The WebRTC engine of this node.
    pub fn engine(&self) -> &WebRtcEngine {
        &self.engine
    }

    /// Admits a session on a stream: a publisher creates the stream if needed (and is refused
    /// if one is live), a viewer needs the stream to exist.
    pub async fn admit(
        &self,
        stream: &StreamId,
        kind: SessionKind,
        session: SessionId,
        protocol: &'static str,
        remote: Option<SocketAddr>,
    ) -> Result<AdmittedSession, RoleError> {
        // A stream actor that just stopped may still be listed: retry once with a fresh one.
        for _ in 0..2 {
            let (actor, broadcast) = match self.lookup(stream) {
                Some(found) => found,
                None if kind == SessionKind::Publisher => self.create(stream).await?,
                None => return Err(RoleError::StreamNotFound(stream.clone())),
            };
            let reply = ractor::call!(actor, |reply| StreamMsg::Admit {
                kind,
                session,
                protocol,
                remote,
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
        actor: ActorRef<SessionMsg>,
    ) {
        self.lock().sessions.insert(id, (stream, actor));
    }

    pub(crate) fn forget_session(&self, id: SessionId) {
        self.lock().sessions.remove(&id);
    }

    /// Ends a session at the client's request (HTTP DELETE).
    pub fn end_session(&self, stream: &StreamId, session: &str) -> Result<(), RoleError> {
        let not_found = || RoleError::SessionNotFound {
            stream: stream.clone(),
            session: session.chars().take(32).collect(),
        };
        let id = SessionId::parse(session).ok_or_else(not_found)?;
        let tables = self.lock();
        match tables.sessions.get(&id) {
            Some((owner, actor)) if owner == stream => {
                let _ = actor.cast(SessionMsg::Delete);
                Ok(())
            }
            _ => Err(not_found()),
        }
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

    /// Every publisher and viewer session of a live stream, longest-connected first.
    pub async fn sessions(&self, stream: &StreamId) -> Result<Vec<SessionInfo>, RoleError> {
        let (actor, _) = self
            .lookup(stream)
            .ok_or_else(|| RoleError::StreamNotFound(stream.clone()))?;
        ractor::call!(actor, StreamMsg::Sessions)
            .map_err(|_| RoleError::StreamNotFound(stream.clone()))
    }
}
