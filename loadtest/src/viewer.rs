//! One simulated WHEP viewer: a real WebRTC session (ICE, DTLS, SRTP, RTCP feedback by str0m)
//! that reassembles every frame, reads its capture-time marker and keeps the figures; with
//! `reconnect` it comes back through the same URL when its session dies.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::Event;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};

use crate::figures::{AvSync, FailureReason, FrameTracker, Totals};
use crate::marker;
use crate::peer::{Offering, Peer, RtpCounter};
use crate::signaling;
use crate::worker::WorkerContext;

/// What every viewer of a run shares.
#[derive(Debug, Clone)]
pub struct ViewerSettings {
    pub urls: crate::signaling::Endpoints,
    pub token: Option<String>,
    pub local_ip: std::net::IpAddr,
    pub transport: crate::peer::Transport,
    pub reconnect: bool,
    /// Connecting (ICE + DTLS) and the first keyframe must each happen within this.
    pub join_timeout: Duration,
    /// A joined session with no media for this long counts as lost.
    pub media_timeout: Duration,
    /// Viewers of each worker that decrypt and reassemble every frame; the rest count RTP
    /// headers (sampling mode). `None`: every viewer.
    pub verified_per_worker: Option<usize>,
    pub signalling: Signalling,
}

/// How a viewer negotiates its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalling {
    /// WHEP: the viewer offers (Cascade, and any WHEP server).
    Whep,
    /// Janus's HTTP API and streaming plugin: the server offers ([`crate::janus`]).
    Janus { mountpoint: u64 },
}

/// How a session is left politely once the run stops it.
enum Leave {
    /// DELETE the WHEP session resource, if the server gave one.
    Whep(Option<String>),
    /// Stop keeping the Janus session alive (the DTLS close ends the handle).
    Janus(tokio::task::JoinHandle<()>),
}

/// Asks a running viewer to leave.
#[derive(Debug, Default)]
pub struct StopFlag {
    stopped: Cell<bool>,
    /// When the run asked the viewer to leave: the end of what its figures cover (leaving
    /// politely takes a while for a thousand viewers, and is not playback).
    stopped_at: Cell<Option<Instant>>,
    pub(crate) notify: tokio::sync::Notify,
}

impl StopFlag {
    pub fn stop(&self) {
        self.stopped.set(true);
        if self.stopped_at.get().is_none() {
            self.stopped_at.set(Some(Instant::now()));
        }
        self.notify.notify_one();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// When [`Self::stop`] was first called.
    pub fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get()
    }
}

/// What one session has seen so far.
struct Watch {
    video_mid: Option<Mid>,
    ice_connected: bool,
    dtls_connected_at: Option<Instant>,
    joined: bool,
    last_media: Instant,
    closed: bool,
    want_keyframe: bool,
    nacks: u64,
    plis: u64,
    video_bytes: u64,
    just_joined: Option<Instant>,
    /// Frames of a counting peer already passed to the frame tracker.
    counted_frames: u64,
    av_sync: AvSync,
}

impl Watch {
    fn on_event(&mut self, event: Event, frames: &mut FrameTracker, ctx: &WorkerContext) {
        match event {
            Event::IceConnectionStateChange(state) => {
                use str0m::IceConnectionState::*;
                match state {
                    Connected | Completed => self.ice_connected = true,
                    Disconnected => self.closed = true,
                    _ => {}
                }
            }
            Event::Connected => self.dtls_connected_at = Some(Instant::now()),
            Event::Closed => self.closed = true,
            Event::MediaData(data) => {
                let now = Instant::now();
                self.last_media = now;
                if let Some(report) = &data.last_sender_info {
                    self.av_sync.observe(
                        Some(data.mid) == self.video_mid,
                        data.time.numer() as u32,
                        data.time.frequency().get(),
                        (report.rtp_time.numer() as u32, report.ntp_time),
                        SystemTime::now(),
                    );
                }
                if Some(data.mid) != self.video_mid {
                    return;
                }
                self.video_bytes += data.data.len() as u64;
                if !self.joined {
                    if !data.is_keyframe() {
                        self.want_keyframe = true; // like a decoder: ask until a keyframe arrives
                        return;
                    }
                    self.joined = true;
                    self.just_joined = Some(now);
                }
                if !data.contiguous {
                    self.want_keyframe = true;
                }
                let marker = marker::read(&data.data).map(|m| (m.frame, m.captured_unix_us));
                if let Some(latency) = frames.on_frame(now, marker, unix_micros()) {
                    ctx.record_latency(latency);
                }
            }
            Event::MediaIngressStats(stats) if Some(stats.mid) == self.video_mid => {
                self.nacks = stats.nacks;
                self.plis = stats.plis;
            }
            _ => {}
        }
    }

    fn new(video_mid: Option<Mid>) -> Watch {
        Watch {
            video_mid,
            ice_connected: false,
            dtls_connected_at: None,
            joined: false,
            last_media: Instant::now(),
            closed: false,
            want_keyframe: false,
            nacks: 0,
            plis: 0,
            video_bytes: 0,
            just_joined: None,
            counted_frames: 0,
            av_sync: AvSync::default(),
        }
    }

    /// A counting peer's new frames: join at the first (the server sends a keyframe
    /// first), and follow arrivals for freezes.
    fn on_counted(&mut self, counter: &RtpCounter, frames: &mut FrameTracker) {
        let Some(at) = counter.last_frame_at else {
            return;
        };
        while self.counted_frames < counter.frames {
            self.counted_frames += 1;
            frames.on_frame(at, None, 0);
        }
        self.last_media = at;
        if !self.joined {
            self.joined = true;
            self.just_joined = Some(at);
        }
    }
}

/// How one session attempt ended.
#[derive(Debug)]
pub enum SessionEnd {
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
    // Verified viewers decrypt and reassemble every frame; the others (sampling mode) count
    // RTP headers. A viewer keeps its kind across reconnects.
    let verify = ctx.take_verify_slot();
    {
        let mut totals = ctx.totals.borrow_mut();
        if verify {
            totals.verified_viewers += 1;
        } else {
            totals.counted_viewers += 1;
        }
    }
    while !stop.is_stopped() {
        attempts += 1;
        let url = settings.urls.for_attempt(attempts);
        let end = session(&ctx, url, &stop, verify, &mut frames, &mut lost_at).await;
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
    // A trailing gap counts up to when the run stopped the viewer, not through its leaving.
    frames.finish(stop.stopped_at().unwrap_or_else(Instant::now));
    if verify {
        ctx.totals.borrow_mut().add_frames(&frames);
        ctx.release_verify_slot();
    } else {
        ctx.totals.borrow_mut().add_freezes(&frames);
    }
}

/// One WHEP session from POST to its end.
async fn session(
    ctx: &WorkerContext,
    url: &str,
    stop: &StopFlag,
    verify: bool,
    frames: &mut FrameTracker,
    lost_at: &mut Option<Instant>,
) -> SessionEnd {
    let settings = &ctx.settings;
    let requested = Instant::now();
    ctx.totals.borrow_mut().sessions_started += 1;
    let (peer, video_mid, leave) = match settings.signalling {
        Signalling::Whep => {
            let offering = match Offering::new(
                settings.local_ip,
                settings.transport,
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
                result = signaling::exchange(&ctx.http, url, settings.token.as_deref(), offer) => result,
                _ = stop.notify.notified() => return SessionEnd::Stopped,
            };
            let negotiated = match negotiated {
                Ok(n) => n,
                Err(reason) => return SessionEnd::Failed(reason),
            };
            let (peer, mids) = match offering.accept(&negotiated.answer).await {
                Ok(accepted) => accepted,
                Err(reason) => return SessionEnd::Failed(reason),
            };
            let video_mid: Option<Mid> = mids
                .iter()
                .find(|(k, _)| *k == MediaKind::Video)
                .map(|(_, m)| *m);
            (peer, video_mid, Leave::Whep(negotiated.session_url))
        }
        Signalling::Janus { mountpoint } => {
            let deadline = requested + settings.join_timeout;
            let joined = tokio::select! {
                joined = crate::janus::join(&ctx.http, url, mountpoint, settings.local_ip, &ctx.certificate, deadline) => joined,
                _ = stop.notify.notified() => return SessionEnd::Stopped,
            };
            match joined {
                Ok(joined) => (
                    joined.peer,
                    joined.video_mid,
                    Leave::Janus(joined.keepalive),
                ),
                Err(reason) => return SessionEnd::Failed(reason),
            }
        }
    };
    let mut live = Live {
        peer,
        watch: Watch::new(video_mid),
        frames: std::mem::take(frames),
        lost_at: lost_at.take(),
        requested,
        bytes_reported: 0,
    };
    let end = if verify {
        live.run_on_own_task(ctx, stop).await
    } else if live.peer.is_tcp() {
        // The shared poll reads UDP datagrams: a TCP peer counts on its own task.
        live.peer.count_rtp_instead_of_decrypting();
        live.run_on_own_task(ctx, stop).await
    } else {
        live.peer.count_rtp_instead_of_decrypting();
        let (returned, end) = ctx.counting_peers.drive(live, stop).await;
        live = returned;
        end
    };
    let Live {
        mut peer,
        watch,
        frames: tracked,
        lost_at: still_lost_at,
        ..
    } = live;
    *frames = tracked;
    *lost_at = still_lost_at;
    {
        let mut totals = ctx.totals.borrow_mut();
        totals.bytes += peer.bytes_received;
        totals.video_bytes += watch.video_bytes;
        totals.nacks_sent += watch.nacks;
        totals.plis_sent += watch.plis;
        if let Some(offset) = watch.av_sync.offset_us() {
            Totals::record(&mut totals.av_offset_us, offset);
        }
        if let Some(counter) = peer.counted() {
            totals.counted_packets_expected += counter.packets_expected();
            totals.counted_packets_received += counter.packets_received;
        }
        if let Some(first) = watch.dtls_connected_at {
            totals.viewer_time += Instant::now().saturating_duration_since(first);
        }
    }
    if watch.joined {
        ctx.live
            .connected
            .set(ctx.live.connected.get().saturating_sub(1));
    }
    // Leave politely: close our side (DTLS close_notify) and DELETE the session resource.
    if matches!(end, SessionEnd::Stopped) {
        let _ = peer.rtc.close();
        peer.drain(|_| {});
        if let Leave::Whep(Some(url)) = &leave {
            signaling::delete(&ctx.http, url, settings.token.as_deref()).await;
        }
    }
    if let Leave::Janus(keepalive) = leave {
        keepalive.abort();
    }
    end
}

/// A session between its answer and its end: the peer, what it has seen, and the figures it
/// feeds. Driven by its own task (verified viewers) or by the worker's shared poll
/// (counting viewers); both call [`Live::step`] after every input.
pub struct Live {
    pub peer: Peer,
    watch: Watch,
    frames: FrameTracker,
    /// When the previous session of this viewer lost media (for recovery time).
    lost_at: Option<Instant>,
    requested: Instant,
    bytes_reported: u64,
}

impl Live {
    /// Handles what the peer produced since the last call and keeps the figures. Returns
    /// when to look again (the media or join deadline), or how the session ended.
    pub fn step(&mut self, ctx: &WorkerContext) -> Result<Instant, SessionEnd> {
        loop {
            let watch = &mut self.watch;
            let frames = &mut self.frames;
            let alive = self.peer.drain(|event| watch.on_event(event, frames, ctx));
            if let Some(counter) = self.peer.counted() {
                watch.on_counted(counter, frames);
            }
            ctx.live
                .add_bytes(self.peer.bytes_received - self.bytes_reported);
            self.bytes_reported = self.peer.bytes_received;
            if let Some(at) = watch.just_joined.take() {
                let mut totals = ctx.totals.borrow_mut();
                totals.sessions_joined += 1;
                Totals::record(
                    &mut totals.join_us,
                    (at - self.requested).as_micros() as u64,
                );
                if let Some(lost) = self.lost_at.take() {
                    Totals::record(&mut totals.recovery_us, (at - lost).as_micros() as u64);
                }
                ctx.live.connected.set(ctx.live.connected.get() + 1);
            }
            if watch.want_keyframe
                && let Some(mid) = watch.video_mid
            {
                watch.want_keyframe = false;
                if let Some(mut writer) = self.peer.rtc.writer(mid) {
                    let _ = writer.request_keyframe(None, KeyframeRequestKind::Pli);
                }
                continue; // drain what the request produced
            }
            let failure = || {
                SessionEnd::Failed(FailureReason::from_stage(
                    watch.joined,
                    watch.dtls_connected_at.is_some(),
                    watch.ice_connected,
                ))
            };
            if !alive || watch.closed {
                return Err(failure());
            }
            let check_at = if watch.joined {
                watch.last_media + ctx.settings.media_timeout
            } else if let Some(connected) = watch.dtls_connected_at {
                connected + ctx.settings.join_timeout
            } else {
                self.requested + ctx.settings.join_timeout
            };
            if Instant::now() >= check_at {
                return Err(failure());
            }
            return Ok(check_at);
        }
    }

    /// Reads whatever the socket holds and handles the peer's timeout if it is due (the
    /// shared poll's side of a round).
    pub fn receive_and_step(
        &mut self,
        ctx: &WorkerContext,
        readable: bool,
        now: Instant,
    ) -> Result<Instant, SessionEnd> {
        let watch = &mut self.watch;
        let frames = &mut self.frames;
        let mut on_event = |event| watch.on_event(event, frames, ctx);
        if readable {
            self.peer.receive_all(&mut on_event);
        }
        self.peer.handle_timeout(now, &mut on_event);
        self.step(ctx)
    }

    /// Drives the session on the viewer's own task: it wakes for each datagram, so that
    /// every frame's arrival time (and so its latency) is exact.
    async fn run_on_own_task(&mut self, ctx: &WorkerContext, stop: &StopFlag) -> SessionEnd {
        loop {
            let stepped = self.step(ctx);
            if stop.is_stopped() {
                return SessionEnd::Stopped;
            }
            let check_at = match stepped {
                Ok(check_at) => check_at,
                Err(end) => return end,
            };
            let watch = &mut self.watch;
            let frames = &mut self.frames;
            tokio::select! {
                biased;
                _ = stop.notify.notified() => {}
                _ = self.peer.wait(check_at, |event| watch.on_event(event, frames, ctx)) => {}
            }
        }
    }
}
