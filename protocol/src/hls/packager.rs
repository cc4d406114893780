//! One rendition's LL-HLS packaging, sans IO: frames in, CMAF parts and segments and the
//! media playlist out. The node's packager feeds it a track's frames and serves what it
//! holds; time comes in with the frames.
//!
//! **Cutting.** A part ends before a frame that would carry it past the part target (its
//! duration estimated from the previous frame), and at every keyframe, so a part that
//! starts with a keyframe is `INDEPENDENT`. A segment ends at the first keyframe once it is
//! at least the segment target long: segments are whole groups (a 1 s GOP and a 2 s target
//! make 2 s segments; a 3 s GOP makes 3 s segments, which `EXT-X-TARGETDURATION` then says).
//!
//! **Standby.** A second packager of the same rendition (on another node) numbers its
//! segments and parts as the first does once it is [aligned](RenditionPackager::align) to
//! the first's open segment: both then cut the same frames by the same rule, and each part's
//! bytes (fragment sequence numbers included) are the same, so a player can move from one
//! to the other mid-stream.
//!
//! **Window.** Segments older than the window are dropped; parts are kept only for the
//! segments of the last three target durations (players need parts near the live edge
//! only); a segment's bytes are its parts' bytes after a `styp`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::cmaf::{
    AacTrack, H264Track, OpusTrack, Sample, Track, fragment, init_segment, segment_type,
};
use super::playlist::{MediaPlaylist, Part, Segment};
use crate::ProtocolError;

/// How a rendition is cut and how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackagerConfig {
    /// Segment target, seconds (2 by default).
    pub segment_target: f64,
    /// Part target, seconds (a third of a second by default).
    pub part_target: f64,
    /// Live window, seconds (60 by default).
    pub window: f64,
}

impl Default for PackagerConfig {
    fn default() -> Self {
        PackagerConfig {
            segment_target: 2.0,
            part_target: 1.0 / 3.0,
            window: 60.0,
        }
    }
}

impl PackagerConfig {
    /// A configuration from seconds, checked: parts of 0.2 to 2 s (players block for the
    /// next part, so shorter parts mean lower latency and more requests), segments at least
    /// three parts long, and a window of at least three segments (players start three
    /// segments from the end). A window much longer than a minute is a DVR window, held in
    /// memory.
    pub fn checked(
        segment_target: f64,
        part_target: f64,
        window: f64,
    ) -> Result<PackagerConfig, ProtocolError> {
        let fail = |m: String| Err(ProtocolError::InvalidHlsTiming(m));
        if !(0.2..=2.0).contains(&part_target) {
            return fail(format!(
                "the part target must be 0.2 to 2 s, not {part_target} s"
            ));
        }
        if segment_target < 3.0 * part_target - 1e-9 {
            return fail(format!(
                "a segment ({segment_target} s) must be at least three parts ({part_target} s) long"
            ));
        }
        if window < 3.0 * segment_target - 1e-9 {
            return fail(format!(
                "the window ({window} s) must hold at least three segments ({segment_target} s)"
            ));
        }
        Ok(PackagerConfig {
            segment_target,
            part_target,
            window,
        })
    }
}

/// One frame as the packager takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Presentation timestamp in the track's timescale.
    pub timestamp: u64,
    /// Presentation minus decode time.
    pub composition_offset: u32,
    /// A keyframe.
    pub keyframe: bool,
    /// The access unit, Annex B.
    pub data: Bytes,
    /// Wall-clock time it was received, milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

impl Frame {
    fn decode_time(&self) -> u64 {
        self.timestamp
            .saturating_sub(u64::from(self.composition_offset))
    }
}

struct StoredPart {
    duration: f64,
    independent: bool,
    bytes: Bytes,
}

struct StoredSegment {
    msn: u64,
    /// The initialisation segment its fragments need.
    init_name: String,
    duration: f64,
    program_date_time_ms: u64,
    discontinuity: bool,
    parts: Vec<StoredPart>,
    /// Dropped once the segment is out of the part window; the segment's bytes stay.
    parts_listed: bool,
    bytes: Bytes,
}

/// What a push changed, for whoever waits on the playlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing a player can see yet.
    None,
    /// A part (and maybe a segment) was added.
    Published,
}

/// What a rendition carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// H.264 video, described by its first keyframe.
    H264,
    /// AAC audio, described by its AudioSpecificConfig. Every frame stands alone: parts
    /// and segments are cut by duration only, and every part is independent.
    Aac(AacTrack),
    /// Opus audio, described by its channels and pre-skip; cut like AAC.
    Opus(OpusTrack),
}

/// Where a packager is in its rendition: the open segment's number and the decode time it
/// started at. A standby packager [aligns](RenditionPackager::align) itself to the active
/// one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    /// Media sequence number of the open segment.
    pub msn: u64,
    /// Decode time of its first frame.
    pub segment_start: u64,
}

/// One rendition's packager.
pub struct RenditionPackager {
    config: PackagerConfig,
    timescale: u32,
    audio: bool,
    track: Option<Track>,
    init: Option<Bytes>,
    /// Frames of the part being gathered.
    pending: Vec<Frame>,
    /// The part being gathered started here (decode time).
    part_start: Option<u64>,
    /// The segment being written: its start, wall clock, and finished parts.
    segment_start: Option<(u64, u64)>,
    open_parts: Vec<StoredPart>,
    segments: VecDeque<StoredSegment>,
    next_msn: u64,
    /// Another packager's position to continue from, until the first frame comes.
    anchor: Option<Alignment>,
    last_decode_time: Option<u64>,
    discontinuity_next: bool,
    discontinuity_sequence: u64,
    /// Initialisation segments replaced by a new one, newest last, kept while segments
    /// listed may need them.
    previous_inits: VecDeque<(String, Bytes)>,
    /// Wall clock of the newest published part's first frame (Unix ms).
    newest_part_wall_ms: Option<u64>,
}

impl RenditionPackager {
    /// A packager for a `media` track on `timescale`.
    pub fn new(config: PackagerConfig, timescale: u32, media: Media) -> Self {
        let (audio, track) = match media {
            Media::H264 => (false, None),
            Media::Aac(aac) => (true, Some(Track::Aac(aac))),
            Media::Opus(opus) => (true, Some(Track::Opus(opus))),
        };
        let init = track
            .as_ref()
            .and_then(|t| init_segment(t).ok())
            .map(Bytes::from);
        RenditionPackager {
            config,
            timescale,
            audio,
            track,
            init,
            pending: Vec::new(),
            part_start: None,
            segment_start: None,
            open_parts: Vec::new(),
            segments: VecDeque::new(),
            next_msn: 0,
            anchor: None,
            last_decode_time: None,
            discontinuity_next: false,
            discontinuity_sequence: 0,
            previous_inits: VecDeque::new(),
            newest_part_wall_ms: None,
        }
    }

    /// When the newest part's first frame arrived (Unix ms): how fresh the playlist is.
    pub fn newest_part_wall_ms(&self) -> Option<u64> {
        self.newest_part_wall_ms
    }

    /// Where this packager is now, once it has begun a segment.
    pub fn alignment(&self) -> Option<Alignment> {
        self.segment_start.map(|(start, _)| Alignment {
            msn: self.next_msn,
            segment_start: start,
        })
    }

    /// Numbers what comes as `active` (another packager of the same rendition) does: the
    /// first frame continues its open segment, or begins the next one when the open one is
    /// already long enough. Call before the first frame; later calls are ignored.
    pub fn align(&mut self, active: Alignment) {
        if self.segment_start.is_none() && self.segments.is_empty() {
            self.anchor = Some(active);
        }
    }

    /// The initialisation segment, once the first keyframe has described the track.
    pub fn init(&self) -> Option<Bytes> {
        self.init.clone()
    }

    /// The name the playlist gives the initialisation segment: it changes with the bytes,
    /// so that the segment can be cached as immutable.
    pub fn init_name(&self) -> String {
        self.init.as_deref().map_or_else(
            || "init.mp4".to_owned(),
            |b| format!("init-{:08x}.mp4", fnv1a(b)),
        )
    }

    fn set_track(&mut self, track: Track) -> Result<(), ProtocolError> {
        let init = Bytes::from(init_segment(&track)?);
        if let Some(old) = self.init.replace(init) {
            let name = format!("init-{:08x}.mp4", fnv1a(&old));
            self.previous_inits.push_back((name, old));
            while self.previous_inits.len() > 4 {
                self.previous_inits.pop_front();
            }
        }
        self.track = Some(track);
        Ok(())
    }

    /// The publisher changed: the next segment starts after a discontinuity.
    pub fn discontinuity(&mut self) {
        self.close_part();
        self.close_segment();
        self.pending.clear();
        self.part_start = None;
        self.last_decode_time = None;
        self.discontinuity_next = true;
    }

    /// An initialisation segment by the name the playlist gives it: the current one, or
    /// one a listed segment still needs.
    pub fn init_named(&self, name: &str) -> Option<Bytes> {
        if name == self.init_name() {
            return self.init.clone();
        }
        self.previous_inits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Takes one frame; returns whether players can see something new.
    pub fn push(&mut self, frame: Frame) -> Result<Change, ProtocolError> {
        if frame.keyframe && !self.audio {
            // A keyframe describes the track. Other parameter sets (a publisher that came
            // back at another size) need their own initialisation segment, after a
            // discontinuity: the fragments carry no parameter sets of their own.
            match H264Track::from_keyframe(1, self.timescale, &frame.data) {
                Ok(described) => {
                    let same = matches!(&self.track, Some(Track::H264(t)) if *t == described);
                    if !same {
                        if self.track.is_some() {
                            self.discontinuity();
                        }
                        self.set_track(Track::H264(described))?;
                    }
                }
                // Parameter sets sent once, out of band of later keyframes: keep the track.
                Err(_) if self.track.is_some() => {}
                Err(e) => return Err(e),
            }
        }
        if self.track.is_none() {
            return Ok(Change::None);
        }
        let dts = frame.decode_time();
        if self.last_decode_time.is_some_and(|last| dts <= last) {
            // Time went back (or stood still): a new timeline. Start over after a
            // discontinuity rather than write a fragment a player would choke on.
            self.discontinuity();
            if !frame.keyframe {
                return Ok(Change::None);
            }
        }
        if self.segment_start.is_none() && !frame.keyframe {
            return Ok(Change::None);
        }
        let mut change = Change::None;
        let timescale = f64::from(self.timescale);
        let seconds = move |ticks: u64| ticks as f64 / timescale;
        // Video is cut at group starts; audio (every frame a "keyframe") by duration alone.
        let group_start = frame.keyframe && !self.audio;
        let may_end_segment = frame.keyframe;
        if let Some(start) = self.part_start {
            let frame_time = self
                .last_decode_time
                .map_or(0, |last| dts.saturating_sub(last));
            let would_end = seconds(dts + frame_time - start);
            let segment_long = self
                .segment_start
                .is_some_and(|(s, _)| seconds(dts - s) >= self.config.segment_target - 1e-3);
            let ends_segment = may_end_segment && segment_long;
            if (group_start || ends_segment || would_end > self.config.part_target + 1e-3)
                && self.close_part_at(dts)?
            {
                change = Change::Published;
            }
            if ends_segment {
                self.close_segment();
            }
        }
        if self.segment_start.is_none() {
            self.segment_start = Some((dts, frame.wall_ms));
            if let Some(anchor) = self.anchor.take()
                && dts >= anchor.segment_start
            {
                let into = seconds(dts - anchor.segment_start);
                if into >= self.config.segment_target - 1e-3 {
                    self.next_msn = anchor.msn + 1;
                } else {
                    self.next_msn = anchor.msn;
                    self.segment_start = Some((anchor.segment_start, frame.wall_ms));
                }
            }
        }
        if self.part_start.is_none() {
            self.part_start = Some(dts);
        }
        self.last_decode_time = Some(dts);
        self.pending.push(frame);
        Ok(change)
    }

    /// Ends the part being gathered at `end` (the next frame's decode time).
    fn close_part_at(&mut self, end: u64) -> Result<bool, ProtocolError> {
        let (Some(track), Some(start)) = (&self.track, self.part_start) else {
            return Ok(false);
        };
        if self.pending.is_empty() {
            return Ok(false);
        }
        // Numbered by position, so that a standby packager writes the very same bytes.
        let sequence =
            (self.next_msn.wrapping_mul(256) as u32).wrapping_add(self.open_parts.len() as u32 + 1);
        let samples: Vec<Sample<'_>> = self
            .pending
            .iter()
            .map(|f| Sample {
                decode_time: f.decode_time(),
                composition_offset: f.composition_offset,
                keyframe: f.keyframe,
                annex_b: &f.data,
            })
            .collect();
        let bytes = fragment(track, sequence, &samples, end)?;
        self.open_parts.push(StoredPart {
            duration: end.saturating_sub(start) as f64 / f64::from(self.timescale),
            independent: self.pending[0].keyframe || self.audio,
            bytes: Bytes::from(bytes),
        });
        self.newest_part_wall_ms = Some(self.pending[0].wall_ms);
        self.pending.clear();
        self.part_start = None;
        Ok(true)
    }

    /// Ends the part being gathered with its last frame's estimated duration (a
    /// discontinuity: no next frame will come on this timeline).
    fn close_part(&mut self) {
        let end = match (self.pending.len(), self.last_decode_time) {
            (0, _) | (_, None) => return,
            (1, Some(last)) => last + u64::from(self.timescale) / 30,
            (n, Some(last)) => {
                let before = self.pending[n - 2].decode_time();
                last + last.saturating_sub(before).max(1)
            }
        };
        let _ = self.close_part_at(end);
    }

    fn close_segment(&mut self) {
        let Some((_, wall_ms)) = self.segment_start.take() else {
            return;
        };
        if self.open_parts.is_empty() {
            return;
        }
        let parts = std::mem::take(&mut self.open_parts);
        let duration: f64 = parts.iter().map(|p| p.duration).sum();
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&segment_type().unwrap_or_default());
        for part in &parts {
            bytes.extend_from_slice(&part.bytes);
        }
        self.segments.push_back(StoredSegment {
            msn: self.next_msn,
            init_name: self.init_name(),
            duration,
            program_date_time_ms: wall_ms,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
            parts,
            parts_listed: true,
            bytes: bytes.freeze(),
        });
        self.next_msn += 1;
        self.trim();
    }

    fn trim(&mut self) {
        let mut total: f64 = self.segments.iter().map(|s| s.duration).sum();
        while total > self.config.window + 1e-6 && self.segments.len() > 1 {
            if let Some(old) = self.segments.pop_front() {
                total -= old.duration;
                if self.segments.front().is_some_and(|next| next.discontinuity) {
                    self.discontinuity_sequence += 1;
                }
            }
        }
        // Parts only near the live edge: the last three target durations.
        let target = self.target_duration() as f64;
        let mut from_end = 0.0;
        for segment in self.segments.iter_mut().rev() {
            if from_end >= 3.0 * target - 1e-6 {
                segment.parts_listed = false;
                segment.parts.clear();
            }
            from_end += segment.duration;
        }
    }

    fn target_duration(&self) -> u64 {
        self.playlist_skeleton().target_duration()
    }

    fn playlist_skeleton(&self) -> MediaPlaylist {
        let current = self.init_name();
        let mut playlist = MediaPlaylist::of_segments(
            self.config.part_target,
            self.discontinuity_sequence,
            current.clone(),
            self.segments
                .iter()
                .map(|s| Segment {
                    map_uri: (s.init_name != current).then(|| s.init_name.clone()),
                    ..Segment::whole(s.msn, s.duration, s.program_date_time_ms, s.discontinuity)
                })
                .collect(),
            false,
        );
        playlist.partial_discontinuity = self.discontinuity_next;
        playlist.partial_map_uri = Some(current);
        playlist
    }

    /// The media playlist now.
    pub fn playlist(&self) -> MediaPlaylist {
        let mut playlist = self.playlist_skeleton();
        for (listed, stored) in playlist.segments.iter_mut().zip(&self.segments) {
            if stored.parts_listed {
                listed.parts = parts_of(stored.msn, &stored.parts);
            }
        }
        playlist.partial = parts_of(self.next_msn, &self.open_parts);
        playlist.preload_hint = Some(format!(
            "part{}.{}.m4s",
            self.next_msn,
            self.open_parts.len()
        ));
        playlist
    }

    /// A part's bytes, if it is held.
    pub fn part(&self, msn: u64, index: usize) -> Option<Bytes> {
        if msn == self.next_msn {
            return self.open_parts.get(index).map(|p| p.bytes.clone());
        }
        self.segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.parts.get(index))
            .map(|p| p.bytes.clone())
    }

    /// A segment's bytes, if it is held.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        self.segments
            .iter()
            .find(|s| s.msn == msn)
            .map(|s| s.bytes.clone())
    }
}

/// FNV-1a, 32 bits: a content tag for names, not a defence against anyone.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn parts_of(msn: u64, parts: &[StoredPart]) -> Vec<Part> {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| Part {
            duration: p.duration,
            uri: format!("part{msn}.{i}.m4s"),
            independent: p.independent,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keyframe with a real SPS/PPS (320x240 baseline) and a tiny slice.
    fn keyframe() -> Bytes {
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
            0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
        ];
        let pps = [0x68, 0xcb, 0x83, 0xcb, 0x20];
        let mut au = Vec::new();
        for nal in [&sps[..], &pps[..], &[0x65, 0x88, 0x84][..]] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        Bytes::from(au)
    }

    /// Feeds `frames` of 30 fps video from frame `from_frame`, a keyframe every `gop`.
    fn feed(packager: &mut RenditionPackager, from_frame: u64, frames: u64, gop: u64) {
        feed_keyframes(packager, from_frame, frames, gop, keyframe);
    }

    /// [`feed`] with keyframes from `key`.
    fn feed_keyframes(
        packager: &mut RenditionPackager,
        from_frame: u64,
        frames: u64,
        gop: u64,
        key: fn() -> Bytes,
    ) {
        for i in from_frame..from_frame + frames {
            let is_key = i % gop == 0;
            packager
                .push(Frame {
                    timestamp: 90_000 + i * 3000,
                    composition_offset: 0,
                    keyframe: is_key,
                    data: if is_key {
                        key()
                    } else {
                        Bytes::from_static(&[0, 0, 0, 1, 0x41, 0x9a])
                    },
                    wall_ms: 1_796_125_000_000 + i * 100 / 3,
                })
                .unwrap();
        }
    }

    #[test]
    fn a_standby_aligned_mid_segment_numbers_and_writes_every_later_part_as_the_active_does() {
        let mut active = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut active, 0, 30 * 5 + 10, 30);
        let alignment = active.alignment().unwrap();
        assert_eq!(alignment.msn, 2, "4-6 s is open");

        // The standby starts at the 5 s keyframe, inside the active's open segment.
        let mut standby = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        standby.align(alignment);
        feed(&mut standby, 30 * 5, 10, 30);
        feed(&mut active, 30 * 5 + 10, 30 * 6, 30);
        feed(&mut standby, 30 * 5 + 10, 30 * 6, 30);

        let (a, s) = (active.playlist(), standby.playlist());
        let first_shared = s.segments[0].msn;
        assert_eq!(first_shared, 2, "continues the active's open segment");
        assert!(
            s.segments[0].duration < a.segments[2].duration,
            "without its first second"
        );
        for msn in first_shared + 1..=a.segments.last().unwrap().msn {
            let listed = |p: &MediaPlaylist| p.segments.iter().find(|x| x.msn == msn).cloned();
            assert_eq!(listed(&a), listed(&s), "segment {msn} listed alike");
            assert_eq!(
                active.segment(msn),
                standby.segment(msn),
                "segment {msn} bytes"
            );
        }
        assert_eq!(a.partial, s.partial);
        assert_eq!(a.preload_hint, s.preload_hint);

        // Aligned after the active already closed its open segment: the next number.
        let mut late = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        late.align(alignment);
        feed(&mut late, 30 * 6, 30 * 3, 30);
        assert_eq!(late.playlist().segments[0].msn, 3);
        assert_eq!(late.segment(3), active.segment(3));
    }

    #[test]
    fn timings_that_do_not_fit_together_are_refused_with_the_reason() {
        assert_eq!(
            PackagerConfig::checked(2.0, 1.0 / 3.0, 60.0),
            Ok(PackagerConfig::default())
        );
        assert!(
            PackagerConfig::checked(1.0, 0.2, 7200.0).is_ok(),
            "short parts, a DVR window"
        );
        for (segment, part, window) in [
            (2.0, 0.1, 60.0),
            (2.0, 3.0, 60.0),
            (1.0, 0.5, 60.0),
            (4.0, 0.5, 10.0),
        ] {
            assert!(
                matches!(
                    PackagerConfig::checked(segment, part, window),
                    Err(ProtocolError::InvalidHlsTiming(_))
                ),
                "{segment} {part} {window}"
            );
        }
    }

    /// A keyframe like [`keyframe`] with another level in its SPS: other parameter sets,
    /// as a publisher that came back with other encoder settings sends.
    fn other_keyframe() -> Bytes {
        let mut au = keyframe().to_vec();
        au[7] = 0x1e; // level_idc 3.0 instead of 1.3
        Bytes::from(au)
    }

    #[test]
    fn new_parameter_sets_start_a_new_init_segment_after_a_discontinuity_and_the_old_one_stays_served()
     {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 0, 30 * 5, 30);
        let first_init = packager.init_name();
        // The publisher comes back with other settings: same timeline, other SPS.
        feed_keyframes(&mut packager, 30 * 5, 30 * 4, 30, other_keyframe);
        let second_init = packager.init_name();
        assert_ne!(first_init, second_init);
        let text = crate::hls::playlist::render_media(&packager.playlist(), false);
        let maps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("#EXT-X-MAP"))
            .collect();
        assert_eq!(
            maps,
            vec![
                format!("#EXT-X-MAP:URI=\"{first_init}\"").as_str(),
                format!("#EXT-X-MAP:URI=\"{second_init}\"").as_str()
            ],
            "{text}"
        );
        let discontinuity = text.find("#EXT-X-DISCONTINUITY\n").expect(&text);
        let second_map = text
            .find(&format!("#EXT-X-MAP:URI=\"{second_init}\""))
            .unwrap();
        assert!(
            discontinuity < second_map,
            "the new map follows the discontinuity: {text}"
        );
        assert!(
            packager.init_named(&first_init).is_some(),
            "segments before still need it"
        );
        assert!(packager.init_named(&second_init).is_some());
        assert!(packager.init_named("init-00000000.mp4").is_none());
    }

    #[test]
    fn the_discontinuity_is_listed_before_the_parts_of_the_segment_being_written() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 0, 30 * 4 + 5, 30);
        packager.discontinuity();
        feed(&mut packager, 30 * 5, 20, 30);
        let text = crate::hls::playlist::render_media(&packager.playlist(), false);
        let tail = &text[text.rfind("#EXTINF").unwrap()..];
        let discontinuity = tail.find("#EXT-X-DISCONTINUITY").expect(&text);
        let first_part = tail.find("#EXT-X-PART:").unwrap();
        assert!(discontinuity < first_part, "{text}");
    }

    #[test]
    fn parts_are_a_third_of_a_second_and_segments_whole_groups_of_two_seconds() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 0, 30 * 7, 30);
        let playlist = packager.playlist();
        assert_eq!(
            playlist.segments.len(),
            3,
            "0-2 s, 2-4 s, 4-6 s; 6-7 s is open"
        );
        for segment in &playlist.segments {
            assert!((segment.duration - 2.0).abs() < 1e-9, "{segment:?}");
            assert_eq!(segment.parts.len(), 6);
            for (i, part) in segment.parts.iter().enumerate() {
                assert!(part.duration <= playlist.part_target + 1e-3);
                assert_eq!(part.independent, i % 3 == 0, "a keyframe every second");
            }
        }
        assert_eq!(
            playlist.partial.len(),
            2,
            "6.0-6.33 and 6.33-6.67 s are done"
        );
        assert_eq!(playlist.preload_hint.as_deref(), Some("part3.2.m4s"));
        assert_eq!(playlist.target_duration(), 2);
        assert!(packager.part(3, 1).is_some() && packager.part(3, 2).is_none());
        let segment = packager.segment(1).unwrap();
        assert_eq!(&segment[4..8], b"styp");
        assert_eq!(&packager.init().unwrap()[4..8], b"ftyp");
        // The newest part (6.33-6.67 s) started with frame 190.
        assert_eq!(
            packager.newest_part_wall_ms(),
            Some(1_796_125_000_000 + 190 * 100 / 3)
        );
    }

    #[test]
    fn aac_is_cut_by_duration_alone_into_independent_parts() {
        let aac = AacTrack {
            track_id: 1,
            timescale: 48_000,
            sample_rate: 48_000,
            channels: 2,
            config: vec![0x11, 0x90],
        };
        let mut packager =
            RenditionPackager::new(PackagerConfig::default(), 48_000, Media::Aac(aac));
        assert!(
            packager.init().is_some(),
            "the config describes the track at once"
        );
        // 5 s of 1024-sample frames.
        for i in 0..(5 * 48_000 / 1024) {
            packager
                .push(Frame {
                    timestamp: 48_000 + i * 1024,
                    composition_offset: 0,
                    keyframe: true,
                    data: Bytes::from_static(&[0x21, 0x10, 0x04]),
                    wall_ms: 1_796_125_000_000 + i * 1024 * 1000 / 48_000,
                })
                .unwrap();
        }
        let playlist = packager.playlist();
        assert_eq!(playlist.segments.len(), 2);
        for segment in &playlist.segments {
            assert!(
                (segment.duration - 2.0).abs() < 0.03,
                "{}",
                segment.duration
            );
            assert!(segment.parts.len() >= 6, "{}", segment.parts.len());
            for part in &segment.parts {
                assert!(part.independent);
                assert!(
                    part.duration <= playlist.part_target + 1e-3,
                    "{}",
                    part.duration
                );
            }
        }
    }

    #[test]
    fn a_long_group_makes_a_longer_segment_and_the_target_duration_says_so() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 0, 30 * 10, 90);
        let playlist = packager.playlist();
        assert!(
            playlist
                .segments
                .iter()
                .all(|s| (s.duration - 3.0).abs() < 1e-9)
        );
        assert_eq!(playlist.target_duration(), 3);
    }

    #[test]
    fn the_window_keeps_a_minute_and_parts_only_near_the_live_edge() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 0, 30 * 100, 30);
        let playlist = packager.playlist();
        let total: f64 = playlist.segments.iter().map(|s| s.duration).sum();
        assert!(total <= 60.0 + 1e-9, "{total}");
        assert_eq!(playlist.segments.first().unwrap().msn, 19);
        let with_parts = playlist
            .segments
            .iter()
            .filter(|s| !s.parts.is_empty())
            .count();
        assert_eq!(with_parts, 3, "the last six seconds");
        assert!(packager.segment(18).is_none() && packager.segment(19).is_some());
    }

    #[test]
    fn nothing_is_published_before_the_first_keyframe_and_a_new_publisher_is_a_discontinuity() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 1, 29, 30);
        assert!(packager.init().is_none());
        feed(&mut packager, 30, 30 * 3, 30);
        packager.discontinuity();
        // The new publisher's clock starts elsewhere.
        feed(&mut packager, 1000, 30 * 5, 30);
        let playlist = packager.playlist();
        let marked: Vec<bool> = playlist.segments.iter().map(|s| s.discontinuity).collect();
        assert_eq!(marked.iter().filter(|d| **d).count(), 1, "{marked:?}");
        let text = super::super::playlist::render_media(&playlist, false);
        assert!(text.contains("#EXT-X-DISCONTINUITY\n"));
    }

    #[test]
    fn time_going_back_starts_over_after_a_discontinuity_instead_of_a_broken_fragment() {
        let mut packager = RenditionPackager::new(PackagerConfig::default(), 90_000, Media::H264);
        feed(&mut packager, 300, 30 * 3, 30);
        feed(&mut packager, 0, 30 * 3, 30);
        let playlist = packager.playlist();
        assert!(playlist.segments.iter().any(|s| s.discontinuity));
    }
}
