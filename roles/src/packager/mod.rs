//! The packager role: LL-HLS renditions of a live stream, made on demand on the node the
//! cluster assigns (the origin by default; with a standby, two other nodes, each holding a
//! relay pull of the stream).
//!
//! The first HLS request for a stream starts its packager: one
//! [`RenditionPackager`](cascade_protocol::hls::packager::RenditionPackager) per H.264 video
//! track (the source and the transcoder's rungs; frame-rate-capped rungs left out) and one
//! for the stream's AAC (the transcoder's `audio/aac` for an Opus source), each fed
//! from its track's current group on by a bounded queue and a task. A stream nobody asked
//! for in [`IDLE_AFTER`] stops being packaged (and stops holding its rungs' encoders, which
//! run just in time). Each rendition's playlist version is a `watch`, so a blocking playlist
//! reload waits for the part it names without polling.
//!
//! A standby packager [aligns](cascade_protocol::hls::packager::RenditionPackager::align)
//! each rendition to the active packager's before its first frame (an [`Aligner`] asks the
//! active one), so that both serve the same numbers and bytes.

pub mod recording;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_protocol::StreamId;
use cascade_protocol::hls::cmaf::{AacTrack, OpusTrack};
use cascade_protocol::hls::packager::{Alignment, Frame, Media, PackagerConfig, RenditionPackager};
use cascade_protocol::hls::playlist::{
    AudioRendition, MediaPlaylist, Multivariant, Reload, Variant, reload,
};
use cascade_protocol::media::{Codec, MediaKind};
use tokio::sync::{mpsc, watch};

use crate::broadcast::{Broadcast, QueueSink, Subscriptions, Track};
use crate::origin::StreamRegistry;
use crate::relay::{PullHold, Relay};

/// Asks the active packager of a stream where a rendition is, for a standby starting it.
pub trait Aligner: Send + Sync + 'static {
    /// The active packager's alignment of `rendition`, or `None` when this node is not a
    /// standby of `stream` (or the active one does not answer).
    fn alignment(
        &self,
        stream: &StreamId,
        rendition: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Alignment>> + Send>>;
}

/// How long a standby rendition waits for the active packager's alignment (each time it
/// asks).
const ALIGN_WAIT: Duration = Duration::from_secs(2);

/// A stream without an HLS request this long stops being packaged.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);
/// Frames queued towards one rendition's packager (a cached group and room beyond).
const QUEUE: usize = crate::broadcast::GROUP_CACHE_MAX_FRAMES + 256;

/// One rendition being packaged.
pub struct Rendition {
    /// Its directory under the stream (`source`, `360p`).
    pub name: String,
    track: Arc<Track>,
    packager: Mutex<RenditionPackager>,
    /// How its packager was made, to make it again (a standby that lost step with the
    /// active packager).
    recipe: (PackagerConfig, u32, Media),
    version: watch::Sender<u64>,
}

impl Rendition {
    /// Its playlist now.
    pub fn playlist(&self) -> MediaPlaylist {
        lock(&self.packager).playlist()
    }

    /// Its initialisation segment, once it has one.
    pub fn init(&self) -> Option<Bytes> {
        lock(&self.packager).init()
    }

    /// Its initialisation segment's name in the playlist (`init-{tag}.mp4`).
    pub fn init_name(&self) -> String {
        lock(&self.packager).init_name()
    }

    /// An initialisation segment by its name: the current one, or one that segments still
    /// listed need (the publisher came back with other parameter sets).
    pub fn init_named(&self, name: &str) -> Option<Bytes> {
        lock(&self.packager).init_named(name)
    }

    /// A part's bytes.
    pub fn part(&self, msn: u64, index: usize) -> Option<Bytes> {
        lock(&self.packager).part(msn, index)
    }

    /// A segment's bytes.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        lock(&self.packager).segment(msn)
    }

    /// Where its packager is now (for a standby packager on another node).
    pub fn alignment(&self) -> Option<Alignment> {
        lock(&self.packager).alignment()
    }

    /// Its newest part: (media sequence number, part index).
    pub fn last_part(&self) -> Option<(u64, u64)> {
        lock(&self.packager).playlist().last_part()
    }

    /// Waits until the playlist can answer a blocking reload for `msn` (and `part`), up to
    /// `limit`: [`Reload::Ready`] with the playlist, [`Reload::TooFarAhead`] at once, or
    /// [`Reload::Wait`] when the limit passed.
    pub async fn wait_for(
        &self,
        msn: u64,
        part: Option<u64>,
        limit: Duration,
    ) -> (Reload, MediaPlaylist) {
        let mut version = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let playlist = self.playlist();
            match reload(&playlist, msn, part) {
                Reload::Wait => {}
                decided => return (decided, playlist),
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                return (Reload::Wait, self.playlist());
            }
        }
    }

    /// Waits until the rendition has a complete segment, up to `limit`.
    pub async fn wait_first_segment(&self, limit: Duration) -> bool {
        self.wait_for(0, None, limit).await.0 == Reload::Ready
            || !self.playlist().segments.is_empty()
    }

    /// What the multivariant playlist says of it.
    fn variant(&self) -> Option<Variant> {
        let info = self.track.info()?;
        let (width, height) = (info.width?, info.height?);
        let kbps = info
            .bitrate_kbps
            .or_else(|| self.track.measured_kbps())
            .unwrap_or(1000);
        let codec = info
            .codec_string
            .clone()
            .filter(|c| c.starts_with("avc1"))
            .unwrap_or_else(|| "avc1.42c01e".into());
        Some(Variant {
            uri: format!("{}/index.m3u8", self.name),
            // Peak: a keyframe-heavy group runs above the average.
            bandwidth: u64::from(kbps) * 1000 * 5 / 4,
            average_bandwidth: u64::from(kbps) * 1000,
            codecs: codec,
            resolution: (width, height),
            frame_rate: info.fps.map_or(30.0, f64::from),
            audio_group: None,
        })
    }

    fn is_audio(&self) -> bool {
        self.track.kind() == MediaKind::Audio
    }
}

/// The directory of the stream's AAC rendition.
const AAC_RENDITION: &str = "aac";
/// The directory of the stream's Opus rendition.
const OPUS_RENDITION: &str = "opus";
/// The Opus pre-skip written in `dOps` (RTP carries none): libopus's look-ahead at 48 kHz.
const OPUS_PRE_SKIP: u16 = 312;

/// One stream's renditions.
pub struct StreamPackager {
    broadcast: Arc<Broadcast>,
    renditions: Mutex<BTreeMap<String, Arc<Rendition>>>,
    last_asked: Mutex<Instant>,
    /// Ended when the stream packager is dropped.
    _subscriptions: Mutex<Subscriptions>,
    /// The relay pull it works from, when the stream's origin is another node.
    _pull: Option<PullHold>,
}

impl StreamPackager {
    /// The rendition in directory `name`.
    pub fn rendition(&self, name: &str) -> Option<Arc<Rendition>> {
        lock(&self.renditions).get(name).cloned()
    }

    /// Every rendition, best first.
    pub fn renditions(&self) -> Vec<Arc<Rendition>> {
        let mut all: Vec<Arc<Rendition>> = lock(&self.renditions).values().cloned().collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.track.info().and_then(|i| i.height).unwrap_or(0)));
        all
    }

    /// `EXT-X-RENDITION-REPORT`s for a media playlist of `rendition`: every other
    /// rendition's newest part, so that a player switching knows where to ask.
    pub fn rendition_reports(
        &self,
        rendition: &str,
    ) -> Vec<cascade_protocol::hls::playlist::RenditionReport> {
        self.renditions()
            .iter()
            .filter(|r| r.name != rendition)
            .filter_map(|r| {
                let (last_msn, last_part) = r.last_part()?;
                Some(cascade_protocol::hls::playlist::RenditionReport {
                    uri: format!("../{}/index.m3u8", r.name),
                    last_msn,
                    last_part,
                })
            })
            .collect()
    }

    /// How old the newest part of any rendition is, in seconds (`None` before the first).
    pub fn playlist_age(&self) -> Option<f64> {
        let newest = self
            .renditions()
            .iter()
            .filter_map(|r| lock(&r.packager).newest_part_wall_ms())
            .max()?;
        Some(now_ms().saturating_sub(newest) as f64 / 1000.0)
    }

    /// The multivariant playlist now: each video rendition once per audio rendition (AAC
    /// first, which every player plays; then Opus, for players that take it), or alone when
    /// the stream has no audio.
    pub fn multivariant(&self) -> Multivariant {
        let audio: Vec<(AudioRendition, &str)> =
            [(AAC_RENDITION, "mp4a.40.2"), (OPUS_RENDITION, "opus")]
                .into_iter()
                .filter_map(|(name, codec)| {
                    let info = self.rendition(name)?.track.info()?;
                    let rendition = AudioRendition {
                        group: name.into(),
                        name: "main".into(),
                        uri: format!("{name}/index.m3u8"),
                        channels: info.channels.unwrap_or(2),
                    };
                    Some((rendition, codec))
                })
                .collect();
        let video: Vec<Variant> = self
            .renditions()
            .iter()
            .filter(|r| !r.is_audio() && r.init().is_some())
            .filter_map(|r| r.variant())
            .collect();
        let mut variants = Vec::new();
        if audio.is_empty() {
            variants = video;
        } else {
            for (rendition, codec) in &audio {
                for variant in &video {
                    let mut variant = variant.clone();
                    variant.codecs = format!("{},{codec}", variant.codecs);
                    variant.audio_group = Some(rendition.group.clone());
                    variant.bandwidth += 128_000;
                    variant.average_bandwidth += 128_000;
                    variants.push(variant);
                }
            }
        }
        Multivariant {
            variants,
            audio: audio.into_iter().map(|(rendition, _)| rendition).collect(),
        }
    }

    /// Starts packaging the tracks of the broadcast not packaged yet: every H.264 video
    /// track, one AAC track (the transcoder's `audio/aac` before the source's) and one Opus
    /// track (a WebRTC publisher's, or the transcoder's `audio/opus`).
    fn add_renditions(&self, config: PackagerConfig, aligner: Option<&Arc<dyn Aligner>>) {
        let mut tracks = self.broadcast.tracks();
        tracks.sort_by_key(|t| t.name() != "audio/aac");
        for track in tracks {
            let Some(info) = track.info() else { continue };
            let (name, media) = match (track.kind(), info.codec) {
                (MediaKind::Video, Codec::H264) if info.fps.is_none() => (
                    track
                        .name()
                        .strip_prefix("video/")
                        .unwrap_or(track.name())
                        .to_owned(),
                    Media::H264,
                ),
                (MediaKind::Audio, Codec::Aac) => {
                    let Some(config) = info
                        .config
                        .as_deref()
                        .and_then(cascade_protocol::flv::from_hex)
                    else {
                        continue;
                    };
                    let aac = AacTrack {
                        track_id: 1,
                        timescale: info.timescale,
                        sample_rate: info.sample_rate.unwrap_or(info.timescale),
                        channels: info.channels.unwrap_or(2),
                        config,
                    };
                    (AAC_RENDITION.to_owned(), Media::Aac(aac))
                }
                (MediaKind::Audio, Codec::Opus) if info.timescale == 48_000 => (
                    OPUS_RENDITION.to_owned(),
                    Media::Opus(OpusTrack {
                        track_id: 1,
                        timescale: info.timescale,
                        channels: info.channels.unwrap_or(2).clamp(1, 2),
                        pre_skip: OPUS_PRE_SKIP,
                    }),
                ),
                _ => continue,
            };
            let mut renditions = lock(&self.renditions);
            if renditions.contains_key(&name) {
                continue;
            }
            let (version, _) = watch::channel(0);
            let rendition = Arc::new(Rendition {
                name: name.clone(),
                track: Arc::clone(&track),
                packager: Mutex::new(RenditionPackager::new(
                    config,
                    info.timescale,
                    media.clone(),
                )),
                recipe: (config, info.timescale, media),
                version,
            });
            let (tx, rx) = mpsc::channel(QUEUE);
            lock(&self._subscriptions).from_current_group(&track, QueueSink::new((), tx));
            let standby = aligner.map(|a| (Arc::clone(a), self.broadcast.id().clone()));
            tokio::spawn(feed(Arc::downgrade(&rendition), rx, standby));
            tracing::info!(stream = %self.broadcast.id(), rendition = %name, "packaging LL-HLS");
            renditions.insert(name, rendition);
        }
    }
}

/// How a standby packager's rendition compares with the active packager's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Same open segment, same number.
    Aligned,
    /// The same segment has another number here: this side numbers on its own.
    Misaligned,
    /// Cannot tell now (one side cut a segment between the two looks, or has none yet).
    Unsure,
}

/// Compares this side's open segment with the active packager's (a pure decision, see
/// [`feed`]).
pub fn compare_steps(own: Option<Alignment>, active: Option<Alignment>) -> Step {
    match (own, active) {
        (Some(own), Some(active)) if own == active => Step::Aligned,
        (Some(own), Some(active)) if own.segment_start == active.segment_start => Step::Misaligned,
        _ => Step::Unsure,
    }
}

/// A standby checks its step with the active packager this often.
const STEP_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Looks that could not tell, in a row, after which a standby starts over aligned.
const UNSURE_LIMIT: u32 = 3;

/// Feeds a rendition's packager until its subscription or the rendition ends. On a standby
/// (`standby`: who to ask), it first aligns to the active packager (its frames queue
/// meanwhile), then checks every [`STEP_CHECK_EVERY`] that both still number alike, and
/// starts over aligned when they do not: a failover to a standby that numbers on its own
/// would send players `400`s.
async fn feed(
    rendition: std::sync::Weak<Rendition>,
    mut frames: mpsc::Receiver<((), cascade_protocol::Frame)>,
    standby: Option<(Arc<dyn Aligner>, StreamId)>,
) {
    let mut anchor = None;
    let name = match rendition.upgrade() {
        Some(r) => r.name.clone(),
        None => return,
    };
    let ask = |standby: &Option<(Arc<dyn Aligner>, StreamId)>| {
        standby
            .as_ref()
            .map(|(aligner, stream)| aligner.alignment(stream, &name))
    };
    if let Some(alignment) = ask(&standby)
        && let Ok(Some(active)) = tokio::time::timeout(ALIGN_WAIT, alignment).await
        && let Some(rendition) = rendition.upgrade()
    {
        tracing::info!(rendition = %rendition.name, msn = active.msn, "standby packager aligned to the active one");
        lock(&rendition.packager).align(active);
        anchor = Some(active.segment_start);
    }
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + STEP_CHECK_EVERY,
        STEP_CHECK_EVERY,
    );
    let mut unsure = 0;
    let mut last_seq: Option<u64> = None;
    // When the frame before this one came: the last frame of a part this frame closes.
    let mut previous_at: Option<Instant> = None;
    let listing_delay = metrics::histogram!("cascade_hls_part_listing_delay_seconds");
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => match frame {
                Some(((), frame)) => frame,
                None => return,
            },
            _ = check.tick(), if standby.is_some() => {
                let Some(alignment) = ask(&standby) else { continue };
                let active = tokio::time::timeout(ALIGN_WAIT, alignment).await.ok().flatten();
                let Some(rendition) = rendition.upgrade() else { return };
                let own = lock(&rendition.packager).alignment();
                let step = compare_steps(own, active);
                unsure = if step == Step::Unsure && active.is_some() { unsure + 1 } else { 0 };
                if let Some(active) = active
                    && (step == Step::Misaligned || unsure >= UNSURE_LIMIT)
                {
                    metrics::counter!("cascade_hls_standby_realignments_total").increment(1);
                    tracing::warn!(rendition = %rendition.name, ?own, ?active, "standby packager out of step with the active one; starting over aligned");
                    let (config, timescale, media) = rendition.recipe.clone();
                    let mut fresh = RenditionPackager::new(config, timescale, media);
                    fresh.align(active);
                    *lock(&rendition.packager) = fresh;
                    anchor = Some(active.segment_start);
                    last_seq = None;
                    unsure = 0;
                }
                continue;
            }
        };
        let received_at = Instant::now();
        let Some(rendition) = rendition.upgrade() else {
            return;
        };
        // Aligned: the active packager's open segment starts at a frame this one gets too.
        if anchor.is_some_and(|start| {
            frame
                .timestamp
                .saturating_sub(u64::from(frame.composition_offset))
                < start
        }) {
            continue;
        }
        anchor = None;
        // A gap in the track's frames (the queue skipped to the next group) cannot be
        // written as if it were continuous.
        let skipped = last_seq.is_some_and(|last| frame.seq != last + 1);
        last_seq = Some(frame.seq);
        let wall_ms = now_ms();
        let change = {
            let mut packager = lock(&rendition.packager);
            if skipped {
                packager.discontinuity();
            }
            packager.push(Frame {
                timestamp: frame.timestamp,
                composition_offset: frame.composition_offset,
                keyframe: frame.keyframe,
                data: Bytes::copy_from_slice(&frame.payload),
                wall_ms,
            })
        };
        match change {
            Ok(cascade_protocol::hls::packager::Change::Published) => {
                rendition.version.send_modify(|v| *v += 1);
                if let Some(previous) = previous_at {
                    listing_delay.record(previous.elapsed().as_secs_f64());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(rendition = %rendition.name, error = %e, "a frame could not be packaged");
            }
        }
        previous_at = Some(received_at);
    }
}

/// The streams packaged on this node. Cheap to clone.
#[derive(Clone)]
pub struct Packagers {
    inner: Arc<Inner>,
}

struct Inner {
    registry: StreamRegistry,
    relay: Option<Relay>,
    aligner: Option<Arc<dyn Aligner>>,
    config: PackagerConfig,
    streams: Mutex<HashMap<StreamId, Arc<StreamPackager>>>,
}

impl Packagers {
    /// Packagers of `registry`'s streams, cut as `config` says; streams whose origin is
    /// another node are pulled through `relay`, and a standby's renditions aligned by
    /// `aligner`.
    pub fn new(
        registry: StreamRegistry,
        relay: Option<Relay>,
        aligner: Option<Arc<dyn Aligner>>,
        config: PackagerConfig,
    ) -> Self {
        let packagers = Packagers {
            inner: Arc::new(Inner {
                registry,
                relay,
                aligner,
                config,
                streams: Mutex::new(HashMap::new()),
            }),
        };
        let this = packagers.clone();
        crate::transcoder::every(Duration::from_millis(500), move || {
            let this = this.clone();
            async move { this.reconcile() }
        });
        packagers
    }

    /// The packager of `stream`, started if the stream is live here or, when its origin is
    /// another node, pulled; a request counts as interest (see [`IDLE_AFTER`]).
    pub async fn stream(&self, stream: &StreamId) -> Option<Arc<StreamPackager>> {
        let running = lock(&self.inner.streams).get(stream).cloned().filter(|p| {
            self.inner
                .registry
                .broadcast(stream)
                .is_some_and(|b| Arc::ptr_eq(&b, &p.broadcast))
        });
        let packager = match running {
            Some(packager) => packager,
            None => {
                let (broadcast, pull) = match &self.inner.relay {
                    Some(relay) if relay.origin_elsewhere(stream) => {
                        let hold = relay.keep(stream).await.ok()?;
                        (Arc::clone(hold.broadcast()), Some(hold))
                    }
                    _ => (self.inner.registry.broadcast(stream)?, None),
                };
                let mut streams = lock(&self.inner.streams);
                // Another request may have started it meanwhile.
                match streams
                    .get(stream)
                    .filter(|p| Arc::ptr_eq(&p.broadcast, &broadcast))
                {
                    Some(p) => Arc::clone(p),
                    None => {
                        let p = new_stream(broadcast, pull);
                        streams.insert(stream.clone(), Arc::clone(&p));
                        p
                    }
                }
            }
        };
        *lock(&packager.last_asked) = Instant::now();
        packager.add_renditions(self.inner.config, self.inner.aligner.as_ref());
        Some(packager)
    }

    /// Adds renditions that appeared, and stops packaging streams nobody asked for lately
    /// or that ended.
    fn reconcile(&self) {
        let packagers: Vec<(StreamId, Arc<StreamPackager>)> = lock(&self.inner.streams)
            .iter()
            .map(|(id, p)| (id.clone(), Arc::clone(p)))
            .collect();
        for (id, packager) in packagers {
            let live = self
                .inner
                .registry
                .broadcast(&id)
                .is_some_and(|b| Arc::ptr_eq(&b, &packager.broadcast));
            let idle = lock(&packager.last_asked).elapsed() >= IDLE_AFTER;
            let age =
                metrics::gauge!("cascade_hls_playlist_age_seconds", "stream" => id.to_string());
            if !live || idle {
                tracing::info!(stream = %id, idle, "LL-HLS packaging stopped");
                lock(&self.inner.streams).remove(&id);
                age.set(0.0);
            } else {
                packager.add_renditions(self.inner.config, self.inner.aligner.as_ref());
                if let Some(seconds) = packager.playlist_age() {
                    age.set(seconds);
                }
            }
        }
    }
}

fn new_stream(broadcast: Arc<Broadcast>, pull: Option<PullHold>) -> Arc<StreamPackager> {
    Arc::new(StreamPackager {
        broadcast,
        _pull: pull,
        renditions: Mutex::new(BTreeMap::new()),
        last_asked: Mutex::new(Instant::now()),
        _subscriptions: Mutex::new(Subscriptions::default()),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(msn: u64, segment_start: u64) -> Option<Alignment> {
        Some(Alignment { msn, segment_start })
    }

    #[test]
    fn a_standby_is_out_of_step_only_when_the_same_segment_has_another_number() {
        assert_eq!(compare_steps(at(7, 90_000), at(7, 90_000)), Step::Aligned);
        assert_eq!(
            compare_steps(at(3, 90_000), at(7, 90_000)),
            Step::Misaligned
        );
        assert_eq!(
            compare_steps(at(7, 90_000), at(8, 270_000)),
            Step::Unsure,
            "the active cut a segment between the two looks"
        );
        assert_eq!(compare_steps(None, at(7, 90_000)), Step::Unsure);
        assert_eq!(compare_steps(at(7, 90_000), None), Step::Unsure);
    }
}
