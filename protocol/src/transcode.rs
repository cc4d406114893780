//! What a transcoder makes of a source, and how the node and its transcoder process talk.
//!
//! - [`plan_job`] decides, from a broadcast's source catalog and the ladder, which
//!   renditions a stream gets: video rungs below the source (the source itself stays the top
//!   rung when WebRTC can carry it; when it cannot — B-frames, H.265 — a WebRTC-safe rung at
//!   the source's size takes its place), and the audio bridge (AAC gets an Opus track for
//!   WebRTC viewers, Opus gets an AAC track for HLS). A pure function with table tests.
//! - The **pipe format** between the node and its `cascade transcode` child: a stream of
//!   [`PipeFrame`]s, each `output index (varint) | relay frame` (the relay's frame encoding,
//!   `docs/relay.md`). The node writes source frames (index 0 video, 1 audio) to the
//!   child's stdin; the child writes rendition frames (index = position in
//!   [`TranscodeJob::outputs`]) to its stdout.

use bytes::BytesMut;

use crate::error::ProtocolError;
use crate::media::{Codec, MediaKind, TrackInfo};
use crate::relay::wire::{RelayFrame, put_varint, take_frame, try_varint};

/// Index of the source video on the child's stdin.
pub const INPUT_VIDEO: u64 = 0;
/// Index of the source audio on the child's stdin.
pub const INPUT_AUDIO: u64 = 1;
/// Index of the gate frame on the child's stdin: its payload has one byte per output, 1 when
/// something consumes that output (encode it), 0 when nothing does (just in time: the
/// output idles). Gates open and close at source group boundaries.
pub const INPUT_GATES: u64 = 2;

/// One video rung of a ladder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rung {
    /// Picture height in pixels; the width follows the source's aspect ratio.
    pub height: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Frame rate cap; `None` keeps the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
}

impl Rung {
    /// The rung's track name, named for what it is: `video/360p`, or `video/180p-1fps` with
    /// a frame rate cap.
    pub fn track_name(&self) -> String {
        match self.fps {
            Some(fps) => format!("video/{}p-{fps}fps", self.height),
            None => format!("video/{}p", self.height),
        }
    }

    /// Parses `360p:800` or `360p:800:15` (height, kbit/s, optional fps), the CLI's form.
    pub fn parse(text: &str) -> Result<Rung, String> {
        let mut parts = text.split(':');
        let height = parts
            .next()
            .and_then(|h| h.strip_suffix('p'))
            .and_then(|h| h.parse::<u32>().ok())
            .filter(|h| (16..=4320).contains(h) && h % 2 == 0)
            .ok_or_else(|| format!("`{text}`: a rung starts with an even height like 360p"))?;
        let bitrate_kbps = parts
            .next()
            .and_then(|b| b.parse::<u32>().ok())
            .filter(|b| (50..=100_000).contains(b))
            .ok_or_else(|| format!("`{text}`: a rung needs a bitrate in kbit/s, like 360p:800"))?;
        let fps = match parts.next() {
            None => None,
            Some(f) => Some(
                f.parse::<u32>()
                    .ok()
                    .filter(|f| (1..=120).contains(f))
                    .ok_or_else(|| format!("`{text}`: frame rate must be 1 to 120"))?,
            ),
        };
        if parts.next().is_some() {
            return Err(format!("`{text}`: expected height:kbps[:fps]"));
        }
        Ok(Rung {
            height,
            bitrate_kbps,
            fps,
        })
    }
}

/// A usual ladder: 720p, 360p and 180p.
pub fn usual_ladder() -> Vec<Rung> {
    [(720, 2500), (360, 800), (180, 250)]
        .map(|(height, bitrate_kbps)| Rung {
            height,
            bitrate_kbps,
            fps: None,
        })
        .into()
}

/// What one output of a transcoder is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    /// H.264 (constrained baseline, no B-frames) at this size.
    Video {
        /// Track name (`video/360p`).
        track: String,
        /// Picture width, even.
        width: u32,
        /// Picture height, even.
        height: u32,
        /// Target bitrate in kbit/s.
        bitrate_kbps: u32,
        /// Frame rate cap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fps: Option<u32>,
    },
    /// The source audio in another codec.
    Audio {
        /// Track name (`audio/opus`, `audio/aac`).
        track: String,
        /// Opus or AAC.
        codec: Codec,
        /// Target bitrate in kbit/s.
        bitrate_kbps: u32,
    },
}

impl Output {
    /// The output's track name.
    pub fn track(&self) -> &str {
        match self {
            Output::Video { track, .. } | Output::Audio { track, .. } => track,
        }
    }

    /// What the catalog says about it before its first frame.
    pub fn track_info(&self) -> TrackInfo {
        match self {
            Output::Video {
                track,
                width,
                height,
                bitrate_kbps,
                fps,
            } => {
                let mut info = TrackInfo::new(track, Codec::H264);
                info.width = Some(*width);
                info.height = Some(*height);
                info.bitrate_kbps = Some(*bitrate_kbps);
                info.fps = *fps;
                info
            }
            Output::Audio {
                track,
                codec,
                bitrate_kbps,
            } => {
                let mut info = TrackInfo::new(track, *codec);
                info.bitrate_kbps = Some(*bitrate_kbps);
                info.sample_rate = Some(48_000);
                info.channels = Some(2);
                if *codec == Codec::Aac {
                    info.timescale = 48_000;
                    info.codec_string = Some("mp4a.40.2".into());
                    // AAC-LC, 48 kHz, stereo: what the transcoder's encoder is asked for.
                    info.config = Some("1190".into());
                }
                info
            }
        }
    }
}

/// Everything a transcoder process needs to know: its inputs' codecs and configuration,
/// and what to make of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TranscodeJob {
    /// The source video track, if it is transcoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_source: Option<TrackInfo>,
    /// The source audio track, if it is transcoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_source: Option<TrackInfo>,
    /// The renditions, in the order their frames are indexed on the child's stdout.
    pub outputs: Vec<Output>,
}

impl TranscodeJob {
    /// The video outputs.
    pub fn video_outputs(&self) -> impl Iterator<Item = (usize, &Output)> {
        self.outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, Output::Video { .. }))
    }
}

/// Which renditions `catalog` (the source tracks) gets from `ladder`; `None` when there is
/// nothing to make. Video: every rung strictly below the source's height; a source WebRTC
/// cannot carry (B-frames, H.265) also gets a rung at its own size (or the ladder's rung of
/// that height), which WebRTC viewers then get. Sources of a codec we do not decode (AV1,
/// VP8) get no video rungs; an H.264/H.265 source whose size is not known yet gets no job
/// until it is. Audio: AAC gets Opus,
/// Opus gets AAC.
pub fn plan_job(catalog: &[TrackInfo], ladder: &[Rung]) -> Option<TranscodeJob> {
    let mut job = TranscodeJob {
        video_source: None,
        audio_source: None,
        outputs: Vec::new(),
    };
    let video = catalog
        .iter()
        .find(|t| t.kind == MediaKind::Video && t.name == crate::media::VIDEO_SOURCE);
    if let Some(source) = video
        && matches!(source.codec, Codec::H264 | Codec::H265)
    {
        // The size comes with the first keyframe; a job planned before it would be
        // replaced a moment later.
        let (Some(width), Some(height)) = (source.width, source.height) else {
            return None;
        };
        let mut rungs: Vec<Rung> = ladder
            .iter()
            .filter(|r| r.height < height)
            .cloned()
            .collect();
        if source.webrtc_unfit().is_some() {
            let at_source = ladder
                .iter()
                .find(|r| r.height == height)
                .cloned()
                .unwrap_or_else(|| Rung {
                    height,
                    // About 0.1 bit per pixel at 30 fps, the usual x264 quality for live.
                    bitrate_kbps: (width * height * 3 / 1000).clamp(200, 8000),
                    fps: None,
                });
            rungs.push(at_source);
        }
        rungs.sort_by_key(|r| (std::cmp::Reverse(r.height), r.fps.is_some()));
        rungs.dedup_by_key(|r| r.track_name());
        for rung in rungs {
            job.outputs.push(Output::Video {
                track: rung.track_name(),
                width: scaled_width(width, height, rung.height),
                height: rung.height,
                bitrate_kbps: rung.bitrate_kbps,
                fps: rung.fps,
            });
        }
        if !job.outputs.is_empty() {
            job.video_source = Some(source.clone());
        }
    }
    let audio = catalog
        .iter()
        .find(|t| t.kind == MediaKind::Audio && t.name == crate::media::AUDIO_SOURCE);
    let bridge = match audio.map(|a| a.codec) {
        Some(Codec::Aac) => Some((Codec::Opus, "audio/opus", 64)),
        Some(Codec::Opus) => Some((Codec::Aac, "audio/aac", 128)),
        _ => None,
    };
    if let (Some(source), Some((codec, track, bitrate_kbps))) = (audio, bridge) {
        job.audio_source = Some(source.clone());
        job.outputs.push(Output::Audio {
            track: track.into(),
            codec,
            bitrate_kbps,
        });
    }
    (!job.outputs.is_empty()).then_some(job)
}

/// The width for `height` keeping the source's aspect ratio, rounded to an even number.
fn scaled_width(source_width: u32, source_height: u32, height: u32) -> u32 {
    let exact = u64::from(source_width) * u64::from(height) / u64::from(source_height.max(1));
    ((exact as u32 + 1) & !1).max(2)
}

/// One frame on the pipe between the node and its transcoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeFrame {
    /// Input index (node → child) or output index (child → node).
    pub index: u64,
    /// The frame.
    pub frame: RelayFrame,
}

impl PipeFrame {
    /// Appends the frame's encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.index);
        self.frame.encode(out);
    }
}

/// Splits the pipe's bytes back into [`PipeFrame`]s, however they were cut.
#[derive(Debug, Default)]
pub struct PipeDecoder {
    buffer: BytesMut,
}

impl PipeDecoder {
    /// Adds bytes read from the pipe.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one is complete. An error means the peer is not
    /// speaking the format (or sent a frame over the relay's 8 MiB limit); the pipe is
    /// unusable.
    pub fn next_frame(&mut self) -> Result<Option<PipeFrame>, ProtocolError> {
        let mut peek = &self.buffer[..];
        let Some(index) = try_varint(&mut peek)? else {
            return Ok(None);
        };
        let offset = self.buffer.len() - peek.len();
        Ok(take_frame(&mut self.buffer, offset)?.map(|frame| PipeFrame { index, frame }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AUDIO_SOURCE, VIDEO_SOURCE};
    use bytes::Bytes;

    fn video(codec: Codec, width: u32, height: u32, bframes: bool) -> TrackInfo {
        let mut info = TrackInfo::new(VIDEO_SOURCE, codec);
        info.width = Some(width);
        info.height = Some(height);
        info.bframes = bframes;
        info
    }

    fn audio(codec: Codec) -> TrackInfo {
        TrackInfo::new(AUDIO_SOURCE, codec)
    }

    fn tracks(job: &TranscodeJob) -> Vec<&str> {
        job.outputs.iter().map(Output::track).collect()
    }

    #[test]
    fn a_webrtc_safe_720p_source_keeps_its_top_rung_and_gets_the_rungs_below() {
        let job = plan_job(
            &[video(Codec::H264, 1280, 720, false), audio(Codec::Opus)],
            &usual_ladder(),
        )
        .unwrap();
        assert_eq!(tracks(&job), ["video/360p", "video/180p", "audio/aac"]);
        assert_eq!(
            job.outputs[0],
            Output::Video {
                track: "video/360p".into(),
                width: 640,
                height: 360,
                bitrate_kbps: 800,
                fps: None
            }
        );
    }

    #[test]
    fn a_source_with_b_frames_gets_a_webrtc_safe_rung_at_its_own_size() {
        let job = plan_job(
            &[video(Codec::H264, 640, 360, true), audio(Codec::Aac)],
            &usual_ladder(),
        )
        .unwrap();
        assert_eq!(tracks(&job), ["video/360p", "video/180p", "audio/opus"]);
        let odd = plan_job(&[video(Codec::H265, 854, 480, false)], &usual_ladder()).unwrap();
        assert_eq!(tracks(&odd), ["video/480p", "video/360p", "video/180p"]);
        assert!(matches!(
            odd.outputs[0],
            Output::Video {
                width: 854,
                height: 480,
                ..
            }
        ));
    }

    #[test]
    fn a_frame_rate_capped_rung_is_its_own_track_beside_a_rung_of_the_same_height() {
        let ladder = [
            Rung::parse("360p:800").unwrap(),
            Rung::parse("360p:100:1").unwrap(),
        ];
        let job = plan_job(&[video(Codec::H264, 1280, 720, false)], &ladder).unwrap();
        assert_eq!(tracks(&job), ["video/360p", "video/360p-1fps"]);
        assert_eq!(job.outputs[1].track_info().fps, Some(1));
    }

    #[test]
    fn rungs_above_the_source_are_skipped() {
        let job = plan_job(&[video(Codec::H264, 320, 180, false)], &usual_ladder());
        assert_eq!(job, None, "nothing below 180p, and 180p is the source");
    }

    #[test]
    fn codecs_we_do_not_decode_get_no_video_rungs_and_unknown_sizes_wait() {
        assert_eq!(
            plan_job(&[video(Codec::Vp8, 1280, 720, false)], &usual_ladder()),
            None
        );
        let mut unknown = video(Codec::H264, 0, 0, false);
        unknown.width = None;
        unknown.height = None;
        assert_eq!(
            plan_job(&[unknown, audio(Codec::Aac)], &usual_ladder()),
            None,
            "no job until the first keyframe says the size"
        );
    }

    #[test]
    fn aac_gets_opus_and_opus_gets_aac() {
        let aac = plan_job(&[audio(Codec::Aac)], &[]).unwrap();
        assert_eq!(tracks(&aac), ["audio/opus"]);
        assert!(aac.video_source.is_none());
        let opus = plan_job(&[audio(Codec::Opus)], &[]).unwrap();
        assert_eq!(tracks(&opus), ["audio/aac"]);
        assert_eq!(opus.outputs[0].track_info().timescale, 48_000);
    }

    #[test]
    fn rungs_parse_from_the_cli_form_and_bad_ones_say_why() {
        assert_eq!(
            Rung::parse("360p:800").unwrap(),
            Rung {
                height: 360,
                bitrate_kbps: 800,
                fps: None
            }
        );
        assert_eq!(Rung::parse("180p:200:15").unwrap().fps, Some(15));
        assert!(Rung::parse("360:800").unwrap_err().contains("360p"));
        assert!(
            Rung::parse("361p:800").is_err(),
            "odd heights cannot be encoded"
        );
        assert!(Rung::parse("360p").unwrap_err().contains("bitrate"));
        assert!(Rung::parse("360p:800:0").is_err());
    }

    #[test]
    fn pipe_frames_survive_any_cut_of_the_byte_stream() {
        let frames = [
            PipeFrame {
                index: 0,
                frame: RelayFrame {
                    timestamp: 90_000,
                    composition_offset: 3003,
                    keyframe: true,
                    payload: Bytes::from_static(&[0, 0, 0, 1, 0x65, 1, 2, 3]),
                },
            },
            PipeFrame {
                index: 300,
                frame: RelayFrame {
                    timestamp: 1 << 40,
                    composition_offset: 0,
                    keyframe: false,
                    payload: Bytes::from(vec![7; 70_000]),
                },
            },
        ];
        let mut bytes = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut bytes);
        }
        for cut in [1, 2, 3, 7, 1000, bytes.len()] {
            let mut decoder = PipeDecoder::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_pipe_that_is_not_speaking_the_format_is_an_error_not_a_panic() {
        let mut decoder = PipeDecoder::default();
        decoder.push(&[0x00, 0xff, 0x00]);
        assert!(decoder.next_frame().is_err());
        let mut huge = PipeDecoder::default();
        let mut bytes = BytesMut::new();
        put_varint(&mut bytes, 0);
        bytes.extend_from_slice(&[0x00, 0x00]);
        put_varint(&mut bytes, (crate::relay::wire::MAX_FRAME_BYTES + 1) as u64);
        huge.push(&bytes);
        assert!(huge.next_frame().is_err());
    }
}
