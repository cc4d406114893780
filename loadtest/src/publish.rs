//! The WHIP publisher: sends a looped source at its real pace, stamping every video frame with
//! its capture time; with `reconnect` it comes back through the same URL when its session
//! dies, continuing the frame numbering so viewers can tell what they missed.

use std::time::{Duration, Instant};

use str0m::Event;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};

use crate::LoadtestError;
use crate::figures::FailureReason;
use crate::marker::{self, Marker};
use crate::peer::{Offering, shared_certificate};
use crate::signaling;
use crate::source::{FPS, Media};

/// What the publisher needs to know.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub urls: crate::signaling::Endpoints,
    pub token: Option<String>,
    pub local_ip: std::net::IpAddr,
    pub transport: crate::peer::Transport,
    pub duration: Duration,
    pub reconnect: bool,
}

/// What a publish run did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    pub frames_sent: u64,
    pub sessions: u64,
    pub failures: Vec<FailureReason>,
}

const FRAME_INTERVAL: Duration = Duration::from_micros(1_000_000 / FPS as u64);
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// A session that has not connected within this long has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `media` until the duration ends (or, without `reconnect`, the session fails).
pub async fn run(
    settings: &PublishSettings,
    media: &Media,
) -> Result<PublishOutcome, LoadtestError> {
    let http = signaling::client();
    let certificate = shared_certificate();
    let deadline = Instant::now() + settings.duration;
    let mut outcome = PublishOutcome::default();
    let mut frame_number = 0u64;
    let mut audio_number = 0u64;
    let mut attempts = 0u32;
    while Instant::now() < deadline {
        attempts += 1;
        outcome.sessions += 1;
        let offering = Offering::new(
            settings.local_ip,
            settings.transport,
            &certificate,
            Direction::SendOnly,
            &[MediaKind::Video, MediaKind::Audio],
            false,
        )
        .await
        .map_err(|e| LoadtestError::Config(format!("cannot create a local peer: {e}")))?;
        let offer = offering.offer.clone();
        let url = settings.urls.for_attempt(attempts);
        let result = match signaling::exchange(&http, url, settings.token.as_deref(), offer).await {
            Ok(negotiated) => match offering.accept(&negotiated.answer).await {
                Ok((peer, mids)) => {
                    let ended = stream(
                        peer,
                        &mids,
                        media,
                        deadline,
                        &mut frame_number,
                        &mut audio_number,
                    )
                    .await;
                    if ended.is_ok()
                        && let Some(url) = &negotiated.session_url
                    {
                        signaling::delete(&http, url, settings.token.as_deref()).await;
                    }
                    ended
                }
                Err(reason) => Err(reason),
            },
            Err(reason) => Err(reason),
        };
        match result {
            Ok(()) => break,
            Err(reason) => {
                tracing::warn!(reason = %reason.label(), %url, "publish session failed");
                outcome.failures.push(reason);
                if !settings.reconnect {
                    break;
                }
                attempts = attempts.min(10);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await;
            }
        }
    }
    outcome.frames_sent = frame_number;
    Ok(outcome)
}

/// The payload type the answer gave our codec (H.264 packetization-mode 1, or Opus).
fn payload_type(peer: &mut crate::peer::Peer, mid: Mid, codec: Codec) -> Option<Pt> {
    let writer = peer.rtc.writer(mid)?;
    let mut params = writer.payload_params().filter(|p| p.spec().codec == codec);
    let all: Vec<_> = params.by_ref().collect();
    all.iter()
        .find(|p| codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        .or(all.first())
        .map(|p| p.pt())
}

/// What the publisher learns from its session's events.
#[derive(Debug, Default)]
struct Signals {
    connected: bool,
    ice_connected: bool,
    closed: bool,
}

impl Signals {
    fn on_event(&mut self, event: Event) {
        use str0m::IceConnectionState::*;
        match event {
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(Connected | Completed) => self.ice_connected = true,
            Event::IceConnectionStateChange(Disconnected) | Event::Closed => self.closed = true,
            _ => {}
        }
    }
}

pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sends frames on one connected session until `deadline`; an error says why it ended early.
async fn stream(
    mut peer: crate::peer::Peer,
    mids: &[(MediaKind, Mid)],
    media: &Media,
    deadline: Instant,
    frame_number: &mut u64,
    audio_number: &mut u64,
) -> Result<(), FailureReason> {
    let mid_of = |kind| mids.iter().find(|(k, _)| *k == kind).map(|(_, m)| *m);
    let (video_mid, audio_mid) = (mid_of(MediaKind::Video), mid_of(MediaKind::Audio));
    let requested = Instant::now();
    let mut signals = Signals::default();
    let mut started: Option<(Instant, u64, u64)> = None;
    let mut pts: Option<(Pt, Option<Pt>)> = None;
    loop {
        let alive = peer.drain(|event| signals.on_event(event));
        if !alive || signals.closed {
            // A publisher's media flows as soon as DTLS is up.
            return Err(FailureReason::from_stage(
                signals.connected,
                signals.connected,
                signals.ice_connected,
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = peer.rtc.close();
            peer.drain(|_| {});
            return Ok(());
        }
        if !signals.connected {
            if now >= requested + CONNECT_TIMEOUT {
                return Err(FailureReason::from_stage(
                    false,
                    false,
                    signals.ice_connected,
                ));
            }
            peer.wait(deadline.min(requested + CONNECT_TIMEOUT), |event| {
                signals.on_event(event)
            })
            .await;
            continue;
        }
        let Some(video_mid) = video_mid else {
            return Err(FailureReason::BadAnswer);
        };
        if pts.is_none() {
            let video_pt =
                payload_type(&mut peer, video_mid, Codec::H264).ok_or(FailureReason::BadAnswer)?;
            let audio_pt = audio_mid.and_then(|mid| payload_type(&mut peer, mid, Codec::Opus));
            pts = Some((video_pt, audio_pt));
        }
        let (video_pt, audio_pt) = pts.unwrap_or((Pt::new_with_value(0), None));
        // Numbering continues across sessions, but a new session starts from the source's
        // first keyframe so that viewers can decode at once.
        let (start, first_frame, first_audio) =
            *started.get_or_insert((now, *frame_number, *audio_number));
        let due_frames =
            first_frame + (now - start).as_micros() as u64 / FRAME_INTERVAL.as_micros() as u64 + 1;
        while *frame_number < due_frames {
            let index = ((*frame_number - first_frame) % media.video.len() as u64) as usize;
            let stamped = marker::stamp(
                &media.video[index].data,
                Marker {
                    captured_unix_us: unix_micros(),
                    frame: *frame_number,
                },
            );
            let time = MediaTime::new(
                *frame_number * 90_000 / u64::from(FPS),
                Frequency::NINETY_KHZ,
            );
            if let Some(writer) = peer.rtc.writer(video_mid)
                && let Err(e) = writer.write(video_pt, now, time, stamped)
            {
                tracing::debug!(error = %e, "video write failed");
            }
            *frame_number += 1;
            peer.drain(|event| signals.on_event(event));
        }
        if let (Some(audio_mid), Some(audio_pt)) = (audio_mid, audio_pt)
            && !media.audio.is_empty()
        {
            let due_audio = first_audio
                + (now - start).as_micros() as u64 / AUDIO_INTERVAL.as_micros() as u64
                + 1;
            while *audio_number < due_audio {
                let packet = &media.audio[(*audio_number as usize) % media.audio.len()];
                let time = MediaTime::new(*audio_number * 960, Frequency::FORTY_EIGHT_KHZ);
                if let Some(writer) = peer.rtc.writer(audio_mid) {
                    let _ = writer.write(audio_pt, now, time, packet.clone());
                }
                *audio_number += 1;
            }
        }
        let next_frame = start + FRAME_INTERVAL * (*frame_number - first_frame) as u32;
        let next_audio = start + AUDIO_INTERVAL * (*audio_number - first_audio) as u32;
        peer.drain(|event| signals.on_event(event));
        peer.wait(next_frame.min(next_audio).min(deadline), |event| {
            signals.on_event(event)
        })
        .await;
    }
}
