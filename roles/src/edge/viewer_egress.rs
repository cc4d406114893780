//! A WebRTC viewer's egress, per frame: which payload type, sequence numbers and timestamps
//! its tracks carry, whether a frame goes through str0m (until the fast path can start, and
//! as the Sender Reports' anchor) or on the fast path ([`super::fast_path`]), the NACKs a
//! fast-path viewer sends answered from the shared payloads, and where a viewer switching
//! renditions stops ([`hold_for_switch`]). The engine core (`crate::webrtc::engine_core`) decides
//! when; this module writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::media::{Codec, Frame, MediaKind};
use cascade_protocol::priming::shifted;
use cascade_protocol::rtp_payload::{MAX_RTP_PAYLOAD, RtpPayload, packetize};
use str0m::format::Codec as RtcCodec;
use str0m::media::{Mid, Pt};
use str0m::net::Protocol;
use str0m::rtp::{Extension, RtpWrite};
use str0m::{Input, Rtc};

use super::fast_path::{self, ViewerRtp};
use crate::session::SessionId;
use crate::webrtc::dtls_keys::KeyCell;
use crate::webrtc::engine_core::{Egress, Remote, Role, Session};
use crate::webrtc::srtp::{Profile, RtpCipher};
use crate::webrtc::udp::Sent;

/// Frames a fast-path track remembers to answer NACKs from: about 2 s of 30 fps video.
const RESENDABLE_FRAMES: usize = 64;

/// What str0m keeps to resend on a fast-path track, which only carries the anchors through
/// it (one a second, and after a priming burst). Its resend ring starts with 10 slots and,
/// by default, grows by a third each time a live entry sits where a new one goes: the
/// anchors' sequence numbers are far apart, so it grew to about 40 slots of 216 bytes a
/// track (16 KB a viewer, measured with heaptrack). Capped at its first size it never
/// grows; an anchor whose slot a later one took cannot be resent, which the NACKed frame's
/// other packets still can.
const ANCHORS_KEPT: usize = 10;
/// How long str0m keeps an anchor to resend: NACKs come within a round trip or two.
const ANCHOR_RESEND_AGE: Duration = Duration::from_secs(2);

/// A frame with its RTP payloads, made once per engine and shared by every viewer.
pub(crate) struct PacketizedFrame {
    pub(crate) seq: u64,
    pub(crate) timestamp: u64,
    pub(crate) keyframe: bool,
    pub(crate) payloads: Vec<RtpPayload>,
    pub(crate) bytes: usize,
}

impl PacketizedFrame {
    pub(crate) fn new(frame: &Frame, codec: Codec) -> Arc<Self> {
        let payloads = packetize(codec, &frame.payload, MAX_RTP_PAYLOAD);
        Arc::new(Self {
            seq: frame.seq,
            timestamp: frame.timestamp,
            keyframe: frame.keyframe,
            bytes: frame.payload.len(),
            payloads,
        })
    }
}

/// Per-viewer state of one outgoing track.
#[derive(Default)]
pub(crate) struct OutTrack {
    /// The broadcast track it carries, once negotiated (a rendition, or the source).
    pub(crate) track: Option<String>,
    pub(crate) mid: Option<Mid>,
    pub(crate) pt: Option<Pt>,
    /// The extended RTP sequence number of the next packet (starts below 2^15 so that the
    /// SRTP rollover counter starts at 0, as a receiver assumes).
    pub(crate) rtp_seq: u64,
    /// Nothing is sent before a keyframe: the decoder could not use it.
    pub(crate) started: bool,
    /// Frames below this were already sent (while priming from the group cache).
    pub(crate) next_seq: u64,
    /// Added to track timestamps for this viewer (see `cascade_protocol::priming`).
    pub(crate) offset: i64,
    /// The newest RTP-clock timestamp written, so that a re-priming never goes back in time.
    pub(crate) last_sent: Option<u64>,
    /// When the cached group was last sent to this viewer.
    pub(crate) primed_at: Option<Instant>,
    /// Frames waiting for the pacer while the cached group goes out, with the timestamp the
    /// priming plan gave them (`None`: a live frame, shifted by `offset`).
    pub(crate) backlog: std::collections::VecDeque<(Arc<PacketizedFrame>, Option<u64>)>,
    /// With a rendition switch pending: the timestamp of the group start where this track
    /// stopped, waiting for the new rendition's group that starts there too.
    pub(crate) held_at: Option<u64>,
    /// The fast path, once the track is on it (it then holds the sequence counter).
    pub(crate) fast: Option<FastTrack>,
}

/// A track on the fast path: its writer and what it sent, to answer NACKs.
pub(crate) struct FastTrack {
    pub(crate) rtp: ViewerRtp,
    pub(crate) ssrc: u32,
    pub(crate) sent: fast_path::Sent<Arc<PacketizedFrame>>,
    /// When a frame's last packet last went through str0m (its Sender Report anchor).
    pub(crate) last_anchor: Option<Instant>,
    /// A priming burst went out since: the next live frame anchors.
    pub(crate) reanchor: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    Send,
    /// The frame is at or after the group start where the viewer stopped.
    Skip,
    /// The new rendition's group did not come: stay on this track.
    GiveUp,
}

/// The longest a viewer stops at a group start for the new rendition's group (its encoder's
/// latency beyond the current track's), in 90 kHz ticks: 0.5 s.
const SWITCH_HOLD_TICKS: u64 = 45_000;

/// A switching viewer sends its current track up to the next group start, then stops there
/// until the new rendition's group with the same start arrives (`switch_at_group_start`):
/// renditions start their groups at the same timestamps, so the picture goes on without a
/// repeated or missing frame.
///
/// A rendition not yet produced (`target_live` false: a rung the transcoder is starting) is
/// not waited for: its first group may be a whole group away.
pub(crate) fn hold_for_switch(
    video: &mut OutTrack,
    frame: &PacketizedFrame,
    target_live: impl FnOnce() -> bool,
) -> Hold {
    match video.held_at {
        None if frame.keyframe && video.started && target_live() => {
            video.held_at = Some(frame.timestamp);
            Hold::Skip
        }
        None => Hold::Send,
        Some(at) if frame.timestamp.saturating_sub(at) > SWITCH_HOLD_TICKS => Hold::GiveUp,
        Some(_) => Hold::Skip,
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Timing {
    /// As it arrives.
    Live,
    /// Later, from the viewer's priming backlog: with the timestamp the priming plan gave
    /// it (a cached frame), or `None` (a live frame that queued behind them).
    Backlog(Option<u64>),
}

/// Writes one frame to a viewer's outgoing track, if that track is open and has started.
/// On the fast path its packets are queued on `egress` here; what str0m sends leaves with
/// the next `drive`.
pub(crate) fn write_to_viewer(
    session: &mut Session,
    kind: MediaKind,
    frame: &Arc<PacketizedFrame>,
    timing: Timing,
    now: Instant,
    egress: &mut impl Egress,
) -> Sent {
    if !session.is_connected() {
        // Nothing before the session can carry it (the group is sent once it can).
        return Sent::default();
    }
    let Role::Viewer { video, audio } = &mut session.role else {
        return Sent::default();
    };
    // A viewer has joined when it can see: its first video keyframe (its first frame when
    // it has no video).
    let joins = kind == MediaKind::Video || video.mid.is_none();
    let out = if kind == MediaKind::Video {
        video
    } else {
        audio
    };
    let Some(mid) = out.mid else {
        return Sent::default();
    };
    if frame.seq < out.next_seq {
        return Sent::default();
    }
    if !out.started {
        if !frame.keyframe {
            return Sent::default();
        }
        out.started = true;
        if joins && let Some(join_time) = session.liveness.media_flowing(now) {
            metrics::histogram!("cascade_viewer_join_seconds").record(join_time.as_secs_f64());
        }
    }
    let pt = match out.pt {
        Some(pt) => pt,
        None => {
            let Some(codec) = out
                .track
                .as_deref()
                .and_then(|name| session.broadcast.track(name))
                .and_then(|t| t.info())
                .map(|i| i.codec)
            else {
                return Sent::default();
            };
            let remote = session
                .rtc
                .media(mid)
                .map(|m| m.remote_pts().to_vec())
                .unwrap_or_default();
            let params = session.rtc.codec_config().params().iter();
            let Some(pt) = choose_pt(params.filter(|p| remote.contains(&p.pt())), codec) else {
                tracing::warn!(session = %session.id, ?codec, "viewer did not negotiate the stream's codec");
                out.mid = None;
                return Sent::default();
            };
            out.pt = Some(pt);
            out.rtp_seq = u64::from(rand::random::<u16>() & 0x7fff);
            pt
        }
    };
    let (late, planned) = match timing {
        Timing::Live => (false, None),
        Timing::Backlog(planned) => (true, planned),
    };
    let timestamp = planned.unwrap_or_else(|| shifted(frame.timestamp, out.offset));
    out.next_seq = frame.seq + 1;
    out.last_sent = Some(timestamp);
    // RTP timestamps are the low 32 bits of the track's 64-bit timeline.
    let rtp_time = timestamp as u32;
    if out.fast.is_none() {
        out.fast = start_fast_path(
            &session.id,
            &mut session.rtc,
            session.keys.as_ref(),
            session.media_remote,
            mid,
            pt,
            out.rtp_seq,
        );
    }
    let nackable = kind == MediaKind::Video;
    let Some(fast) = out.fast.as_mut() else {
        let mut direct = session.rtc.direct_api();
        let Some(stream) = direct.stream_tx_by_mid(mid, None) else {
            return Sent::default();
        };
        for payload in &frame.payloads {
            let write = RtpWrite::new(pt, out.rtp_seq.into(), rtp_time, now, payload.bytes.clone())
                .marker(payload.marker)
                .nackable(nackable);
            stream.write_rtp(write);
            out.rtp_seq += 1;
        }
        return Sent::default();
    };
    let Some(((_, to), (last, rest))) = session.media_remote.zip(frame.payloads.split_last())
    else {
        return Sent::default();
    };
    // A frame sent late maps its RTP time to a later wall-clock time than its neighbours:
    // it anchors only when nothing has (str0m's reports would say RTP time 0 until then).
    let anchor = if late {
        fast.last_anchor.is_none()
    } else {
        fast_path::anchor_due(fast.last_anchor, now, fast.reanchor)
    };
    let first = fast.rtp.next_seq();
    let mut sent = Sent::default();
    let fast_payloads = if anchor { rest } else { &frame.payloads[..] };
    for payload in fast_payloads {
        let len = fast.rtp.datagram_len(payload.bytes.len());
        let (flushed, written) = egress.send_with(to, len, |batch| {
            fast.rtp
                .write(rtp_time, payload.marker, &payload.bytes, batch)
                .map(|_| ())
        });
        sent.add(flushed);
        if let Err(e) = written {
            tracing::debug!(session = %session.id, error = %e, "fast-path packet not sealed");
        }
    }
    if anchor {
        let seq = fast.rtp.take_seq();
        let mut direct = session.rtc.direct_api();
        if let Some(stream) = direct.stream_tx_by_mid(mid, None) {
            let write = RtpWrite::new(pt, seq.into(), rtp_time, now, last.bytes.clone())
                .marker(last.marker)
                .nackable(nackable);
            stream.write_rtp(write);
        }
        // str0m releases what was written on its next timeout: now, so that the anchor
        // leaves right behind the frame's other packets.
        let _ = session.rtc.handle_input(Input::Timeout(now));
        fast.last_anchor = Some(now);
        fast.reanchor = false;
    }
    fast.reanchor |= late;
    if nackable {
        let packets = frame.payloads.len() as u32;
        fast.sent
            .push(first, packets, rtp_time, anchor, Arc::clone(frame));
    }
    sent
}

/// Puts a viewer's track on the fast path once it can be: its DTLS exported AES-GCM keys,
/// its media goes over UDP. `None` leaves it on str0m's path (for now, or for good: an
/// AES-CM session, ICE-TCP).
fn start_fast_path(
    id: &SessionId,
    rtc: &mut Rtc,
    keys: Option<&KeyCell>,
    media_remote: Option<Remote>,
    mid: Mid,
    pt: Pt,
    next_seq: u64,
) -> Option<FastTrack> {
    let keys = keys?.get()?;
    if !matches!(media_remote, Some((Protocol::Udp, _))) {
        return None;
    }
    let profile = Profile::of(keys.profile)?;
    let cipher = match RtpCipher::from_keying_material(profile, &keys.material, keys.client) {
        Ok(cipher) => cipher,
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "fast path unavailable: bad keying material");
            return None;
        }
    };
    let mut api = rtc.direct_api();
    let stream = api.stream_tx_by_mid(mid, None)?;
    // No resend ratio cap: str0m resends only anchors here, and the cap's byte histories
    // are memory every viewer would pay for.
    stream.set_rtx_cache(ANCHORS_KEPT, ANCHOR_RESEND_AGE, None);
    let ssrc = *stream.ssrc();
    let mut rtp = ViewerRtp::new(ssrc, *pt, next_seq, cipher);
    if let Some(id) = rtc
        .media(mid)
        .and_then(|m| m.remote_extmap().id_of(Extension::RtpMid))
    {
        rtp = rtp.with_mid(id, &mid.to_string());
    }
    metrics::counter!("cascade_webrtc_fast_path_tracks_total").increment(1);
    tracing::debug!(session = %id, %mid, ssrc, "track on the fast path");
    Some(FastTrack {
        rtp,
        ssrc,
        sent: fast_path::Sent::new(RESENDABLE_FRAMES),
        last_anchor: None,
        reanchor: false,
    })
}

/// Whether a datagram is RTCP (RFC 5761 §4: payload types 192 to 223 share the range).
pub(crate) fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

/// Reads a fast-path viewer's SRTCP for NACKs and resends what it asks for from the shared
/// payloads, with the original sequence numbers. The datagram then goes to str0m as ever
/// (which resends the anchors it sent).
pub(crate) fn answer_nacks(
    session: &mut Session,
    datagram: &[u8],
    egress: &mut impl Egress,
    plain: &mut Vec<u8>,
    nacks: &mut Vec<u16>,
) -> Sent {
    let mut sent = Sent::default();
    if session.rtcp.is_none() {
        // The viewer seals with its half of the material: the other one.
        session.rtcp = session.keys.as_ref().and_then(|k| k.get()).and_then(|k| {
            let profile = Profile::of(k.profile)?;
            RtpCipher::rtcp_from_keying_material(profile, &k.material, !k.client).ok()
        });
    }
    let (Some(rtcp), Some((_, to))) = (session.rtcp.as_ref(), session.media_remote) else {
        return sent;
    };
    if rtcp.open_rtcp(datagram, plain).is_err() {
        return sent;
    }
    let Role::Viewer { video, audio } = &mut session.role else {
        return sent;
    };
    for fast in [video.fast.as_mut(), audio.fast.as_mut()]
        .into_iter()
        .flatten()
    {
        nacks.clear();
        fast_path::nacked(plain, fast.ssrc, nacks);
        for &seq in nacks.iter() {
            let Some(resend) = fast
                .rtp
                .extend_sent(seq)
                .and_then(|seq| fast.sent.find(seq))
            else {
                continue;
            };
            let Some(payload) = resend.frame.payloads.get(resend.index) else {
                continue;
            };
            let len = fast.rtp.datagram_len(payload.bytes.len());
            let (flushed, written) = egress.send_with(to, len, |batch| {
                fast.rtp
                    .write_at(
                        resend.seq,
                        resend.timestamp,
                        payload.marker,
                        &payload.bytes,
                        batch,
                    )
                    .map(|_| ())
            });
            sent.add(flushed);
            if written.is_ok() {
                metrics::counter!("cascade_webrtc_nack_resends_total").increment(1);
            }
        }
    }
    sent
}

/// The viewer's payload type for our codec; for H.264 one with packetization-mode 1.
fn choose_pt<'a>(
    params: impl Iterator<Item = &'a str0m::format::PayloadParams>,
    codec: Codec,
) -> Option<Pt> {
    let wanted = match codec {
        Codec::H264 => RtcCodec::H264,
        Codec::Vp8 => RtcCodec::Vp8,
        Codec::Opus => RtcCodec::Opus,
        Codec::H265 | Codec::Av1 | Codec::Aac => return None,
    };
    let candidates: Vec<&str0m::format::PayloadParams> =
        params.filter(|p| p.spec().codec == wanted).collect();
    candidates
        .iter()
        .find(|p| codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        .or(candidates.first())
        .map(|p| p.pt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(timestamp: u64, keyframe: bool) -> PacketizedFrame {
        PacketizedFrame {
            seq: timestamp / 3000,
            timestamp,
            keyframe,
            payloads: Vec::new(),
            bytes: 0,
        }
    }

    #[test]
    fn a_switching_viewer_stops_at_the_next_group_start_and_gives_up_after_half_a_second() {
        let mut video = OutTrack {
            started: true,
            ..OutTrack::default()
        };
        assert_eq!(
            hold_for_switch(&mut video, &frame(3000, false), || true),
            Hold::Send
        );
        assert_eq!(
            hold_for_switch(&mut video, &frame(6000, true), || true),
            Hold::Skip,
            "the group start waits for the new rendition's"
        );
        assert_eq!(video.held_at, Some(6000));
        assert_eq!(
            hold_for_switch(&mut video, &frame(9000, false), || true),
            Hold::Skip
        );
        assert_eq!(
            hold_for_switch(&mut video, &frame(6000 + 45_001, false), || true),
            Hold::GiveUp
        );
    }

    #[test]
    fn a_rendition_not_yet_produced_is_not_waited_for() {
        let mut video = OutTrack {
            started: true,
            ..OutTrack::default()
        };
        assert_eq!(
            hold_for_switch(&mut video, &frame(6000, true), || false),
            Hold::Send
        );
        assert_eq!(video.held_at, None);
    }
}
