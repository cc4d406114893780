//! A str0m `Rtc` as the offering client, on its own UDP socket, and the few lines that drive
//! it: drain output until `Timeout`, wait for a datagram or the timeout, feed it back.
//!
//! Each simulated peer has its own socket because servers tell sessions apart by the remote
//! address (ICE only authenticates the first packet).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::crypto::dtls::DtlsCert;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::figures::FailureReason;

/// Largest datagram we expect (WebRTC keeps packets under the path MTU).
const DATAGRAM: usize = 2048;

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
    socket: UdpSocket,
    local: SocketAddr,
    buf: Vec<u8>,
    next_timeout: Instant,
    pub bytes_received: u64,
}

/// An offer ready to send and what is needed to apply its answer.
pub struct Offering {
    pub peer: Peer,
    pub offer: String,
    pending: SdpPendingOffer,
    pub mids: Vec<(MediaKind, Mid)>,
}

impl Offering {
    /// Creates a peer on `local_ip` offering one `direction` m-line per kind in `kinds`.
    pub async fn new(
        local_ip: IpAddr,
        cert: &DtlsCert,
        direction: Direction,
        kinds: &[MediaKind],
        stats: bool,
    ) -> std::io::Result<Offering> {
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
        let local = socket.local_addr()?;
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
        if stats {
            config = config.set_stats_interval(Some(std::time::Duration::from_secs(1)));
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(local, "udp").map_err(std::io::Error::other)?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let mids = kinds
            .iter()
            .map(|&kind| (kind, change.add_media(kind, direction, None, None, None)))
            .collect();
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| std::io::Error::other("str0m produced no offer"))?;
        Ok(Offering {
            peer: Peer {
                rtc,
                socket,
                local,
                buf: vec![0; DATAGRAM],
                next_timeout: now,
                bytes_received: 0,
            },
            offer: offer.to_sdp_string(),
            pending,
            mids,
        })
    }

    /// Applies the server's answer.
    pub fn accept(mut self, answer: &str) -> Result<(Peer, Vec<(MediaKind, Mid)>), FailureReason> {
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
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(event)) => on_event(event),
                Err(e) => {
                    tracing::debug!(error = %e, "peer failed");
                    return false;
                }
            }
        }
    }

    /// Feeds the next event into the `Rtc`: a datagram already queued on the socket, else
    /// whichever comes first of a datagram, the peer's own timeout, or `until`. One datagram
    /// per call: str0m must be drained (`drain`) after every input, or SRTP that follows the
    /// DTLS handshake's last flight in the same batch is dropped before its keys exist.
    pub async fn wait(&mut self, until: Instant) {
        if self.read_one() {
            return;
        }
        let deadline = self.next_timeout.min(until);
        tokio::select! {
            biased;
            readable = self.socket.readable() => {
                if readable.is_ok() {
                    self.read_one();
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if now >= self.next_timeout {
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }

    /// Reads and feeds one datagram if one is queued.
    fn read_one(&mut self) -> bool {
        let Ok((len, source)) = self.socket.try_recv_from(&mut self.buf) else {
            return false; // WouldBlock: nothing queued
        };
        self.bytes_received += len as u64;
        let Ok(contents) = self.buf[..len].try_into() else {
            return true;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if let Err(e) = self.rtc.handle_input(input) {
            tracing::debug!(error = %e, "input rejected");
        }
        true
    }
}
