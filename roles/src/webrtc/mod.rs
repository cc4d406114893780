//! WebRTC for both directions of a node: WHIP ingest and WHEP playback, each on an engine
//! with one UDP socket and one TCP port (ICE-TCP, [`tcp`]).
//!
//! [`WebRtcEngine`] is the cheap, cloneable handle used by HTTP handlers and actors. It builds
//! an ICE-lite `Rtc` for each accepted offer ([`WebRtcEngine::answer`]) and hands it to the
//! engine task ([`engine`]), which owns the socket and every session's `Rtc`.

mod dispatch;
pub mod dtls_keys;
mod engine;
pub(crate) mod engine_core;
pub mod offer;
pub mod srtp;
mod tcp;
#[cfg(test)]
pub(crate) mod test_peers;
pub(crate) mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::crypto::dtls::DtlsCert;
use str0m::net::TcpType;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::sync::mpsc;

use crate::RoleError;
use crate::admission::{EngineFigures, EngineLoad};
use crate::session::{Admission, Client, Liveness, SessionId, SessionKind};
use dtls_keys::KeyCell;

pub(crate) use engine_core::Command;
/// The most GSO runs one `sendmmsg` takes (`--webrtc-send-batch`).
pub const SEND_BATCH_MAX: usize = udp::SEND_RUNS;

/// Frames split over more RTP packets than this are dropped by str0m's depacketizer; 720p and
/// 1080p keyframes often take 50 to 200.
const MAX_FRAME_PACKETS: usize = 500;
/// Sent video packets each viewer keeps for retransmission.
const VIEWER_SEND_BUFFER: usize = 256;
/// Socket buffers asked for on the media socket. Every session shares it, so a default
/// ~200 KiB receive buffer overflows while one frame is fanned out to hundreds of viewers;
/// the kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct WebRtcSettings {
    /// The engine's UDP socket.
    pub bind: SocketAddr,
    /// The engine's TCP port for clients that cannot use UDP (a passive ICE-TCP candidate);
    /// `None` offers UDP only.
    pub tcp_bind: Option<SocketAddr>,
    /// What it serves, for logs: `"viewers"` or `"publishers"`.
    pub serves: &'static str,
    /// The address advertised in ICE candidates (defaults to the bound one).
    pub public_ip: Option<IpAddr>,
    /// A session whose ICE and DTLS have not completed this long after its offer was
    /// answered is ended (`handshake_timeout`), freeing its stream id.
    pub handshake_timeout: Duration,
    /// Viewers whose DTLS negotiated AES-GCM, over UDP and not adaptive, get their media on
    /// the per-viewer fast path (`edge::fast_path`) rather than through str0m's per-packet
    /// path. `false` is the path before issue 14, for comparison in benchmarks.
    pub fast_path: bool,
    /// GSO runs per `sendmmsg` (1..=[`SEND_BATCH_MAX`]); 1 sends each run on its own.
    pub send_batch: usize,
    /// Shards: engine threads, each with its own sessions, behind the one socket
    /// (`dispatch`); sessions go to the shard with the fewest. At least 1.
    pub threads: usize,
}

/// One shard of the engine, as placement sees it.
struct Shard {
    commands: mpsc::UnboundedSender<Command>,
    /// Sessions on it: added here when one is placed, taken off by the shard when it ends.
    placed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Handle to the engine's shards.
#[derive(Clone)]
pub struct WebRtcEngine {
    shards: Arc<[Shard]>,
    /// With more than one shard: the dispatcher's routing table, told of each placement.
    routes: Option<mpsc::UnboundedSender<dispatch::RouteUpdate>>,
    advertised: Candidates,
    /// One DTLS certificate for every session of this node: generating a key pair per
    /// session would add to every join (each session still negotiates its own keys).
    certificate: DtlsCert,
    load: Arc<EngineLoad>,
}

impl WebRtcEngine {
    /// Binds the UDP socket (and the ICE-TCP port) and starts the engine on a thread of its
    /// own. Its own thread, not a task of the node's runtime: a burst of HTTP requests, joins
    /// or actor work on the node's runtime must never hold a frame back (measured: 100
    /// viewers joining at once stalled every viewer's video for > 100 ms through the
    /// publishers' engine while both engines were tasks on a one-core node).
    pub async fn start(settings: WebRtcSettings) -> Result<Self, RoleError> {
        let provider = str0m::crypto::from_feature_flags();
        let certificate = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| RoleError::Unavailable("cannot generate a DTLS certificate".into()))?;
        provider.install_process_default();
        let socket = bind_media_socket(settings.bind).map_err(|source| RoleError::Bind {
            addr: settings.bind,
            source,
        })?;
        let local = socket.local_addr().map_err(|source| RoleError::Bind {
            addr: settings.bind,
            source,
        })?;
        let advertise = |bound: SocketAddr| {
            SocketAddr::new(settings.public_ip.unwrap_or(bound.ip()), bound.port())
        };
        let udp = advertise(local);
        let mut tcp = match settings.tcp_bind {
            None => None,
            Some(bind) => {
                let bound_listener = || {
                    let listener = std::net::TcpListener::bind(bind)?;
                    listener.set_nonblocking(true)?;
                    let bound = listener.local_addr()?;
                    Ok::<_, std::io::Error>((listener, bound))
                };
                let (listener, bound) =
                    bound_listener().map_err(|source| RoleError::Bind { addr: bind, source })?;
                tracing::info!(local = %bound, advertised = %advertise(bound), serves = settings.serves, "ICE-TCP port listening");
                Some((listener, advertise(bound)))
            }
        };
        let advertised = Candidates {
            udp,
            tcp: tcp.as_ref().map(|(_, addr)| *addr),
        };
        let threads = settings.threads.max(1);
        let load = Arc::new(EngineLoad::with_shards(settings.serves, threads));
        let serves = settings.serves;
        let udp_candidate = udp;
        let tcp_candidate = tcp.as_ref().map(|(_, addr)| *addr);
        let engine_thread = |name: String, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(body)
                .map(|_| ())
                .map_err(|e| RoleError::Unavailable(format!("cannot start the WebRTC engine: {e}")))
        };
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| RoleError::Unavailable(format!("cannot start the WebRTC engine: {e}")))
        };
        let mut shards = Vec::with_capacity(threads);
        let mut inbound_txs = Vec::with_capacity(threads);
        let (routes, routes_rx) = if threads > 1 {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        for index in 0..threads {
            let (commands, command_rx) = mpsc::unbounded_channel();
            let placed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            shards.push(Shard {
                commands: commands.clone(),
                placed: placed.clone(),
            });
            // One shard reads its socket (and ICE-TCP) itself; several share the socket,
            // which the dispatcher reads.
            let (single, dispatched) = if threads == 1 {
                let socket = socket.try_clone().map_err(|source| RoleError::Bind {
                    addr: settings.bind,
                    source,
                })?;
                (Some((socket, tcp.take())), None)
            } else {
                let (tx, rx) = mpsc::channel(dispatch::SHARD_QUEUE);
                inbound_txs.push(tx);
                let routes = routes.clone().expect("routes with shards");
                (None, Some((rx, routes)))
            };
            let send_socket = socket.try_clone().map_err(|source| RoleError::Bind {
                addr: settings.bind,
                source,
            })?;
            let handshake_timeout = settings.handshake_timeout;
            let fast_path = settings.fast_path;
            let send_batch = settings.send_batch;
            let load = load.clone();
            let runtime = runtime()?;
            engine_thread(
                format!("webrtc-{serves}-{index}"),
                Box::new(move || {
                    runtime.block_on(async move {
                        // Sockets are registered with the runtime that polls them: this one.
                        let transports = match single {
                            Some((socket, tcp)) => engine_transports(socket, udp_candidate, tcp),
                            None => shard_transports(send_socket, udp_candidate, tcp_candidate, dispatched),
                        };
                        let transports = match transports {
                            Ok(mut transports) => {
                                transports.socket.set_send_batch(send_batch);
                                transports
                            }
                            Err(e) => {
                                tracing::error!(error = %e, serves, "the WebRTC engine cannot use its sockets");
                                return;
                            }
                        };
                        let place = engine::ShardPlace { index, placed };
                        engine::run(
                            transports,
                            commands,
                            command_rx,
                            handshake_timeout,
                            fast_path,
                            load,
                            place,
                        )
                        .await;
                    });
                }),
            )?;
        }
        if let Some(routes_rx) = routes_rx {
            let runtime = runtime()?;
            let tcp = tcp.take();
            engine_thread(
                format!("webrtc-{serves}-dispatch"),
                Box::new(move || {
                    runtime.block_on(async move {
                        let socket = udp::MediaSocket::new(socket);
                        let socket = match socket {
                            Ok(socket) => socket,
                            Err(e) => {
                                tracing::error!(error = %e, serves, "the WebRTC dispatcher cannot use its socket");
                                return;
                            }
                        };
                        let tcp = match tcp.map(|(listener, _)| tcp_events(listener)).transpose() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::error!(error = %e, serves, "the WebRTC dispatcher cannot use its TCP port");
                                return;
                            }
                        };
                        dispatch::run(socket, tcp, routes_rx, inbound_txs).await;
                    });
                }),
            )?;
        }
        tracing::info!(%local, advertised = %udp, serves, shards = threads, "WebRTC media socket bound");
        Ok(Self {
            shards: shards.into(),
            routes,
            advertised,
            certificate,
            load,
        })
    }

    /// How loaded the engine was over its last window (lag and busy share).
    pub fn load(&self) -> EngineFigures {
        self.load.get()
    }

    /// The engine's load figures, shared: what admission reads.
    pub fn load_handle(&self) -> Arc<EngineLoad> {
        self.load.clone()
    }

    /// The UDP address put in ICE candidates.
    pub fn advertised_addr(&self) -> SocketAddr {
        self.advertised.udp
    }

    /// The TCP address put in the passive ICE-TCP candidate, if the engine has one.
    pub fn advertised_tcp_addr(&self) -> Option<SocketAddr> {
        self.advertised.tcp
    }

    /// Parses and checks an SDP offer and builds the `Rtc` that answers it.
    pub fn answer(
        &self,
        offer_sdp: &str,
        kind: SessionKind,
        adaptive: bool,
    ) -> Result<Negotiated, RoleError> {
        negotiate(
            offer_sdp,
            kind,
            adaptive,
            &self.certificate,
            self.advertised,
            Instant::now(),
        )
    }
}

/// A session's `Rtc`, built to answer an offer, and the answer.
pub struct Negotiated {
    pub rtc: Rtc,
    /// Where a viewer's SRTP keys arrive once its DTLS handshake completes (`dtls_keys`),
    /// for the fast path; `None` for a publisher.
    pub keys: Option<KeyCell>,
    pub answer_sdp: String,
}

/// The addresses an engine's sessions are offered as ICE candidates.
#[derive(Debug, Clone, Copy)]
pub struct Candidates {
    /// The host candidate on UDP.
    pub udp: SocketAddr,
    /// The passive host candidate on TCP (RFC 6544), for networks that block UDP.
    pub tcp: Option<SocketAddr>,
}

/// Everything a client's offer goes through before a session exists: our codec check,
/// str0m's SDP parser and its negotiation into an ICE-lite `Rtc` with our candidates.
/// Viewer sessions leave out transport-wide congestion control unless `adaptive`: only a
/// viewer moved between renditions by its bandwidth estimate (`edge::abr`) needs the
/// estimate, and hundreds of viewers' feedback would otherwise only load the shared socket.
pub fn negotiate(
    offer_sdp: &str,
    kind: SessionKind,
    adaptive: bool,
    certificate: &DtlsCert,
    advertised: Candidates,
    now: Instant,
) -> Result<Negotiated, RoleError> {
    offer::check_codecs(offer_sdp)?;
    let offer =
        SdpOffer::from_sdp_string(offer_sdp).map_err(|e| RoleError::BadOffer(e.to_string()))?;
    let mut config = RtcConfig::new();
    if kind == SessionKind::Viewer {
        let mut extensions = ExtensionMap::empty();
        for (id, extension) in [
            (1, Extension::AudioLevel),
            (2, Extension::AbsoluteSendTime),
            (4, Extension::RtpMid),
            (10, Extension::RtpStreamId),
            (11, Extension::RepairedRtpStreamId),
            (13, Extension::VideoOrientation),
        ] {
            extensions.set(id, extension);
        }
        if adaptive {
            extensions.set(3, Extension::TransportSequenceNumber);
            config =
                config.enable_bwe(Some(Bitrate::kbps(crate::edge::abr::INITIAL_ESTIMATE_KBPS)));
        }
        // Receiver reports' loss, once a second (not per packet), for the adaptive bitrate
        // and every viewer's session summary (`SessionQuality`).
        config = config.set_stats_interval(Some(Duration::from_secs(1)));
        // str0m keeps this many sent packets per viewer for NACK resends (default 1000);
        // 256 is ~1.7 s of a 1.5 Mbit/s stream. They share the frame's payloads: RTP mode
        // lets the engine packetize each frame once for every viewer (`engine`).
        config = config
            .set_extension_map(extensions)
            .set_send_buffer_video(VIEWER_SEND_BUFFER)
            .set_rtp_mode(true);
    }
    let config = config.set_ice_lite(true).clear_codecs();
    // str0m answers with the first of its codecs the offer has: enable them in the offer's order.
    let config = if offer::prefers_vp8(offer_sdp) {
        config.enable_vp8(true).enable_h264(true)
    } else {
        config.enable_h264(true).enable_vp8(true)
    };
    let config = config
        .enable_opus(true, false)
        .set_reordering_size_video(MAX_FRAME_PACKETS)
        .set_dtls_cert(certificate.clone());
    let (mut rtc, keys) = match kind {
        SessionKind::Viewer => {
            let (rtc, keys) = dtls_keys::build(config, now);
            (rtc, Some(keys))
        }
        SessionKind::Publisher => (config.build(now), None),
    };
    let bad_address = |e| RoleError::Unavailable(format!("bad ICE candidate address: {e}"));
    let udp = Candidate::host(advertised.udp, "udp").map_err(bad_address)?;
    rtc.add_local_candidate(udp);
    if let Some(addr) = advertised.tcp {
        // str0m gives TCP host candidates a lower priority than UDP ones: a client that can
        // use both picks UDP.
        let tcp = Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(TcpType::Passive)
            .build()
            .map_err(bad_address)?;
        rtc.add_local_candidate(tcp);
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| RoleError::BadOffer(e.to_string()))?;
    Ok(Negotiated {
        rtc,
        keys,
        answer_sdp: answer.to_sdp_string(),
    })
}

/// The SDP fuzz target's body (`protocol/fuzz`, target `sdp_offer`): any bytes as an offer,
/// through [`negotiate`] for both kinds of session. An error or an answer, never a panic.
pub fn fuzz_offer(data: &[u8]) {
    static CERTIFICATE: std::sync::OnceLock<Option<DtlsCert>> = std::sync::OnceLock::new();
    let Some(certificate) = CERTIFICATE.get_or_init(|| {
        let provider = str0m::crypto::from_feature_flags();
        let certificate = provider.dtls_provider.generate_certificate();
        provider.install_process_default();
        certificate
    }) else {
        return;
    };
    let offer = String::from_utf8_lossy(data);
    let advertised = Candidates {
        udp: SocketAddr::from(([127, 0, 0, 1], 8443)),
        tcp: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
    };
    for (kind, adaptive) in [
        (SessionKind::Publisher, false),
        (SessionKind::Viewer, false),
        (SessionKind::Viewer, true),
    ] {
        let _ = negotiate(
            &offer,
            kind,
            adaptive,
            certificate,
            advertised,
            Instant::now(),
        );
    }
}

impl WebRtcEngine {
    /// Hands a negotiated session to the shard with the fewest sessions.
    pub(crate) fn add_session(
        &self,
        mut session: engine_core::NewSession,
        actor: ractor::ActorRef<crate::session::SessionMsg>,
    ) -> Result<(), RoleError> {
        use std::sync::atomic::Ordering;
        let (index, shard) = self
            .shards
            .iter()
            .enumerate()
            .min_by_key(|(_, shard)| shard.placed.load(Ordering::Relaxed))
            .ok_or_else(|| RoleError::Unavailable("WebRTC engine stopped".into()))?;
        if let Some(routes) = &self.routes {
            // Before the answer leaves: the session's first check must find its shard.
            let ufrag = session.rtc.direct_api().local_ice_credentials().ufrag;
            let _ = routes.send(dispatch::RouteUpdate::Register {
                ufrag,
                shard: index,
            });
        }
        shard.placed.fetch_add(1, Ordering::Relaxed);
        shard
            .commands
            .send(Command::Add(Box::new(session), actor))
            .map_err(|_| RoleError::Unavailable("WebRTC engine stopped".into()))
    }

    /// Ends a session's media (idempotent): every shard is told, the one holding it acts.
    pub fn close(&self, id: SessionId) {
        for shard in self.shards.iter() {
            let _ = shard.commands.send(Command::Close(id));
        }
    }
}

/// The engine's sockets on the engine's runtime; the ICE-TCP listener starts accepting.
fn engine_transports(
    socket: std::net::UdpSocket,
    udp_candidate: SocketAddr,
    tcp: Option<(std::net::TcpListener, SocketAddr)>,
) -> std::io::Result<engine::Transports> {
    let socket = udp::MediaSocket::new(socket)?;
    let tcp = match tcp {
        None => None,
        Some((listener, candidate)) => Some((candidate, Some(tcp_events(listener)?))),
    };
    Ok(engine::Transports {
        socket,
        udp_candidate,
        tcp,
        dispatched: None,
    })
}

/// A shard's transports: the shared socket to send on, and what the dispatcher hands it.
fn shard_transports(
    socket: std::net::UdpSocket,
    udp_candidate: SocketAddr,
    tcp_candidate: Option<SocketAddr>,
    dispatched: Option<(
        mpsc::Receiver<dispatch::Inbound>,
        mpsc::UnboundedSender<dispatch::RouteUpdate>,
    )>,
) -> std::io::Result<engine::Transports> {
    Ok(engine::Transports {
        socket: udp::MediaSocket::send_only(socket)?,
        udp_candidate,
        tcp: tcp_candidate.map(|candidate| (candidate, None)),
        dispatched,
    })
}

/// Starts accepting ICE-TCP connections on this runtime; their events.
fn tcp_events(listener: std::net::TcpListener) -> std::io::Result<mpsc::Receiver<tcp::TcpEvent>> {
    let (events, events_rx) = mpsc::channel(tcp::INBOUND_QUEUE);
    tcp::spawn_listener(tokio::net::TcpListener::from_std(listener)?, events);
    Ok(events_rx)
}

/// Binds the shared media socket with large buffers, warning when the kernel grants less.
fn bind_media_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    // Best effort: a smaller buffer still works, it only drops earlier under load.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&bind.into())?;
    let receive = socket.recv_buffer_size().unwrap_or(0);
    let send = socket.send_buffer_size().unwrap_or(0);
    // Linux reports twice the granted size (it counts bookkeeping overhead).
    if receive < SOCKET_BUFFER {
        tracing::warn!(
            granted_bytes = receive / 2,
            wanted_bytes = SOCKET_BUFFER,
            "the media socket's receive buffer is small: under load datagrams will be dropped; \
             raise it with sysctl -w net.core.rmem_max={SOCKET_BUFFER} net.core.wmem_max={SOCKET_BUFFER}"
        );
    } else {
        tracing::debug!(receive, send, "media socket buffers");
    }
    Ok(socket.into())
}

/// The node's two WebRTC engines. Publishers have their own (own socket, own thread), so that
/// no viewer load can delay their media, RTCP or ICE consent: under overload the viewers'
/// engine falls behind, the publisher's does not.
#[derive(Clone)]
pub struct Engines {
    /// WHIP publishers.
    pub ingest: WebRtcEngine,
    /// WHEP viewers.
    pub egress: WebRtcEngine,
}

impl Engines {
    /// The engine of sessions of `kind`.
    pub fn of(&self, kind: SessionKind) -> &WebRtcEngine {
        match kind {
            SessionKind::Publisher => &self.ingest,
            SessionKind::Viewer => &self.egress,
        }
    }
}

/// A session whose offer was answered and whose media is attached to the engine.
#[derive(Debug)]
pub struct NegotiatedSession {
    /// The session id (the last segment of its `Location`).
    pub session: SessionId,
    /// The SDP answer.
    pub answer_sdp: String,
}

/// Negotiates an offer, admits the session on its stream and attaches its media. The offer is
/// checked before the stream is touched, so a bad offer never disturbs a live stream. A
/// viewer may have pinned a video `rendition`.
pub async fn open_session(
    registry: &crate::origin::StreamRegistry,
    engines: &Engines,
    stream: &cascade_protocol::StreamId,
    kind: SessionKind,
    offer_sdp: &str,
    client: Client,
    rendition: Option<String>,
) -> Result<NegotiatedSession, RoleError> {
    let protocol = match kind {
        SessionKind::Publisher => "whip",
        SessionKind::Viewer => "whep",
    };
    let engine = engines.of(kind);
    // Refused before any negotiation: an overloaded node spends nothing on a refusal.
    registry.check_capacity(kind)?;
    // Only a viewer that can move between renditions pays for bandwidth estimation (TWCC
    // feedback and str0m's pacer): one that pinned a rendition, or of a stream with a
    // single rendition, does not.
    let adaptive = kind == SessionKind::Viewer
        && rendition.is_none()
        && registry
            .broadcast(stream)
            .is_some_and(|b| b.abr_ladder().len() >= 2);
    let Negotiated {
        rtc,
        keys,
        answer_sdp,
    } = engine.answer(offer_sdp, kind, adaptive)?;
    let session = SessionId::random();
    let liveness = Liveness::new(Instant::now());
    let admission = Admission {
        kind,
        session,
        protocol,
        client,
        liveness: Some(liveness.clone()),
        transport: crate::session::Transport::WebRtc(engine.clone()),
    };
    let admitted = registry.admit(stream, admission).await?;
    let new = engine_core::NewSession {
        id: session,
        kind,
        rtc,
        broadcast: admitted.broadcast,
        liveness,
        rendition,
        adaptive,
        keys,
    };
    if let Err(e) = engine.add_session(new, admitted.actor.clone()) {
        admitted.actor.stop(Some("engine unavailable".into()));
        return Err(e);
    }
    Ok(NegotiatedSession {
        session,
        answer_sdp,
    })
}
