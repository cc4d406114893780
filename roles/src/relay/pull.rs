//! The edge side of the relay: one pull per (stream) shared by all of this node's viewers.
//!
//! A pull admits itself as the stream's publisher (protocol `relay`), so the local stream
//! actor, API and viewer sessions work exactly as for a local publisher. It subscribes to
//! the catalog, then to each track, and writes what arrives into the local broadcast. When
//! the upstream goes away (origin died, stream moved) it keeps its viewers' sessions, asks
//! where the stream lives now and subscribes again; the local timeline keeps timestamps
//! continuous and viewers resume at the next keyframe. It ends a short while after its
//! last viewer leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::media::{TrackInfo, WebRtcPlan};
use cascade_protocol::relay::Role;
use ractor::ActorRef;
use tokio::sync::mpsc;

use super::connection::{PullEvent, PullTarget, RelayConnection, RelaySource};
use super::group::CATALOG_TRACK;
use crate::RoleError;
use crate::broadcast::Broadcast;
use crate::origin::StreamRegistry;
use crate::quic::{ALPN_RELAY, NodeEndpoint};
use crate::session::{Admission, Client, SessionId, SessionKind, SessionMsg, Transport};

/// How long a pull outlives its last viewer (a viewer reconnecting meanwhile reuses it).
pub const PULL_LINGER: Duration = Duration::from_secs(5);
/// Longest wait for the upstream's catalog before trying again.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts when the upstream is unreachable or has no such stream.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// A pull whose stream has no origin this long ends; the local stream's reconnect grace then
/// decides when its viewers are told.
const NO_ORIGIN_GIVE_UP: Duration = Duration::from_secs(10);
/// How often a pull looks whether this node's consumers want a rendition it does not pull.
const DEMAND_CHECK: Duration = Duration::from_millis(250);
/// Longest wait, when a pull starts, for its first keyframe before the viewer is answered.
const FIRST_KEYFRAME_WAIT: Duration = Duration::from_secs(3);

/// Tells a pull where a stream's origin is now: its relay (QUIC) address, or `None` when
/// it has no origin, or this node is it.
pub trait OriginLocator: Send + Sync + 'static {
    /// The origin of `stream`.
    fn origin_of(&self, stream: &StreamId) -> Option<SocketAddr>;
}

/// This node's relay: serves its streams to other nodes and pulls theirs. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: NodeEndpoint,
    registry: StreamRegistry,
    locator: Arc<dyn OriginLocator>,
    connections: Mutex<HashMap<SocketAddr, RelayConnection>>,
    pulls: Mutex<HashMap<StreamId, PullHandle>>,
    /// Held while a pull is being set up, so that concurrent viewers share one.
    starting: tokio::sync::Mutex<()>,
}

/// A running pull, as the relay keeps it.
struct PullHandle {
    broadcast: Arc<Broadcast>,
    /// Transcoders of this node working from the pull (see [`Relay::hold`]).
    holds: Arc<AtomicUsize>,
    /// Others of this node working from the pull whatever the viewers (packagers).
    keeps: Arc<AtomicUsize>,
    /// Asks the pull to end now (the stream is published on this node instead).
    stop: Arc<tokio::sync::Notify>,
    /// Told when the pull has ended and its publisher session is gone.
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl RelaySource for StreamRegistry {
    fn find(&self, name: &str) -> Option<Arc<Broadcast>> {
        let id = StreamId::parse(name).ok()?;
        self.broadcast(&id)
    }
}

impl Relay {
    /// A relay on `endpoint` serving and feeding `registry`.
    pub fn new(
        endpoint: NodeEndpoint,
        registry: StreamRegistry,
        locator: Arc<dyn OriginLocator>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint,
                registry,
                locator,
                connections: Mutex::default(),
                pulls: Mutex::default(),
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether `stream`'s origin is another node (this node would pull it).
    pub fn origin_elsewhere(&self, stream: &StreamId) -> bool {
        self.inner.locator.origin_of(stream).is_some()
    }

    /// Serves a connection another node opened with the relay ALPN.
    pub fn accept(&self, connection: quinn::Connection) {
        let source: Arc<dyn RelaySource> = Arc::new(self.inner.registry.clone());
        RelayConnection::start(connection, Role::Server, Some(source));
    }

    /// Ends the pull of `stream`, if any, and returns once its publisher session is gone: a
    /// publisher is about to publish the stream on this node. Viewers stay; the stream's
    /// reconnect grace covers the switch and the new publisher continues the timeline.
    pub async fn release(&self, stream: &StreamId) {
        let handle = lock(&self.inner.pulls).remove(stream);
        let Some(mut handle) = handle else {
            return;
        };
        handle.stop.notify_one();
        if let Some(done) = handle.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
        tracing::info!(%stream, "relay pull released: the stream is published on this node now");
    }

    /// Makes sure `stream` is pulled from its origin; returns once its first keyframe is
    /// here (or after a few seconds, when the origin has not sent one yet).
    pub async fn ensure_pulled(&self, stream: &StreamId) -> Result<(), RoleError> {
        let broadcast = self.pull(stream).await?;
        let deadline = Instant::now() + FIRST_KEYFRAME_WAIT;
        let video = broadcast.source(cascade_protocol::media::MediaKind::Video);
        while !video.has_current_group() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Pulls `stream` for a transcoder on this node, for as long as the returned hold lives:
    /// the pull then lasts without viewers, and subscribes to the source tracks only (the
    /// renditions are made here; the origin's copies of them came from here or from the
    /// other transcoder, and pulling them would feed them back in a loop).
    pub async fn hold(&self, stream: &StreamId) -> Result<PullHold, RoleError> {
        // Counted before a new pull subscribes to anything (it must never take a rendition).
        let _starting = self.inner.starting.lock().await;
        let existing = lock(&self.inner.pulls)
            .get(stream)
            .map(|h| (h.broadcast.clone(), h.holds.clone()));
        let (broadcast, holds) = match existing {
            Some((broadcast, holds)) => {
                holds.fetch_add(1, Ordering::Relaxed);
                (broadcast, holds)
            }
            None => {
                let holds = Arc::new(AtomicUsize::new(1));
                let broadcast = self.start_pull(stream, holds.clone()).await?;
                (broadcast, holds)
            }
        };
        Ok(PullHold {
            broadcast,
            count: holds,
        })
    }

    /// Pulls `stream` for a packager on this node, for as long as the returned hold lives:
    /// the pull lasts without viewers and takes tracks as an edge's does (the packager's
    /// subscriptions to renditions are the demand for them).
    pub async fn keep(&self, stream: &StreamId) -> Result<PullHold, RoleError> {
        self.pull(stream).await?;
        let keeps = lock(&self.inner.pulls)
            .get(stream)
            .map(|h| (h.broadcast.clone(), h.keeps.clone()));
        let Some((broadcast, keeps)) = keeps else {
            return Err(RoleError::StreamNotFound(stream.clone()));
        };
        keeps.fetch_add(1, Ordering::Relaxed);
        Ok(PullHold {
            broadcast,
            count: keeps,
        })
    }

    /// The broadcast of the pull of `stream`, started if needed. Concurrent callers share one
    /// pull: the second would otherwise be refused as a second publisher.
    async fn pull(&self, stream: &StreamId) -> Result<Arc<Broadcast>, RoleError> {
        let _starting = self.inner.starting.lock().await;
        let existing = lock(&self.inner.pulls)
            .get(stream)
            .map(|h| h.broadcast.clone());
        match existing {
            Some(b) => Ok(b),
            None => self.start_pull(stream, Arc::new(AtomicUsize::new(0))).await,
        }
    }

    /// Starts the pull of `stream` (the caller holds `starting`), with `holds` transcoders
    /// working from it.
    async fn start_pull(
        &self,
        stream: &StreamId,
        holds: Arc<AtomicUsize>,
    ) -> Result<Arc<Broadcast>, RoleError> {
        if self.inner.locator.origin_of(stream).is_none() {
            return Err(RoleError::StreamNotFound(stream.clone()));
        }
        let session = SessionId::random();
        let admitted = self
            .inner
            .registry
            .admit(
                stream,
                Admission {
                    kind: SessionKind::Publisher,
                    session,
                    protocol: "relay",
                    client: Client::default(),
                    liveness: None,
                    transport: Transport::Relay,
                },
            )
            .await?;
        let broadcast = admitted.broadcast.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let keeps = Arc::new(AtomicUsize::new(0));
        lock(&self.inner.pulls).insert(
            stream.clone(),
            PullHandle {
                broadcast: broadcast.clone(),
                holds: holds.clone(),
                keeps: keeps.clone(),
                stop: stop.clone(),
                done: Some(done),
            },
        );
        tracing::info!(%stream, "pulling the stream from its origin over the relay");
        let pull = Pull {
            stream: stream.clone(),
            broadcast: admitted.broadcast,
            actor: admitted.actor,
            stop,
            holds,
            keeps,
        };
        tokio::spawn(self.clone().run_pull(pull, done_tx));
        Ok(broadcast)
    }

    pub(super) async fn connection(&self, addr: SocketAddr) -> Result<RelayConnection, RoleError> {
        if let Some(existing) = lock(&self.inner.connections).get(&addr)
            && existing.is_open()
        {
            return Ok(existing.clone());
        }
        let connection = self.inner.endpoint.dial(addr, ALPN_RELAY).await?;
        let source: Arc<dyn RelaySource> = Arc::new(self.inner.registry.clone());
        let relay = RelayConnection::start(connection, Role::Client, Some(source));
        lock(&self.inner.connections).insert(addr, relay.clone());
        Ok(relay)
    }

    async fn run_pull(self, pull: Pull, done: tokio::sync::oneshot::Sender<()>) {
        let mut idle_since: Option<Instant> = None;
        let mut no_origin_since: Option<Instant> = None;
        let stream = &pull.stream;
        let outcome = loop {
            let attempt = self.pull_once(&pull, &mut idle_since).await;
            for track in pull.broadcast.tracks() {
                // A transcoder here feeds its renditions: they are not the pull's to end.
                if !track.made_here() {
                    track.end_source();
                }
            }
            match attempt {
                Attempt::Idle => break "no viewers left",
                Attempt::StreamGone => break "the local stream ended",
                Attempt::Released => break "the stream is published on this node now",
                Attempt::NoOrigin => {
                    let since = *no_origin_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= NO_ORIGIN_GIVE_UP {
                        break "the stream has had no origin for a while";
                    }
                }
                Attempt::Lost(reason) => {
                    no_origin_since = None;
                    metrics::counter!("cascade_relay_pull_interruptions_total").increment(1);
                    tracing::warn!(%stream, %reason, "relay pull interrupted; finding the origin again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        {
            let mut pulls = lock(&self.inner.pulls);
            // A released pull is already gone; a new one may have taken its place since.
            if pulls
                .get(stream)
                .is_some_and(|h| Arc::ptr_eq(&h.stop, &pull.stop))
            {
                pulls.remove(stream);
            }
        }
        tracing::info!(%stream, outcome, "relay pull ended");
        let _ = pull
            .actor
            .stop_and_wait(Some("deleted".into()), Some(Duration::from_secs(2)))
            .await;
        let _ = done.send(());
    }

    /// One subscription to the stream's current origin, until it breaks or is no longer
    /// needed.
    async fn pull_once(&self, pull: &Pull, idle_since: &mut Option<Instant>) -> Attempt {
        let (stream, broadcast) = (&pull.stream, &pull.broadcast);
        let Some(origin) = self.inner.locator.origin_of(stream) else {
            return match self
                .wait_tick(pull, idle_since, "the stream has no origin")
                .await
            {
                Attempt::Lost(_) => Attempt::NoOrigin,
                other => other,
            };
        };
        let connection = match self.connection(origin).await {
            Ok(c) => c,
            Err(e) => {
                return self.wait_tick(pull, idle_since, &e.to_string()).await;
            }
        };
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let Some(catalog_id) = connection
            .subscribe(
                stream.as_str(),
                CATALOG_TRACK,
                PullTarget::Catalog,
                events_tx.clone(),
            )
            .await
        else {
            return Attempt::Lost("relay connection closed".into());
        };
        let catalog = tokio::time::timeout(CATALOG_TIMEOUT, wait_catalog(&mut events)).await;
        connection.unsubscribe(catalog_id);
        let catalog = match catalog {
            Ok(Ok(catalog)) if !catalog.is_empty() => catalog,
            Ok(Ok(_)) => {
                return self
                    .wait_tick(pull, idle_since, "the origin has no tracks yet")
                    .await;
            }
            Ok(Err(reason)) => return self.wait_tick(pull, idle_since, &reason).await,
            Err(_) => return Attempt::Lost("no catalog from the origin".into()),
        };
        let mut tracks = TrackDemand::default();
        if let Err(lost) = sync_tracks(&mut tracks, &connection, pull, &catalog, &events_tx).await {
            return lost;
        }
        tracing::info!(%stream, %origin, tracks = catalog.len(), "relay pull subscribed");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut demand = tokio::time::interval(DEMAND_CHECK);
        // Tracks appear after a stream starts (a transcoder's renditions): the catalog is
        // asked for again every tick and new tracks are subscribed to as they are wanted.
        let mut catalog_refresh: Option<u64> = None;
        let mut known = catalog;
        let attempt = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(PullEvent::Ended { reason, .. }) => break Attempt::Lost(reason),
                    Some(PullEvent::Catalog(catalog)) => {
                        if let Some(id) = catalog_refresh.take() {
                            connection.unsubscribe(id);
                        }
                        known = catalog;
                        if let Err(lost) = sync_tracks(&mut tracks, &connection, pull, &known, &events_tx).await {
                            break lost;
                        }
                    }
                    Some(_) => {}
                    None => break Attempt::Lost("relay connection closed".into()),
                },
                () = pull.stop.notified() => break Attempt::Released,
                _ = demand.tick() => {
                    if let Err(lost) = sync_tracks(&mut tracks, &connection, pull, &known, &events_tx).await {
                        break lost;
                    }
                }
                _ = tick.tick() => {
                    if let Some(done) = self.check_needed(pull, idle_since).await {
                        break done;
                    }
                    if tracks.any(|name| (pull.held() && !is_source(name)) || made_here(broadcast, name)) {
                        break Attempt::Lost("a transcoder here makes the renditions now".into());
                    }
                    if self.inner.locator.origin_of(stream) != Some(origin) {
                        break Attempt::Lost("the stream's origin moved".into());
                    }
                    if let Some(id) = catalog_refresh.take() {
                        connection.unsubscribe(id);
                    }
                    catalog_refresh = connection
                        .subscribe(stream.as_str(), CATALOG_TRACK, PullTarget::Catalog, events_tx.clone())
                        .await;
                }
            }
        };
        if let Some(id) = catalog_refresh {
            connection.unsubscribe(id);
        }
        for id in tracks.ids() {
            connection.unsubscribe(id);
        }
        attempt
    }

    /// Waits a moment before the next attempt, unless the pull is no longer needed.
    async fn wait_tick(
        &self,
        pull: &Pull,
        idle_since: &mut Option<Instant>,
        reason: &str,
    ) -> Attempt {
        tracing::debug!(stream = %pull.stream, reason, "relay pull waiting");
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = pull.stop.notified() => return Attempt::Released,
        }
        self.check_needed(pull, idle_since)
            .await
            .unwrap_or_else(|| Attempt::Lost(reason.to_owned()))
    }

    /// `Some` when the pull should stop: its stream ended or nobody watched for a while.
    async fn check_needed(&self, pull: &Pull, idle_since: &mut Option<Instant>) -> Option<Attempt> {
        let (stream, actor) = (&pull.stream, &pull.actor);
        if actor.get_status() != ractor::ActorStatus::Running {
            return Some(Attempt::StreamGone);
        }
        let viewers = match self.inner.registry.info(stream).await {
            Ok(info) => {
                info.viewers
                    + pull.holds.load(Ordering::Relaxed)
                    + pull.keeps.load(Ordering::Relaxed)
            }
            Err(_) => return Some(Attempt::StreamGone),
        };
        let now = Instant::now();
        if pull_is_idle(viewers, idle_since, now) {
            return Some(Attempt::Idle);
        }
        None
    }
}

/// Whether a transcoder on this node made `broadcast`'s track `name` (never pulled then).
fn made_here(broadcast: &Broadcast, name: &str) -> bool {
    broadcast.track(name).is_some_and(|t| t.made_here())
}

/// Which tracks of an upstream's catalog a node pulls now, and what it pulls already: each
/// subscription's id and since when nothing here consumed its track. Shared by an edge's
/// pull and an origin's pull of a remote transcoder's renditions.
#[derive(Default)]
pub(super) struct TrackDemand {
    subscribed: HashMap<String, (u64, Option<Instant>)>,
}

/// One thing [`TrackDemand::plan`] asks of its caller.
pub(super) enum DemandStep<'a> {
    /// Subscribe to this track (then [`TrackDemand::subscribed`]).
    Subscribe(&'a TrackInfo),
    /// Nothing here consumes this track any more: end this subscription.
    Unsubscribe(String, u64),
    /// Not wanted now; list it all the same (viewers may pin it, or move to it).
    Announce(&'a TrackInfo),
}

impl TrackDemand {
    /// What to do now with `catalog`'s `eligible` tracks, given how many consumers each has
    /// here (`local`), by [`wants_track`]: sources and the renditions WebRTC viewers get by
    /// default always, others while consumed and for [`PULL_LINGER`] after.
    pub(super) fn plan<'a>(
        &mut self,
        catalog: &'a [TrackInfo],
        eligible: impl Fn(&TrackInfo) -> bool,
        local: impl Fn(&str) -> usize,
        now: Instant,
    ) -> Vec<DemandStep<'a>> {
        let plan = WebRtcPlan::for_catalog(catalog).ok();
        let mut steps = Vec::new();
        for info in catalog.iter().filter(|i| eligible(i)) {
            let name = info.name.as_str();
            let always = is_source(name)
                || plan.as_ref().is_some_and(|p| {
                    p.video.as_deref() == Some(name) || p.audio.as_deref() == Some(name)
                });
            let consumers = local(name);
            match self.subscribed.get_mut(name) {
                Some((id, idle_since)) => {
                    if !wants_track(always, consumers, idle_since, now) {
                        steps.push(DemandStep::Unsubscribe(name.to_owned(), *id));
                        self.subscribed.remove(name);
                    }
                }
                // Not pulled yet: only a consumer or the default starts it (the linger is
                // for tracks that were wanted).
                None if always || consumers > 0 => steps.push(DemandStep::Subscribe(info)),
                None => steps.push(DemandStep::Announce(info)),
            }
        }
        steps
    }

    /// `name` is pulled now, by subscription `id`.
    pub(super) fn subscribed(&mut self, name: &str, id: u64) {
        self.subscribed.insert(name.to_owned(), (id, None));
    }

    /// Whether `predicate` holds for a track pulled now.
    fn any(&self, predicate: impl Fn(&str) -> bool) -> bool {
        self.subscribed.keys().any(|name| predicate(name))
    }

    /// The subscriptions to end when the pull ends.
    pub(super) fn ids(self) -> impl Iterator<Item = u64> {
        self.subscribed.into_values().map(|(id, _)| id)
    }
}

/// Applies an edge pull's [`TrackDemand`] to `catalog`: subscribes, unsubscribes, announces.
async fn sync_tracks(
    demand: &mut TrackDemand,
    connection: &RelayConnection,
    pull: &Pull,
    catalog: &[TrackInfo],
    events: &mpsc::UnboundedSender<PullEvent>,
) -> Result<(), Attempt> {
    let broadcast = &pull.broadcast;
    let eligible = |info: &TrackInfo| {
        // A transcoder here takes the sources only, and never a track it makes.
        (!pull.held() || is_source(&info.name)) && !made_here(broadcast, &info.name)
    };
    let local = |name: &str| broadcast.track(name).map_or(0, |t| t.subscribers());
    for step in demand.plan(catalog, eligible, local, Instant::now()) {
        match step {
            DemandStep::Subscribe(info) => {
                // Renditions keep the origin's timestamps, so that their groups start
                // exactly where the source's do however late they are pulled.
                let keep_timestamps = pull.held() || !is_source(&info.name);
                match subscribe_track(connection, broadcast, info, events, keep_timestamps).await {
                    Some(id) => demand.subscribed(&info.name, id),
                    None => return Err(Attempt::Lost("relay connection closed".into())),
                }
            }
            DemandStep::Unsubscribe(name, id) => {
                connection.unsubscribe(id);
                if let Some(track) = broadcast.track(&name) {
                    track.end_source();
                }
                tracing::debug!(stream = %pull.stream, track = %name, "relay pull: nobody here consumes this rendition; unsubscribed");
            }
            DemandStep::Announce(info) => announce_track(broadcast, info),
        }
    }
    Ok(())
}

/// Whether an edge pulls a track: a source, or the rendition WebRTC viewers get by default,
/// always (`always`); another rendition while something here consumes it (`local`
/// subscribers), and for [`PULL_LINGER`] after the last one left (`idle_since`, kept up to
/// date). Just in time across the cluster: a rung nobody watches anywhere is not encoded.
pub fn wants_track(
    always: bool,
    local: usize,
    idle_since: &mut Option<Instant>,
    now: Instant,
) -> bool {
    if always || local > 0 {
        *idle_since = None;
        return true;
    }
    let since = *idle_since.get_or_insert(now);
    now.duration_since(since) < PULL_LINGER
}

/// Lists a track the origin has in the local catalog without pulling its frames.
fn announce_track(broadcast: &Broadcast, info: &TrackInfo) {
    let track = broadcast.track_or_add(&info.name, info.kind);
    if track.info().is_none() {
        track.begin_derived(
            TrackInfo {
                relayed: true,
                ..info.clone()
            },
            None,
        );
    }
}

/// Whether `name` is a source track (what a transcoder works from).
fn is_source(name: &str) -> bool {
    name == cascade_protocol::media::VIDEO_SOURCE || name == cascade_protocol::media::AUDIO_SOURCE
}

/// A transcoder's or packager's claim on a pull (see [`Relay::hold`], [`Relay::keep`]);
/// released when dropped.
pub struct PullHold {
    broadcast: Arc<Broadcast>,
    count: Arc<AtomicUsize>,
}

impl PullHold {
    /// The local copy of the stream.
    pub fn broadcast(&self) -> &Arc<Broadcast> {
        &self.broadcast
    }
}

impl Drop for PullHold {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Subscribes to one track of the upstream's catalog, writing into the local broadcast's
/// track of that name (with the upstream's timestamps as they are when `keep_timestamps`);
/// `None` when the connection closed.
async fn subscribe_track(
    connection: &RelayConnection,
    broadcast: &Broadcast,
    info: &TrackInfo,
    events: &mpsc::UnboundedSender<PullEvent>,
    keep_timestamps: bool,
) -> Option<u64> {
    let track = broadcast.track_or_add(&info.name, info.kind);
    let id_cell = Arc::new(AtomicU64::new(u64::MAX));
    let upstream = {
        let connection = connection.clone();
        let id_cell = id_cell.clone();
        Arc::new(move || {
            let id = id_cell.load(Ordering::Relaxed);
            if id != u64::MAX {
                connection.request_keyframe(id);
            }
        })
    };
    let info = TrackInfo {
        relayed: true,
        ..info.clone()
    };
    if keep_timestamps {
        // A transcoder works from this copy: its renditions must start their groups at the
        // origin's very timestamps (another node's transcoder of the same stream does too).
        track.begin_derived(info.clone(), Some(upstream));
    } else {
        track.begin_source(info.clone(), Some(upstream));
    }
    let id = connection
        .subscribe(
            broadcast.id().as_str(),
            &info.name,
            PullTarget::Track(track),
            events.clone(),
        )
        .await?;
    id_cell.store(id, Ordering::Relaxed);
    Some(id)
}

/// Whether a pull with `viewers` has been without any for [`PULL_LINGER`]; keeps track of
/// when the last one left in `idle_since`.
pub fn pull_is_idle(viewers: usize, idle_since: &mut Option<Instant>, now: Instant) -> bool {
    if viewers > 0 {
        *idle_since = None;
        return false;
    }
    let since = *idle_since.get_or_insert(now);
    now.duration_since(since) >= PULL_LINGER
}

/// What a running pull owns.
struct Pull {
    stream: StreamId,
    broadcast: Arc<Broadcast>,
    /// Its publisher session on the local stream.
    actor: ActorRef<SessionMsg>,
    stop: Arc<tokio::sync::Notify>,
    /// Transcoders of this node working from it.
    holds: Arc<AtomicUsize>,
    /// Packagers of this node working from it.
    keeps: Arc<AtomicUsize>,
}

impl Pull {
    /// A transcoder here works from the pull: it takes the source tracks only.
    fn held(&self) -> bool {
        self.holds.load(Ordering::Relaxed) > 0
    }
}

enum Attempt {
    Idle,
    StreamGone,
    /// [`Relay::release`] asked it to end.
    Released,
    /// The cluster names no origin for the stream.
    NoOrigin,
    Lost(String),
}

async fn wait_catalog(
    events: &mut mpsc::UnboundedReceiver<PullEvent>,
) -> Result<Vec<TrackInfo>, String> {
    loop {
        match events.recv().await {
            Some(PullEvent::Catalog(catalog)) => return Ok(catalog),
            Some(PullEvent::Subscribed) => {}
            Some(PullEvent::Ended { reason, .. }) => return Err(reason),
            None => return Err("relay connection closed".into()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendition_is_pulled_while_consumed_and_for_the_linger_time_after() {
        let t0 = Instant::now();
        let mut idle = None;
        assert!(wants_track(true, 0, &mut idle, t0), "the default, always");
        assert!(wants_track(false, 1, &mut idle, t0), "consumed");
        assert!(wants_track(
            false,
            0,
            &mut idle,
            t0 + Duration::from_secs(1)
        ));
        assert!(!wants_track(
            false,
            0,
            &mut idle,
            t0 + Duration::from_secs(1) + PULL_LINGER
        ));
        assert!(
            wants_track(false, 2, &mut idle, t0 + Duration::from_secs(9)),
            "back"
        );
        assert_eq!(idle, None);
    }

    #[test]
    fn a_pull_ends_only_after_it_has_had_no_viewers_for_the_linger_time() {
        let t0 = Instant::now();
        let mut idle = None;
        assert!(!pull_is_idle(3, &mut idle, t0));
        assert!(!pull_is_idle(0, &mut idle, t0));
        assert!(!pull_is_idle(0, &mut idle, t0 + PULL_LINGER / 2));
        assert!(
            !pull_is_idle(1, &mut idle, t0 + PULL_LINGER),
            "a viewer came back"
        );
        assert!(!pull_is_idle(0, &mut idle, t0 + PULL_LINGER * 2));
        assert!(pull_is_idle(0, &mut idle, t0 + PULL_LINGER * 3));
    }
}
