//! One simulated WHEP viewer: a real WebRTC session (ICE, DTLS, SRTP, RTCP feedback by str0m)
//! that reassembles every frame, reads its capture-time marker and keeps the figures; with
//! `reconnect` it comes back through the same URL when its session dies.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::Event;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};

use crate::figures::{FailureReason, FrameTracker, Totals};
use crate::marker;
use crate::peer::Offering;
use crate::signaling;
use crate::worker::WorkerContext;

/// What every viewer of a run shares.
#[derive(Debug, Clone)]
pub struct ViewerSettings {
    pub url: String,
    pub token: Option<String>,
    pub local_ip: std::net::IpAddr,
    pub reconnect: bool,
    /// Connecting (ICE + DTLS) and the first keyframe must each happen within this.
    pub join_timeout: Duration,
    /// A joined session with no media for this long counts as lost.
    pub media_timeout: Duration,
}

/// Asks a running viewer to leave.
#[derive(Debug, Default)]
pub struct StopFlag {
    stopped: Cell<bool>,
    notify: tokio::sync::Notify,
}

impl StopFlag {
    pub fn stop(&self) {
        self.stopped.set(true);
        self.notify.notify_one();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }
}

/// How one session attempt ended.
enum SessionEnd {
    Stopped,
    Failed(FailureReason),
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs a viewer until it is stopped, or until it fails (without `reconnect`).
pub async fn run(ctx: Rc<WorkerContext>, stop: Rc<StopFlag>) {
    let settings = &ctx.settings;
    let mut frames = FrameTracker::default();
    let mut lost_at: Option<Instant> = None;
    let mut attempts = 0u32;
    ctx.totals.borrow_mut().verified_viewers += 1;
    while !stop.is_stopped() {
        attempts += 1;
        let end = session(&ctx, &stop, &mut frames, &mut lost_at).await;
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Failed(reason) => {
                ctx.totals.borrow_mut().fail(reason);
                ctx.live.failures.set(ctx.live.failures.get() + 1);
                tracing::debug!(reason = %reason.label(), attempts, "viewer session failed");
                if !settings.reconnect {
                    break;
                }
                if lost_at.is_none() {
                    lost_at = Some(frames.last_frame_at().unwrap_or_else(Instant::now));
                }
                frames.restart();
                // Back off a little between attempts so that a dead endpoint is not hammered.
                let backoff = Duration::from_millis(100 * u64::from(attempts.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.notify.notified() => {}
                }
            }
        }
    }
    frames.finish(Instant::now());
    ctx.totals.borrow_mut().add_frames(&frames);
}

/// One WHEP session from POST to its end.
async fn session(
    ctx: &WorkerContext,
    stop: &StopFlag,
    frames: &mut FrameTracker,
    lost_at: &mut Option<Instant>,
) -> SessionEnd {
    let settings = &ctx.settings;
    let requested = Instant::now();
    ctx.totals.borrow_mut().sessions_started += 1;
    let offering = match Offering::new(
        settings.local_ip,
        &ctx.certificate,
        Direction::RecvOnly,
        &[MediaKind::Video, MediaKind::Audio],
        true,
    )
    .await
    {
        Ok(offering) => offering,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a local peer (out of ports or file descriptors?)");
            return SessionEnd::Failed(FailureReason::Unreachable);
        }
    };
    let offer = offering.offer.clone();
    let negotiated = tokio::select! {
        result = signaling::exchange(&ctx.http, &settings.url, settings.token.as_deref(), offer) => result,
        _ = stop.notify.notified() => return SessionEnd::Stopped,
    };
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(reason) => return SessionEnd::Failed(reason),
    };
    let (mut peer, mids) = match offering.accept(&negotiated.answer) {
        Ok(accepted) => accepted,
        Err(reason) => return SessionEnd::Failed(reason),
    };
    let video_mid: Option<Mid> = mids
        .iter()
        .find(|(k, _)| *k == MediaKind::Video)
        .map(|(_, m)| *m);

    let mut ice_connected = false;
    let mut dtls_connected_at: Option<Instant> = None;
    let mut joined = false;
    let mut last_media = Instant::now();
    let mut closed = false;
    let mut want_keyframe = false;
    let mut nacks = 0u64;
    let mut plis = 0u64;
    let mut video_bytes = 0u64;
    let mut just_joined: Option<Instant> = None;
    let mut counted_bytes = 0u64;
    let end = loop {
        let alive = peer.drain(|event| match event {
            Event::IceConnectionStateChange(state) => {
                use str0m::IceConnectionState::*;
                match state {
                    Connected | Completed => ice_connected = true,
                    Disconnected => closed = true,
                    _ => {}
                }
            }
            Event::Connected => dtls_connected_at = Some(Instant::now()),
            Event::Closed => closed = true,
            Event::MediaData(data) => {
                let now = Instant::now();
                last_media = now;
                if Some(data.mid) != video_mid {
                    return;
                }
                if video_bytes == 0 {
                    tracing::debug!(seq = ?data.seq_range, keyframe = data.is_keyframe(), contiguous = data.contiguous, len = data.data.len(), "first video frame");
                }
                video_bytes += data.data.len() as u64;
                if !joined {
                    if !data.is_keyframe() {
                        tracing::debug!(seq = ?data.seq_range, contiguous = data.contiguous, since_request = ?now - requested, "frame before the first keyframe");
                        want_keyframe = true; // like a decoder: ask until a keyframe arrives
                        return;
                    }
                    joined = true;
                    just_joined = Some(now);
                }
                if !data.contiguous {
                    want_keyframe = true;
                }
                let marker = marker::read(&data.data).map(|m| (m.frame, m.captured_unix_us));
                if let Some(latency) = frames.on_frame(now, marker, unix_micros()) {
                    ctx.record_latency(latency);
                }
            }
            Event::MediaIngressStats(stats) if Some(stats.mid) == video_mid => {
                nacks = stats.nacks;
                plis = stats.plis;
            }
            _ => {}
        });
        ctx.live.add_bytes(peer.bytes_received - counted_bytes);
        counted_bytes = peer.bytes_received;
        if let Some(at) = just_joined.take() {
            let mut totals = ctx.totals.borrow_mut();
            totals.sessions_joined += 1;
            Totals::record(&mut totals.join_us, (at - requested).as_micros() as u64);
            if let Some(lost) = lost_at.take() {
                Totals::record(&mut totals.recovery_us, (at - lost).as_micros() as u64);
            }
            ctx.live.connected.set(ctx.live.connected.get() + 1);
        }
        if want_keyframe && let Some(mid) = video_mid {
            want_keyframe = false;
            if let Some(mut writer) = peer.rtc.writer(mid) {
                let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
            }
            continue; // drain what the request produced
        }
        let now = Instant::now();
        if stop.is_stopped() {
            break SessionEnd::Stopped;
        }
        let failure = || {
            SessionEnd::Failed(FailureReason::from_stage(
                joined,
                dtls_connected_at.is_some(),
                ice_connected,
            ))
        };
        if !alive || closed {
            break failure();
        }
        let check_at = if joined {
            last_media + settings.media_timeout
        } else if let Some(connected) = dtls_connected_at {
            connected + settings.join_timeout
        } else {
            requested + settings.join_timeout
        };
        if now >= check_at {
            break failure();
        }
        tokio::select! {
            biased;
            _ = stop.notify.notified() => {}
            _ = peer.wait(check_at) => {}
        }
    };
    {
        let mut totals = ctx.totals.borrow_mut();
        totals.bytes += peer.bytes_received;
        totals.video_bytes += video_bytes;
        totals.nacks_sent += nacks;
        totals.plis_sent += plis;
        if let Some(first) = dtls_connected_at {
            totals.viewer_time += Instant::now().saturating_duration_since(first);
        }
    }
    if joined {
        ctx.live
            .connected
            .set(ctx.live.connected.get().saturating_sub(1));
    }
    // Leave politely: close our side (DTLS close_notify) and DELETE the session resource.
    if matches!(end, SessionEnd::Stopped) {
        let _ = peer.rtc.close();
        peer.drain(|_| {});
        if let Some(url) = &negotiated.session_url {
            signaling::delete(&ctx.http, url, settings.token.as_deref()).await;
        }
    }
    end
}
