//! The live-media vocabulary: a broadcast has tracks, a track is a sequence of groups, a group
//! starts at a keyframe and holds frames.
//!
//! A [`Frame`] is one access unit (one video picture or one audio packet). Its payload is an
//! `Arc<[u8]>` so that handing it to any number of consumers never copies it: the WebRTC
//! packetizer takes exactly that type, so the fan-out path stays copy-free up to encryption.

use std::sync::Arc;

/// The bytes of one access unit, shared by every consumer.
pub type Payload = Arc<[u8]>;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Sound.
    Audio,
    /// Pictures.
    Video,
}

/// The codecs a track can carry. Which of them each egress can send as they are is decided
/// per track ([`TrackInfo::webrtc_unfit`]); the others wait for a transcoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// H.264 / AVC, Annex B access units (parameter sets in band before every keyframe).
    #[serde(rename = "H264")]
    H264,
    /// H.265 / HEVC, Annex B access units (enhanced RTMP `hvc1`).
    #[serde(rename = "H265")]
    H265,
    /// AV1, one temporal unit per access unit (enhanced RTMP `av01`).
    #[serde(rename = "AV1")]
    Av1,
    /// VP8, one frame per access unit.
    #[serde(rename = "VP8")]
    Vp8,
    /// Opus, one packet per frame.
    #[serde(rename = "opus")]
    Opus,
    /// AAC (MPEG-4 audio), one raw access unit per frame, no ADTS header.
    #[serde(rename = "AAC")]
    Aac,
}

impl Codec {
    /// Audio or video.
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Vp8 => MediaKind::Video,
            Codec::Opus | Codec::Aac => MediaKind::Audio,
        }
    }

    /// Its name as the API and the catalog spell it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Av1 => "AV1",
            Codec::Vp8 => "VP8",
            Codec::Opus => "opus",
            Codec::Aac => "AAC",
        }
    }

    /// The timescale a track of this codec gets unless its source says otherwise: the RTP
    /// clock rate for what WebRTC carries; AAC tracks take their sample rate.
    pub fn default_timescale(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::Aac => 44_100,
            _ => 90_000,
        }
    }
}

/// The name of the source video track of every broadcast (what the publisher sends).
pub const VIDEO_SOURCE: &str = "video/source";
/// The name of the source audio track of every broadcast.
pub const AUDIO_SOURCE: &str = "audio/source";

/// The source track name of `kind`.
pub fn source_track(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Video => VIDEO_SOURCE,
        MediaKind::Audio => AUDIO_SOURCE,
    }
}

/// One access unit of a track.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the track, assigned by the track's producer; strictly increasing.
    pub seq: u64,
    /// Presentation time in the track's timescale ([`Codec::clock_rate`]).
    pub timestamp: u64,
    /// Presentation minus decode time, in the same timescale: non-zero only in a source
    /// that reorders frames (B-frames), whose frames come in decode order. Decode time is
    /// `timestamp - composition_offset`; containers that carry it (FLV, MP4) need it.
    pub composition_offset: u32,
    /// True when a decoder can start here (a video group starts with one; every audio
    /// frame is one).
    pub keyframe: bool,
    /// The access unit itself.
    pub payload: Payload,
}

/// What a catalog says about one track.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackInfo {
    /// The track's name in its broadcast: `video/source`, `audio/source`, later renditions
    /// such as `video/360p`.
    pub name: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// The codec of every frame.
    pub codec: Codec,
    /// Ticks per second of [`Frame::timestamp`].
    pub timescale: u32,
    /// Picture width in pixels, once a keyframe has told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Picture height in pixels, once a keyframe has told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Audio sample rate in Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Audio channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// The RFC 6381 codec string (`avc1.64001f`, `mp4a.40.2`), when the source told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec_string: Option<String>,
    /// The decoder configuration record as hex (AVCDecoderConfigurationRecord,
    /// AudioSpecificConfig, ...), when the source sent one out of band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Frames arrive in decode order but are presented in another (B-frames): a decoder
    /// must reorder them, which WebRTC receivers do not do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bframes: bool,
    /// The target bitrate in kbit/s of a rendition the transcoder makes (sources: unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
    /// The frame rate cap of a rendition made with one (a 1 fps rung for vision pipelines);
    /// such a track is never what WebRTC viewers get unless they ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// This node got the track over the relay from another node (it did not make it). A
    /// node pulling a transcoder's renditions takes only what that node made itself: a
    /// copy it relayed back would feed the renditions around in a loop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
}

/// Why a track cannot go to WebRTC viewers as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebRtcUnfit {
    /// Its pictures are reordered (B-frames): WebRTC receivers expect decode order to be
    /// presentation order.
    BFrames,
    /// Browsers' WebRTC does not take this codec.
    Codec(Codec),
}

impl std::fmt::Display for WebRtcUnfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebRtcUnfit::BFrames => write!(
                f,
                "the source video has B-frames, which WebRTC viewers cannot reorder; publish without B-frames (x264: -bf 0, OBS: profile baseline or B-frames 0) until a transcoder serves this stream"
            ),
            WebRtcUnfit::Codec(codec) => write!(
                f,
                "{} cannot be sent to WebRTC viewers as it is (they take H264, VP8 and opus); it needs a transcoder",
                codec.name()
            ),
        }
    }
}

impl TrackInfo {
    /// A track of `codec` named `name`, at the codec's default timescale, nothing else known yet.
    pub fn new(name: &str, codec: Codec) -> Self {
        Self {
            name: name.to_owned(),
            kind: codec.kind(),
            codec,
            timescale: codec.default_timescale(),
            width: None,
            height: None,
            sample_rate: None,
            channels: None,
            codec_string: None,
            config: None,
            bframes: false,
            bitrate_kbps: None,
            fps: None,
            relayed: false,
        }
    }

    /// Why WebRTC viewers cannot get this track as it is, if they cannot.
    pub fn webrtc_unfit(&self) -> Option<WebRtcUnfit> {
        match self.codec {
            Codec::H264 | Codec::Vp8 | Codec::Opus if self.bframes => Some(WebRtcUnfit::BFrames),
            Codec::H264 | Codec::Vp8 | Codec::Opus => None,
            other => Some(WebRtcUnfit::Codec(other)),
        }
    }

    /// Learns the resolution from a keyframe, if the codec lets us. Returns true when it changed.
    pub fn learn_resolution(&mut self, keyframe_payload: &[u8]) -> bool {
        let found = match self.codec {
            Codec::H264 => crate::h264::resolution_of_access_unit(keyframe_payload),
            Codec::Vp8 => crate::vp8::keyframe_resolution(keyframe_payload),
            _ => None,
        };
        match found {
            Some((w, h)) if (Some(w), Some(h)) != (self.width, self.height) => {
                self.width = Some(w);
                self.height = Some(h);
                true
            }
            _ => false,
        }
    }
}

/// Which tracks of a broadcast WebRTC viewers get, and what they do not get and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebRtcPlan {
    /// The video track viewers get, if any.
    pub video: Option<String>,
    /// The audio track viewers get, if any.
    pub audio: Option<String>,
    /// Tracks left out, each with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// A track WebRTC viewers do not get.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeftOut {
    /// The track.
    pub track: String,
    /// Why.
    pub reason: String,
}

impl WebRtcPlan {
    /// What WebRTC viewers get of `catalog`: per kind, the first track they can take. A
    /// broadcast whose video cannot be sent gets no plan: viewers would get sound and no
    /// picture (or garbage pictures), so they are told why instead; so does one with nothing
    /// they can take at all.
    pub fn for_catalog(catalog: &[TrackInfo]) -> Result<WebRtcPlan, WebRtcUnfit> {
        let mut plan = WebRtcPlan {
            video: None,
            audio: None,
            left_out: Vec::new(),
        };
        let mut unfit = Vec::new();
        // A frame-rate-capped rendition (1 fps for vision pipelines) is only ever pinned.
        let (capped, uncapped): (Vec<&TrackInfo>, Vec<&TrackInfo>) =
            catalog.iter().partition(|t| t.fps.is_some());
        for track in uncapped.into_iter().chain(capped) {
            let slot = match track.kind {
                MediaKind::Video => &mut plan.video,
                MediaKind::Audio => &mut plan.audio,
            };
            if slot.is_some() {
                continue;
            }
            match track.webrtc_unfit() {
                None => *slot = Some(track.name.clone()),
                Some(why) => unfit.push((track, why)),
            }
        }
        // Only what leaves a kind without any track is worth telling.
        unfit.retain(|(track, _)| match track.kind {
            MediaKind::Video => plan.video.is_none(),
            MediaKind::Audio => plan.audio.is_none(),
        });
        if let Some((_, why)) = unfit.iter().find(|(t, _)| t.kind == MediaKind::Video) {
            return Err(*why);
        }
        // Nothing at all to send (AAC-only audio): say why instead of a silent session.
        if let (None, None, Some((_, why))) = (&plan.video, &plan.audio, unfit.first()) {
            return Err(*why);
        }
        plan.left_out = unfit
            .into_iter()
            .map(|(track, why)| LeftOut {
                track: track.name.clone(),
                reason: why.to_string(),
            })
            .collect();
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(name: &str, codec: Codec) -> TrackInfo {
        TrackInfo::new(name, codec)
    }

    #[test]
    fn a_frame_rate_capped_rendition_is_never_the_default_while_another_plays() {
        let mut vision = track("video/360p-1fps", Codec::H264);
        vision.fps = Some(1);
        let plan = WebRtcPlan::for_catalog(&[
            vision.clone(),
            track("video/180p", Codec::H264),
            track(AUDIO_SOURCE, Codec::Opus),
        ])
        .unwrap();
        assert_eq!(plan.video.as_deref(), Some("video/180p"));
        let only = WebRtcPlan::for_catalog(&[vision]).unwrap();
        assert_eq!(only.video.as_deref(), Some("video/360p-1fps"));
    }

    #[test]
    fn webrtc_viewers_get_h264_and_opus_as_they_are() {
        let plan = WebRtcPlan::for_catalog(&[
            track(VIDEO_SOURCE, Codec::H264),
            track(AUDIO_SOURCE, Codec::Opus),
        ])
        .unwrap();
        assert_eq!(plan.video.as_deref(), Some(VIDEO_SOURCE));
        assert_eq!(plan.audio.as_deref(), Some(AUDIO_SOURCE));
        assert!(plan.left_out.is_empty());
    }

    #[test]
    fn aac_audio_leaves_webrtc_viewers_with_video_only_and_says_why() {
        let plan = WebRtcPlan::for_catalog(&[
            track(VIDEO_SOURCE, Codec::H264),
            track(AUDIO_SOURCE, Codec::Aac),
        ])
        .unwrap();
        assert_eq!(plan.video.as_deref(), Some(VIDEO_SOURCE));
        assert_eq!(plan.audio, None);
        assert_eq!(plan.left_out.len(), 1);
        assert!(plan.left_out[0].reason.contains("AAC"));
    }

    #[test]
    fn video_with_b_frames_or_an_unsupported_codec_is_refused_with_the_reason() {
        let mut reordered = track(VIDEO_SOURCE, Codec::H264);
        reordered.bframes = true;
        assert_eq!(
            WebRtcPlan::for_catalog(&[reordered, track(AUDIO_SOURCE, Codec::Opus)]),
            Err(WebRtcUnfit::BFrames)
        );
        assert_eq!(
            WebRtcPlan::for_catalog(&[track(VIDEO_SOURCE, Codec::H265)]),
            Err(WebRtcUnfit::Codec(Codec::H265))
        );
    }

    #[test]
    fn a_webrtc_safe_rendition_is_chosen_over_an_unfit_source() {
        let mut source = track(VIDEO_SOURCE, Codec::H264);
        source.bframes = true;
        let plan = WebRtcPlan::for_catalog(&[source, track("video/360p", Codec::H264)]).unwrap();
        assert_eq!(plan.video.as_deref(), Some("video/360p"));
        assert!(plan.left_out.is_empty(), "nothing of its kind is missing");
    }

    #[test]
    fn a_broadcast_with_nothing_webrtc_can_carry_is_refused() {
        assert_eq!(
            WebRtcPlan::for_catalog(&[track(AUDIO_SOURCE, Codec::Aac)]),
            Err(WebRtcUnfit::Codec(Codec::Aac))
        );
    }

    #[test]
    fn an_audio_only_broadcast_is_offered_as_audio() {
        let plan = WebRtcPlan::for_catalog(&[track(AUDIO_SOURCE, Codec::Opus)]).unwrap();
        assert_eq!(
            (plan.video, plan.audio.as_deref()),
            (None, Some(AUDIO_SOURCE))
        );
    }
}
