//! A str0m `Rtc` as the offering client, on its own UDP socket (or, with `--transport tcp`,
//! its own TCP connection to the server's passive ICE-TCP candidate), and the few lines that
//! drive it: drain output until `Timeout`, wait for datagrams or the timeout, feed them back.
//! In counting mode RTP is counted from its headers instead of being decrypted.
//!
//! Each simulated peer has its own socket because servers tell sessions apart by the remote
//! address (ICE only authenticates the first packet).

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;

use bytes::BytesMut;
use cascade_protocol::ice_tcp::{frame_into, next_frame};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// How often a connected peer checks that the server still answers (STUN).
const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// Unanswered checks after which the session counts as disconnected.
const ICE_MAX_UNANSWERED: usize = 4;
use tokio::net::{TcpStream, UdpSocket};

use crate::figures::FailureReason;

/// How a peer's media reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A UDP socket per peer (a host candidate on `--local-ip`).
    Udp,
    /// A TCP connection per peer to the server's passive ICE-TCP candidate (RFC 6544), as a
    /// browser on a network that blocks UDP makes.
    Tcp,
}

/// RFC 6544: an active TCP candidate carries the discard port; it never accepts.
const ACTIVE_TCP_PORT: u16 = 9;
/// Bytes a TCP peer buffers beyond what its socket takes before it drops datagrams.
const TCP_MAX_PENDING: usize = 256 * 1024;

/// Room for one receive: up to 64 datagrams the kernel coalesced (UDP GRO) from a sender's
/// GSO batch, each under the path MTU.
const RECEIVE_BYTES: usize = 64 * 1_500;

thread_local! {
    /// One receive buffer per worker thread, shared by its peers: a peer handles what it
    /// read before the next peer reads.
    static RECEIVE_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; RECEIVE_BYTES]);
}

/// A certificate shared by every peer of the process: generating one per peer would make the
/// ramp CPU-bound for no benefit (each session still gets its own DTLS keys).
pub fn shared_certificate() -> DtlsCert {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("the crypto provider generates a DTLS certificate")
}

/// A client peer with its socket.
pub struct Peer {
    pub rtc: Rtc,
    socket: PeerSocket,
    /// The UDP socket's offload state (`None` over TCP).
    udp: Option<UdpSocketState>,
    local: SocketAddr,
    next_timeout: Instant,
    pub bytes_received: u64,
    counter: Option<RtpCounter>,
}

/// An offer ready to send and what is needed to apply its answer.
pub struct Offering {
    pub peer: Peer,
    pub offer: String,
    pending: SdpPendingOffer,
    pub mids: Vec<(MediaKind, Mid)>,
}

impl Offering {
    /// Creates a peer on `local_ip` offering one `direction` m-line per kind in `kinds`. Over
    /// TCP nothing is connected until the answer names the server's TCP candidate.
    pub async fn new(
        local_ip: IpAddr,
        transport: Transport,
        cert: &DtlsCert,
        direction: Direction,
        kinds: &[MediaKind],
        stats: bool,
    ) -> std::io::Result<Offering> {
        let mut peer = Peer::unnegotiated(local_ip, transport, cert, stats).await?;
        let mut change = peer.rtc.sdp_api();
        let mids = kinds
            .iter()
            .map(|&kind| (kind, change.add_media(kind, direction, None, None, None)))
            .collect();
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| std::io::Error::other("str0m produced no offer"))?;
        Ok(Offering {
            peer,
            offer: offer.to_sdp_string(),
            pending,
            mids,
        })
    }
}

impl Peer {
    /// A UDP peer answering a server's offer (as Janus signals: the server offers, the
    /// viewer answers); the answer to send back.
    pub async fn answering(
        local_ip: IpAddr,
        cert: &DtlsCert,
        offer: &str,
        stats: bool,
    ) -> Result<(Peer, String), FailureReason> {
        let mut peer = Peer::unnegotiated(local_ip, Transport::Udp, cert, stats)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot create a local peer (out of ports or file descriptors?)");
                FailureReason::Unreachable
            })?;
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| {
            tracing::debug!(error = %e, "unparseable SDP offer");
            FailureReason::BadAnswer
        })?;
        let answer = peer.rtc.sdp_api().accept_offer(offer).map_err(|e| {
            tracing::debug!(error = %e, "SDP offer rejected");
            FailureReason::BadAnswer
        })?;
        Ok((peer, answer.to_sdp_string()))
    }

    /// A peer on `local_ip` with its socket (UDP) or its TCP candidate, not negotiated yet.
    async fn unnegotiated(
        local_ip: IpAddr,
        transport: Transport,
        cert: &DtlsCert,
        stats: bool,
    ) -> std::io::Result<Peer> {
        let (socket, udp, local, candidate) = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
                let local = socket.local_addr()?;
                let udp = UdpSocketState::new((&socket).into())?;
                let candidate = Candidate::host(local, "udp").map_err(std::io::Error::other)?;
                (PeerSocket::Own(socket), Some(udp), local, candidate)
            }
            Transport::Tcp => {
                let local = SocketAddr::new(local_ip, ACTIVE_TCP_PORT);
                let candidate = Candidate::builder()
                    .tcp()
                    .host(local)
                    .tcptype(TcpType::Active)
                    .build()
                    .map_err(std::io::Error::other)?;
                (PeerSocket::Unconnected, None, local, candidate)
            }
        };
        let now = Instant::now();
        let mut config = RtcConfig::new()
            .clear_codecs()
            .enable_h264(true)
            .enable_vp8(true)
            .enable_opus(true, false)
            // Frames split over more packets are dropped by str0m: 720p/1080p keyframes
            // often take 50 to 200.
            .set_reordering_size_video(500)
            .set_dtls_cert(cert.clone());
        // Notice a dead server within about 2 s (a STUN check every 500 ms, 4 unanswered)
        // rather than str0m's default of about 20 s, so that `--reconnect` measures the
        // cluster's failover and not the detection. Browsers take about 5 s.
        config.set_max_stun_rto(ICE_CHECK_INTERVAL);
        config.set_max_stun_retransmits(ICE_MAX_UNANSWERED);
        if stats {
            config = config.set_stats_interval(Some(std::time::Duration::from_secs(1)));
        }
        let mut rtc = config.build(now);
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket,
            udp,
            local,
            next_timeout: now,
            bytes_received: 0,
            counter: None,
        })
    }
}

impl Offering {
    /// Applies the server's answer; over TCP, connects to the candidate it names.
    pub async fn accept(
        mut self,
        answer: &str,
    ) -> Result<(Peer, Vec<(MediaKind, Mid)>), FailureReason> {
        if matches!(self.peer.socket, PeerSocket::Unconnected) {
            let Some(server) = passive_tcp_candidate(answer) else {
                tracing::warn!(
                    "the answer has no passive TCP candidate (is ICE-TCP off on the server?)"
                );
                return Err(FailureReason::BadAnswer);
            };
            let stream = TcpStream::connect(server).await.map_err(|e| {
                tracing::debug!(%server, error = %e, "ICE-TCP connect failed");
                FailureReason::Unreachable
            })?;
            let _ = stream.set_nodelay(true);
            self.peer.socket = PeerSocket::Tcp(TcpLink {
                stream,
                server,
                read: BytesMut::with_capacity(RECEIVE_BYTES),
                pending: Vec::new(),
            });
        }
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| {
            tracing::debug!(error = %e, "unparseable SDP answer");
            FailureReason::BadAnswer
        })?;
        self.peer
            .rtc
            .sdp_api()
            .accept_answer(self.pending, answer)
            .map_err(|e| {
                tracing::debug!(error = %e, "SDP answer rejected");
                FailureReason::BadAnswer
            })?;
        Ok((self.peer, self.mids))
    }
}

impl Peer {
    /// From now on RTP is counted from its clear-text header instead of being decrypted and
    /// reassembled (the sampling mode's counted viewers). ICE, DTLS and RTCP still go
    /// through str0m, so the session stays a real one.
    pub fn count_rtp_instead_of_decrypting(&mut self) {
        let video_pts = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| p.spec().codec.is_video())
            .map(|p| *p.pt())
            .collect();
        self.counter = Some(RtpCounter::new(video_pts));
    }

    /// What was counted, for a peer in counting mode.
    pub fn counted(&self) -> Option<&RtpCounter> {
        self.counter.as_ref()
    }

    /// Drains output until `Timeout`: sends datagrams, hands events to `on_event`. Returns
    /// `false` once the peer is no longer alive.
    pub fn drain(&mut self, mut on_event: impl FnMut(Event)) -> bool {
        loop {
            if !self.rtc.is_alive() {
                return false;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    self.next_timeout = at;
                    return true;
                }
                Ok(Output::Transmit(t)) => self.socket.send_to(&t.contents, t.destination),
                Ok(Output::Event(event)) => on_event(event),
                Err(e) => {
                    tracing::debug!(error = %e, "peer failed");
                    return false;
                }
            }
        }
    }

    /// Waits for datagrams, the peer's own timeout or `until`, whichever comes first, and
    /// handles what came, draining after every input (`on_event` gets the events): str0m
    /// must be drained after each datagram, or SRTP that follows the DTLS handshake's last
    /// flight in the same batch is dropped before its keys exist.
    ///
    /// A peer whose socket was handed to a [`crate::poller::SharedPoller`] only waits for
    /// its timeout here.
    pub async fn wait(&mut self, until: Instant, mut on_event: impl FnMut(Event)) {
        if !self.receive(&mut on_event) {
            let deadline = self.next_timeout.min(until);
            let sleep = tokio::time::sleep_until(deadline.into());
            match &self.socket {
                PeerSocket::Own(socket) => tokio::select! {
                    biased;
                    readable = socket.readable() => {
                        if readable.is_ok() {
                            self.receive(&mut on_event);
                        }
                    }
                    _ = sleep => {}
                },
                PeerSocket::Tcp(link) => tokio::select! {
                    biased;
                    readable = link.stream.readable() => {
                        if readable.is_ok() {
                            self.receive(&mut on_event);
                        }
                    }
                    _ = sleep => {}
                },
                PeerSocket::Shared(_) | PeerSocket::Unconnected | PeerSocket::Detaching => {
                    sleep.await
                }
            }
        }
        self.handle_timeout(Instant::now(), &mut on_event);
    }

    /// When the peer's timeout has passed, tells str0m and drains.
    pub fn handle_timeout(&mut self, now: Instant, on_event: &mut impl FnMut(Event)) {
        if now >= self.next_timeout {
            let _ = self.rtc.handle_input(Input::Timeout(now));
            self.drain(on_event);
        }
    }

    /// When str0m next wants [`Peer::handle_timeout`].
    pub fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// Reads and handles everything queued on the socket, as an edge-triggered readiness
    /// event requires.
    pub fn receive_all(&mut self, on_event: &mut impl FnMut(Event)) {
        while self.receive(on_event) {}
    }

    /// Moves the socket out of tokio's reactor so that a worker's shared poll can watch it
    /// instead (counting peers: one wake-up serves every peer with something to read).
    pub fn detach_socket(&mut self) -> std::io::Result<RawFd> {
        let placeholder = PeerSocket::Detaching;
        let socket = match std::mem::replace(&mut self.socket, placeholder) {
            PeerSocket::Own(socket) => socket.into_std()?,
            other => {
                self.socket = other;
                return Err(std::io::Error::other("the socket is already detached"));
            }
        };
        let fd = socket.as_raw_fd();
        self.socket = PeerSocket::Shared(socket);
        Ok(fd)
    }

    /// Reads what is queued (one `recvmsg`, several datagrams when the kernel coalesced a
    /// GSO batch) and handles each. Returns false when nothing was queued.
    fn receive(&mut self, on_event: &mut impl FnMut(Event)) -> bool {
        if matches!(self.socket, PeerSocket::Tcp(_)) {
            return self.receive_tcp(on_event);
        }
        RECEIVE_BUFFER.with_borrow_mut(|buf| {
            let mut meta = [RecvMeta::default()];
            let received = {
                let mut slices = [IoSliceMut::new(&mut buf[..])];
                let Some(state) = &self.udp else {
                    return false;
                };
                match &self.socket {
                    PeerSocket::Own(socket) => socket.try_io(Interest::READABLE, || {
                        state.recv(socket.into(), &mut slices, &mut meta)
                    }),
                    PeerSocket::Shared(socket) => state.recv(socket.into(), &mut slices, &mut meta),
                    PeerSocket::Tcp(_) | PeerSocket::Unconnected | PeerSocket::Detaching => {
                        return false;
                    }
                }
            };
            match received {
                Ok(count) if count > 0 => {}
                _ => return false, // WouldBlock: nothing queued
            }
            let meta = meta[0];
            self.bytes_received += meta.len as u64;
            let now = Instant::now();
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                self.handle_datagram(datagram, (Protocol::Udp, meta.addr), now, on_event);
            }
            true
        })
    }

    /// The TCP side of [`Peer::receive`]: reads what the connection holds and handles every
    /// whole datagram in it. A closed connection ends the session through ICE.
    fn receive_tcp(&mut self, on_event: &mut impl FnMut(Event)) -> bool {
        let PeerSocket::Tcp(link) = &mut self.socket else {
            return false;
        };
        link.flush();
        link.read.reserve(RECEIVE_BYTES);
        let read = match link.stream.try_read_buf(&mut link.read) {
            Ok(0) => {
                self.socket = PeerSocket::Unconnected;
                return false;
            }
            Ok(read) => read,
            Err(_) => return false, // WouldBlock: nothing queued
        };
        self.bytes_received += read as u64;
        let server = link.server;
        let now = Instant::now();
        loop {
            let PeerSocket::Tcp(link) = &mut self.socket else {
                return true;
            };
            let Some(datagram) = next_frame(&mut link.read) else {
                return true;
            };
            self.handle_datagram(&datagram, (Protocol::Tcp, server), now, on_event);
        }
    }

    /// Counts or hands one datagram to str0m, then drains.
    fn handle_datagram(
        &mut self,
        datagram: &[u8],
        (proto, source): (Protocol, SocketAddr),
        now: Instant,
        on_event: &mut impl FnMut(Event),
    ) {
        if let Some(counter) = self.counter.as_mut()
            && counter.count(datagram, now)
        {
            return;
        }
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "input rejected");
        }
        self.drain(&mut *on_event);
    }

    /// Whether this peer talks to the server over TCP (it cannot join a shared UDP poll).
    pub fn is_tcp(&self) -> bool {
        !matches!(self.socket, PeerSocket::Own(_) | PeerSocket::Shared(_))
    }
}

/// The server's passive ICE-TCP candidate in an SDP answer.
fn passive_tcp_candidate(answer: &str) -> Option<SocketAddr> {
    answer
        .lines()
        .filter_map(|line| line.trim().strip_prefix("a="))
        .filter_map(|attribute| Candidate::from_sdp_string(attribute).ok())
        .find(|c| c.proto() == Protocol::Tcp && c.tcptype() == Some(TcpType::Passive))
        .map(|c| c.addr())
}

/// A peer's TCP connection: RFC 4571 frames both ways.
struct TcpLink {
    stream: TcpStream,
    server: SocketAddr,
    read: BytesMut,
    /// Framed datagrams the socket has not taken yet.
    pending: Vec<u8>,
}

impl TcpLink {
    /// Frames a datagram and writes what the socket takes without waiting; a full buffer
    /// drops the datagram, as a congested network would.
    fn send(&mut self, datagram: &[u8]) {
        if self.pending.len() + datagram.len() <= TCP_MAX_PENDING {
            frame_into(&mut self.pending, datagram);
        }
        self.flush();
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match self.stream.try_write(&self.pending) {
                Ok(written) if written > 0 => {
                    self.pending.drain(..written);
                }
                _ => return,
            }
        }
    }
}

/// A peer's socket: registered with tokio (the peer's task waits for it), or a plain
/// non-blocking socket watched by a worker's shared poll.
enum PeerSocket {
    Own(UdpSocket),
    Shared(std::net::UdpSocket),
    Tcp(TcpLink),
    /// A TCP peer before its answer arrived, or after the server closed the connection.
    Unconnected,
    /// Only while [`Peer::detach_socket`] runs.
    Detaching,
}

impl PeerSocket {
    /// Sends without waiting: a full send buffer drops the datagram, as a network would.
    fn send_to(&mut self, contents: &[u8], destination: SocketAddr) {
        let _ = match self {
            PeerSocket::Own(socket) => socket.try_send_to(contents, destination),
            PeerSocket::Shared(socket) => socket.send_to(contents, destination),
            PeerSocket::Tcp(link) => {
                link.send(contents);
                return;
            }
            PeerSocket::Unconnected | PeerSocket::Detaching => return,
        };
    }
}

/// RTP counted from clear-text headers (SRTP encrypts only the payload): per video SSRC the
/// packets expected and received (from sequence numbers) and the frames seen (packets with
/// the marker bit, which ends a video frame).
#[derive(Debug)]
pub struct RtpCounter {
    video_pts: Vec<u8>,
    video_ssrc: Option<u32>,
    first_seq: u64,
    highest_seq: Option<u64>,
    pub packets_received: u64,
    pub frames: u64,
    pub last_frame_at: Option<Instant>,
}

impl RtpCounter {
    fn new(video_pts: Vec<u8>) -> Self {
        RtpCounter {
            video_pts,
            video_ssrc: None,
            first_seq: 0,
            highest_seq: None,
            packets_received: 0,
            frames: 0,
            last_frame_at: None,
        }
    }

    /// Packets the sender numbered, from the first to the highest seen.
    pub fn packets_expected(&self) -> u64 {
        self.highest_seq.map_or(0, |h| h - self.first_seq + 1)
    }

    /// Counts an RTP packet; false for anything else (STUN, DTLS, RTCP), which str0m handles.
    fn count(&mut self, datagram: &[u8], at: Instant) -> bool {
        let Some(header) = rtp_header(datagram) else {
            return false;
        };
        if !self.video_pts.contains(&header.pt) {
            return true; // audio: counted in bytes only
        }
        if *self.video_ssrc.get_or_insert(header.ssrc) != header.ssrc {
            return true; // a retransmission stream (RTX): not first-time media
        }
        self.packets_received += 1;
        let seq = match self.highest_seq {
            None => {
                self.first_seq = u64::from(header.seq) + (1 << 16);
                self.first_seq
            }
            Some(highest) => {
                let delta = header.seq.wrapping_sub(highest as u16) as i16;
                highest.saturating_add_signed(i64::from(delta))
            }
        };
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
        if header.marker {
            self.frames += 1;
            self.last_frame_at = Some(at);
        }
        true
    }
}

/// The fields of an RTP header we count by.
#[derive(Debug, PartialEq, Eq)]
struct RtpHeader {
    pt: u8,
    marker: bool,
    seq: u16,
    ssrc: u32,
}

/// Parses an RTP (not RTCP, RFC 5761 §4) header; `None` for anything else.
fn rtp_header(datagram: &[u8]) -> Option<RtpHeader> {
    if datagram.len() < 12 || datagram[0] >> 6 != 2 {
        return None;
    }
    let pt = datagram[1] & 0x7f;
    if (64..96).contains(&pt) {
        return None; // RTCP packet types 192-223 with the marker bit position set
    }
    Some(RtpHeader {
        pt,
        marker: datagram[1] & 0x80 != 0,
        seq: u16::from_be_bytes([datagram[2], datagram[3]]),
        ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(pt: u8, marker: bool, seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xaa; 20]);
        p
    }

    #[test]
    fn the_servers_passive_tcp_candidate_is_found_in_its_answer() {
        let answer = "v=0\r\n\
            a=candidate:1 1 udp 2130706175 127.0.0.1 8443 typ host\r\n\
            a=candidate:2 1 tcp 1526725887 127.0.0.1 8443 typ host tcptype passive\r\n";
        assert_eq!(
            passive_tcp_candidate(answer),
            Some("127.0.0.1:8443".parse().unwrap())
        );
        assert_eq!(
            passive_tcp_candidate("a=candidate:1 1 udp 2130706175 127.0.0.1 8443 typ host\r\n"),
            None,
            "a server without ICE-TCP"
        );
    }

    #[test]
    fn rtcp_stun_and_dtls_are_not_counted_as_rtp() {
        let mut counter = RtpCounter::new(vec![102]);
        let now = Instant::now();
        let sender_report = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0];
        assert!(!counter.count(&sender_report, now));
        assert!(!counter.count(&[0x00, 0x01, 0x00, 0x00], now), "STUN");
        assert!(
            !counter.count(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], now),
            "DTLS"
        );
        assert_eq!(counter.packets_received, 0);
    }

    #[test]
    fn video_loss_and_frames_are_counted_across_a_sequence_wrap() {
        let mut counter = RtpCounter::new(vec![102]);
        let now = Instant::now();
        for (seq, marker) in [
            (65_533u16, false),
            (65_534, true),
            (0, false),
            (1, true),
            (3, true),
        ] {
            assert!(counter.count(&rtp(102, marker, seq, 7), now));
        }
        assert!(
            counter.count(&rtp(111, false, 9, 8), now),
            "audio is RTP too"
        );
        assert_eq!(counter.packets_received, 5);
        assert_eq!(
            counter.packets_expected(),
            7,
            "65533..=3 across the wrap, 65535 and 2 lost"
        );
        assert_eq!(counter.frames, 3);
    }
}
