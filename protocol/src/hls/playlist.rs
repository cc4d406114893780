//! Our LL-HLS playlist writer. No crate writes `EXT-X-PART`, `EXT-X-PART-INF`,
//! `EXT-X-PRELOAD-HINT`, `EXT-X-SERVER-CONTROL` or `EXT-X-RENDITION-REPORT`, so the packager
//! describes what it has written ([`MediaPlaylist`], [`Multivariant`]) and these functions
//! render it. A player without LL-HLS support ignores the part tags and plays the same
//! playlist as ordinary HLS.
//!
//! Rules kept here (and checked by the tests below):
//! - `PART-HOLD-BACK` is three part targets; `CAN-SKIP-UNTIL` is six target durations.
//! - A part that starts with a keyframe is `INDEPENDENT=YES`.
//! - `EXT-X-TARGETDURATION` is the longest segment rounded to the nearest second (never
//!   below 1), as RFC 8216 §4.3.3.1 asks.
//! - A delta update (`_HLS_skip=YES`) replaces the segments older than the skip boundary with
//!   `EXT-X-SKIP`, never the last six target durations.
//! - Blocking reload ([`reload`]): a request is answered once the playlist has what it names,
//!   and refused when it asks for more than two segments or three parts ahead.

use std::fmt::Write;

/// Parts a client may ask for beyond the newest (the spec's Advance Part Limit).
pub const ADVANCE_PART_LIMIT: u64 = 3;
/// Segments a client may ask for beyond the newest complete one.
pub const ADVANCE_SEGMENT_LIMIT: u64 = 2;

/// A part of a segment (`EXT-X-PART`).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Seconds.
    pub duration: f64,
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// It starts with a keyframe: a player can start decoding here.
    pub independent: bool,
}

/// A complete media segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its Media Sequence Number.
    pub msn: u64,
    /// Seconds.
    pub duration: f64,
    /// Its URI, relative to the playlist.
    pub uri: String,
    /// Wall-clock time of its first frame, milliseconds since the Unix epoch.
    pub program_date_time_ms: u64,
    /// A discontinuity precedes it (the publisher reconnected).
    pub discontinuity: bool,
    /// Its parts; empty for segments old enough that their parts were dropped.
    pub parts: Vec<Part>,
    /// Its initialisation segment when it is not the playlist's (the publisher came back
    /// with other parameter sets): an `EXT-X-MAP` goes before it.
    pub map_uri: Option<String>,
}

/// Where another rendition's playlist is (`EXT-X-RENDITION-REPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionReport {
    /// Its media playlist's URI, relative to this one.
    pub uri: String,
    /// Its newest Media Sequence Number.
    pub last_msn: u64,
    /// Its newest part in that segment.
    pub last_part: u64,
}

/// One rendition's media playlist as the packager has written it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    /// The part target in seconds (`EXT-X-PART-INF:PART-TARGET`).
    pub part_target: f64,
    /// Discontinuities before the first segment listed.
    pub discontinuity_sequence: u64,
    /// The initialisation segment's URI (`EXT-X-MAP`).
    pub map_uri: String,
    /// Complete segments, oldest first, with consecutive Media Sequence Numbers.
    pub segments: Vec<Segment>,
    /// Parts of the segment being written (its number follows the last complete one).
    pub partial: Vec<Part>,
    /// The URI of the next part, before it exists (`EXT-X-PRELOAD-HINT`).
    pub preload_hint: Option<String>,
    /// The other renditions' newest segments and parts.
    pub rendition_reports: Vec<RenditionReport>,
    /// The recording is over (`EXT-X-ENDLIST`): a VOD playlist.
    pub ended: bool,
    /// The segment being written follows a discontinuity: the tag goes before its parts.
    pub partial_discontinuity: bool,
    /// The segment being written needs another initialisation segment than the last
    /// listed one.
    pub partial_map_uri: Option<String>,
}

impl Segment {
    /// A whole segment, listed without its parts, at `seg{msn}.m4s`.
    pub fn whole(msn: u64, duration: f64, program_date_time_ms: u64, discontinuity: bool) -> Self {
        Segment {
            msn,
            duration,
            uri: format!("seg{msn}.m4s"),
            program_date_time_ms,
            discontinuity,
            parts: Vec::new(),
            map_uri: None,
        }
    }
}

impl MediaPlaylist {
    /// A playlist of whole `segments` with nothing being written: a live playlist before
    /// its parts are added, or (`ended`) a VOD playlist.
    pub fn of_segments(
        part_target: f64,
        discontinuity_sequence: u64,
        map_uri: String,
        segments: Vec<Segment>,
        ended: bool,
    ) -> Self {
        MediaPlaylist {
            part_target,
            discontinuity_sequence,
            map_uri,
            segments,
            partial: Vec::new(),
            preload_hint: None,
            rendition_reports: Vec::new(),
            ended,
            partial_discontinuity: false,
            partial_map_uri: None,
        }
    }

    /// The Media Sequence Number of the segment being written (or that will be next).
    pub fn next_msn(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.msn + 1)
    }

    /// `EXT-X-TARGETDURATION`: the longest segment, rounded, at least one second. With no
    /// segment yet, the part target rounded up (the first segment is at most this long only
    /// by chance, but a player needs a value).
    pub fn target_duration(&self) -> u64 {
        let longest = self
            .segments
            .iter()
            .map(|s| s.duration)
            .fold(0.0_f64, f64::max);
        if longest == 0.0 {
            return (self.part_target.ceil() as u64).max(1);
        }
        (longest.round() as u64).max(1)
    }

    /// The newest part: (Media Sequence Number, part index), if any part exists.
    pub fn last_part(&self) -> Option<(u64, u64)> {
        if !self.partial.is_empty() {
            return Some((self.next_msn(), self.partial.len() as u64 - 1));
        }
        self.segments
            .last()
            .filter(|s| !s.parts.is_empty())
            .map(|s| (s.msn, s.parts.len() as u64 - 1))
    }
}

/// Renders `playlist`; with `skip`, as a delta update (`_HLS_skip=YES`) when it is long
/// enough to skip anything.
pub fn render_media(playlist: &MediaPlaylist, skip: bool) -> String {
    let target = playlist.target_duration();
    let can_skip_until = 6 * target;
    let mut out = String::new();
    out.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    if !playlist.ended {
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={:.3}",
            can_skip_until as f64,
            3.0 * playlist.part_target
        );
    } else {
        out.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    }
    let _ = writeln!(
        out,
        "#EXT-X-PART-INF:PART-TARGET={:.5}",
        playlist.part_target
    );
    let first_msn = playlist.segments.first().map_or(0, |s| s.msn);
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first_msn}");
    if playlist.discontinuity_sequence > 0 {
        let _ = writeln!(
            out,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            playlist.discontinuity_sequence
        );
    }
    let first_map = playlist
        .segments
        .first()
        .and_then(|s| s.map_uri.as_deref())
        .unwrap_or(&playlist.map_uri);
    let _ = writeln!(out, "#EXT-X-MAP:URI=\"{first_map}\"");
    let mut map_in_effect = first_map;

    let skipped = if skip && !playlist.ended {
        skippable(&playlist.segments, can_skip_until as f64)
    } else {
        0
    };
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    for (i, segment) in playlist.segments.iter().enumerate() {
        let map = segment.map_uri.as_deref().unwrap_or(&playlist.map_uri);
        if i < skipped {
            map_in_effect = map;
            continue;
        }
        if segment.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if map != map_in_effect {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{map}\"");
            map_in_effect = map;
        }
        // Players need it on the first listed segment and after a discontinuity; every
        // segment has it, which the spec allows and which costs a line.
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            iso8601_millis(segment.program_date_time_ms)
        );
        for part in &segment.parts {
            write_part(&mut out, part);
        }
        let _ = writeln!(out, "#EXTINF:{:.5},\n{}", segment.duration, segment.uri);
    }
    if !playlist.partial.is_empty() {
        if playlist.partial_discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if let Some(map) = playlist
            .partial_map_uri
            .as_deref()
            .filter(|m| *m != map_in_effect)
        {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{map}\"");
        }
    }
    for part in &playlist.partial {
        write_part(&mut out, part);
    }
    if let Some(hint) = &playlist.preload_hint {
        let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{hint}\"");
    }
    for report in &playlist.rendition_reports {
        let _ = writeln!(
            out,
            "#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={},LAST-PART={}",
            report.uri, report.last_msn, report.last_part
        );
    }
    if playlist.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

fn write_part(out: &mut String, part: &Part) {
    let _ = write!(
        out,
        "#EXT-X-PART:DURATION={:.5},URI=\"{}\"",
        part.duration, part.uri
    );
    if part.independent {
        out.push_str(",INDEPENDENT=YES");
    }
    out.push('\n');
}

/// How many of the oldest `segments` a delta update may skip: those that end more than
/// `boundary` seconds before the end of the playlist.
fn skippable(segments: &[Segment], boundary: f64) -> usize {
    let mut from_end = 0.0;
    let mut keep = 0;
    for segment in segments.iter().rev() {
        if from_end >= boundary {
            break;
        }
        from_end += segment.duration;
        keep += 1;
    }
    segments.len() - keep
}

/// `2026-12-01T11:07:16.123Z`.
fn iso8601_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What to do with a blocking playlist reload (`_HLS_msn`, `_HLS_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The playlist has what the request names: answer now.
    Ready,
    /// Hold the request until the playlist changes.
    Wait,
    /// The request is too far ahead of the playlist: `400 Bad Request`.
    TooFarAhead,
}

/// Whether `playlist` can answer a request for segment `msn` (complete, or with `part`
/// written when given). A part index past the end of a complete segment names the next
/// segment's first part, as the spec allows players to ask.
pub fn reload(playlist: &MediaPlaylist, msn: u64, part: Option<u64>) -> Reload {
    let next = playlist.next_msn();
    let written = playlist.partial.len() as u64;
    if msn > next + ADVANCE_SEGMENT_LIMIT - 1 {
        return Reload::TooFarAhead;
    }
    match part {
        None => {
            if msn < next {
                Reload::Ready
            } else {
                Reload::Wait
            }
        }
        Some(part) => {
            if msn < next {
                let parts = playlist
                    .segments
                    .iter()
                    .find(|s| s.msn == msn)
                    .map_or(0, |s| s.parts.len() as u64);
                // A complete segment: its parts are all there (or it was listed without
                // them); a part index beyond them asks for the next segment's first.
                if part < parts.max(1) || msn + 1 < next || written > 0 {
                    return Reload::Ready;
                }
                return Reload::Wait;
            }
            if msn > next {
                return Reload::Wait;
            }
            if part < written {
                Reload::Ready
            } else if part >= written + ADVANCE_PART_LIMIT {
                Reload::TooFarAhead
            } else {
                Reload::Wait
            }
        }
    }
}

/// One variant of the multivariant playlist (a video rendition with its audio group).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Its media playlist's URI.
    pub uri: String,
    /// Peak bits per second (`BANDWIDTH`).
    pub bandwidth: u64,
    /// Average bits per second (`AVERAGE-BANDWIDTH`).
    pub average_bandwidth: u64,
    /// RFC 6381 codecs of the video and its audio (`avc1.64001f,mp4a.40.2`).
    pub codecs: String,
    /// Width and height.
    pub resolution: (u32, u32),
    /// Frames per second.
    pub frame_rate: f64,
    /// The `GROUP-ID` of its audio rendition, if any.
    pub audio_group: Option<String>,
}

/// An audio rendition (`EXT-X-MEDIA:TYPE=AUDIO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioRendition {
    /// Its `GROUP-ID`.
    pub group: String,
    /// Its `NAME`.
    pub name: String,
    /// Its media playlist's URI.
    pub uri: String,
    /// Channels (`CHANNELS`).
    pub channels: u8,
}

/// The multivariant playlist: every video variant, best first, and the audio renditions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Multivariant {
    /// Video variants.
    pub variants: Vec<Variant>,
    /// Audio renditions.
    pub audio: Vec<AudioRendition>,
}

/// Renders the multivariant playlist.
pub fn render_multivariant(playlist: &Multivariant) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for (i, audio) in playlist.audio.iter().enumerate() {
        // The first rendition of each group is its default.
        let first_of_group = playlist.audio[..i].iter().all(|a| a.group != audio.group);
        let default = if first_of_group { "YES" } else { "NO" };
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{}\",NAME=\"{}\",DEFAULT={default},AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{}\"",
            audio.group, audio.name, audio.channels, audio.uri
        );
    }
    for variant in &playlist.variants {
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE={:.3}",
            variant.bandwidth,
            variant.average_bandwidth,
            variant.codecs,
            variant.resolution.0,
            variant.resolution.1,
            variant.frame_rate
        );
        if let Some(group) = &variant.audio_group {
            let _ = write!(out, ",AUDIO=\"{group}\"");
        }
        let _ = writeln!(out, "\n{}", variant.uri);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART: f64 = 1.0 / 3.0;

    fn part(msn: u64, i: u64, independent: bool) -> Part {
        Part {
            duration: PART,
            uri: format!("part{msn}.{i}.m4s"),
            independent,
        }
    }

    /// `n` complete two-second segments of six parts (a keyframe at each segment start),
    /// then `partial` parts of the next.
    fn live(n: u64, partial: u64) -> MediaPlaylist {
        let segments = (0..n)
            .map(|msn| Segment {
                msn,
                duration: 2.0,
                uri: format!("seg{msn}.m4s"),
                program_date_time_ms: 1_796_125_000_000 + msn * 2000,
                discontinuity: false,
                parts: (0..6).map(|i| part(msn, i, i == 0)).collect(),
                map_uri: None,
            })
            .collect();
        MediaPlaylist {
            part_target: PART,
            discontinuity_sequence: 0,
            map_uri: "init.mp4".into(),
            segments,
            partial: (0..partial).map(|i| part(n, i, i == 0)).collect(),
            preload_hint: Some(format!("part{n}.{partial}.m4s")),
            rendition_reports: vec![RenditionReport {
                uri: "../180p/index.m3u8".into(),
                last_msn: n,
                last_part: partial.saturating_sub(1),
            }],
            ended: false,
            partial_discontinuity: false,
            partial_map_uri: None,
        }
    }

    #[test]
    fn a_live_playlist_carries_the_low_latency_tags_with_their_limits() {
        let text = render_media(&live(3, 2), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#EXTM3U");
        assert!(lines.contains(&"#EXT-X-TARGETDURATION:2"), "{text}");
        assert!(
            lines.contains(&"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=1.000"),
            "part hold back is three part targets, the skip boundary six target durations: {text}"
        );
        assert!(
            lines.contains(&"#EXT-X-PART-INF:PART-TARGET=0.33333"),
            "{text}"
        );
        assert!(lines.contains(&"#EXT-X-MEDIA-SEQUENCE:0"));
        assert!(lines.contains(&"#EXT-X-MAP:URI=\"init.mp4\""));
        assert!(
            lines.contains(&"#EXT-X-PROGRAM-DATE-TIME:2026-12-01T11:36:40.000Z"),
            "{text}"
        );
        assert!(
            lines.contains(&"#EXT-X-PART:DURATION=0.33333,URI=\"part0.0.m4s\",INDEPENDENT=YES")
        );
        assert!(lines.contains(&"#EXT-X-PART:DURATION=0.33333,URI=\"part0.1.m4s\""));
        assert!(lines.contains(&"#EXTINF:2.00000,"));
        // The segment being written: its parts, then the hint for the next one.
        let tail: Vec<&str> = lines[lines.len() - 4..].to_vec();
        assert_eq!(
            tail,
            [
                "#EXT-X-PART:DURATION=0.33333,URI=\"part3.0.m4s\",INDEPENDENT=YES",
                "#EXT-X-PART:DURATION=0.33333,URI=\"part3.1.m4s\"",
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part3.2.m4s\"",
                "#EXT-X-RENDITION-REPORT:URI=\"../180p/index.m3u8\",LAST-MSN=3,LAST-PART=1",
            ]
        );
        assert!(!text.contains("ENDLIST"));
    }

    #[test]
    fn every_part_is_within_the_part_target_and_parts_add_up_to_their_segment() {
        let playlist = live(4, 3);
        for segment in &playlist.segments {
            let sum: f64 = segment.parts.iter().map(|p| p.duration).sum();
            assert!((sum - segment.duration).abs() < 1e-9);
            assert!(
                segment
                    .parts
                    .iter()
                    .all(|p| p.duration <= playlist.part_target + 1e-9)
            );
            assert!(
                segment.parts[0].independent,
                "a segment starts with a keyframe"
            );
        }
        assert_eq!(playlist.last_part(), Some((4, 2)));
        assert_eq!(playlist.next_msn(), 4);
    }

    #[test]
    fn target_duration_is_the_longest_segment_rounded_and_at_least_one_second() {
        let mut playlist = live(2, 0);
        playlist.segments[1].duration = 2.6;
        assert_eq!(playlist.target_duration(), 3);
        playlist.segments[1].duration = 2.4;
        assert_eq!(playlist.target_duration(), 2);
        assert_eq!(live(0, 1).target_duration(), 1, "no segment yet");
    }

    #[test]
    fn a_discontinuity_is_marked_before_its_segment_and_counted_once_it_scrolls_out() {
        let mut playlist = live(3, 0);
        playlist.segments[2].discontinuity = true;
        let text = render_media(&playlist, false);
        let at = text.find("#EXT-X-DISCONTINUITY\n").expect("marked");
        assert!(text[at..].find("seg2.m4s") < text[at..].find("seg1.m4s").or(Some(usize::MAX)));
        assert!(!text.contains("#EXT-X-DISCONTINUITY-SEQUENCE"));
        playlist.segments.remove(0);
        playlist.discontinuity_sequence = 1;
        assert!(render_media(&playlist, false).contains("#EXT-X-DISCONTINUITY-SEQUENCE:1"));
    }

    #[test]
    fn a_delta_update_skips_only_segments_older_than_six_target_durations() {
        // 20 segments of 2 s: the last 12 s (six segments) must stay.
        let playlist = live(20, 1);
        let full = render_media(&playlist, false);
        let delta = render_media(&playlist, true);
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=14"), "{delta}");
        assert!(!delta.contains("seg13.m4s") && delta.contains("seg14.m4s"));
        assert!(
            delta.contains("#EXT-X-MEDIA-SEQUENCE:0"),
            "the sequence still names the first"
        );
        assert!(delta.len() < full.len() / 2);
        assert!(
            !render_media(&live(5, 1), true).contains("EXT-X-SKIP"),
            "too short to skip"
        );
    }

    #[test]
    fn a_finished_recording_is_a_vod_playlist_without_live_controls() {
        let mut playlist = live(3, 0);
        playlist.ended = true;
        playlist.preload_hint = None;
        playlist.rendition_reports.clear();
        let text = render_media(&playlist, true);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"));
        assert!(!text.contains("SERVER-CONTROL") && !text.contains("EXT-X-SKIP"));
    }

    #[test]
    fn blocking_reload_answers_once_the_named_part_exists_and_refuses_far_ahead() {
        // Segments 0..=4 complete, segment 5 has parts 0 and 1.
        let playlist = live(5, 2);
        assert_eq!(reload(&playlist, 4, None), Reload::Ready);
        assert_eq!(
            reload(&playlist, 5, None),
            Reload::Wait,
            "segment 5 is not complete"
        );
        assert_eq!(reload(&playlist, 5, Some(1)), Reload::Ready);
        assert_eq!(reload(&playlist, 5, Some(2)), Reload::Wait, "the next part");
        assert_eq!(reload(&playlist, 5, Some(4)), Reload::Wait);
        assert_eq!(
            reload(&playlist, 5, Some(5)),
            Reload::TooFarAhead,
            "three parts past"
        );
        assert_eq!(reload(&playlist, 6, Some(0)), Reload::Wait);
        assert_eq!(reload(&playlist, 6, None), Reload::Wait);
        assert_eq!(
            reload(&playlist, 7, None),
            Reload::TooFarAhead,
            "two segments past"
        );
        assert_eq!(
            reload(&playlist, 3, Some(9)),
            Reload::Ready,
            "an old segment"
        );
        // A part index past a complete segment's last names the next segment's first part.
        let fresh = live(5, 0);
        assert_eq!(reload(&fresh, 4, Some(6)), Reload::Wait);
    }

    #[test]
    fn the_multivariant_playlist_lists_every_rendition_with_its_audio_group() {
        let text = render_multivariant(&Multivariant {
            variants: vec![
                Variant {
                    uri: "360p/index.m3u8".into(),
                    bandwidth: 900_000,
                    average_bandwidth: 800_000,
                    codecs: "avc1.42c01e,mp4a.40.2".into(),
                    resolution: (640, 360),
                    frame_rate: 30.0,
                    audio_group: Some("aac".into()),
                },
                Variant {
                    uri: "180p/index.m3u8".into(),
                    bandwidth: 300_000,
                    average_bandwidth: 250_000,
                    codecs: "avc1.42c00d,mp4a.40.2".into(),
                    resolution: (320, 180),
                    frame_rate: 30.0,
                    audio_group: Some("aac".into()),
                },
            ],
            audio: vec![
                AudioRendition {
                    group: "aac".into(),
                    name: "main".into(),
                    uri: "aac/index.m3u8".into(),
                    channels: 2,
                },
                AudioRendition {
                    group: "opus".into(),
                    name: "main".into(),
                    uri: "opus/index.m3u8".into(),
                    channels: 2,
                },
            ],
        });
        assert!(text.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"main\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"aac/index.m3u8\""));
        assert!(
            text.contains("GROUP-ID=\"opus\",NAME=\"main\",DEFAULT=YES"),
            "each group has its default: {text}"
        );
        assert!(text.contains("#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=800000,CODECS=\"avc1.42c01e,mp4a.40.2\",RESOLUTION=640x360,FRAME-RATE=30.000,AUDIO=\"aac\"\n360p/index.m3u8\n"), "{text}");
        assert_eq!(text.matches("#EXT-X-STREAM-INF").count(), 2);
    }

    #[test]
    fn dates_are_rendered_in_utc_with_milliseconds() {
        assert_eq!(iso8601_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            iso8601_millis(1_796_125_000_000),
            "2026-12-01T11:36:40.000Z"
        );
    }
}
