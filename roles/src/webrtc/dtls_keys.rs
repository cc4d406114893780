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
    use str0m::Event;
    use str0m::net::{Protocol, Receive};

    use crate::webrtc::srtp::RtpCipher;
    use crate::webrtc::test_peers::Pair;

    #[test]
    fn the_keys_str0m_negotiates_are_captured_and_an_rtp_packet_sealed_with_them_is_accepted_by_an_unmodified_peer()
     {
        let mut pair = Pair::connected();
        let captured = pair
            .keys
            .get()
            .expect("the handshake exported keys")
            .clone();
        for wrong_side in [true, false] {
            let (profile, material) = (pair.profile(), &captured.material);
            let client = captured.client != wrong_side;
            let cipher = RtpCipher::from_keying_material(profile, material, client).unwrap();
            // An RTP packet made and sealed by us, with A's stream's SSRC and payload type.
            let (ssrc, pt) = pair.sender_stream();
            let seq: u16 = if wrong_side { 0x1233 } else { 0x1234 };
            let payload = b"fast path, sealed in place".to_vec();
            let mut packet = vec![0x80, 0x80 | pt, 0, 0, 0, 0, 0x0b, 0xb8];
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&payload);
            cipher.seal(&mut packet, 12, 0).unwrap();
            let input = Receive::new(Protocol::Udp, pair.a_addr, pair.b_addr, &packet).unwrap();
            pair.b
                .handle_input(str0m::Input::Receive(pair.now, input))
                .unwrap();
            let events = pair.run_for(std::time::Duration::from_millis(200));
            let delivered = events.iter().find_map(|e| match e {
                Event::RtpPacket(p) if p.header.sequence_number == seq => Some(p.payload.clone()),
                _ => None,
            });
            if wrong_side {
                assert!(
                    delivered.is_none(),
                    "sealed with the other side's keys: refused"
                );
            } else {
                let delivered = delivered.expect("the unmodified peer decrypted and delivered it");
                assert_eq!(&delivered[..], &payload[..]);
            }
        }
    }
}
