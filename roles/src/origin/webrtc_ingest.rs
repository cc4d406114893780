//! A WHIP publisher's ingest on the WebRTC engine: its depacketized frames into the
//! broadcast's source tracks, and keyframe requests back to it. The engine core
//! (`crate::webrtc::engine_core`) routes its datagrams and drives its `Rtc`; this module is what a
//! publisher's media means.

use std::sync::Arc;

use cascade_protocol::media::{Codec, MediaKind, TrackInfo, source_track};
use str0m::Rtc;
use str0m::format::Codec as RtcCodec;
use str0m::media::{KeyframeRequestKind, MediaData, Mid};
use tokio::sync::mpsc;

use crate::broadcast::{Broadcast, KeyframeUpstream};
use crate::session::SessionId;
use crate::webrtc::engine_core::Command;

/// Per-publisher state of one incoming track.
#[derive(Default)]
pub(crate) struct InTrack {
    pub(crate) mid: Option<Mid>,
    codec: Option<Codec>,
}

/// A publisher's two incoming tracks and what its media is counted in.
pub(crate) struct Publisher {
    pub(crate) video: InTrack,
    pub(crate) audio: InTrack,
    packets: metrics::Counter,
    bytes: metrics::Counter,
}

impl Publisher {
    pub(crate) fn new(stream: &str) -> Self {
        let stream = stream.to_owned();
        Publisher {
            video: InTrack::default(),
            audio: InTrack::default(),
            packets: metrics::counter!("cascade_ingest_packets_total", "stream" => stream.clone()),
            bytes: metrics::counter!("cascade_ingest_bytes_total", "stream" => stream),
        }
    }

    /// A negotiated incoming track.
    pub(crate) fn track_added(&mut self, kind: MediaKind, mid: Mid) {
        match kind {
            MediaKind::Video => self.video.mid = Some(mid),
            MediaKind::Audio => self.audio.mid = Some(mid),
        }
    }

    /// One depacketized frame from the publisher: into its broadcast's source track. The
    /// first frame of a track (or of a new codec) begins the source, with a keyframe
    /// upstream that asks this publisher through the engine's `commands`; a gap in video
    /// asks for a keyframe at once.
    pub(crate) fn on_media(
        &mut self,
        id: SessionId,
        broadcast: &Broadcast,
        data: MediaData,
        commands: &mpsc::UnboundedSender<Command>,
    ) {
        let (in_track, kind) = if Some(data.mid) == self.video.mid {
            (&mut self.video, MediaKind::Video)
        } else if Some(data.mid) == self.audio.mid {
            (&mut self.audio, MediaKind::Audio)
        } else {
            return;
        };
        let codec = match data.params.spec().codec {
            RtcCodec::H264 => Codec::H264,
            RtcCodec::Vp8 => Codec::Vp8,
            RtcCodec::Opus => Codec::Opus,
            _ => return,
        };
        let track = broadcast.source(kind);
        if in_track.codec != Some(codec) {
            in_track.codec = Some(codec);
            let upstream: Option<KeyframeUpstream> = (kind == MediaKind::Video).then(|| {
                let commands = commands.clone();
                Arc::new(move || {
                    let _ = commands.send(Command::RequestKeyframe(id));
                }) as KeyframeUpstream
            });
            track.begin_source(TrackInfo::new(source_track(kind), codec), upstream);
            if kind == MediaKind::Video {
                // Start every new publisher with a keyframe so that waiting viewers resume.
                let _ = commands.send(Command::RequestKeyframe(id));
            }
        }
        self.packets.increment(1);
        self.bytes.increment(data.data.len() as u64);
        if !data.contiguous && kind == MediaKind::Video {
            let _ = commands.send(Command::RequestKeyframe(id));
        }
        track.publish_rtp(
            data.time.numer() as u32,
            data.network_time,
            data.is_keyframe(),
            data.data,
        );
    }

    /// Asks the publisher for a keyframe (a PLI on its video).
    pub(crate) fn request_keyframe(&self, id: SessionId, rtc: &mut Rtc) {
        if let Some(mut writer) = self.video.mid.and_then(|mid| rtc.writer(mid))
            && let Err(e) = writer.request_keyframe(None, KeyframeRequestKind::Pli)
        {
            tracing::debug!(session = %id, error = %e, "keyframe request not sent");
        }
    }

    /// The publisher is gone: its source tracks end.
    pub(crate) fn end(&self, broadcast: &Broadcast) {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            broadcast.source(kind).end_source();
        }
    }
}
