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

/// The codecs Cascade carries end to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    /// H.264 / AVC, Annex B access units.
    #[serde(rename = "H264")]
    H264,
    /// VP8, one frame per access unit.
    #[serde(rename = "VP8")]
    Vp8,
    /// Opus, one packet per frame.
    #[serde(rename = "opus")]
    Opus,
}

impl Codec {
    /// Audio or video.
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::H264 | Codec::Vp8 => MediaKind::Video,
            Codec::Opus => MediaKind::Audio,
        }
    }

    /// The RTP clock rate and so the timescale of [`Frame::timestamp`].
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::H264 | Codec::Vp8 => 90_000,
            Codec::Opus => 48_000,
        }
    }
}

/// One access unit of a track.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the track, assigned by the track's producer; strictly increasing.
    pub seq: u64,
    /// Presentation time in the track's timescale ([`Codec::clock_rate`]).
    pub timestamp: u64,
    /// True when a decoder can start here (a video group starts with one; every audio
    /// frame is one).
    pub keyframe: bool,
    /// The access unit itself.
    pub payload: Payload,
}

/// What a catalog says about one track.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackInfo {
    /// Audio or video.
    pub kind: MediaKind,
    /// The codec of every frame.
    pub codec: Codec,
    /// Picture width in pixels, once a keyframe has told us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Picture height in pixels, once a keyframe has told us.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl TrackInfo {
    /// A track whose resolution is not known yet.
    pub fn new(codec: Codec) -> Self {
        Self {
            kind: codec.kind(),
            codec,
            width: None,
            height: None,
        }
    }

    /// Learns the resolution from a keyframe, if the codec lets us. Returns true when it changed.
    pub fn learn_resolution(&mut self, keyframe_payload: &[u8]) -> bool {
        let found = match self.codec {
            Codec::H264 => crate::h264::resolution_of_access_unit(keyframe_payload),
            Codec::Vp8 => crate::vp8::keyframe_resolution(keyframe_payload),
            Codec::Opus => None,
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
