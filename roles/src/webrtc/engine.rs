//! The engine task: one UDP socket (and a TCP port for ICE-TCP, [`super::tcp`]), every
//! session's `Rtc`, and the fan-out to viewers.
//!
//! Shape (after str0m's `chat` example, scaled): sessions live in a slab; a datagram is routed
//! by its source address, and a datagram from an unknown address (the first STUN check of a
//! new session, or of a peer whose address changed) by the local ufrag in its STUN USERNAME:
//! two map lookups, so junk costs the same against 10 sessions or 10,000. Sources are not
//! filtered: a socket bound to loopback only ever hears this host (browsers send their checks
//! from the host's own non-loopback address), and any address it hears from it can answer. Timeouts sit in a heap, so the loop never
//! scans all sessions. Media reaches viewers through one subscription per (stream, track),
//! shared by every viewer of that track on this engine: a frame costs one channel message
//! and one wake-up for the engine, then a plain loop over that track's viewers.
//!
//! Viewers run str0m in RTP mode: the engine packetizes each frame once
//! (`cascade_protocol::rtp_payload`) and every viewer's RTP stream references the same
//! payloads, so per viewer only the RTP header and the encryption are made. Datagrams to one
//! viewer leave in GSO batches ([`super::udp`]).
//!
//! Once a viewer's DTLS is done (AES-GCM, over UDP, not adaptive), its packets skip str0m:
//! the fast path (`crate::edge::fast_path`) writes the header, copies the payload once into
//! the socket's send batch and seals it in place; an anchor a second still goes through
//! str0m for its Sender Reports, and the viewer's NACKs are read from its SRTCP and
//! answered from the shared payloads. str0m keeps ICE, consent, DTLS, RTCP and BYE.
//!
//! Every mutation of an `Rtc` is followed by draining `poll_output` until `Timeout`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::media::{Codec, Frame, MediaKind, TrackInfo, source_track};
use cascade_protocol::priming::{plan_priming, shifted};
use cascade_protocol::rtp_payload::{MAX_RTP_PAYLOAD, RtpPayload, packetize};
use cascade_protocol::stun::binding_request_recipient_ufrag;
use ractor::ActorRef;
use str0m::bwe::{Bitrate, BweKind};
use str0m::format::Codec as RtcCodec;
use str0m::media::{KeyframeRequestKind, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{Extension, RtpWrite};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;

use super::dispatch::{Inbound, RouteUpdate};
use super::tcp::{TcpEvent, TcpPeers};
use super::udp::{MediaSocket, Sent};

use super::dtls_keys::KeyCell;
use super::srtp::{Profile, RtpCipher};
use crate::admission::{EngineFigures, EngineLoad};
use crate::broadcast::{Broadcast, Delivery, FrameSink};
use crate::edge::abr::ViewerAbr;
use crate::edge::fast_path::{self, ViewerRtp};
use crate::session::{Liveness, SessionId, SessionKind, SessionMsg};

/// Frames queued towards the engine before subscriptions start skipping to the next group.
const FRAME_QUEUE: usize = 4096;
/// Upper bound on how long the loop sleeps when no session has an earlier timeout.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Datagrams read per wake-up before frames and timers get their turn.
const RECEIVE_BATCH: usize = 256;
/// Egress counters are updated once this many datagrams have accumulated for a session.
const REPORT_EVERY_DATAGRAMS: u64 = 64;
/// A viewer asking for keyframes again and again is re-sent the cached group at most this often.
const REPRIME_INTERVAL: Duration = Duration::from_secs(1);
/// The cached group is sent to a joining viewer in slices of this many bytes per
/// `PRIMING_TICK` (about 26 Mbit/s): fast enough to decode at once, slow enough not to
/// overflow a receiver's socket buffer (about 100 datagrams by default on Linux) or a
/// router queue with a whole group at line rate.
const PRIMING_BYTES_PER_TICK: usize = 64 * 1024;
const PRIMING_TICK: Duration = Duration::from_millis(20);
/// The engine's load (the worst queueing delay of a frame, the share of time spent working)
/// is published once per window.
const LOAD_WINDOW: Duration = Duration::from_millis(500);
/// During a long fan-out the socket is read again after this many viewers, so that the
/// publisher's media, RTCP and consent checks are never left waiting behind viewer egress
/// (nor dropped by a full receive buffer).
const READ_SOCKET_EVERY_VIEWERS: usize = 64;
/// Frames a fast-path track remembers to answer NACKs from: about 2 s of 30 fps video.
const RESENDABLE_FRAMES: usize = 64;

/// A session handed over by the HTTP side after its offer was answered.
pub(crate) struct NewSession {
    pub id: SessionId,
    pub kind: SessionKind,
    pub rtc: Rtc,
    pub broadcast: Arc<Broadcast>,
    pub actor: ActorRef<SessionMsg>,
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

/// What the rest of the node asks of the engine.
pub(crate) enum Command {
    Add(Box<NewSession>),
    Close(SessionId),
    RequestKeyframe(SessionId),
}

/// A subscription of the engine: one per (stream, track name), shared by its viewers.
type TrackKey = (StreamId, String);

struct FrameToEngine {
    key: TrackKey,
    frame: Frame,
    /// When it entered the queue: how long it waited is the engine's lag.
    enqueued: Instant,
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

/// A frame with its RTP payloads, made once per engine and shared by every viewer.
struct PacketizedFrame {
    seq: u64,
    timestamp: u64,
    keyframe: bool,
    payloads: Vec<RtpPayload>,
    bytes: usize,
}

impl PacketizedFrame {
    fn new(frame: &Frame, codec: Codec) -> Arc<Self> {
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
struct OutTrack {
    /// The broadcast track it carries, once negotiated (a rendition, or the source).
    track: Option<String>,
    mid: Option<Mid>,
    pt: Option<Pt>,
    /// The extended RTP sequence number of the next packet (starts below 2^15 so that the
    /// SRTP rollover counter starts at 0, as a receiver assumes).
    rtp_seq: u64,
    /// Nothing is sent before a keyframe: the decoder could not use it.
    started: bool,
    /// Frames below this were already sent (while priming from the group cache).
    next_seq: u64,
    /// Added to track timestamps for this viewer (see `cascade_protocol::priming`).
    offset: i64,
    /// The newest RTP-clock timestamp written, so that a re-priming never goes back in time.
    last_sent: Option<u64>,
    /// When the cached group was last sent to this viewer.
    primed_at: Option<Instant>,
    /// Frames waiting for the pacer while the cached group goes out, with the timestamp the
    /// priming plan gave them (`None`: a live frame, shifted by `offset`).
    backlog: std::collections::VecDeque<(Arc<PacketizedFrame>, Option<u64>)>,
    /// With a rendition switch pending: the timestamp of the group start where this track
    /// stopped, waiting for the new rendition's group that starts there too.
    held_at: Option<u64>,
    /// The fast path, once the track is on it (it then holds the sequence counter).
    fast: Option<FastTrack>,
}

/// A track on the fast path: its writer and what it sent, to answer NACKs.
struct FastTrack {
    rtp: ViewerRtp,
    ssrc: u32,
    sent: fast_path::Sent<Arc<PacketizedFrame>>,
    /// When a frame's last packet last went through str0m (its Sender Report anchor).
    last_anchor: Option<Instant>,
    /// A priming burst went out since: the next live frame anchors.
    reanchor: bool,
}

/// Per-publisher state of one incoming track.
#[derive(Default)]
struct InTrack {
    mid: Option<Mid>,
    codec: Option<Codec>,
}

// Sessions live in the engine's slot table; boxing the viewer side would add a pointer
// chase to every packet of the fan-out.
#[allow(clippy::large_enum_variant)]
enum Role {
    Publisher { video: InTrack, audio: InTrack },
    Viewer { video: OutTrack, audio: OutTrack },
}

/// A peer's transport address: the same address may be a UDP and a TCP peer.
type Remote = super::dispatch::Remote;
/// Addresses kept per session; a peer heard from more (a check from every interface, a
/// mobile client moving) forgets its oldest.
const MAX_REMOTES: usize = 8;

struct Session {
    id: SessionId,
    generation: u64,
    rtc: Rtc,
    role: Role,
    broadcast: Arc<Broadcast>,
    actor: ActorRef<SessionMsg>,
    liveness: Liveness,
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
    keys: Option<KeyCell>,
    rtcp: Option<RtpCipher>,
    /// Where str0m sends its DTLS and media (not its STUN answers, which go to every
    /// address that checks): the fast path's destination.
    media_remote: Option<Remote>,
    egress_packets: metrics::Counter,
    egress_bytes: metrics::Counter,
    ingest_packets: metrics::Counter,
    ingest_bytes: metrics::Counter,
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

    fn on_fast_path(&self) -> bool {
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

/// What woke the engine loop.
enum Wake {
    Command(Option<Command>),
    Readable(std::io::Result<()>),
    Inbound(Option<Inbound>),
    Tcp(TcpEvent),
    Frame(FrameToEngine),
    Timer,
}

/// Work found while draining a session's output, applied once the session is no longer borrowed.
enum Followup {
    ViewerTrackOpened(MediaKind),
    /// The viewer cannot decode (it lost the keyframe, or joined and never got one).
    ViewerNeedsKeyframe,
    /// New figures about an adaptive viewer's link: time to decide its rendition.
    Adapt,
}

struct Engine {
    /// Sends; also reads, unless the engine is a shard (`inbound`).
    socket: MediaSocket,
    /// A shard's datagrams, from the dispatcher that reads the shared socket
    /// (`super::dispatch`); `None`: this engine reads its socket itself.
    inbound: Option<mpsc::Receiver<Inbound>>,
    /// A shard tells the dispatcher which sessions ended.
    routes: Option<mpsc::UnboundedSender<RouteUpdate>>,
    /// This shard's index and its session count, read when placing sessions.
    shard: usize,
    placed: Arc<std::sync::atomic::AtomicUsize>,
    /// Datagrams of one receive batch, copied out so that sessions can be driven meanwhile.
    inbox: Vec<u8>,
    inbox_marks: Vec<(SocketAddr, usize)>,
    /// Our candidates' addresses: what a peer's datagrams are addressed to (with
    /// `--public-ip`, not the address the socket is bound to).
    udp_candidate: SocketAddr,
    tcp_candidate: Option<SocketAddr>,
    tcp: TcpPeers,
    /// When connections that no session claimed were last closed.
    tcp_swept: Instant,
    commands: mpsc::UnboundedSender<Command>,
    /// What the node asks; also taken before any batch of datagrams (`take_commands`).
    command_rx: mpsc::UnboundedReceiver<Command>,
    frames_tx: mpsc::Sender<FrameToEngine>,
    slots: Vec<Option<Session>>,
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
    handshake_timeout: Duration,
    /// Whether viewers may use the fast path (`WebRtcSettings::fast_path`).
    fast_path: bool,
    /// Scratch for a viewer's RTCP opened to read its NACKs, and the sequence numbers read.
    rtcp_plain: Vec<u8>,
    nacks: Vec<u16>,
    load: Arc<EngineLoad>,
    /// The worst frame queueing delay seen in the current window, the time spent working in
    /// it, and when it began.
    window_lag: Duration,
    window_busy: Duration,
    window_started: Instant,
    previous_busy_pct: u32,
}

/// The engine's transports: its UDP socket and, for ICE-TCP, the datagrams of its TCP
/// connections; each with the candidate address it is advertised as.
pub(crate) struct Transports {
    pub socket: MediaSocket,
    pub udp_candidate: SocketAddr,
    /// The TCP candidate, and the connections' events when this engine reads them itself.
    pub tcp: Option<(SocketAddr, Option<mpsc::Receiver<TcpEvent>>)>,
    /// For a shard: what the dispatcher hands it, and where it says which sessions ended.
    pub dispatched: Option<(mpsc::Receiver<Inbound>, mpsc::UnboundedSender<RouteUpdate>)>,
}

/// Which shard an engine is, and how many sessions it holds (shared with placement).
pub(crate) struct ShardPlace {
    pub index: usize,
    pub placed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Runs the engine until the node drops its command sender. Called on the engine's own
/// thread ([`super::WebRtcEngine::start`]).
pub(crate) async fn run(
    transports: Transports,
    commands: mpsc::UnboundedSender<Command>,
    command_rx: mpsc::UnboundedReceiver<Command>,
    handshake_timeout: Duration,
    fast_path: bool,
    load: Arc<EngineLoad>,
    place: ShardPlace,
) {
    let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
    let (tcp_candidate, tcp_rx) = match transports.tcp {
        Some((candidate, rx)) => (Some(candidate), rx),
        None => (None, None),
    };
    let (inbound, routes) = transports.dispatched.unzip();
    let engine = Engine {
        socket: transports.socket,
        inbound,
        routes,
        shard: place.index,
        placed: place.placed,
        inbox: Vec::new(),
        inbox_marks: Vec::new(),
        udp_candidate: transports.udp_candidate,
        tcp_candidate,
        tcp: TcpPeers::default(),
        tcp_swept: Instant::now(),
        commands,
        command_rx,
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
        handshake_timeout,
        fast_path,
        rtcp_plain: Vec::new(),
        nacks: Vec::new(),
        load,
        window_lag: Duration::ZERO,
        window_busy: Duration::ZERO,
        previous_busy_pct: 0,
        window_started: Instant::now(),
    };
    engine.run(frames_rx, tcp_rx).await;
}

impl Engine {
    async fn run(
        mut self,
        mut frames_rx: mpsc::Receiver<FrameToEngine>,
        mut tcp_rx: Option<mpsc::Receiver<TcpEvent>>,
    ) {
        loop {
            let next_timer = self
                .timers
                .peek()
                .map_or(Instant::now() + IDLE_TICK, |Reverse((at, _, _))| *at);
            let next_timer = self.next_pacing.map_or(next_timer, |at| at.min(next_timer));
            // Wait for one input; the work it causes is done after `woke`, so that the time
            // the loop spends working (not waiting) can be measured.
            let wake = tokio::select! {
                biased;
                command = self.command_rx.recv() => Wake::Command(command),
                readable = self.socket.readable(), if self.inbound.is_none() => Wake::Readable(readable),
                inbound = next_inbound(&mut self.inbound) => Wake::Inbound(inbound),
                Some(event) = next_tcp_event(&mut tcp_rx) => Wake::Tcp(event),
                Some(first) = frames_rx.recv() => Wake::Frame(first),
                _ = tokio::time::sleep_until(next_timer.into()) => Wake::Timer,
            };
            let woke = Instant::now();
            match wake {
                Wake::Command(Some(command)) => self.handle_command(command),
                Wake::Command(None) => break,
                // Take what is queued now: one wake-up serves a burst, and the socket buffer
                // empties before a long fan-out fills it. Then the frames that are waiting:
                // a busy socket (junk, a crowd's RTCP) must not starve them.
                Wake::Readable(Ok(())) => {
                    self.receive_batch();
                    while let Ok(frame) = frames_rx.try_recv() {
                        self.handle_frame(frame);
                    }
                }
                Wake::Readable(Err(e)) => tracing::debug!(error = %e, "UDP receive error"),
                Wake::Inbound(Some(first)) => {
                    self.take_commands();
                    self.handle_inbound(first);
                    self.receive_batch();
                    while let Ok(frame) = frames_rx.try_recv() {
                        self.handle_frame(frame);
                    }
                }
                Wake::Inbound(None) => break,
                Wake::Tcp(event) => {
                    self.take_commands();
                    self.handle_tcp(event);
                    if let Some(rx) = tcp_rx.as_mut() {
                        while let Ok(more) = rx.try_recv() {
                            self.handle_tcp(more);
                        }
                    }
                }
                Wake::Frame(first) => {
                    self.handle_frame(first);
                    // Drain what is already queued before going back to the socket: one
                    // wake-up serves a burst of frames.
                    while let Ok(more) = frames_rx.try_recv() {
                        self.handle_frame(more);
                    }
                }
                Wake::Timer => {}
            }
            self.fire_timers();
            self.tcp.retry_backlogged();
            if woke.duration_since(self.tcp_swept) >= IDLE_TICK {
                self.tcp.close_unclaimed(woke);
                self.tcp_swept = woke;
            }
            if self.next_pacing.is_some_and(|at| at <= Instant::now()) {
                self.pace_priming();
            }
            let now = Instant::now();
            self.window_busy += now.saturating_duration_since(woke);
            self.publish_load(now);
        }
        tracing::info!("WebRTC engine stopped");
    }

    /// Handles the commands waiting. Done before every batch of datagrams: a session's
    /// `Add` is queued before its answer leaves, so its first datagram must find it even when
    /// both arrived during one long turn of the loop (over ICE-TCP, a first datagram for no
    /// session closes the connection).
    fn take_commands(&mut self) {
        while let Ok(command) = self.command_rx.try_recv() {
            self.handle_command(command);
        }
    }

    /// Reads up to `RECEIVE_BATCH` datagrams (a shard: takes them from the dispatcher) and
    /// handles each.
    fn receive_batch(&mut self) {
        self.take_commands();
        if self.inbound.is_some() {
            for _ in 0..RECEIVE_BATCH {
                let Some(Ok(inbound)) = self.inbound.as_mut().map(|rx| rx.try_recv()) else {
                    return;
                };
                self.handle_inbound(inbound);
            }
            return;
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut marks = std::mem::take(&mut self.inbox_marks);
        let mut read = 0;
        while read < RECEIVE_BATCH {
            inbox.clear();
            marks.clear();
            let count = self.socket.try_receive(|datagram, source| {
                inbox.extend_from_slice(datagram);
                marks.push((source, datagram.len()));
            });
            if count == 0 {
                break;
            }
            read += count;
            let mut at = 0;
            for &(source, len) in &marks {
                self.handle_datagram(&inbox[at..at + len], (Protocol::Udp, source));
                at += len;
            }
        }
        self.inbox = inbox;
        self.inbox_marks = marks;
    }

    fn handle_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Datagram { from, bytes } => {
                self.handle_datagram(&bytes, from);
            }
            Inbound::Tcp(event) => self.handle_tcp(event),
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Add(new) => self.add_session(*new),
            Command::Close(id) => {
                if let Some(&slot) = self.by_id.get(&id) {
                    if let Some(session) = self.slots[slot].as_mut() {
                        // RTCP BYE and DTLS close_notify tell the peer at once that the
                        // session is over, instead of leaving it to time out.
                        let _ = session.rtc.close();
                        while let Ok(output) = session.rtc.poll_output() {
                            match output {
                                Output::Transmit(t) => {
                                    transmit(&mut self.socket, &mut self.tcp, &t);
                                }
                                Output::Timeout(_) => break,
                                Output::Event(_) => {}
                            }
                            if !session.rtc.is_alive() {
                                break;
                            }
                        }
                        self.socket.flush();
                        for &(proto, peer) in &session.remotes {
                            if proto == Protocol::Tcp {
                                self.tcp.flush(peer);
                            }
                        }
                    }
                    self.remove(slot, None);
                }
            }
            Command::RequestKeyframe(id) => {
                let Some(&slot) = self.by_id.get(&id) else {
                    return;
                };
                let Some(session) = self.slots[slot].as_mut() else {
                    return;
                };
                if let Role::Publisher { video, .. } = &session.role
                    && let Some(mut writer) = video.mid.and_then(|mid| session.rtc.writer(mid))
                    && let Err(e) = writer.request_keyframe(None, KeyframeRequestKind::Pli)
                {
                    tracing::debug!(session = %id, error = %e, "keyframe request not sent");
                }
                self.drive(slot);
            }
        }
    }

    fn add_session(&mut self, new: NewSession) {
        let stream = new.broadcast.id().to_string();
        let role = match new.kind {
            SessionKind::Publisher => Role::Publisher {
                video: InTrack::default(),
                audio: InTrack::default(),
            },
            SessionKind::Viewer => Role::Viewer {
                video: OutTrack::default(),
                audio: OutTrack::default(),
            },
        };
        self.generation += 1;
        let handshake_deadline = Instant::now() + self.handshake_timeout;
        let session = Session {
            id: new.id,
            generation: self.generation,
            rtc: new.rtc,
            role,
            broadcast: new.broadcast,
            actor: new.actor,
            liveness: new.liveness,
            rendition: new.rendition,
            abr: new.adaptive.then(|| ViewerAbr::new(Instant::now())),
            handshake_deadline,
            remotes: Vec::new(),
            deadline: Instant::now(),
            queued_deadline: None,
            unreported: Sent::default(),
            keys: new.keys.filter(|_| self.fast_path && !new.adaptive),
            rtcp: None,
            media_remote: None,
            egress_packets: metrics::counter!("cascade_egress_packets_total", "stream" => stream.clone()),
            egress_bytes: metrics::counter!("cascade_egress_bytes_total", "stream" => stream.clone()),
            ingest_packets: metrics::counter!("cascade_ingest_packets_total", "stream" => stream.clone()),
            ingest_bytes: metrics::counter!("cascade_ingest_bytes_total", "stream" => stream),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(session);
                slot
            }
            None => {
                self.slots.push(Some(session));
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
        self.drive(slot);
    }

    /// A connection opened, sent a datagram or closed.
    fn handle_tcp(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Opened {
                peer,
                writer,
                close,
            } => self.tcp.open(peer, writer, close),
            TcpEvent::Datagram { peer, bytes } => {
                let claimed = self.tcp.is_claimed(peer);
                if !claimed {
                    // Its session's `Add` may be waiting behind this turn's events.
                    self.take_commands();
                }
                if !self.handle_datagram(&bytes, (Protocol::Tcp, peer)) && !claimed {
                    tracing::debug!(%peer, shard = self.shard, "ICE-TCP connection closed: its first datagram is for no session here");
                    // Its first words were not ICE for one of our sessions: nothing it says
                    // later will be either.
                    self.tcp.close(peer);
                    return;
                }
                if !claimed {
                    self.tcp.claim(peer);
                }
            }
            TcpEvent::Closed { peer } => self.tcp.close(peer),
        }
    }

    /// Hands a datagram to the session it belongs to. Returns whether one took it.
    fn handle_datagram(&mut self, bytes: &[u8], from: Remote) -> bool {
        let (proto, source) = from;
        let Ok(contents) = bytes.try_into() else {
            metrics::counter!("cascade_udp_dropped_total", "reason" => "unparseable").increment(1);
            return false;
        };
        let destination = match proto {
            Protocol::Tcp => self.tcp_candidate.unwrap_or(self.udp_candidate),
            _ => self.udp_candidate,
        };
        let now = Instant::now();
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
        if session.on_fast_path() && is_rtcp(bytes) {
            let sent = answer_nacks(
                session,
                bytes,
                &mut self.socket,
                &mut self.rtcp_plain,
                &mut self.nacks,
            );
            session.unreported.add(sent);
        }
        if let Err(e) = session.rtc.handle_input(input) {
            tracing::debug!(session = %session.id, error = %e, "input rejected");
        }
        self.drive(slot);
        true
    }

    /// Closes the measuring window when it is over: admission reads the last one's figures.
    fn publish_load(&mut self, now: Instant) {
        let window = now.duration_since(self.window_started);
        if window >= LOAD_WINDOW {
            let busy = self.window_busy.as_secs_f64() / window.as_secs_f64();
            // A share in 0..=1 as a whole percentage: the cast cannot truncate.
            let busy_pct = (busy * 100.0).round().clamp(0.0, 100.0) as u32;
            // Only a busy second counts, not one busy window: a burst of joins (each a DTLS
            // handshake in this task) must not refuse the next viewers of an idle node.
            self.load.set(
                EngineFigures {
                    lag: self.window_lag,
                    busy_pct: busy_pct.min(self.previous_busy_pct),
                    busy_last_pct: busy_pct,
                    sessions: self.by_id.len(),
                },
                self.shard,
            );
            self.previous_busy_pct = busy_pct;
            self.window_lag = Duration::ZERO;
            self.window_busy = Duration::ZERO;
            self.window_started = now;
        }
    }

    fn handle_frame(&mut self, delivered: FrameToEngine) {
        let FrameToEngine {
            key,
            frame,
            enqueued,
        } = delivered;
        self.window_lag = self
            .window_lag
            .max(Instant::now().saturating_duration_since(enqueued));
        let Some(subscription) = self.subscriptions.get_mut(&key) else {
            return;
        };
        let Some(packetized) = subscription.packetize_live(&frame) else {
            return;
        };
        let kind = subscription.track.kind();
        let now = Instant::now();
        if packetized.keyframe && kind == MediaKind::Video && !subscription.joining.is_empty() {
            let joining = subscription.joining.clone();
            self.switch_at_group_start(&key, &packetized, &joining, now);
        }
        let Some(subscription) = self.subscriptions.get(&key) else {
            return;
        };
        // Indices are copied out so that sessions can be driven (and removed) in the loop.
        let viewers = subscription.viewers.clone();
        for (served, slot) in viewers.into_iter().enumerate() {
            if served > 0 && served % READ_SOCKET_EVERY_VIEWERS == 0 {
                self.receive_batch();
            }
            let Some(session) = self.slots[slot].as_mut() else {
                continue;
            };
            if kind == MediaKind::Video
                && let Role::Viewer { video, .. } = &mut session.role
                && !video.backlog.is_empty()
            {
                // Still priming: keep the order, the pacer sends it after the cached group.
                video.backlog.push_back((packetized.clone(), None));
                continue;
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
                match hold_for_switch(video, &packetized, target_live) {
                    Hold::Send => {}
                    Hold::Skip => continue,
                    Hold::GiveUp => {
                        self.finish_switch(slot, None);
                        continue;
                    }
                }
            }
            let sent = write_to_viewer(
                session,
                kind,
                &packetized,
                Timing::Live,
                now,
                &mut self.socket,
            );
            session.unreported.add(sent);
            self.drive(slot);
        }
    }

    /// A group of `key`'s track starts: viewers switching to it move now, unless the
    /// viewer already got a frame at or after that time (it then waits for the next group).
    fn switch_at_group_start(
        &mut self,
        key: &TrackKey,
        keyframe: &Arc<PacketizedFrame>,
        joining: &[usize],
        now: Instant,
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
            self.finish_switch(slot, Some(key));
            if let Some(session) = self.slots[slot].as_mut() {
                let sent = write_to_viewer(
                    session,
                    MediaKind::Video,
                    keyframe,
                    Timing::Live,
                    now,
                    &mut self.socket,
                );
                session.unreported.add(sent);
                self.drive(slot);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
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
            self.drive(slot);
        }
    }

    /// Drains a session's output until `Timeout`, sending datagrams and handling events.
    fn drive(&mut self, slot: usize) {
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
                        sent.add(transmit(&mut self.socket, &mut self.tcp, &t));
                    }
                    Ok(Output::Event(event)) => {
                        if let Some(reason) =
                            handle_event(session, event, &self.commands, &mut followups)
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
            sent.add(self.socket.flush());
            for &(proto, peer) in &session.remotes {
                if proto == Protocol::Tcp {
                    self.tcp.flush(peer);
                }
            }
            session.unreported.add(sent);
            if session.unreported.datagrams >= REPORT_EVERY_DATAGRAMS || closed.is_some() {
                session.report_egress();
            }
        }
        for followup in followups {
            match followup {
                Followup::ViewerTrackOpened(kind) => self.attach_viewer_track(slot, kind),
                Followup::ViewerNeedsKeyframe => self.prime_video(slot, false),
                Followup::Adapt => self.adapt(slot),
            }
        }
        if let Some(reason) = closed {
            self.remove(slot, Some(reason));
        }
    }

    /// A viewer's outgoing track is negotiated: subscribe (once per track) and prime it.
    fn attach_viewer_track(&mut self, slot: usize, kind: MediaKind) {
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
        self.subscription(key, track).viewers.push(slot);
        if kind == MediaKind::Video {
            self.prime_video(slot, true);
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
    fn adapt(&mut self, slot: usize) {
        let now = Instant::now();
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
            self.finish_switch(slot, None);
            return;
        }
        self.subscription((stream, target), track)
            .joining
            .push(slot);
    }

    /// Ends a pending switch. With `moved`, the viewer now gets that subscription's track;
    /// without, it stays on its track, resumed from the cached group if it was held.
    fn finish_switch(&mut self, slot: usize, moved: Option<&TrackKey>) {
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
                    self.prime_video(slot, true);
                }
            }
        }
    }

    /// Sends the cached group (keyframe first) to a viewer so that it can decode at once, and
    /// asks the publisher for a fresh keyframe (coalesced across viewers). A viewer that
    /// already got frames and still asks (its keyframe was lost: a dropped packet, or media
    /// that arrived before its DTLS handshake finished) is re-sent the group at most once per
    /// `REPRIME_INTERVAL`; timestamps keep increasing (`plan_priming`).
    fn prime_video(&mut self, slot: usize, joining: bool) {
        let Some(session) = self.slots[slot].as_mut() else {
            return;
        };
        let now = Instant::now();
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
                .is_some_and(|at| now.duration_since(at) < REPRIME_INTERVAL)
        {
            return;
        }
        let group = self
            .subscriptions
            .get(&key)
            .map(Subscription::packetized_group)
            .unwrap_or_default();
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
        self.pump_backlog(slot, now);
        if self.slots[slot].as_ref().is_some_and(|s| s.has_backlog())
            && !self.pacing.iter().any(|&(s, _)| s == slot)
        {
            self.pacing.push((slot, generation));
            self.next_pacing.get_or_insert(now + PRIMING_TICK);
        }
    }

    /// Serves every viewer whose priming backlog is not empty yet.
    fn pace_priming(&mut self) {
        let now = Instant::now();
        let mut pacing = std::mem::take(&mut self.pacing);
        pacing.retain(|&(slot, generation)| {
            if self.slots[slot]
                .as_ref()
                .is_none_or(|s| s.generation != generation)
            {
                return false;
            }
            self.pump_backlog(slot, now);
            self.slots[slot].as_ref().is_some_and(|s| s.has_backlog())
        });
        self.pacing = pacing;
        self.next_pacing = (!self.pacing.is_empty()).then(|| now + PRIMING_TICK);
    }

    /// Writes backlog frames of one viewer up to this tick's byte budget.
    fn pump_backlog(&mut self, slot: usize, now: Instant) {
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
                &mut self.socket,
            );
            session.unreported.add(sent);
            // Drain after every frame: str0m's send ring (1000 video packets) must not wrap.
            self.drive(slot);
        }
    }

    /// Ends a session whose ICE and DTLS did not complete in time.
    fn end_unconnected(&mut self, slot: usize) {
        let Some(session) = self.slots[slot].as_ref() else {
            return;
        };
        let limit = self.handshake_timeout;
        tracing::info!(
            session = %session.id,
            stream = %session.broadcast.id(),
            heard_from_peer = !session.remotes.is_empty(),
            timeout_secs = limit.as_secs_f64(),
            "ICE and DTLS did not complete in time; ending the session (a client that cannot reach the media address?)"
        );
        let _ = session.actor.cast(SessionMsg::HandshakeTimedOut(limit));
        self.remove(slot, None);
    }

    fn remove(&mut self, slot: usize, reason: Option<String>) {
        let Some(mut session) = self.slots[slot].take() else {
            return;
        };
        session.report_egress();
        self.free.push(slot);
        self.by_id.remove(&session.id);
        self.placed
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.remove(&ufrag);
        if let Some(routes) = &self.routes {
            let _ = routes.send(RouteUpdate::Forget { ufrag });
        }
        for remote in &session.remotes {
            self.by_addr.remove(remote);
            if let (Protocol::Tcp, peer) = *remote {
                // A vanished peer may never close it: the session's end does.
                self.tcp.close(peer);
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
            Role::Publisher { .. } => {
                for kind in [MediaKind::Video, MediaKind::Audio] {
                    session.broadcast.source(kind).end_source();
                }
            }
        }
        if let Some(reason) = reason {
            tracing::info!(session = %session.id, %reason, "WebRTC session closed");
            let _ = session.actor.cast(SessionMsg::TransportClosed(reason));
        }
    }
}

/// What a viewer with a pending rendition switch does with a frame of its current track.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
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
fn hold_for_switch(
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

/// Queues one of str0m's datagrams on the transport it names.
fn transmit(socket: &mut MediaSocket, tcp: &mut TcpPeers, t: &Transmit) -> Sent {
    match t.proto {
        Protocol::Tcp => tcp.queue(t.destination, &t.contents),
        _ => socket.queue(t.destination, &t.contents),
    }
}

/// The next datagram from the dispatcher, or never when the engine reads its own socket.
async fn next_inbound(rx: &mut Option<mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next event of the TCP side, or never when the engine has no TCP port.
async fn next_tcp_event(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Handles one event of a session. Returns a reason when the session must end.
fn handle_event(
    session: &mut Session,
    event: Event,
    commands: &mpsc::UnboundedSender<Command>,
    followups: &mut Vec<Followup>,
) -> Option<String> {
    match event {
        Event::Connected => session.liveness.set_connected(),
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            return Some("ICE disconnected (no connectivity checks from the peer)".into());
        }
        Event::MediaAdded(added) => {
            let kind = match added.kind {
                str0m::media::MediaKind::Audio => MediaKind::Audio,
                str0m::media::MediaKind::Video => MediaKind::Video,
            };
            match &mut session.role {
                Role::Publisher { video, audio } => {
                    let track = if kind == MediaKind::Video {
                        video
                    } else {
                        audio
                    };
                    track.mid = Some(added.mid);
                }
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
            let Role::Publisher { video, audio } = &mut session.role else {
                return None;
            };
            let (in_track, kind) = if Some(data.mid) == video.mid {
                (video, MediaKind::Video)
            } else if Some(data.mid) == audio.mid {
                (audio, MediaKind::Audio)
            } else {
                return None;
            };
            let codec = match data.params.spec().codec {
                RtcCodec::H264 => Codec::H264,
                RtcCodec::Vp8 => Codec::Vp8,
                RtcCodec::Opus => Codec::Opus,
                _ => return None,
            };
            let track = session.broadcast.source(kind);
            if in_track.codec != Some(codec) {
                in_track.codec = Some(codec);
                let upstream: Option<crate::broadcast::KeyframeUpstream> =
                    (kind == MediaKind::Video).then(|| {
                        let commands = commands.clone();
                        let id = session.id;
                        Arc::new(move || {
                            let _ = commands.send(Command::RequestKeyframe(id));
                        }) as crate::broadcast::KeyframeUpstream
                    });
                track.begin_source(TrackInfo::new(source_track(kind), codec), upstream);
                if kind == MediaKind::Video {
                    // Start every new publisher with a keyframe so that waiting viewers resume.
                    let _ = commands.send(Command::RequestKeyframe(session.id));
                }
            }
            session.ingest_packets.increment(1);
            session.ingest_bytes.increment(data.data.len() as u64);
            if !data.contiguous && kind == MediaKind::Video {
                let _ = commands.send(Command::RequestKeyframe(session.id));
            }
            track.publish_rtp(
                data.time.numer() as u32,
                data.network_time,
                data.is_keyframe(),
                data.data,
            );
        }
        Event::KeyframeRequest(_) => {
            if matches!(session.role, Role::Viewer { .. }) {
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
            if let (Some(abr), Role::Viewer { video, .. }) = (session.abr.as_mut(), &session.role)
                && video.mid == Some(stats.mid)
            {
                abr.on_reports(stats.loss, stats.rtt);
                followups.push(Followup::Adapt);
            }
        }
        _ => {}
    }
    None
}

/// When a frame goes to a viewer.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// As it arrives.
    Live,
    /// Later, from the viewer's priming backlog: with the timestamp the priming plan gave
    /// it (a cached frame), or `None` (a live frame that queued behind them).
    Backlog(Option<u64>),
}

/// Writes one frame to a viewer's outgoing track, if that track is open and has started.
/// On the fast path its packets are queued on `socket` here; what str0m sends leaves with
/// the next `drive`.
fn write_to_viewer(
    session: &mut Session,
    kind: MediaKind,
    frame: &Arc<PacketizedFrame>,
    timing: Timing,
    now: Instant,
    socket: &mut MediaSocket,
) -> Sent {
    let Role::Viewer { video, audio } = &mut session.role else {
        return Sent::default();
    };
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
        let (flushed, written) = socket.queue_with(to, len, |batch| {
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
        let _ = session.rtc.handle_input(Input::Timeout(Instant::now()));
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
    let ssrc = *rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
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
fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

/// Reads a fast-path viewer's SRTCP for NACKs and resends what it asks for from the shared
/// payloads, with the original sequence numbers. The datagram then goes to str0m as ever
/// (which resends the anchors it sent).
fn answer_nacks(
    session: &mut Session,
    datagram: &[u8],
    socket: &mut MediaSocket,
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
            let (flushed, written) = socket.queue_with(to, len, |batch| {
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
