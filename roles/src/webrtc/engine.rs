//! The engine's driver: the thin async loop around the sans-IO [`super::engine_core`]. It owns the
//! transports (the UDP socket, or a shard's queue from the dispatcher, [`super::dispatch`];
//! the ICE-TCP connections, [`super::tcp`]), reads the clock, waits for the next input and
//! hands it to the core with `now`; what the core writes leaves in GSO runs, many runs per
//! `sendmmsg`, at the latest when the turn ends ([`super::udp`]). It tells session actors and the dispatcher which sessions ended, and
//! measures the engine's load for admission.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use str0m::net::{Protocol, Transmit};
use tokio::sync::mpsc;

use super::dispatch::{Inbound, RouteUpdate};
use super::engine_core::{
    Command, CoreSettings, Egress, Ended, EngineCore, FRAME_QUEUE, FrameToEngine, Remote,
};
use super::tcp::{TcpEvent, TcpPeers};
use super::udp::{MediaSocket, Sent};
use crate::admission::{EngineFigures, EngineLoad};
use crate::session::{SessionId, SessionMsg};

/// Upper bound on how long the loop sleeps when no session has an earlier timeout.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Datagrams read per wake-up before frames and timers get their turn.
const RECEIVE_BATCH: usize = 256;
/// The engine's load (the worst queueing delay of a frame, the share of time spent working)
/// is published once per window.
const LOAD_WINDOW: Duration = Duration::from_millis(500);

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

/// Where the core's datagrams leave: the socket's GSO batches and the ICE-TCP connections.
struct Transport {
    socket: MediaSocket,
    tcp: TcpPeers,
}

impl Egress for Transport {
    fn send(&mut self, t: &Transmit) -> Sent {
        match t.proto {
            Protocol::Tcp => self.tcp.queue(t.destination, &t.contents),
            _ => self.socket.queue(t.destination, &t.contents),
        }
    }

    fn send_with<E>(
        &mut self,
        to: SocketAddr,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> (Sent, Result<(), E>) {
        self.socket.queue_with(to, len, write)
    }

    /// TCP peers are written now; UDP runs wait for the end of the loop's turn (or a full
    /// `sendmmsg`), so that runs to many viewers leave in one system call.
    fn flush(&mut self, remotes: &[Remote]) {
        for &(proto, peer) in remotes {
            if proto == Protocol::Tcp {
                self.tcp.flush(peer);
            }
        }
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

struct Engine {
    core: EngineCore,
    transport: Transport,
    /// A shard's datagrams, from the dispatcher that reads the shared socket
    /// (`super::dispatch`); `None`: this engine reads its socket itself.
    inbound: Option<mpsc::Receiver<Inbound>>,
    /// A shard tells the dispatcher which sessions ended.
    routes: Option<mpsc::UnboundedSender<RouteUpdate>>,
    /// This shard's index and its session count, read when placing sessions.
    shard: usize,
    placed: Arc<std::sync::atomic::AtomicUsize>,
    /// Each session's actor: told when the core ends its session.
    actors: HashMap<SessionId, ActorRef<SessionMsg>>,
    /// Datagrams of one receive batch, copied out so that sessions can be driven meanwhile.
    inbox: Vec<u8>,
    inbox_marks: Vec<(SocketAddr, usize)>,
    /// When connections that no session claimed were last closed.
    tcp_swept: Instant,
    /// What the node asks; also taken before any batch of datagrams (`take_commands`).
    command_rx: mpsc::UnboundedReceiver<Command>,
    frames_rx: mpsc::Receiver<FrameToEngine>,
    load: Arc<EngineLoad>,
    /// The worst frame queueing delay seen in the current window, the time spent working in
    /// it, and when it began.
    window_lag: Duration,
    window_busy: Duration,
    window_started: Instant,
    previous_busy_pct: u32,
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
    let settings = CoreSettings {
        udp_candidate: transports.udp_candidate,
        tcp_candidate,
        handshake_timeout,
        fast_path,
    };
    let engine = Engine {
        core: EngineCore::new(settings, commands, frames_tx),
        transport: Transport {
            socket: transports.socket,
            tcp: TcpPeers::default(),
        },
        inbound,
        routes,
        shard: place.index,
        placed: place.placed,
        actors: HashMap::new(),
        inbox: Vec::new(),
        inbox_marks: Vec::new(),
        tcp_swept: Instant::now(),
        command_rx,
        frames_rx,
        load,
        window_lag: Duration::ZERO,
        window_busy: Duration::ZERO,
        previous_busy_pct: 0,
        window_started: Instant::now(),
    };
    engine.run(tcp_rx).await;
}

impl Engine {
    async fn run(mut self, mut tcp_rx: Option<mpsc::Receiver<TcpEvent>>) {
        loop {
            let next_timer = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + IDLE_TICK);
            // Wait for one input; the work it causes is done after `woke`, so that the time
            // the loop spends working (not waiting) can be measured.
            let wake = tokio::select! {
                biased;
                command = self.command_rx.recv() => Wake::Command(command),
                readable = self.transport.socket.readable(), if self.inbound.is_none() => Wake::Readable(readable),
                inbound = next_inbound(&mut self.inbound) => Wake::Inbound(inbound),
                Some(event) = next_tcp_event(&mut tcp_rx) => Wake::Tcp(event),
                Some(first) = self.frames_rx.recv() => Wake::Frame(first),
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
                    self.take_frames();
                }
                Wake::Readable(Err(e)) => tracing::debug!(error = %e, "UDP receive error"),
                Wake::Inbound(Some(first)) => {
                    self.take_commands();
                    self.handle_inbound(first);
                    self.receive_batch();
                    self.take_frames();
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
                    self.take_frames();
                }
                Wake::Timer => {}
            }
            self.core
                .handle_timeout(Instant::now(), &mut self.transport);
            self.after_core();
            self.transport.socket.flush();
            self.transport.tcp.retry_backlogged();
            if woke.duration_since(self.tcp_swept) >= IDLE_TICK {
                self.transport.tcp.close_unclaimed(woke);
                self.tcp_swept = woke;
            }
            let now = Instant::now();
            self.window_busy += now.saturating_duration_since(woke);
            self.publish_load(now);
        }
        tracing::info!("WebRTC engine stopped");
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Add(session, actor) => {
                self.actors.insert(session.id, actor);
                self.core.add_session(*session, now, &mut self.transport);
            }
            Command::Close(id) => self.core.close(id, &mut self.transport),
            Command::RequestKeyframe(id) => {
                self.core.request_keyframe(id, now, &mut self.transport)
            }
        }
        self.after_core();
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

    /// Handles the frames already queued.
    fn take_frames(&mut self) {
        while let Ok(frame) = self.frames_rx.try_recv() {
            self.handle_frame(frame);
        }
    }

    /// Fans a frame out; between the core's slices of viewers, the socket is read.
    fn handle_frame(&mut self, delivered: FrameToEngine) {
        let now = Instant::now();
        self.window_lag = self
            .window_lag
            .max(now.saturating_duration_since(delivered.enqueued));
        self.core
            .handle_frame(delivered.key, &delivered.frame, now, &mut self.transport);
        while self.core.fan_out_pending() {
            self.receive_batch();
            self.core
                .resume_fan_out(Instant::now(), &mut self.transport);
        }
        self.after_core();
    }

    /// Reads up to `RECEIVE_BATCH` datagrams (a shard: takes them from the dispatcher) and
    /// hands each to the core.
    fn receive_batch(&mut self) {
        self.take_commands();
        if self.inbound.is_some() {
            for _ in 0..RECEIVE_BATCH {
                let Some(Ok(inbound)) = self.inbound.as_mut().map(|rx| rx.try_recv()) else {
                    break;
                };
                self.handle_inbound(inbound);
            }
            self.after_core();
            return;
        }
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut marks = std::mem::take(&mut self.inbox_marks);
        let mut read = 0;
        while read < RECEIVE_BATCH {
            inbox.clear();
            marks.clear();
            let count = self.transport.socket.try_receive(|datagram, source| {
                inbox.extend_from_slice(datagram);
                marks.push((source, datagram.len()));
            });
            if count == 0 {
                break;
            }
            read += count;
            let now = Instant::now();
            let mut at = 0;
            for &(source, len) in &marks {
                self.core.handle_datagram(
                    &inbox[at..at + len],
                    (Protocol::Udp, source),
                    now,
                    &mut self.transport,
                );
                at += len;
            }
        }
        self.inbox = inbox;
        self.inbox_marks = marks;
        self.after_core();
    }

    fn handle_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Datagram { from, bytes } => {
                self.core
                    .handle_datagram(&bytes, from, Instant::now(), &mut self.transport);
            }
            Inbound::Tcp(event) => self.handle_tcp(event),
        }
    }

    /// A connection opened, sent a datagram or closed.
    fn handle_tcp(&mut self, event: TcpEvent) {
        match event {
            TcpEvent::Opened {
                peer,
                writer,
                close,
            } => self.transport.tcp.open(peer, writer, close),
            TcpEvent::Datagram { peer, bytes } => {
                let claimed = self.transport.tcp.is_claimed(peer);
                if !claimed {
                    // Its session's `Add` may be waiting behind this turn's events.
                    self.take_commands();
                }
                let taken = self.core.handle_datagram(
                    &bytes,
                    (Protocol::Tcp, peer),
                    Instant::now(),
                    &mut self.transport,
                );
                if !taken && !claimed {
                    tracing::debug!(%peer, shard = self.shard, "ICE-TCP connection closed: its first datagram is for no session here");
                    // Its first words were not ICE for one of our sessions: nothing it says
                    // later will be either.
                    self.transport.tcp.close(peer);
                    return;
                }
                if !claimed {
                    self.transport.tcp.claim(peer);
                }
                self.after_core();
            }
            TcpEvent::Closed { peer } => self.transport.tcp.close(peer),
        }
    }

    /// Undoes, outside the core, what belonged to the sessions it removed: placement's
    /// count, the dispatcher's route, TCP connections; and tells their actors why.
    fn after_core(&mut self) {
        for removed in self.core.take_removed() {
            self.placed
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(routes) = &self.routes {
                let _ = routes.send(RouteUpdate::Forget {
                    ufrag: removed.ufrag,
                });
            }
            for peer in removed.tcp_peers {
                self.transport.tcp.close(peer);
            }
            let actor = self.actors.remove(&removed.id);
            if let (Some(actor), Some(reason)) = (actor, removed.reason) {
                let _ = actor.cast(match reason {
                    Ended::HandshakeTimedOut(limit) => SessionMsg::HandshakeTimedOut(limit),
                    Ended::TransportClosed(reason) => SessionMsg::TransportClosed(reason),
                });
            }
        }
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
                    sessions: self.core.sessions(),
                },
                self.shard,
            );
            self.previous_busy_pct = busy_pct;
            self.window_lag = Duration::ZERO;
            self.window_busy = Duration::ZERO;
            self.window_started = now;
        }
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
