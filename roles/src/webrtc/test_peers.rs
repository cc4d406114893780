//! Two str0m peers connected in virtual time, datagrams handed across in memory, for the
//! fast path's tests: A sends video (its SRTP keys captured, `dtls_keys`), B is stock str0m
//! in RTP mode and reports every packet it accepts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::dtls_keys::{self, KeyCell};
use super::srtp::Profile;

pub(crate) struct Pair {
    pub a: Rtc,
    pub b: Rtc,
    pub keys: KeyCell,
    pub mid: Mid,
    pub now: Instant,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
    /// Every datagram B sent A (its SRTCP among them), in order.
    pub from_b: Vec<Vec<u8>>,
}

impl Pair {
    /// A and B, negotiated (A offers a send-only video) and connected (DTLS done).
    pub fn connected() -> Pair {
        let now = Instant::now();
        let a_addr: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b_addr: SocketAddr = "10.0.0.2:2000".parse().unwrap();
        let (mut a, keys) = dtls_keys::build(RtcConfig::new().set_rtp_mode(true), now);
        let mut b = RtcConfig::new().set_rtp_mode(true).build(now);
        a.add_local_candidate(Candidate::host(a_addr, "udp").unwrap());
        b.add_local_candidate(Candidate::host(b_addr, "udp").unwrap());
        let mut change = a.sdp_api();
        let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
        let answer = b.sdp_api().accept_offer(offer).unwrap();
        a.sdp_api().accept_answer(pending, answer).unwrap();
        a.add_remote_candidate(Candidate::host(b_addr, "udp").unwrap());
        b.add_remote_candidate(Candidate::host(a_addr, "udp").unwrap());
        let mut pair = Pair {
            a,
            b,
            keys,
            mid,
            now,
            a_addr,
            b_addr,
            from_b: Vec::new(),
        };
        for _ in 0..200 {
            if pair.keys.get().is_some() {
                break;
            }
            pair.run_for(Duration::from_millis(20));
        }
        assert!(pair.keys.get().is_some(), "the DTLS handshake completed");
        pair
    }

    /// The fast path's profile for what A and B negotiated.
    pub fn profile(&self) -> Profile {
        Profile::of(self.keys.get().unwrap().profile).expect("str0m peers agree on AEAD-AES-GCM")
    }

    /// A's video stream: its SSRC and payload type.
    pub fn sender_stream(&mut self) -> (u32, u8) {
        let pt = *self.a.media(self.mid).unwrap().remote_pts()[0];
        let ssrc = *self
            .a
            .direct_api()
            .stream_tx_by_mid(self.mid, None)
            .unwrap()
            .ssrc();
        (ssrc, pt)
    }

    /// Hands a datagram from A to B, and polls B at once (as a socket loop does: str0m keeps
    /// one received packet until it is polled); B's events.
    pub fn deliver_to_b(&mut self, datagram: &[u8]) -> Vec<Event> {
        let input = Receive::new(Protocol::Udp, self.a_addr, self.b_addr, datagram).unwrap();
        self.b
            .handle_input(Input::Receive(self.now, input))
            .unwrap();
        let mut events = Vec::new();
        loop {
            match self.b.poll_output().expect("poll") {
                Output::Transmit(t) => {
                    self.from_b.push(t.contents.to_vec());
                    let input = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)
                        .expect("a datagram");
                    self.a
                        .handle_input(Input::Receive(self.now, input))
                        .expect("input");
                }
                Output::Timeout(_) => return events,
                Output::Event(e) => events.push(e),
            }
        }
    }

    /// Runs both for `length` of virtual time; B's and A's events, in order.
    pub fn run_for(&mut self, length: Duration) -> Vec<Event> {
        let end = self.now + length;
        let mut events = Vec::new();
        while self.now < end {
            let mut next = end;
            for a_sends in [true, false] {
                let (from, to) = if a_sends {
                    (&mut self.a, &mut self.b)
                } else {
                    (&mut self.b, &mut self.a)
                };
                loop {
                    match from.poll_output().expect("poll") {
                        Output::Transmit(t) => {
                            if !a_sends {
                                self.from_b.push(t.contents.to_vec());
                            }
                            let input =
                                Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)
                                    .expect("a datagram");
                            to.handle_input(Input::Receive(self.now, input))
                                .expect("input");
                        }
                        Output::Timeout(at) => {
                            next = next.min(at);
                            break;
                        }
                        Output::Event(e) => events.push(e),
                    }
                }
            }
            self.now = next.max(self.now + Duration::from_millis(1));
            self.a
                .handle_input(Input::Timeout(self.now))
                .expect("timeout");
            self.b
                .handle_input(Input::Timeout(self.now))
                .expect("timeout");
        }
        events
    }
}
