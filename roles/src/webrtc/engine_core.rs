//! The WebRTC engine's sans-IO core: every session's `Rtc`, the routing of datagrams to
//! them, their timers, the engine's subscriptions to tracks and the fan-out of frames to
//! viewers. It owns no socket and reads no clock: the driver ([`super::engine`]) hands it
//! `now` with each input (a command, a datagram, a frame, a timeout) and it writes what
//! leaves into an [`Egress`], and says which sessions ended in [`Removed`] notices. Tests run
//! it in virtual time with datagrams in memory (the `tests` module below).
//!
//! Shape (after str0m's `chat` example, scaled): sessions live in a slab; a datagram is routed
//! by its source address, and a datagram from an unknown address (the first STUN check of a
//! new session, or of a peer whose address changed) by the local ufrag in its STUN USERNAME:
//! two map lookups, so junk costs the same against 10 sessions or 10,000. Sources are not
//! filtered: a socket bound to loopback only ever hears this host (browsers send their checks
//! from the host's own non-loopback address), and any address it hears from it can answer.
//! Timeouts sit in a heap, so the core never scans all sessions. Media reaches viewers
//! through one subscription per (stream, track), shared by every viewer of that track on this
//! engine: a frame costs one channel message and one wake-up for the engine, then a plain
//! loop over that track's viewers, in slices ([`EngineCore::fan_out_pending`]) so that the
//! driver reads its socket between them.
//!
//! Viewers run str0m in RTP mode: the core packetizes each frame once
//! (`cascade_protocol::rtp_payload`) and every viewer's RTP stream references the same
//! payloads; what a viewer's packets look like is `crate::edge::viewer_egress`, a
//! publisher's ingest is `crate::origin::webrtc_ingest`. str0m keeps ICE, consent, DTLS, RTCP
//! and BYE.
//!
//! Every mutation of an `Rtc` is followed by draining `poll_output` until `Timeout`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::media::{Frame, MediaKind};
use cascade_protocol::priming::{plan_priming, shifted};
use cascade_protocol::stun::binding_request_recipient_ufrag;
use str0m::bwe::{Bitrate, BweKind};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;

use super::dtls_keys::KeyCell;
use super::srtp::RtpCipher;
use super::udp::Sent;
use crate::broadcast::{Broadcast, Delivery, FrameSink};
use crate::edge::abr::ViewerAbr;
use crate::edge::viewer_egress::{
    self, Hold, OutTrack, PacketizedFrame, Timing, hold_for_switch, write_to_viewer,
};
use crate::origin::webrtc_ingest::Publisher;
use crate::session::{Liveness, SessionId, SessionKind};

/// Frames queued towards the engine before subscriptions start skipping to the next group.
pub(crate) const FRAME_QUEUE: usize = 4096;
/// Egress counters are updated once this many datagrams have accumulated for a session.
const REPORT_EVERY_DATAGRAMS: u64 = 64;
/// A viewer asking for keyframes again and again is re-sent the cached group at most this often.
pub(crate) const REPRIME_INTERVAL: Duration = Duration::from_secs(1);
/// The cached group is sent to a joining viewer in slices of this many bytes per
/// `PRIMING_TICK` (about 26 Mbit/s): fast enough to decode at once, slow enough not to
/// overflow a receiver's socket buffer (about 100 datagrams by default on Linux) or a
/// router queue with a whole group at line rate.
pub(crate) const PRIMING_BYTES_PER_TICK: usize = 64 * 1024;
pub(crate) const PRIMING_TICK: Duration = Duration::from_millis(20);
/// A frame's fan-out hands control back to the driver after this many viewers, so that the
/// publisher's media, RTCP and consent checks are never left waiting behind viewer egress
/// (nor dropped by a full receive buffer).
pub(crate) const FAN_OUT_SLICE: usize = 64;

/// A session handed over by the HTTP side after its offer was answered.
pub(crate) struct NewSession {
    pub id: SessionId,
    pub kind: SessionKind,
    pub rtc: Rtc,
    pub broadcast: Arc<Broadcast>,
    pub liveness: Liveness,
    /// A viewer's video rendition chosen by the client (WHEP `?rendition=`), checked to be
    /// one WebRTC can carry; `None`: the broadcast's default.
    pub rendition: Option<String>,
    /// Moved along the stream's renditions by its bandwidth estimate (`edge::abr`); the
    /// `Rtc` was built with the estimator on.
    pub adaptive: bool,
    /// A viewer's SRTP keys, once its DTLS completes: what the fast path seals with.
    pub keys: Option<KeyCell>,
}

/// What the rest of the node asks of the engine. `Add` carries the session's actor, which
/// the driver keeps (the core knows sessions by id).
pub(crate) enum Command {
    Add(
        Box<NewSession>,
        ractor::ActorRef<crate::session::SessionMsg>,
    ),
    Close(SessionId),
    RequestKeyframe(SessionId),
}

/// A subscription of the engine: one per (stream, track name), shared by its viewers.
pub(crate) type TrackKey = (StreamId, String);

/// A frame of a subscribed track, on its way from the broadcast to the engine.
pub(crate) struct FrameToEngine {
    pub key: TrackKey,
    pub frame: Frame,
    /// When it entered the queue: how long it waited is the engine's lag (the driver's).
    pub enqueued: Instant,
}

/// The engine's subscription to one track: delivers into the engine's frame queue.
struct EngineSink {
    key: TrackKey,
    tx: mpsc::Sender<FrameToEngine>,
}

impl FrameSink for EngineSink {
    fn deliver(&mut self, frame: &Frame) -> Delivery {
        match self.tx.try_send(FrameToEngine {
            key: self.key.clone(),
            frame: frame.clone(),
            enqueued: Instant::now(),
        }) {
            Ok(()) => Delivery::Accepted,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

/// Where the core's datagrams go: the driver's socket and ICE-TCP connections, or a test's
/// memory.
pub(crate) trait Egress {
    /// Queues one of str0m's datagrams on the transport it names.
    fn send(&mut self, transmit: &Transmit) -> Sent;
    /// Queues the `len`-byte UDP datagram that `write` appends to the batch, written in
    /// place (the fast path seals its packets there). A failed `write` leaves nothing queued.
    fn send_with<E>(
        &mut self,
        to: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> (Sent, Result<(), E>);
    /// Ends what was queued for a session with these remotes: it may leave now, or with
    /// other sessions' datagrams before the driver waits again.
    fn flush(&mut self, remotes: &[Remote]);
}

/// A session left the core: what the driver undoes for it (its route, its TCP
/// connections) and, with a `reason`, tells its actor.
#[derive(Debug)]
pub(crate) struct Removed {
    pub id: SessionId,
    pub ufrag: String,
    pub tcp_peers: Vec<SocketAddr>,
    pub reason: Option<Ended>,
}

/// Why the core ended a session by itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ended {
    /// ICE and DTLS did not complete within this time.
    HandshakeTimedOut(Duration),
    /// The peer or the transport closed it (the reason, for logs).
    TransportClosed(String),
}

// Sessions live in the engine's slot table; boxing the viewer side would add a pointer
// chase to every packet of the fan-out.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Role {
    Publisher(Publisher),
    Viewer { video: OutTrack, audio: OutTrack },
}

/// A peer's transport address: the same address may be a UDP and a TCP peer.
pub(crate) type Remote = super::dispatch::Remote;
/// Addresses kept per session; a peer heard from more (a check from every interface, a
/// mobile client moving) forgets its oldest.
const MAX_REMOTES: usize = 8;

pub(crate) struct Session {
    pub(crate) id: SessionId,
    generation: u64,
    pub(crate) rtc: Rtc,
    pub(crate) role: Role,
    pub(crate) broadcast: Arc<Broadcast>,
    pub(crate) liveness: Liveness,
    /// The video rendition its client asked for, if any.
    rendition: Option<String>,
    /// Its adaptive bitrate state, when it adapts.
    abr: Option<ViewerAbr>,
    /// Until ICE and DTLS complete, the session is ended at this instant.
    handshake_deadline: Instant,
    /// Every address the peer's checks came from, oldest first: a browser checks its UDP and
    /// TCP pairs side by side, and any of them may carry its media.
    remotes: Vec<Remote>,
    deadline: Instant,
    /// The deadline last pushed on the timer heap: an unchanged deadline is not pushed again
    /// (most drives after a frame end with the same str0m timeout).
    queued_deadline: Option<Instant>,
    /// Egress not yet added to the shared counters (they are added in chunks).
    unreported: Sent,
    /// Its SRTP keys (viewers offered the fast path), and what reads its SRTCP for NACKs.
    pub(crate) keys: Option<KeyCell>,
    pub(crate) rtcp: Option<RtpCipher>,
    /// Where str0m sends its DTLS and media (not its STUN answers, which go to every
    /// address that checks): the fast path's destination.
    pub(crate) media_remote: Option<Remote>,
    egress_packets: metrics::Counter,
    egress_bytes: metrics::Counter,
}

impl Session {
    /// Adds egress to the shared counters: in chunks, since they are atomics shared by every
    /// session of the stream and a per-datagram increment showed in profiles.
    fn report_egress(&mut self) {
        let sent = std::mem::take(&mut self.unreported);
        self.egress_packets.increment(sent.datagrams);
        self.egress_bytes.increment(sent.bytes);
        if sent.failed > 0 {
            metrics::counter!("cascade_udp_send_errors_total").increment(sent.failed);
        }
    }

    fn has_backlog(&self) -> bool {
        matches!(&self.role, Role::Viewer { video, .. } if !video.backlog.is_empty())
    }

    /// ICE and DTLS completed: media may be written.
    pub(crate) fn is_connected(&self) -> bool {
        self.liveness.is_connected()
    }

    pub(crate) fn on_fast_path(&self) -> bool {
        matches!(&self.role, Role::Viewer { video, audio } if video.fast.is_some() || audio.fast.is_some())
    }
}

struct Subscription {
    viewers: Vec<usize>,
    /// Viewers moving to this track (a rendition switch) at its next group start.
    joining: Vec<usize>,
    /// A group has started since the engine subscribed: the track is being produced (a
    /// rung the transcoder just started is not, until its first keyframe).
    live: bool,
    subscriber_id: u64,
    track: Arc<crate::broadcast::Track>,
    /// The current group, packetized: what priming a joining viewer sends without packetizing
    /// the group again.
    group: Vec<Arc<PacketizedFrame>>,
}

impl Subscription {
    /// Packetizes a live frame (once, whatever the number of viewers) and remembers it.
    fn packetize_live(&mut self, frame: &Frame) -> Option<Arc<PacketizedFrame>> {
        let codec = self.track.info()?.codec;
        let packetized = PacketizedFrame::new(frame, codec);
        if frame.keyframe || codec.kind() == MediaKind::Audio {
            self.group.clear();
            self.live = true;
        }
        if codec.kind() == MediaKind::Video {
            self.group.push(packetized.clone());
        }
        Some(packetized)
    }

    /// The track's cached group, packetized (reusing what live frames already packetized).
    fn packetized_group(&self) -> Vec<Arc<PacketizedFrame>> {
        let Some(codec) = self.track.info().map(|i| i.codec) else {
            return Vec::new();
        };
        self.track
            .current_group()
            .iter()
            .map(|frame| {
                self.group
                    .binary_search_by_key(&frame.seq, |p| p.seq)
                    .map(|at| self.group[at].clone())
                    .unwrap_or_else(|_| PacketizedFrame::new(frame, codec))
            })
            .collect()
    }
}

/// Work found while draining a session's output, applied once the session is no longer borrowed.
enum Followup {
    ViewerTrackOpened(MediaKind),
    /// ICE and DTLS completed: a viewer's video can be primed.
    Connected,
    /// The viewer cannot decode (it lost the keyframe, or joined and never got one).
    ViewerNeedsKeyframe,
    /// New figures about an adaptive viewer's link: time to decide its rendition.
    Adapt,
}

/// A frame part-way through its fan-out: the viewers still to serve.
struct FanOut {
    kind: MediaKind,
    frame: Arc<PacketizedFrame>,
    key: TrackKey,
    viewers: Vec<usize>,
    next: usize,
}

/// How the core is set up: the candidates' addresses and the few choices it makes.
pub(crate) struct CoreSettings {
    /// Our candidates' addresses: what a peer's datagrams are addressed to (with
    /// `--public-ip`, not the address the socket is bound to).
    pub udp_candidate: SocketAddr,
    pub tcp_candidate: Option<SocketAddr>,
    pub handshake_timeout: Duration,
    /// Whether viewers may use the fast path (`WebRtcSettings::fast_path`).
    pub fast_path: bool,
}

pub(crate) struct EngineCore {
    settings: CoreSettings,
    /// Where publishers' keyframe upstreams send their requests (the driver's queue).
    commands: mpsc::UnboundedSender<Command>,
    frames_tx: mpsc::Sender<FrameToEngine>,
    /// Boxed: a session is about 11 KB (str0m's `Rtc` inline), and a table of values keeps
    /// up to as many empty slots again after it grows.
    slots: Vec<Option<Box<Session>>>,
    free: Vec<usize>,
    generation: u64,
    by_id: HashMap<SessionId, usize>,
    by_addr: HashMap<Remote, usize>,
    /// Each session's local ICE ufrag: a datagram from an unknown address is routed by the
    /// USERNAME of its STUN check, never by asking every session.
    by_ufrag: HashMap<String, usize>,
    subscriptions: HashMap<TrackKey, Subscription>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Viewers with a priming backlog, served every `PRIMING_TICK`.
    pacing: Vec<(usize, u64)>,
    next_pacing: Option<Instant>,
    fan_out: Option<FanOut>,
    removed: Vec<Removed>,
    /// Scratch for a viewer's RTCP opened to read its NACKs, and the sequence numbers read.
    rtcp_plain: Vec<u8>,
    nacks: Vec<u16>,
}

impl EngineCore {
    /// A core whose subscriptions deliver into `frames_tx` and whose publishers ask for
    /// keyframes on `commands`.
    pub(crate) fn new(
        settings: CoreSettings,
        commands: mpsc::UnboundedSender<Command>,
        frames_tx: mpsc::Sender<FrameToEngine>,
    ) -> Self {
        EngineCore {
            settings,
            commands,
            frames_tx,
            slots: Vec::new(),
            free: Vec::new(),
            generation: 0,
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            subscriptions: HashMap::new(),
            timers: BinaryHeap::new(),
            pacing: Vec::new(),
            next_pacing: None,
            fan_out: None,
            removed: Vec::new(),
            rtcp_plain: Vec::new(),
            nacks: Vec::new(),
        }
    }

    /// Sessions held.
    pub(crate) fn sessions(&self) -> usize {
        self.by_id.len()
    }

    /// When the core next needs [`Self::handle_timeout`]; `None`: nothing is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        match (timer, self.next_pacing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The sessions that left since the last call.
    pub(crate) fn take_removed(&mut self) -> Vec<Removed> {
        std::mem::take(&mut self.removed)
    }

    /// Whether a session's video went on the fast path.
    #[cfg(test)]
    fn video_on_fast_path(&self, id: SessionId) -> bool {
        self.by_id
            .get(&id)
            .and_then(|&slot| self.slots[slot].as_ref())
            .is_some_and(|s| matches!(&s.role, Role::Viewer { video, .. } if video.fast.is_some()))
    }

    /// Ends a session at the node's request: RTCP BYE and DTLS close_notify tell the peer
    /// at once that the session is over, instead of leaving it to time out.
    pub(crate) fn close(&mut self, id: SessionId, out: &mut impl Egress) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        if let Some(session) = self.slots[slot].as_mut() {
            let _ = session.rtc.close();
            while let Ok(output) = session.rtc.poll_output() {
                match output {
                    Output::Transmit(t) => {
                        out.send(&t);
                    }
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
                if !session.rtc.is_alive() {
                    break;
                }
            }
            out.flush(&session.remotes);
        }
        self.remove(slot, None);
    }

    /// Asks a publisher for a keyframe (what its video track's keyframe upstream queued).
    pub(crate) fn request_keyframe(&mut self, id: SessionId, now: Instant, out: &mut impl Egress) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        if let Role::Publisher(publisher) = &session.role {
            publisher.request_keyframe(id, &mut session.rtc);
        }
        self.drive(slot, now, out);
    }

    pub(crate) fn add_session(&mut self, new: NewSession, now: Instant, out: &mut impl Egress) {
        let stream = new.broadcast.id().to_string();
        let role = match new.kind {
            SessionKind::Publisher => Role::Publisher(Publisher::new(&stream)),
            SessionKind::Viewer => Role::Viewer {
                video: OutTrack::default(),
                audio: OutTrack::default(),
            },
        };
        self.generation += 1;
        let handshake_deadline = now + self.settings.handshake_timeout;
        let session = Session {
            id: new.id,
            generation: self.generation,
            rtc: new.rtc,
            role,
            broadcast: new.broadcast,
            liveness: new.liveness,
            rendition: new.rendition,
            abr: new.adaptive.then(|| ViewerAbr::new(now)),
            handshake_deadline,
            remotes: Vec::new(),
            deadline: now,
            queued_deadline: None,
            unreported: Sent::default(),
            keys: new
                .keys
                .filter(|_| self.settings.fast_path && !new.adaptive),
            rtcp: None,
            media_remote: None,
            egress_packets: metrics::counter!("cascade_egress_packets_total", "stream" => stream.clone()),
            egress_bytes: metrics::counter!("cascade_egress_bytes_total", "stream" => stream),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(Box::new(session));
                slot
            }
            None => {
                self.slots.push(Some(Box::new(session)));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(new.id, slot);
        if let Some(session) = self.slots[slot].as_mut() {
            let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
            self.by_ufrag.insert(ufrag, slot);
        }
        self.timers
            .push(Reverse((handshake_deadline, slot, self.generation)));
        self.drive(slot, now, out);
    }

    /// Hands a datagram to the session it belongs to. Returns whether one took it.
    pub(crate) fn handle_datagram(
        &mut self,
        bytes: &[u8],
        from: Remote,
        now: Instant,
        out: &mut impl Egress,
    ) -> bool {
        let (proto, source) = from;
        let Ok(contents) = bytes.try_into() else {
            metrics::counter!("cascade_udp_dropped_total", "reason" => "unparseable").increment(1);
            return false;
        };
        let destination = match proto {
            Protocol::Tcp => self
                .settings
                .tcp_candidate
                .unwrap_or(self.settings.udp_candidate),
            _ => self.settings.udp_candidate,
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let slot = match self.by_addr.get(&from) {
            Some(&slot) => Some(slot),
            None => binding_request_recipient_ufrag(bytes)
                .and_then(|ufrag| self.by_ufrag.get(ufrag).copied())
                .filter(|&slot| {
                    self.slots[slot]
                        .as_ref()
                        .is_some_and(|s| s.rtc.accepts(&input))
                }),
        };
        let Some(slot) = slot else {
            metrics::counter!("cascade_udp_dropped_total", "reason" => "no_session").increment(1);
            return false;
        };
        let Some(session) = self.slots[slot].as_mut() else {
            return false;
        };
        if !session.remotes.contains(&from) {
            if session.remotes.len() == MAX_REMOTES {
                let oldest = session.remotes.remove(0);
                self.by_addr.remove(&oldest);
            }
            session.remotes.push(from);
            self.by_addr.insert(from, slot);
        }
        session.liveness.heard(now);
        if session.on_fast_path() && viewer_egress::is_rtcp(bytes) {
            let sent = viewer_egress::answer_nacks(
                session,
                bytes,
                out,
                &mut self.rtcp_plain,
                &mut self.nacks,
            );
            session.unreported.add(sent);
        }
        if let Err(e) = session.rtc.handle_input(input) {
            tracing::debug!(session = %session.id, error = %e, "input rejected");
        }
        self.drive(slot, now, out);
        true
    }

    /// A frame of a subscribed track: packetized once, then fanned out to the track's
    /// viewers on this engine. A long fan-out stops after [`FAN_OUT_SLICE`] viewers; the
    /// driver reads its socket and calls [`Self::resume_fan_out`] while
    /// [`Self::fan_out_pending`].
    pub(crate) fn handle_frame(
        &mut self,
        key: TrackKey,
        frame: &Frame,
        now: Instant,
        out: &mut impl Egress,
    ) {
        while self.fan_out.is_some() {
            self.resume_fan_out(now, out);
        }
        let Some(subscription) = self.subscriptions.get_mut(&key) else {
            return;
        };
        let Some(packetized) = subscription.packetize_live(frame) else {
            return;
        };
        let kind = subscription.track.kind();
        if packetized.keyframe && kind == MediaKind::Video && !subscription.joining.is_empty() {
            let joining = subscription.joining.clone();
            self.switch_at_group_start(&key, &packetized, &joining, now, out);
        }
        let Some(subscription) = self.subscriptions.get(&key) else {
            return;
        };
        // Indices are copied out so that sessions can be driven (and removed) meanwhile.
        self.fan_out = Some(FanOut {
            kind,
            frame: packetized,
            viewers: subscription.viewers.clone(),
            key,
            next: 0,
        });
        self.resume_fan_out(now, out);
    }

    /// Whether a frame's fan-out stopped part-way (see [`Self::handle_frame`]).
    pub(crate) fn fan_out_pending(&self) -> bool {
        self.fan_out.is_some()
    }

    /// Serves the next slice of viewers of the frame being fanned out.
    pub(crate) fn resume_fan_out(&mut self, now: Instant, out: &mut impl Egress) {
        let Some(mut fan_out) = self.fan_out.take() else {
            return;
        };
        let end = (fan_out.next + FAN_OUT_SLICE).min(fan_out.viewers.len());
        for at in fan_out.next..end {
            self.serve_viewer(&fan_out, fan_out.viewers[at], now, out);
        }
        fan_out.next = end;
        if end < fan_out.viewers.len() {
            self.fan_out = Some(fan_out);
        }
    }

    fn serve_viewer(&mut self, fan_out: &FanOut, slot: usize, now: Instant, out: &mut impl Egress) {
        let FanOut {
            kind, frame, key, ..
        } = fan_out;
        let kind = *kind;
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        if kind == MediaKind::Video
            && let Role::Viewer { video, .. } = &mut session.role
            && !video.backlog.is_empty()
        {
            // Still priming: keep the order, the pacer sends it after the cached group.
            video.backlog.push_back((frame.clone(), None));
            return;
        }
        if kind == MediaKind::Video
            && let (Some(abr), Role::Viewer { video, .. }) =
                (session.abr.as_ref(), &mut session.role)
            && let Some(pending) = abr.pending.as_ref()
        {
            // Looked up only where it decides something: at a group start before the
            // viewer stopped (not per frame).
            let subscriptions = &self.subscriptions;
            let target_live = || {
                subscriptions
                    .get(&(key.0.clone(), pending.clone()))
                    .is_some_and(|s| s.live)
            };
            match hold_for_switch(video, frame, target_live) {
                Hold::Send => {}
                Hold::Skip => return,
                Hold::GiveUp => {
                    self.finish_switch(slot, None, now, out);
                    return;
                }
            }
        }
        let sent = write_to_viewer(session, kind, frame, Timing::Live, now, out);
        session.unreported.add(sent);
        self.drive(slot, now, out);
    }

    /// A group of `key`'s track starts: viewers switching to it move now, unless the
    /// viewer already got a frame at or after that time (it then waits for the next group).
    fn switch_at_group_start(
        &mut self,
        key: &TrackKey,
        keyframe: &Arc<PacketizedFrame>,
        joining: &[usize],
        now: Instant,
        out: &mut impl Egress,
    ) {
        for &slot in joining {
            let Some(session) = self.slots[slot].as_mut() else {
                continue;
            };
            let Role::Viewer { video, .. } = &mut session.role else {
                continue;
            };
            if !video.backlog.is_empty() {
                continue;
            }
            let at = shifted(keyframe.timestamp, video.offset);
            if video.last_sent.is_some_and(|last| at <= last) {
                continue;
            }
            video.next_seq = keyframe.seq;
            video.started = false;
            self.finish_switch(slot, Some(key), now, out);
            if let Some(session) = self.slots[slot].as_mut() {
                let sent =
                    write_to_viewer(session, MediaKind::Video, keyframe, Timing::Live, now, out);
                session.unreported.add(sent);
                self.drive(slot, now, out);
            }
        }
    }

    /// Time passed: sessions whose str0m timeout or handshake deadline came, and the pacer
    /// of priming backlogs.
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut impl Egress) {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.slots[slot].as_mut() else {
                continue;
            };
            if session.generation != generation {
                continue; // a stale entry: the slot was reused
            }
            if !session.liveness.is_connected() && session.handshake_deadline <= now {
                self.end_unconnected(slot);
                continue;
            }
            if session.deadline > now {
                continue; // a stale entry: the session moved its deadline
            }
            if let Err(e) = session.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(session = %session.id, error = %e, "timeout handling failed");
            }
            self.drive(slot, now, out);
        }
        if self.next_pacing.is_some_and(|at| at <= now) {
            self.pace_priming(now, out);
        }
    }

    /// Drains a session's output until `Timeout`, sending datagrams and handling events.
    fn drive(&mut self, slot: usize, now: Instant, out: &mut impl Egress) {
        let mut followups: Vec<Followup> = Vec::new();
        let mut closed: Option<String> = None;
        let mut sent = Sent::default();
        {
            let Some(session) = self.slots[slot].as_mut() else {
                return;
            };
            loop {
                if !session.rtc.is_alive() {
                    closed.get_or_insert_with(|| "peer connection closed".into());
                    break;
                }
                match session.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        session.deadline = at;
                        if session.queued_deadline != Some(at) {
                            session.queued_deadline = Some(at);
                            self.timers.push(Reverse((at, slot, session.generation)));
                        }
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        // DTLS (20..=63) and SRTP/SRTCP (128..=191) go to the nominated
                        // pair; STUN answers (0..=3) to whoever checked.
                        if t.contents.first().is_some_and(|&b| b >= 20) {
                            session.media_remote = Some((t.proto, t.destination));
                        }
                        sent.add(out.send(&t));
                    }
                    Ok(Output::Event(event)) => {
                        if let Some(reason) =
                            handle_event(session, event, &self.commands, &mut followups, now)
                        {
                            closed = Some(reason);
                            session.rtc.disconnect();
                        }
                    }
                    Err(e) => {
                        closed = Some(format!("WebRTC error: {e}"));
                        session.rtc.disconnect();
                        break;
                    }
                }
            }
            out.flush(&session.remotes);
            session.unreported.add(sent);
            if session.unreported.datagrams >= REPORT_EVERY_DATAGRAMS || closed.is_some() {
                session.report_egress();
            }
        }
        for followup in followups {
            match followup {
                Followup::ViewerTrackOpened(kind) => self.attach_viewer_track(slot, kind, now, out),
                Followup::Connected => self.prime_video(slot, true, now, out),
                Followup::ViewerNeedsKeyframe => self.prime_video(slot, false, now, out),
                Followup::Adapt => self.adapt(slot, now, out),
            }
        }
        if let Some(reason) = closed {
            self.remove(slot, Some(Ended::TransportClosed(reason)));
        }
    }

    /// A viewer's outgoing track is negotiated: subscribe (once per track) and prime it.
    fn attach_viewer_track(
        &mut self,
        slot: usize,
        kind: MediaKind,
        now: Instant,
        out: &mut impl Egress,
    ) {
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        // The rendition the client pinned, else what WebRTC can carry of the broadcast
        // (`Broadcast::webrtc_plan`): AAC audio, for one, is left out and the viewer's audio
        // track stays silent.
        let pinned = match (kind, &session.rendition) {
            (MediaKind::Video, Some(name)) => session.broadcast.track(name),
            _ => None,
        };
        let Some(track) = pinned.or_else(|| session.broadcast.webrtc_track(kind)) else {
            return;
        };
        let key = (session.broadcast.id().clone(), track.name().to_owned());
        if let Role::Viewer { video, audio } = &mut session.role {
            let out = if kind == MediaKind::Video {
                video
            } else {
                audio
            };
            out.track = Some(track.name().to_owned());
        }
        let connected = session.is_connected();
        self.subscription(key, track).viewers.push(slot);
        // Before ICE and DTLS complete nothing is sent (str0m would hold it in its queue,
        // then send it in one burst and keep it for resends): the group goes once connected.
        if kind == MediaKind::Video && connected {
            self.prime_video(slot, true, now, out);
        }
    }

    /// The engine's subscription to `track` (made on first use).
    fn subscription(
        &mut self,
        key: TrackKey,
        track: Arc<crate::broadcast::Track>,
    ) -> &mut Subscription {
        self.subscriptions.entry(key.clone()).or_insert_with(|| {
            let sink = EngineSink {
                key,
                tx: self.frames_tx.clone(),
            };
            Subscription {
                viewers: Vec::new(),
                joining: Vec::new(),
                live: false,
                subscriber_id: track.subscribe(Box::new(sink)),
                track,
                group: Vec::new(),
            }
        })
    }

    /// Drops `slot` from the subscription `key` (as a viewer or a joiner), and the
    /// subscription itself once nobody is on it.
    fn leave_subscription(&mut self, key: &TrackKey, slot: usize) {
        if let Some(subscription) = self.subscriptions.get_mut(key) {
            subscription.viewers.retain(|&v| v != slot);
            subscription.joining.retain(|&v| v != slot);
            if subscription.viewers.is_empty() && subscription.joining.is_empty() {
                subscription.track.unsubscribe(subscription.subscriber_id);
                self.subscriptions.remove(key);
            }
        }
    }

    /// Decides an adaptive viewer's rendition and, when it changes, starts the switch: the
    /// viewer joins the new rendition's subscription and moves at its next group start
    /// (`handle_frame`). Subscribing is also what makes the transcoder encode that rung.
    fn adapt(&mut self, slot: usize, now: Instant, out: &mut impl Egress) {
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        let (Some(abr), Role::Viewer { video, .. }) = (session.abr.as_mut(), &session.role) else {
            return;
        };
        let Some(current) = video.track.clone() else {
            return;
        };
        if !abr.due(now) || !video.backlog.is_empty() {
            return;
        }
        let ladder = session.broadcast.abr_ladder();
        let Some(decision) = abr.decide(&ladder, &current, now) else {
            return;
        };
        session.rtc.bwe().set_bitrate(
            Bitrate::kbps(decision.probe_minimum_kbps),
            Bitrate::kbps(decision.probe_desired_kbps),
        );
        let Some(target) = decision.to else {
            return;
        };
        let stream = session.broadcast.id().clone();
        let Some(track) = session.broadcast.track(&target) else {
            return;
        };
        let previous = abr.pending.replace(target.clone());
        tracing::debug!(session = %session.id, from = %current, to = %target, "rendition switch pending");
        if let Some(previous) = previous {
            self.leave_subscription(&(stream.clone(), previous), slot);
        }
        if target == current {
            // Back to where it is: nothing to wait for.
            self.finish_switch(slot, None, now, out);
            return;
        }
        self.subscription((stream, target), track)
            .joining
            .push(slot);
    }

    /// Ends a pending switch. With `moved`, the viewer now gets that subscription's track;
    /// without, it stays on its track, resumed from the cached group if it was held.
    fn finish_switch(
        &mut self,
        slot: usize,
        moved: Option<&TrackKey>,
        now: Instant,
        out: &mut impl Egress,
    ) {
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        let (Some(abr), Role::Viewer { video, .. }) = (session.abr.as_mut(), &mut session.role)
        else {
            return;
        };
        let pending = abr.pending.take();
        let held = video.held_at.take().is_some();
        let stream = session.broadcast.id().clone();
        match moved {
            Some(key) => {
                let old = video.track.replace(key.1.clone());
                metrics::counter!("cascade_abr_switches_total").increment(1);
                if let Some(old) = old {
                    self.leave_subscription(&(stream, old), slot);
                }
                if let Some(subscription) = self.subscriptions.get_mut(key) {
                    subscription.joining.retain(|&v| v != slot);
                    subscription.viewers.push(slot);
                }
            }
            None => {
                if let Some(pending) = pending {
                    self.leave_subscription(&(stream, pending), slot);
                }
                if held {
                    self.prime_video(slot, true, now, out);
                }
            }
        }
    }

    /// Sends the cached group (keyframe first) to a viewer so that it can decode at once, and
    /// asks the publisher for a fresh keyframe (coalesced across viewers). A viewer that
    /// already got frames and still asks (its keyframe was lost: a dropped packet, or media
    /// that arrived before its DTLS handshake finished) is re-sent the group at most once per
    /// `REPRIME_INTERVAL`; timestamps keep increasing (`plan_priming`).
    fn prime_video(&mut self, slot: usize, joining: bool, now: Instant, out: &mut impl Egress) {
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        let Role::Viewer { video, .. } = &session.role else {
            return;
        };
        let Some(name) = video.track.clone() else {
            return;
        };
        let key = (session.broadcast.id().clone(), name);
        let Some(subscription) = self.subscriptions.get(&key) else {
            return;
        };
        subscription.track.request_keyframe(now);
        let Role::Viewer { video, .. } = &mut session.role else {
            return;
        };
        if !joining
            && video
                .primed_at
                .is_some_and(|at| now.saturating_duration_since(at) < REPRIME_INTERVAL)
        {
            return;
        }
        let group = subscription.packetized_group();
        let Some(first) = group.first().filter(|f| f.keyframe) else {
            return;
        };
        let timestamps: Vec<u64> = group.iter().map(|f| f.timestamp).collect();
        let plan = plan_priming(&timestamps, video.last_sent);
        video.primed_at = Some(now);
        video.started = false;
        video.next_seq = first.seq;
        tracing::debug!(session = %session.id, frames = group.len(), joining, connected = session.rtc.is_connected(), "priming video from the group cache");
        video.offset = plan.offset;
        video.backlog.clear();
        video.backlog.extend(
            group
                .iter()
                .cloned()
                .zip(plan.timestamps.iter().map(|&t| Some(t))),
        );
        let generation = session.generation;
        self.pump_backlog(slot, now, out);
        if self.slots[slot].as_ref().is_some_and(|s| s.has_backlog())
            && !self.pacing.iter().any(|&(s, _)| s == slot)
        {
            self.pacing.push((slot, generation));
            self.next_pacing.get_or_insert(now + PRIMING_TICK);
        }
    }

    /// Serves every viewer whose priming backlog is not empty yet.
    fn pace_priming(&mut self, now: Instant, out: &mut impl Egress) {
        let mut pacing = std::mem::take(&mut self.pacing);
        pacing.retain(|&(slot, generation)| {
            if self.slots[slot]
                .as_ref()
                .is_none_or(|s| s.generation != generation)
            {
                return false;
            }
            self.pump_backlog(slot, now, out);
            self.slots[slot].as_ref().is_some_and(|s| s.has_backlog())
        });
        // Viewers primed while the others were pumped joined the emptied list.
        for entry in std::mem::take(&mut self.pacing) {
            if !pacing.contains(&entry) {
                pacing.push(entry);
            }
        }
        self.pacing = pacing;
        self.next_pacing = (!self.pacing.is_empty()).then(|| now + PRIMING_TICK);
    }

    /// Writes backlog frames of one viewer up to this tick's byte budget.
    fn pump_backlog(&mut self, slot: usize, now: Instant, out: &mut impl Egress) {
        let mut budget = PRIMING_BYTES_PER_TICK;
        loop {
            let Some(session) = self.slots[slot].as_mut() else {
                return;
            };
            let Role::Viewer { video, .. } = &mut session.role else {
                return;
            };
            if budget == 0 {
                return;
            }
            let Some((frame, timestamp)) = video.backlog.pop_front() else {
                return;
            };
            budget = budget.saturating_sub(frame.bytes);
            let sent = write_to_viewer(
                session,
                MediaKind::Video,
                &frame,
                Timing::Backlog(timestamp),
                now,
                out,
            );
            session.unreported.add(sent);
            // Drain after every frame: str0m's send ring (1000 video packets) must not wrap.
            self.drive(slot, now, out);
        }
    }

    /// Ends a session whose ICE and DTLS did not complete in time.
    fn end_unconnected(&mut self, slot: usize) {
        let Some(session) = self.slots[slot].as_ref() else {
            return;
        };
        let limit = self.settings.handshake_timeout;
        tracing::info!(
            session = %session.id,
            stream = %session.broadcast.id(),
            heard_from_peer = !session.remotes.is_empty(),
            timeout_secs = limit.as_secs_f64(),
            "ICE and DTLS did not complete in time; ending the session (a client that cannot reach the media address?)"
        );
        self.remove(slot, Some(Ended::HandshakeTimedOut(limit)));
    }

    fn remove(&mut self, slot: usize, reason: Option<Ended>) {
        let Some(mut session) = self.slots[slot].take() else {
            return;
        };
        session.report_egress();
        self.free.push(slot);
        self.by_id.remove(&session.id);
        let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.remove(&ufrag);
        let mut tcp_peers = Vec::new();
        for remote in &session.remotes {
            self.by_addr.remove(remote);
            if let (Protocol::Tcp, peer) = *remote {
                // A vanished peer may never close it: the session's end does.
                tcp_peers.push(peer);
            }
        }
        match &session.role {
            Role::Viewer { video, audio } => {
                let pending = session.abr.as_ref().and_then(|a| a.pending.as_ref());
                for name in [video.track.as_ref(), audio.track.as_ref(), pending]
                    .into_iter()
                    .flatten()
                {
                    let key = (session.broadcast.id().clone(), name.clone());
                    self.leave_subscription(&key, slot);
                }
            }
            Role::Publisher(publisher) => publisher.end(&session.broadcast),
        }
        if let Some(Ended::TransportClosed(reason)) = &reason {
            tracing::info!(session = %session.id, %reason, "WebRTC session closed");
        }
        self.removed.push(Removed {
            id: session.id,
            ufrag,
            tcp_peers,
            reason,
        });
    }
}

/// Handles one event of a session. Returns a reason when the session must end.
fn handle_event(
    session: &mut Session,
    event: Event,
    commands: &mpsc::UnboundedSender<Command>,
    followups: &mut Vec<Followup>,
    now: Instant,
) -> Option<String> {
    match event {
        Event::Connected => {
            session.liveness.set_connected();
            if matches!(session.role, Role::Viewer { .. }) {
                followups.push(Followup::Connected);
            }
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            return Some("ICE disconnected (no connectivity checks from the peer)".into());
        }
        Event::MediaAdded(added) => {
            let kind = match added.kind {
                str0m::media::MediaKind::Audio => MediaKind::Audio,
                str0m::media::MediaKind::Video => MediaKind::Video,
            };
            match &mut session.role {
                Role::Publisher(publisher) => publisher.track_added(kind, added.mid),
                Role::Viewer { video, audio } => {
                    let track = if kind == MediaKind::Video {
                        video
                    } else {
                        audio
                    };
                    track.mid = Some(added.mid);
                    followups.push(Followup::ViewerTrackOpened(kind));
                }
            }
        }
        Event::MediaData(data) => {
            if let Role::Publisher(publisher) = &mut session.role {
                session.liveness.media_flowing(now);
                publisher.on_media(session.id, &session.broadcast, data, commands);
            }
        }
        Event::KeyframeRequest(_) => {
            if matches!(session.role, Role::Viewer { .. }) {
                session.liveness.keyframe_requested(now);
                followups.push(Followup::ViewerNeedsKeyframe);
            }
        }
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            if let Some(abr) = session.abr.as_mut() {
                abr.on_estimate(estimate.as_u64());
                followups.push(Followup::Adapt);
            }
        }
        Event::MediaEgressStats(stats) => {
            if let Role::Viewer { video, .. } = &session.role
                && video.mid == Some(stats.mid)
            {
                if let Some(loss) = stats.loss {
                    session.liveness.loss_reported(loss);
                }
                if let Some(abr) = session.abr.as_mut() {
                    abr.on_reports(stats.loss, stats.rtt);
                    followups.push(Followup::Adapt);
                }
            }
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    //! The core in virtual time: a broadcast fed by the test, stock str0m peers as viewers,
    //! datagrams handed across in memory.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use cascade_protocol::media::{Codec, TrackInfo, source_track};
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, KeyframeRequestKind, Mid};
    use str0m::{Candidate, RtcConfig};

    use super::*;
    use crate::webrtc::{Candidates, Negotiated, negotiate};

    const SERVER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        5000,
    );
    /// Virtual time advances in steps of this.
    const STEP: Duration = Duration::from_millis(5);
    /// 30 fps in the 90 kHz clock.
    const FRAME_TICKS: u64 = 3000;

    /// What the core wrote, in order, with the virtual time it was written at.
    #[derive(Default)]
    struct Memory {
        now: Option<Instant>,
        datagrams: Vec<(Instant, SocketAddr, Vec<u8>)>,
    }

    impl Egress for Memory {
        fn send(&mut self, t: &Transmit) -> Sent {
            self.datagrams
                .push((self.now.unwrap(), t.destination, t.contents.to_vec()));
            Sent {
                datagrams: 1,
                bytes: t.contents.len() as u64,
                failed: 0,
            }
        }

        fn send_with<E>(
            &mut self,
            to: SocketAddr,
            len: usize,
            write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
        ) -> (Sent, Result<(), E>) {
            let mut datagram = Vec::with_capacity(len);
            let written = write(&mut datagram);
            if written.is_err() {
                return (Sent::default(), written);
            }
            assert_eq!(datagram.len(), len, "the fast path wrote what it announced");
            self.datagrams.push((self.now.unwrap(), to, datagram));
            let sent = Sent {
                datagrams: 1,
                bytes: len as u64,
                failed: 0,
            };
            (sent, written)
        }

        fn flush(&mut self, _: &[Remote]) {}
    }

    /// A frame as a viewer's str0m handed it over.
    struct Received {
        payload: Vec<u8>,
        keyframe: bool,
        contiguous: bool,
    }

    struct Viewer {
        id: SessionId,
        rtc: Rtc,
        addr: SocketAddr,
        mid: Mid,
        connected: bool,
        frames: Vec<Received>,
        /// Every n-th datagram to it is lost.
        lose_every: Option<usize>,
        delivered: usize,
        /// Bytes the core wrote to it, with when.
        written: Vec<(Instant, usize)>,
    }

    /// A core, its broadcast and its viewers, in virtual time.
    struct Stage {
        now: Instant,
        core: EngineCore,
        out: Memory,
        frames_rx: mpsc::Receiver<FrameToEngine>,
        _commands_rx: mpsc::UnboundedReceiver<Command>,
        broadcast: Arc<Broadcast>,
        track: Arc<crate::broadcast::Track>,
        /// How often the publisher was asked for a keyframe.
        keyframes_asked: Arc<AtomicUsize>,
        viewers: Vec<Viewer>,
        /// The next frame's number.
        next_frame: u64,
        /// Frames queue towards the core but it does not take them (a stalled engine).
        stalled: bool,
    }

    /// A VP8 frame (only its keyframe bit matters to the peers) that says which it is.
    fn vp8_frame(number: u64, keyframe: bool, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; len.max(16)];
        frame[0] = if keyframe { 0x10 } else { 0x11 };
        frame[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        frame[8..16].copy_from_slice(&number.to_be_bytes());
        for (at, byte) in frame.iter_mut().enumerate().skip(16) {
            *byte = (number as usize + at) as u8;
        }
        frame
    }

    fn frame_number(payload: &[u8]) -> u64 {
        u64::from_be_bytes(payload[8..16].try_into().unwrap())
    }

    impl Stage {
        fn new() -> Stage {
            let now = Instant::now();
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
            let settings = CoreSettings {
                udp_candidate: SERVER,
                tcp_candidate: None,
                handshake_timeout: Duration::from_secs(10),
                fast_path: true,
            };
            let broadcast = Broadcast::new(StreamId::parse("show").unwrap());
            let track = broadcast.source(MediaKind::Video);
            let keyframes_asked = Arc::new(AtomicUsize::new(0));
            let asked = keyframes_asked.clone();
            track.begin_source(
                TrackInfo::new(source_track(MediaKind::Video), Codec::Vp8),
                Some(Arc::new(move || {
                    asked.fetch_add(1, Ordering::Relaxed);
                })),
            );
            Stage {
                now,
                core: EngineCore::new(settings, commands, frames_tx),
                out: Memory::default(),
                frames_rx,
                _commands_rx: commands_rx,
                broadcast,
                track,
                keyframes_asked,
                viewers: Vec::new(),
                next_frame: 0,
                stalled: false,
            }
        }

        /// Publishes the next frame (a keyframe every `group` frames) of `len` bytes.
        fn publish(&mut self, group: u64, len: usize) {
            let number = self.next_frame;
            self.next_frame += 1;
            let keyframe = number.is_multiple_of(group);
            let payload = vp8_frame(number, keyframe, len);
            self.track
                .publish_at(number * FRAME_TICKS, self.now, keyframe, payload.into());
        }

        /// A stock str0m peer offers to receive video; the core takes the session.
        fn add_viewer(&mut self) -> usize {
            let index = self.viewers.len();
            let addr = SocketAddr::from(([10, 0, 1, index as u8 + 1], 6000));
            let mut rtc = RtcConfig::new().build(self.now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut change = rtc.sdp_api();
            let mid = change.add_media(
                str0m::media::MediaKind::Video,
                Direction::RecvOnly,
                None,
                None,
                None,
            );
            let (offer, pending) = change.apply().unwrap();
            let certificate = str0m::crypto::from_feature_flags()
                .dtls_provider
                .generate_certificate()
                .unwrap();
            let candidates = Candidates {
                udp: SERVER,
                tcp: None,
            };
            let Negotiated {
                rtc: server,
                keys,
                answer_sdp,
            } = negotiate(
                &offer.to_sdp_string(),
                SessionKind::Viewer,
                false,
                &certificate,
                candidates,
                self.now,
            )
            .unwrap();
            let answer = SdpAnswer::from_sdp_string(&answer_sdp).unwrap();
            rtc.sdp_api().accept_answer(pending, answer).unwrap();
            let id = SessionId::random();
            let new = NewSession {
                id,
                kind: SessionKind::Viewer,
                rtc: server,
                broadcast: self.broadcast.clone(),
                liveness: Liveness::new(self.now),
                rendition: None,
                adaptive: false,
                keys,
            };
            self.out.now = Some(self.now);
            self.core.add_session(new, self.now, &mut self.out);
            self.viewers.push(Viewer {
                id,
                rtc,
                addr,
                mid,
                connected: false,
                frames: Vec::new(),
                lose_every: None,
                delivered: 0,
                written: Vec::new(),
            });
            index
        }

        /// Hands what the core wrote to its viewers, and their answers back, until quiet.
        fn exchange(&mut self) {
            loop {
                let written = std::mem::take(&mut self.out.datagrams);
                let mut answers = Vec::new();
                for (at, to, datagram) in written {
                    let Some(viewer) = self.viewers.iter_mut().find(|v| v.addr == to) else {
                        continue;
                    };
                    viewer.written.push((at, datagram.len()));
                    viewer.delivered += 1;
                    if viewer
                        .lose_every
                        .is_some_and(|n| viewer.delivered.is_multiple_of(n) && datagram[0] >= 128)
                    {
                        continue;
                    }
                    let input = Receive::new(Protocol::Udp, SERVER, to, &datagram).unwrap();
                    viewer
                        .rtc
                        .handle_input(Input::Receive(self.now, input))
                        .unwrap();
                    Self::poll_viewer(viewer, &mut answers);
                }
                for viewer in &mut self.viewers {
                    Self::poll_viewer(viewer, &mut answers);
                }
                if answers.is_empty() && self.out.datagrams.is_empty() {
                    return;
                }
                self.out.now = Some(self.now);
                for (from, datagram) in answers {
                    self.core.handle_datagram(
                        &datagram,
                        (Protocol::Udp, from),
                        self.now,
                        &mut self.out,
                    );
                }
            }
        }

        fn poll_viewer(viewer: &mut Viewer, answers: &mut Vec<(SocketAddr, Vec<u8>)>) {
            loop {
                match viewer.rtc.poll_output().unwrap() {
                    Output::Transmit(t) => answers.push((viewer.addr, t.contents.to_vec())),
                    Output::Timeout(_) => return,
                    Output::Event(Event::Connected) => viewer.connected = true,
                    Output::Event(Event::MediaData(data)) => viewer.frames.push(Received {
                        keyframe: data.is_keyframe(),
                        contiguous: data.contiguous,
                        payload: data.data.to_vec(),
                    }),
                    Output::Event(_) => {}
                }
            }
        }

        /// One step of virtual time: frames to the core, datagrams across, timeouts.
        fn step(&mut self) {
            self.now += STEP;
            self.out.now = Some(self.now);
            if !self.stalled {
                while let Ok(delivered) = self.frames_rx.try_recv() {
                    self.core.handle_frame(
                        delivered.key,
                        &delivered.frame,
                        self.now,
                        &mut self.out,
                    );
                    while self.core.fan_out_pending() {
                        self.core.resume_fan_out(self.now, &mut self.out);
                    }
                }
            }
            self.core.handle_timeout(self.now, &mut self.out);
            for viewer in &mut self.viewers {
                viewer.rtc.handle_input(Input::Timeout(self.now)).unwrap();
            }
            self.exchange();
        }

        /// Plays `frames` live frames, one every 33 ms (about 30 fps).
        fn play(&mut self, frames: u64, group: u64, len: usize) {
            for _ in 0..frames {
                self.publish(group, len);
                for _ in 0..7 {
                    self.step();
                }
            }
        }

        /// The viewer sends a PLI, as a browser does when it cannot decode.
        fn ask_for_keyframe(&mut self, viewer: usize) {
            let viewer = &mut self.viewers[viewer];
            let mid = viewer.mid;
            viewer
                .rtc
                .writer(mid)
                .unwrap()
                .request_keyframe(None, KeyframeRequestKind::Pli)
                .unwrap();
        }

        fn run_for(&mut self, length: Duration) {
            let end = self.now + length;
            while self.now < end {
                self.step();
            }
        }
    }

    /// The frame numbers a viewer got, in the order it got them.
    fn numbers(viewer: &Viewer) -> Vec<u64> {
        viewer
            .frames
            .iter()
            .map(|f| frame_number(&f.payload))
            .collect()
    }

    #[test]
    fn a_viewer_joining_mid_group_starts_from_the_cached_keyframe_and_gets_every_frame_since_in_order()
     {
        let mut stage = Stage::new();
        stage.play(20, 60, 12_000);
        let viewer = stage.add_viewer();
        stage.play(40, 60, 12_000);
        stage.run_for(Duration::from_millis(500));
        let viewer = &stage.viewers[viewer];
        assert!(viewer.connected, "ICE and DTLS completed in virtual time");
        let got = numbers(viewer);
        assert_eq!(
            got,
            (0..60).collect::<Vec<_>>(),
            "the cached group, then every live frame, in order"
        );
        assert!(
            viewer.frames[0].keyframe,
            "the first frame decodes on its own"
        );
        for (frame, number) in viewer.frames.iter().zip(0..) {
            assert_eq!(
                frame.payload,
                vp8_frame(number, number.is_multiple_of(60), 12_000),
                "frame {number} intact"
            );
        }
    }

    #[test]
    fn the_cached_group_goes_out_in_paced_slices_not_in_one_burst() {
        let mut stage = Stage::new();
        stage.play(50, 100, 20_000);
        let viewer = stage.add_viewer();
        stage.run_for(Duration::from_millis(300));
        stage.play(10, 100, 20_000);
        let viewer = &stage.viewers[viewer];
        assert_eq!(numbers(viewer), (0..60).collect::<Vec<_>>());
        // The 50 cached frames are 1 MB: at 64 KiB a tick they take 16 ticks of 20 ms.
        let mut per_tick: HashMap<u128, usize> = HashMap::new();
        let start = viewer.written[0].0;
        for &(at, len) in &viewer.written {
            let tick = at.duration_since(start).as_millis() / PRIMING_TICK.as_millis();
            *per_tick.entry(tick).or_default() += len;
        }
        let worst = per_tick.values().copied().max().unwrap();
        let bound = PRIMING_BYTES_PER_TICK + 2 * 20_000;
        assert!(
            worst <= bound,
            "at most {bound} bytes a tick (a slice, a live frame and the headers), not {worst}"
        );
        assert!(
            per_tick.len() >= 15,
            "the burst is spread over {} ticks",
            per_tick.len()
        );
    }

    #[test]
    fn keyframe_requests_resend_the_group_at_most_once_a_second_and_reach_the_publisher() {
        let mut stage = Stage::new();
        stage.play(10, 300, 2_000);
        let viewer = stage.add_viewer();
        stage.play(30, 300, 2_000);
        let asked_at_join = stage.keyframes_asked.load(Ordering::Relaxed);
        assert!(
            asked_at_join >= 1,
            "a joining viewer asks the publisher for a fresh keyframe"
        );
        let keyframes = |stage: &Stage| {
            stage.viewers[viewer]
                .frames
                .iter()
                .filter(|f| f.keyframe)
                .count()
        };
        assert_eq!(keyframes(&stage), 1);
        stage.run_for(Duration::from_millis(1000));
        for _ in 0..3 {
            stage.ask_for_keyframe(viewer);
            stage.play(3, 300, 2_000);
        }
        assert_eq!(
            keyframes(&stage),
            2,
            "three PLIs within a second: the group went again once"
        );
        let got = numbers(&stage.viewers[viewer]);
        let resent = got.iter().rposition(|&n| n == 0).unwrap();
        assert!(
            got[resent..].windows(2).all(|w| w[1] == w[0] + 1),
            "the resent group, then live frames in order: {got:?}"
        );
        stage.run_for(Duration::from_millis(1100));
        stage.ask_for_keyframe(viewer);
        stage.play(3, 300, 2_000);
        assert_eq!(
            keyframes(&stage),
            3,
            "a second later, a request resends it again"
        );
        assert!(
            stage.keyframes_asked.load(Ordering::Relaxed) > asked_at_join,
            "and the publisher is asked again"
        );
    }

    #[test]
    fn a_stalled_engine_resumes_at_a_group_start_so_viewers_never_get_an_undecodable_frame() {
        let mut stage = Stage::new();
        let viewer = stage.add_viewer();
        stage.play(40, 30, 500);
        assert_eq!(numbers(&stage.viewers[viewer]), (0..40).collect::<Vec<_>>());
        // The engine stops taking frames while the publisher goes on: its queue fills, and
        // its subscription skips to the next group.
        stage.stalled = true;
        for _ in 0..FRAME_QUEUE + 100 {
            stage.publish(30, 500);
        }
        stage.stalled = false;
        stage.play(60, 30, 500);
        let viewer = &stage.viewers[viewer];
        let got = numbers(viewer);
        let gap = got
            .windows(2)
            .position(|w| w[1] != w[0] + 1)
            .expect("frames were skipped");
        assert!(
            viewer.frames[gap + 1].keyframe,
            "after the skip, frame {} is a keyframe",
            got[gap + 1]
        );
        assert!(got.windows(2).all(|w| w[1] > w[0]), "never back in time");
        assert_eq!(
            got.windows(2).filter(|w| w[1] != w[0] + 1).count(),
            1,
            "one skip, then every frame"
        );
        assert_eq!(
            *got.last().unwrap(),
            stage.next_frame - 1,
            "up to the newest frame"
        );
    }

    #[test]
    fn a_connected_viewer_gets_live_video_on_the_fast_path_and_its_nacks_repair_losses() {
        let mut stage = Stage::new();
        let viewer = stage.add_viewer();
        stage.play(30, 60, 6_000);
        assert!(
            stage.core.video_on_fast_path(stage.viewers[viewer].id),
            "the viewer's video left str0m's per-packet path"
        );
        stage.viewers[viewer].lose_every = Some(10);
        stage.play(120, 60, 6_000);
        stage.run_for(Duration::from_millis(500));
        let viewer = &stage.viewers[viewer];
        assert_eq!(
            numbers(viewer),
            (0..150).collect::<Vec<_>>(),
            "every frame, in order, despite a tenth of the packets lost"
        );
        assert!(
            viewer.frames.iter().all(|f| f.contiguous),
            "no frame was given up on"
        );
        for (frame, number) in viewer.frames.iter().zip(0..) {
            assert_eq!(
                frame.payload,
                vp8_frame(number, number.is_multiple_of(60), 6_000)
            );
        }
    }
}
