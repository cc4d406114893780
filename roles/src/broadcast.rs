//! A live broadcast and its tracks: the producer side writes frames, subscribers receive them.
//!
//! Invariants:
//! - a subscriber is a *sink per consumer* (an engine shard, a relay, a packager), never per
//!   viewer: the fan-out to individual viewers happens inside the consumer, so the producer
//!   pays one delivery per consumer per frame;
//! - a subscriber that cannot keep up (its sink is full) never slows the producer: it skips to
//!   the next keyframe, i.e. the newest group, and the skipped group is counted;
//! - the current group (keyframe onwards) is kept so that a new viewer can start decoding at
//!   once instead of waiting for the next natural keyframe;
//! - a track survives a change of publisher: timestamps stay continuous ([`Timeline`]) and
//!   nothing is delivered from the new publisher before its first keyframe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::keyframe::{KeyframeDecision, KeyframeRequestLimiter};
use cascade_protocol::media::{
    self, Frame, MediaKind, Payload, TrackInfo, WebRtcPlan, WebRtcUnfit,
};
use cascade_protocol::timeline::Timeline;

/// Most frames kept of the current group for late joiners (10 s at 30 fps plus headroom).
pub const GROUP_CACHE_MAX_FRAMES: usize = 600;
/// Group starts remembered per video track for the API.
const RECENT_KEYFRAMES: usize = 10;
/// Most bytes kept of the current group for late joiners.
const GROUP_CACHE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Result of handing one frame to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted.
    Accepted,
    /// The consumer is behind; it will skip to the next group.
    Full,
    /// The consumer is gone; the subscription ends.
    Closed,
}

/// Where a subscription's frames go. Implemented by each consumer.
pub trait FrameSink: Send {
    /// Hands one frame over without blocking.
    fn deliver(&mut self, frame: &Frame) -> Delivery;
}

/// A sink into a bounded queue, each frame tagged with `tag` (which track it came from).
/// A full queue makes the subscription skip to the next group.
pub struct QueueSink<T> {
    tag: T,
    tx: tokio::sync::mpsc::Sender<(T, Frame)>,
}

impl<T> QueueSink<T> {
    /// Frames go to `tx`, tagged `tag`.
    pub fn new(tag: T, tx: tokio::sync::mpsc::Sender<(T, Frame)>) -> Self {
        Self { tag, tx }
    }
}

impl<T: Clone + Send> FrameSink for QueueSink<T> {
    fn deliver(&mut self, frame: &Frame) -> Delivery {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send((self.tag.clone(), frame.clone())) {
            Ok(()) => Delivery::Accepted,
            Err(TrySendError::Full(_)) => Delivery::Full,
            Err(TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

/// A consumer's subscriptions, ended when it is dropped, however the consumer ends.
#[derive(Default)]
pub struct Subscriptions(Vec<(Arc<Track>, u64)>);

impl Subscriptions {
    /// Subscribes `sink` to `track` from its next frame.
    pub fn add(&mut self, track: &Arc<Track>, sink: impl FrameSink + 'static) {
        let id = track.subscribe(Box::new(sink));
        self.0.push((track.clone(), id));
    }

    /// Subscribes `sink` to `track` starting with its current group. A queue must hold more
    /// than [`GROUP_CACHE_MAX_FRAMES`] for that to succeed; one that refuses the group is
    /// not subscribed (and a warning says so).
    pub fn from_current_group(&mut self, track: &Arc<Track>, sink: impl FrameSink + 'static) {
        match track.subscribe_from_current_group(Box::new(sink)) {
            Some(id) => self.0.push((track.clone(), id)),
            None => {
                tracing::warn!(track = %track.name, "a consumer refused the cached group; not subscribed")
            }
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (track, id) in &self.0 {
            track.unsubscribe(*id);
        }
    }
}

/// Called when a keyframe request passes the limiter; installed by the current publisher.
pub type KeyframeUpstream = Arc<dyn Fn() + Send + Sync>;

/// Where a frame's time comes from.
enum SourceTime {
    /// A publisher's 32-bit RTP clock.
    Rtp(u32),
    /// An upstream node's track timeline.
    Track(u64),
}

struct Subscriber {
    id: u64,
    sink: Box<dyn FrameSink>,
    skipping_to_keyframe: bool,
}

struct TrackState {
    info: Option<TrackInfo>,
    next_seq: u64,
    timeline: Timeline,
    awaiting_first_keyframe: bool,
    group: Vec<Frame>,
    group_bytes: usize,
    subscribers: Vec<Subscriber>,
    next_subscriber_id: u64,
    upstream: Option<KeyframeUpstream>,
    limiter: KeyframeRequestLimiter,
    /// Timestamps of the last group starts (video): whether renditions are aligned.
    recent_keyframes: std::collections::VecDeque<u64>,
    /// Counts `begin_source` calls: which publisher feeds the track now.
    source_generation: u64,
    /// The bitrate of the last whole group (video), kbit/s: what a source costs a viewer.
    last_group_kbps: Option<u32>,
}

/// One named track of a broadcast (`video/source`, `audio/source`, a rendition).
pub struct Track {
    /// When its broadcast began: RTP sources are placed on the wall clock from here.
    epoch: Instant,
    stream: StreamId,
    name: String,
    kind: MediaKind,
    state: Mutex<TrackState>,
    bytes_in: AtomicU64,
    frames_in: AtomicU64,
    /// A transcoder on this node made it (see [`Track::mark_made_here`]).
    made_here: std::sync::atomic::AtomicBool,
}

/// A live stream: a catalog of named tracks. Every broadcast has the two source tracks
/// (`video/source`, `audio/source`) from the start, so that a viewer can wait on them before
/// any publisher attached; other tracks (renditions) are added as their producers appear.
/// The list of tracks is control-plane state, read when a consumer subscribes, never per frame.
pub struct Broadcast {
    id: StreamId,
    /// When it began: the origin of RTP-fed tracks' timelines.
    epoch: Instant,
    tracks: RwLock<Vec<Arc<Track>>>,
    /// When a consumer last asked for the broadcast before it could subscribe to a track
    /// (an edge asking for the catalog of a stream with no tracks yet).
    asked_at: Mutex<Option<Instant>>,
}

impl Broadcast {
    /// A broadcast with its two empty source tracks; they get a codec when a publisher attaches.
    pub fn new(id: StreamId) -> Arc<Self> {
        let epoch = Instant::now();
        // From the start, so that a dashboard shows a stream's 0 rather than "no data".
        metrics::counter!("cascade_dropped_groups_total", "stream" => id.to_string()).increment(0);
        let tracks = [MediaKind::Video, MediaKind::Audio].map(|kind| {
            Arc::new(Track::new(
                id.clone(),
                media::source_track(kind),
                kind,
                epoch,
            ))
        });
        Arc::new(Self {
            tracks: RwLock::new(tracks.into()),
            id,
            epoch,
            asked_at: Mutex::new(None),
        })
    }

    /// The stream id.
    pub fn id(&self) -> &StreamId {
        &self.id
    }

    /// How long it has existed on this node at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    fn read_tracks(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Track>>> {
        // Only pushes happen under the write lock; a panic cannot leave the list torn.
        self.tracks.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The source track of `kind`: what the publisher sends.
    pub fn source(&self, kind: MediaKind) -> Arc<Track> {
        self.track(media::source_track(kind))
            .expect("every broadcast is created with both source tracks") // Broadcast::new
    }

    /// The track named `name`, if the broadcast has it.
    pub fn track(&self, name: &str) -> Option<Arc<Track>> {
        self.read_tracks().iter().find(|t| t.name == name).cloned()
    }

    /// The track named `name`, added (empty, of `kind`) if the broadcast does not have it yet.
    pub fn track_or_add(&self, name: &str, kind: MediaKind) -> Arc<Track> {
        if let Some(track) = self.track(name) {
            return track;
        }
        let mut tracks = self.tracks.write().unwrap_or_else(|p| p.into_inner());
        if let Some(track) = tracks.iter().find(|t| t.name == name) {
            return track.clone();
        }
        let track = Arc::new(Track::new(self.id.clone(), name, kind, self.epoch));
        tracks.push(track.clone());
        track
    }

    /// Every track, sources first.
    pub fn tracks(&self) -> Vec<Arc<Track>> {
        self.read_tracks().clone()
    }

    /// The catalog: what is known of every track that has had a producer.
    pub fn catalog(&self) -> Vec<TrackInfo> {
        self.read_tracks().iter().filter_map(|t| t.info()).collect()
    }

    /// Each video track's last group starts: renditions aligned with their source list the
    /// same times.
    pub fn recent_keyframes(&self) -> std::collections::BTreeMap<String, Vec<u64>> {
        self.read_tracks()
            .iter()
            .filter(|t| t.kind == MediaKind::Video && t.info().is_some())
            .map(|t| (t.name.clone(), t.recent_keyframes()))
            .collect()
    }

    /// Which tracks WebRTC viewers get now, or why they cannot watch.
    pub fn webrtc_plan(&self) -> Result<WebRtcPlan, WebRtcUnfit> {
        WebRtcPlan::for_catalog(&self.catalog())
    }

    /// The video renditions an adaptive WebRTC viewer moves along, best first
    /// (`cascade_protocol::abr::ladder`); fewer than two: nothing to adapt.
    pub fn abr_ladder(&self) -> Vec<cascade_protocol::abr::Rung> {
        let Some(default) = self.webrtc_plan().ok().and_then(|p| p.video) else {
            return Vec::new();
        };
        let tracks = self.tracks();
        cascade_protocol::abr::ladder(&self.catalog(), &default, |name| {
            tracks
                .iter()
                .find(|t| t.name() == name)
                .and_then(|t| t.measured_kbps())
        })
    }

    /// The track of `kind` WebRTC viewers get now, if any. Before the publisher has described
    /// its source of that kind (a viewer that joined a stream still `connecting`), that source:
    /// what arrives in it is checked again when it is sent (a codec the viewer did not
    /// negotiate is not sent).
    pub fn webrtc_track(&self, kind: MediaKind) -> Option<Arc<Track>> {
        let plan = self.webrtc_plan().ok()?;
        let chosen = match kind {
            MediaKind::Video => plan.video,
            MediaKind::Audio => plan.audio,
        };
        match chosen {
            Some(name) => self.track(&name),
            None => {
                let source = self.source(kind);
                source.info().is_none().then_some(source)
            }
        }
    }

    /// Subscriptions to its tracks now: viewers' engines, relays to other nodes, restreams.
    /// What an on-demand source asks before it starts.
    pub fn consumers(&self) -> usize {
        self.read_tracks()
            .iter()
            .map(|t| t.lock().subscribers.len())
            .sum()
    }

    /// A consumer asked for the broadcast at `now` and will subscribe once it has tracks.
    pub fn note_asked(&self, now: Instant) {
        *self.asked_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// How long ago a consumer last asked for the broadcast without subscribing, if ever.
    pub fn asked_ago(&self, now: Instant) -> Option<Duration> {
        self.asked_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| now.saturating_duration_since(at))
    }

    /// Frames received on all tracks since the broadcast began.
    pub fn frames_in(&self) -> u64 {
        self.read_tracks().iter().map(|t| t.frames_in()).sum()
    }

    /// Bytes received on all tracks since the broadcast began.
    pub fn bytes_in(&self) -> u64 {
        self.read_tracks()
            .iter()
            .map(|t| t.bytes_in.load(Ordering::Relaxed))
            .sum()
    }
}

impl Track {
    fn new(stream: StreamId, name: &str, kind: MediaKind, epoch: Instant) -> Self {
        Self {
            epoch,
            stream,
            name: name.to_owned(),
            kind,
            state: Mutex::new(TrackState {
                info: None,
                next_seq: 0,
                timeline: Timeline::new(90_000),
                awaiting_first_keyframe: true,
                group: Vec::new(),
                group_bytes: 0,
                subscribers: Vec::new(),
                next_subscriber_id: 0,
                upstream: None,
                limiter: KeyframeRequestLimiter::default(),
                recent_keyframes: Default::default(),
                source_generation: 0,
                last_group_kbps: None,
            }),
            bytes_in: AtomicU64::new(0),
            made_here: std::sync::atomic::AtomicBool::new(false),
            frames_in: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrackState> {
        // A poisoned lock means a panic while holding it, which only a bug can cause; the
        // state is plain data and still consistent enough to keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Its name in the broadcast.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// What the catalog says about this track, if a publisher ever attached.
    pub fn info(&self) -> Option<TrackInfo> {
        self.lock().info.clone()
    }

    /// Its subscriptions now (viewers' engines, relays to other nodes, restreams).
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The timestamps of its last few group starts, oldest first (video tracks).
    pub fn recent_keyframes(&self) -> Vec<u64> {
        self.lock().recent_keyframes.iter().copied().collect()
    }

    /// The bitrate of its last whole group in kbit/s (video; `None` before one completed).
    pub fn measured_kbps(&self) -> Option<u32> {
        self.lock().last_group_kbps
    }

    /// Frames received since the broadcast began.
    pub fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }

    /// A new publisher starts feeding this track with frames described by `info` (its name
    /// is the track's). `upstream` receives keyframe requests. Nothing from it is delivered
    /// before its first keyframe. A resolution already learnt is kept for the same codec.
    /// Returns the source's generation, for [`Track::end_source_of`].
    pub fn begin_source(&self, mut info: TrackInfo, upstream: Option<KeyframeUpstream>) -> u64 {
        let mut state = self.lock();
        state.source_generation += 1;
        info.name.clone_from(&self.name);
        if let Some(old) = state.info.as_ref().filter(|i| i.codec == info.codec) {
            info.width = info.width.or(old.width);
            info.height = info.height.or(old.height);
        }
        if state.timeline_rate() != info.timescale {
            state.timeline = Timeline::new(info.timescale);
        }
        state.timeline.new_source();
        state.awaiting_first_keyframe = info.kind == MediaKind::Video;
        state.info = Some(info);
        state.upstream = upstream;
        state.source_generation
    }

    /// A transcoder on this node makes this track: for as long as the broadcast lives, a
    /// relay pull never writes into it. Other nodes subscribed to it expect this node's own
    /// renditions; a copy pulled from the origin in their place would feed the origin's
    /// renditions back to it in a loop.
    pub fn mark_made_here(&self) {
        self.made_here.store(true, Ordering::Relaxed);
    }

    /// Whether a transcoder on this node made it.
    pub fn made_here(&self) -> bool {
        self.made_here.load(Ordering::Relaxed)
    }

    /// Begins a track whose frames come with the broadcast's own timestamps, which it keeps
    /// as they are (a transcoder's rendition, or a copy a transcoder works from), so that
    /// every rendition's groups start at exactly the source's times.
    pub fn begin_derived(&self, info: TrackInfo, upstream: Option<KeyframeUpstream>) {
        let timescale = info.timescale;
        self.begin_source(info, upstream);
        self.lock().timeline = Timeline::new(timescale);
    }

    /// Updates what the catalog says about this track (the source learnt something, such as
    /// B-frames, after it began).
    pub fn update_info(&self, update: impl FnOnce(&mut TrackInfo)) {
        if let Some(info) = self.lock().info.as_mut() {
            update(info);
        }
    }

    /// The source of `generation` stopped feeding this track; nothing happens if another
    /// source has begun since (a publisher that took the stream over).
    pub fn end_source_of(&self, generation: u64) {
        // One lock: a takeover between the check and the end must not be ended.
        let mut state = self.lock();
        if state.source_generation == generation {
            state.end_source();
        }
    }

    /// The publisher stopped feeding this track.
    pub fn end_source(&self) {
        self.lock().end_source();
    }

    /// Publishes one access unit whose RTP timestamp is `rtp_time`, received at `now`.
    pub fn publish_rtp(&self, rtp_time: u32, now: Instant, keyframe: bool, payload: Payload) {
        self.publish(SourceTime::Rtp(rtp_time), 0, now, keyframe, payload);
    }

    /// Publishes one access unit whose timestamp is already unwrapped and in the track's
    /// timescale (an upstream node's timeline, an RTMP publisher's rebased clock).
    pub fn publish_at(&self, timestamp: u64, now: Instant, keyframe: bool, payload: Payload) {
        self.publish(SourceTime::Track(timestamp), 0, now, keyframe, payload);
    }

    /// Like [`Track::publish_at`], for a source that reorders frames: `timestamp` is the
    /// presentation time, `composition_offset` how much later than the decode time it is.
    pub fn publish_reordered(
        &self,
        timestamp: u64,
        composition_offset: u32,
        now: Instant,
        keyframe: bool,
        payload: Payload,
    ) {
        self.publish(
            SourceTime::Track(timestamp),
            composition_offset,
            now,
            keyframe,
            payload,
        );
    }

    fn publish(
        &self,
        time: SourceTime,
        composition_offset: u32,
        now: Instant,
        keyframe: bool,
        payload: Payload,
    ) {
        let mut state = self.lock();
        if state.awaiting_first_keyframe {
            if !keyframe {
                return;
            }
            state.awaiting_first_keyframe = false;
        }
        let timestamp = match time {
            SourceTime::Rtp(rtp) => state.timeline.map_rtp(rtp, now, self.epoch),
            SourceTime::Track(ts) => state.timeline.map(ts, now),
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        let keyframe = keyframe || self.kind == MediaKind::Audio;
        if keyframe
            && self.kind == MediaKind::Video
            && let Some(info) = state.info.as_mut()
        {
            info.learn_resolution(&payload);
        }
        let frame = Frame {
            seq,
            timestamp,
            composition_offset,
            keyframe,
            payload,
        };
        self.bytes_in
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        self.frames_in.fetch_add(1, Ordering::Relaxed);
        state.remember_in_group(&frame, self.kind);
        state.fan_out(&frame, &self.stream);
    }

    /// Starts delivering this track's frames to `sink`; returns the subscription id.
    pub fn subscribe(&self, sink: Box<dyn FrameSink>) -> u64 {
        self.lock().add_subscriber(sink)
    }

    /// Like [`Track::subscribe`], but first hands `sink` the current group, atomically, so
    /// that it starts decodable and misses nothing in between. Returns the subscription id,
    /// or `None` if the sink refused the cached group.
    pub fn subscribe_from_current_group(&self, mut sink: Box<dyn FrameSink>) -> Option<u64> {
        let mut state = self.lock();
        for frame in &state.group {
            if sink.deliver(frame) != Delivery::Accepted {
                return None;
            }
        }
        Some(state.add_subscriber(sink))
    }

    /// Stops a subscription.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().subscribers.retain(|s| s.id != id);
    }

    /// Whether a current group is cached, i.e. a viewer joining now can decode at once.
    pub fn has_current_group(&self) -> bool {
        !self.lock().group.is_empty()
    }

    /// The frames of the current group (from its keyframe), for a viewer that joins now.
    pub fn current_group(&self) -> Vec<Frame> {
        self.lock().group.clone()
    }

    /// A consumer asks for a keyframe; forwarded upstream unless one was asked for recently.
    pub fn request_keyframe(&self, now: Instant) -> KeyframeDecision {
        let upstream = {
            let mut state = self.lock();
            let decision = state.limiter.request(now);
            metrics::counter!("cascade_keyframe_requests_total", "outcome" => match decision {
                KeyframeDecision::Forward => "forwarded",
                KeyframeDecision::Coalesced => "coalesced",
            })
            .increment(1);
            if decision == KeyframeDecision::Coalesced {
                return decision;
            }
            state.upstream.clone()
        };
        // Called outside the lock: the publisher side may take its own locks.
        if let Some(upstream) = upstream {
            upstream();
        }
        KeyframeDecision::Forward
    }
}

impl TrackState {
    fn end_source(&mut self) {
        self.upstream = None;
        self.group.clear();
        self.group_bytes = 0;
    }

    fn add_subscriber(&mut self, sink: Box<dyn FrameSink>) -> u64 {
        let id = self.next_subscriber_id;
        self.next_subscriber_id += 1;
        self.subscribers.push(Subscriber {
            id,
            sink,
            skipping_to_keyframe: false,
        });
        id
    }

    fn timeline_rate(&self) -> u32 {
        self.info.as_ref().map_or(90_000, |i| i.timescale)
    }

    fn remember_in_group(&mut self, frame: &Frame, kind: MediaKind) {
        if kind == MediaKind::Audio {
            return; // every audio frame is a starting point; nothing to cache
        }
        if frame.keyframe {
            if let Some(first) = self.group.first() {
                let ticks = frame.timestamp.saturating_sub(first.timestamp);
                if ticks > 0 {
                    let bits = self.group_bytes as u128 * 8 * u128::from(self.timeline_rate());
                    let kbps = bits / u128::from(ticks) / 1000;
                    self.last_group_kbps = Some(kbps.min(u128::from(u32::MAX)) as u32);
                }
            }
            self.group.clear();
            self.group_bytes = 0;
            if self.recent_keyframes.len() == RECENT_KEYFRAMES {
                self.recent_keyframes.pop_front();
            }
            self.recent_keyframes.push_back(frame.timestamp);
        }
        let fits = self.group.len() < GROUP_CACHE_MAX_FRAMES
            && self.group_bytes + frame.payload.len() <= GROUP_CACHE_MAX_BYTES;
        if fits && (frame.keyframe || !self.group.is_empty()) {
            self.group_bytes += frame.payload.len();
            self.group.push(frame.clone());
        } else if !fits {
            // A group too long to cache: late joiners wait for a requested keyframe instead.
            self.group.clear();
            self.group_bytes = 0;
        }
    }

    fn fan_out(&mut self, frame: &Frame, stream: &StreamId) {
        self.subscribers.retain_mut(|sub| {
            if sub.skipping_to_keyframe {
                if !frame.keyframe {
                    return true;
                }
                sub.skipping_to_keyframe = false;
            }
            match sub.sink.deliver(frame) {
                Delivery::Accepted => true,
                Delivery::Full => {
                    metrics::counter!("cascade_dropped_groups_total", "stream" => stream.to_string())
                        .increment(1);
                    sub.skipping_to_keyframe = true;
                    true
                }
                Delivery::Closed => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_protocol::media::Codec;
    use std::sync::mpsc;

    struct BoundedSink {
        tx: mpsc::SyncSender<u64>,
    }

    impl FrameSink for BoundedSink {
        fn deliver(&mut self, frame: &Frame) -> Delivery {
            match self.tx.try_send(frame.seq) {
                Ok(()) => Delivery::Accepted,
                Err(mpsc::TrySendError::Full(_)) => Delivery::Full,
                Err(mpsc::TrySendError::Disconnected(_)) => Delivery::Closed,
            }
        }
    }

    fn h264() -> TrackInfo {
        TrackInfo::new(media::VIDEO_SOURCE, Codec::H264)
    }

    fn video_track() -> Arc<Track> {
        let b = Broadcast::new(StreamId::parse("t").unwrap());
        let video = b.source(MediaKind::Video);
        video.begin_source(h264(), None);
        video
    }

    fn publish(track: &Track, n: u32, keyframe_every: u32, now: Instant) {
        for i in 0..n {
            track.publish_rtp(
                i * 3000,
                now,
                i % keyframe_every == 0,
                Arc::from(vec![i as u8]),
            );
        }
    }

    #[test]
    fn slow_subscriber_skips_to_the_next_keyframe_without_blocking_others() {
        let b = video_track();
        let (slow_tx, slow_rx) = mpsc::sync_channel(2);
        let (fast_tx, fast_rx) = mpsc::sync_channel(100);
        b.subscribe(Box::new(BoundedSink { tx: slow_tx }));
        b.subscribe(Box::new(BoundedSink { tx: fast_tx }));
        publish(&b, 5, 10, Instant::now()); // seq 0..5, keyframe at 0
        let slow: Vec<u64> = slow_rx.try_iter().collect();
        assert_eq!(slow, vec![0, 1]);
        publish(&b, 12, 10, Instant::now()); // seq 5..17, keyframes at 5 and 15
        let slow: Vec<u64> = slow_rx.try_iter().collect();
        assert_eq!(
            slow,
            vec![5, 6],
            "skipped the rest of the old group, resumed at the next keyframe"
        );
        assert_eq!(
            fast_rx.try_iter().count(),
            17,
            "the fast one got everything"
        );
    }

    #[test]
    fn current_group_starts_at_the_newest_keyframe() {
        let b = video_track();
        publish(&b, 25, 10, Instant::now());
        let group: Vec<u64> = b.current_group().iter().map(|f| f.seq).collect();
        assert_eq!(group, (20..25).collect::<Vec<_>>());
        assert!(b.current_group()[0].keyframe);
    }

    #[test]
    fn a_new_publisher_is_held_back_until_its_first_keyframe_and_time_continues() {
        let b = video_track();
        let (tx, rx) = mpsc::sync_channel(100);
        b.subscribe(Box::new(BoundedSink { tx }));
        let t0 = Instant::now();
        b.publish_rtp(1000, t0, false, Arc::from(vec![0u8])); // no keyframe yet: held
        b.publish_rtp(4000, t0, true, Arc::from(vec![1u8]));
        b.end_source();
        b.begin_source(h264(), None);
        b.publish_rtp(99, t0, false, Arc::from(vec![2u8]));
        b.publish_rtp(99, t0, true, Arc::from(vec![3u8]));
        assert_eq!(rx.try_iter().count(), 2);
    }

    #[test]
    fn a_viewer_that_joins_before_the_publisher_described_its_tracks_waits_on_the_sources() {
        let b = Broadcast::new(StreamId::parse("t").unwrap());
        assert!(
            b.webrtc_track(MediaKind::Video).is_some(),
            "nothing described yet"
        );
        b.source(MediaKind::Video).begin_source(h264(), None);
        b.source(MediaKind::Audio)
            .begin_source(TrackInfo::new(media::AUDIO_SOURCE, Codec::Aac), None);
        assert_eq!(
            b.webrtc_track(MediaKind::Video)
                .map(|t| t.name().to_owned()),
            Some(media::VIDEO_SOURCE.to_owned())
        );
        assert!(
            b.webrtc_track(MediaKind::Audio).is_none(),
            "AAC is left out"
        );
    }

    #[test]
    fn keyframe_requests_reach_the_publisher_coalesced() {
        let b = video_track();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        b.begin_source(
            h264(),
            Some(Arc::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            })),
        );
        let now = Instant::now();
        for _ in 0..50 {
            b.request_keyframe(now);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
