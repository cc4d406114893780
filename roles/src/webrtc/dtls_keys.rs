//! Each WebRTC session's SRTP keying material, taken as str0m's DTLS produces it, for the
//! per-viewer fast path (issue 14, `srtp`), through str0m 0.25's public extension points
//! only.
//!
//! str0m takes a crypto provider per `Rtc` (`RtcConfig::set_crypto_provider`), and that
//! provider's DTLS provider makes the session's DTLS instance synchronously inside
//! `RtcConfig::build`. [`build`] names the session being built in a thread-local slot; the
//! DTLS provider here wraps the default one, and each instance it makes remembers the slot
//! of its session. When the handshake exports the keying material, the wrapper copies it
//! (with the negotiated profile and whether this side is the DTLS client, which decides
//! whose half of the material it sends with) into the session's [`KeyCell`] and passes
//! every output through unchanged.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{CryptoError, CryptoProvider};
use str0m::{Rtc, RtcConfig};

/// What a session's DTLS handshake exported for SRTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Client key, server key, client salt, server salt (RFC 5764 §4.2).
    pub material: Vec<u8>,
    /// The protection profile negotiated.
    pub profile: SrtpProfile,
    /// This side is the DTLS client: it sends with the client's half.
    pub client: bool,
}

/// Filled once, when the session's DTLS handshake completes.
pub type KeyCell = Arc<OnceLock<SessionKeys>>;

thread_local! {
    /// The session whose `Rtc` is being built on this thread.
    static BUILDING: RefCell<Option<KeyCell>> = const { RefCell::new(None) };
}

/// Builds `config` into an `Rtc` whose SRTP keys arrive in the returned cell.
pub fn build(config: RtcConfig, now: Instant) -> (Rtc, KeyCell) {
    let cell = KeyCell::default();
    BUILDING.with(|slot| *slot.borrow_mut() = Some(Arc::clone(&cell)));
    let rtc = config.set_crypto_provider(provider()).build(now);
    BUILDING.with(|slot| slot.borrow_mut().take());
    (rtc, cell)
}

/// The default crypto provider with the capturing DTLS provider in place of its own.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        let mut provider = str0m::crypto::from_feature_flags();
        let inner = provider.dtls_provider;
        provider.dtls_provider = Box::leak(Box::new(CapturingDtls { inner }));
        Arc::new(provider)
    }))
}

#[derive(Debug)]
struct CapturingDtls {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for CapturingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        let cell = BUILDING.with(|slot| slot.borrow().clone());
        Ok(Box::new(CapturingInstance { inner, cell }))
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
    cell: Option<KeyCell>,
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let client = self.inner.is_active();
        let output = self.inner.poll_output(buf);
        if let (DtlsOutput::KeyingMaterial(material, profile), Some(cell)) = (&output, &self.cell) {
            let _ = cell.set(SessionKeys {
                material: material.to_vec(),
                profile: *profile,
                client,
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use str0m::change::SdpOffer;
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output};

    use super::*;
    use crate::webrtc::srtp::{Profile, RtpCipher};

    /// Runs two `Rtc`s against each other in virtual time, datagrams handed across, until
    /// `done` holds; returns the receiver's events.
    fn exchange(
        a: &mut Rtc,
        b: &mut Rtc,
        now: &mut Instant,
        mut done: impl FnMut(&Rtc, &Rtc) -> bool,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..2000 {
            if done(a, b) {
                break;
            }
            let mut next = *now + Duration::from_millis(50);
            for a_sends in [true, false] {
                let (from, to) = if a_sends {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                loop {
                    match from.poll_output().expect("poll") {
                        Output::Transmit(t) => {
                            let input =
                                Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)
                                    .expect("a datagram");
                            to.handle_input(Input::Receive(*now, input)).expect("input");
                        }
                        Output::Timeout(at) => {
                            next = next.min(at);
                            break;
                        }
                        Output::Event(e) => events.push(e),
                    }
                }
            }
            *now = next.max(*now + Duration::from_millis(1));
            a.handle_input(Input::Timeout(*now)).expect("timeout");
            b.handle_input(Input::Timeout(*now)).expect("timeout");
        }
        events
    }

    #[test]
    fn the_keys_str0m_negotiates_are_captured_and_an_rtp_packet_sealed_with_them_is_accepted_by_an_unmodified_peer()
     {
        let mut now = Instant::now();
        let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
        );
        // A sends (our side, keys captured); B is stock str0m in RTP mode.
        let (mut a, keys) = build(RtcConfig::new().set_rtp_mode(true), now);
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

        exchange(&mut a, &mut b, &mut now, |_, _| keys.get().is_some());
        let captured = keys.get().expect("the handshake exported keys").clone();
        let profile = Profile::of(captured.profile).expect("str0m peers agree on AEAD-AES-GCM");
        let cipher =
            RtpCipher::from_keying_material(profile, &captured.material, captured.client).unwrap();

        // An RTP packet made and sealed by us, with A's stream's SSRC and payload type.
        let (ssrc, pt) = {
            let pt = a.media(mid).unwrap().remote_pts()[0];
            let ssrc = a.direct_api().stream_tx_by_mid(mid, None).unwrap().ssrc();
            (ssrc, pt)
        };
        let payload = b"fast path, sealed in place".to_vec();
        let mut packet = vec![0x80, *pt & 0x7f, 0x12, 0x34, 0, 0, 0x0b, 0xb8];
        packet[1] |= 0x80; // marker
        packet.extend_from_slice(&(*ssrc).to_be_bytes());
        packet.extend_from_slice(&payload);
        cipher.seal(&mut packet, 12, 0).unwrap();
        let input = Receive::new(Protocol::Udp, a_addr, b_addr, &packet).unwrap();
        b.handle_input(Input::Receive(now, input)).unwrap();
        let events = exchange(&mut a, &mut b, &mut now, |_, b| !b.is_alive());
        let received = events
            .iter()
            .find_map(|e| match e {
                Event::RtpPacket(p) if p.header.sequence_number == 0x1234 => {
                    Some(p.payload.clone())
                }
                _ => None,
            })
            .expect("the unmodified peer decrypted and delivered our packet");
        assert_eq!(&received[..], &payload[..]);
    }
}
