//! The origin's side of transcoders on other nodes: it pulls their renditions over the
//! relay into its own broadcast, so that edges and viewers find them where they find the
//! source, on the source's timeline.
//!
//! Each transcoder (the active one and, with `--transcoder-standby`, the standby) is one
//! [`RenditionPull`]; both feed each rendition track through one [`MergedTrack`], which
//! takes the frames of one of them at a time (`cascade_protocol::relay::merge`): when the
//! active one's node dies, the standby's next group goes on where the active one's stopped.
//! Only renditions the transcoder node made itself are pulled (never `*/source`, never a track
//! its catalog marks `relayed`), so a transcoder node, which pulls the source (and, once it
//! transcodes no more, may pull the renditions) from this origin, and this origin never feed
//! each other's tracks in a loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cascade_protocol::media::{AUDIO_SOURCE, MediaKind, TrackInfo, VIDEO_SOURCE};
use cascade_protocol::relay::RelayFrame;
use cascade_protocol::relay::merge::GroupMerge;
use tokio::sync::{Notify, mpsc};

use super::connection::{PullEvent, PullTarget};
use super::group::CATALOG_TRACK;
use super::pull::{DemandStep, Relay, TrackDemand};
use crate::broadcast::{Broadcast, KeyframeUpstream, Track};

/// Pause before pulling again from a transcoder that could not be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How often the transcoder's catalog is asked for again (renditions come and go).
const CATALOG_EVERY: Duration = Duration::from_secs(1);
/// How often the pull looks whether this node's consumers want a rendition it does not pull.
const DEMAND_CHECK: Duration = Duration::from_millis(250);

/// One local rendition track fed by one or two transcoders.
pub struct MergedTrack {
    track: Arc<Track>,
    merge: Mutex<GroupMerge>,
    epoch: Instant,
}

impl MergedTrack {
    /// A frame from upstream `from`: into the track if the merge takes it.
    pub(crate) fn offer(&self, from: u64, frame: &RelayFrame) {
        let now = Instant::now();
        let now_ms = now.duration_since(self.epoch).as_millis() as u64;
        // Held while publishing, so that two upstreams' frames go in in the order taken.
        let mut merge = self.merge.lock().unwrap_or_else(|p| p.into_inner());
        if merge.take(from, frame.timestamp, frame.keyframe, now_ms) {
            self.track.publish_reordered(
                frame.timestamp,
                frame.composition_offset,
                now,
                frame.keyframe,
                Arc::from(&frame.payload[..]),
            );
        }
    }
}

/// The merged rendition tracks of one broadcast, shared by its rendition pulls.
pub struct RenditionTracks {
    broadcast: Arc<Broadcast>,
    tracks: Mutex<HashMap<String, Arc<MergedTrack>>>,
}

impl RenditionTracks {
    /// Rendition tracks of `broadcast`, made as transcoders list them.
    pub fn new(broadcast: Arc<Broadcast>) -> Arc<Self> {
        Arc::new(RenditionTracks {
            broadcast,
            tracks: Mutex::new(HashMap::new()),
        })
    }

    /// Each rendition track with the upstream its frames come from now.
    pub fn current_upstreams(&self) -> Vec<(String, Option<u64>)> {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .iter()
            .map(|(name, merged)| {
                let merge = merged.merge.lock().unwrap_or_else(|p| p.into_inner());
                (name.clone(), merge.current())
            })
            .collect()
    }

    /// Consumers here of the rendition track `name` (0 before it is listed).
    fn subscribers(&self, name: &str) -> usize {
        let tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        tracks
            .get(name)
            .map_or(0, |merged| merged.track.subscribers())
    }

    /// The merged track for `info`, begun on first use with the source's timeline kept
    /// (`Track::begin_derived`); a keyframe request on it asks the source's publisher.
    fn track(&self, info: &TrackInfo) -> Arc<MergedTrack> {
        let info = &TrackInfo {
            relayed: true,
            ..info.clone()
        };
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(merged) = tracks.get(&info.name) {
            merged.track.update_info(|known| *known = info.clone());
            return Arc::clone(merged);
        }
        let track = self.broadcast.track_or_add(&info.name, info.kind);
        let source: Weak<Track> = Arc::downgrade(&self.broadcast.source(MediaKind::Video));
        let upstream: KeyframeUpstream = Arc::new(move || {
            if let Some(source) = source.upgrade() {
                source.request_keyframe(Instant::now());
            }
        });
        track.begin_derived(info.clone(), Some(upstream));
        let merged = Arc::new(MergedTrack {
            track,
            merge: Mutex::new(match info.kind {
                MediaKind::Video => GroupMerge::video(),
                MediaKind::Audio => GroupMerge::audio(),
            }),
            epoch: Instant::now(),
        });
        tracks.insert(info.name.clone(), Arc::clone(&merged));
        merged
    }
}

/// A running pull of one transcoder's renditions; ends when dropped.
pub struct RenditionPull {
    stop: Arc<Notify>,
}

impl Drop for RenditionPull {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

impl Relay {
    /// Pulls the renditions of `tracks`' broadcast from the transcoder at `from` (its relay
    /// address), as upstream number `upstream` of the merge, until the handle is dropped.
    pub fn pull_renditions(
        &self,
        tracks: Arc<RenditionTracks>,
        from: SocketAddr,
        upstream: u64,
    ) -> RenditionPull {
        let stop = Arc::new(Notify::new());
        let relay = self.clone();
        let stopped = Arc::clone(&stop);
        tokio::spawn(async move {
            let stream = tracks.broadcast.id().clone();
            tracing::info!(%stream, transcoder = %from, "pulling renditions from the transcoder");
            loop {
                let reason = tokio::select! {
                    reason = relay.pull_renditions_once(&tracks, from, upstream) => reason,
                    () = stopped.notified() => break,
                };
                tracing::debug!(%stream, transcoder = %from, %reason, "rendition pull interrupted");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    () = stopped.notified() => break,
                }
            }
            tracing::info!(%stream, transcoder = %from, "rendition pull ended");
        });
        RenditionPull { stop }
    }

    /// One connection's worth of pulling; returns why it ended.
    async fn pull_renditions_once(
        &self,
        tracks: &Arc<RenditionTracks>,
        from: SocketAddr,
        upstream: u64,
    ) -> String {
        let connection = match self.connection(from).await {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let stream = tracks.broadcast.id().as_str().to_owned();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut demand = TrackDemand::default();
        let mut known: Vec<TrackInfo> = Vec::new();
        let mut catalog: Option<u64> = None;
        let mut tick = tokio::time::interval(CATALOG_EVERY);
        let mut demand_check = tokio::time::interval(DEMAND_CHECK);
        let reason = 'pull: loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(id) = catalog.take() {
                        connection.unsubscribe(id);
                    }
                    catalog = connection
                        .subscribe(&stream, CATALOG_TRACK, PullTarget::Catalog, events_tx.clone())
                        .await;
                    if catalog.is_none() {
                        break "relay connection closed".to_owned();
                    }
                }
                _ = demand_check.tick() => {}
                event = events.recv() => match event {
                    Some(PullEvent::Catalog(list)) => known = list,
                    Some(PullEvent::Ended { reason, .. }) => break reason,
                    Some(_) => {}
                    None => break "relay connection closed".to_owned(),
                },
            }
            // Just in time: a rendition is pulled (and so encoded over there) while
            // something here consumes it, or when WebRTC viewers get it by default. Only
            // what that node made: not the source, and not a copy it relayed from elsewhere
            // (from here, say: a loop).
            let eligible = |info: &TrackInfo| {
                info.name != VIDEO_SOURCE && info.name != AUDIO_SOURCE && !info.relayed
            };
            for info in known.iter().filter(|i| eligible(i)) {
                // Listed here (and kept up to date) whether pulled or not.
                tracks.track(info);
            }
            let local = |name: &str| tracks.subscribers(name);
            for step in demand.plan(&known, eligible, local, Instant::now()) {
                match step {
                    DemandStep::Subscribe(info) => {
                        let target = PullTarget::Merged(tracks.track(info), upstream);
                        match connection
                            .subscribe(&stream, &info.name, target, events_tx.clone())
                            .await
                        {
                            Some(id) => demand.subscribed(&info.name, id),
                            None => break 'pull "relay connection closed".to_owned(),
                        }
                    }
                    DemandStep::Unsubscribe(_, id) => connection.unsubscribe(id),
                    DemandStep::Announce(_) => {}
                }
            }
        };
        for id in demand.ids().chain(catalog) {
            connection.unsubscribe(id);
        }
        reason
    }
}
