//! SRTP for the per-viewer fast path (issue 14): the session keys of RFC 3711 §4.3 derived
//! from DTLS-SRTP keying material (RFC 5764 §4.2), and the AEAD-AES-GCM transform of
//! RFC 7714 applied in place: per packet, a 12-byte IV from the salt, SSRC, rollover counter
//! and sequence number, the RTP header as associated data, and the 16-byte tag appended.
//! No allocation when the packet's buffer has room for the tag.
//!
//! Only the AEAD profiles take the fast path; a session that negotiated
//! `SRTP_AES128_CM_SHA1_80` stays on str0m's own path.

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;

/// RFC 3711 §4.3.1 labels.
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_SALT: u8 = 0x05;
/// SRTCP: the RTCP header and sender SSRC stay clear; the E flag and 31-bit index follow the
/// tag (RFC 7714 §9).
const SRTCP_HEADER_LEN: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;
/// RFC 7714: a 96-bit salt and a 128-bit tag.
pub const SALT_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Why SRTP keys could not be made or a packet sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("keying material of {0} bytes does not fit the profile")]
    MaterialLength(usize),
    #[error("the cipher refused the key")]
    Key,
    #[error("the packet is shorter than its header and tag")]
    Short,
    #[error("the packet does not authenticate")]
    Authentication,
}

/// The SRTP protection profiles the fast path takes (RFC 7714 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl Profile {
    /// Master (and session) key length.
    pub fn key_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 16,
            Profile::AeadAes256Gcm => 32,
        }
    }

    /// The fast path's profile for what DTLS negotiated, if it takes it.
    pub fn of(negotiated: str0m::crypto::dtls::SrtpProfile) -> Option<Profile> {
        use str0m::crypto::dtls::SrtpProfile;
        match negotiated {
            SrtpProfile::AEAD_AES_128_GCM => Some(Profile::AeadAes128Gcm),
            SrtpProfile::AEAD_AES_256_GCM => Some(Profile::AeadAes256Gcm),
            _ => None,
        }
    }
}

/// RFC 3711 §4.3.1 with the AES-CM PRF, packet index 0 and key derivation rate 0: `out`
/// filled with the session key (or salt) of `label`. The PRF is AES in counter mode keyed
/// with the master key, the IV being the master salt with the label XORed in at byte 7,
/// shifted left 16 bits.
pub fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let algorithm = match master_key.len() {
        16 => &AES_128,
        32 => &AES_256,
        n => return Err(SrtpError::MaterialLength(n)),
    };
    if master_salt.len() > 14 {
        return Err(SrtpError::MaterialLength(master_salt.len()));
    }
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let key = UnboundCipherKey::new(algorithm, master_key).map_err(|_| SrtpError::Key)?;
    let key = EncryptingKey::ctr(key).map_err(|_| SrtpError::Key)?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| SrtpError::Key)?;
    Ok(())
}

/// One direction's RTP protection: seals what this side sends (or opens what the other
/// side sent, with the other side's keys).
pub struct RtpCipher {
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for RtpCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RtpCipher")
    }
}

impl RtpCipher {
    /// A cipher with the session key and salt themselves.
    pub fn new(
        profile: Profile,
        session_key: &[u8],
        session_salt: [u8; SALT_LEN],
    ) -> Result<Self, SrtpError> {
        let algorithm = match profile {
            Profile::AeadAes128Gcm => &AES_128_GCM,
            Profile::AeadAes256Gcm => &AES_256_GCM,
        };
        let key = UnboundKey::new(algorithm, session_key).map_err(|_| SrtpError::Key)?;
        Ok(RtpCipher {
            key: LessSafeKey::new(key),
            salt: session_salt,
        })
    }

    /// The RTP cipher of the side that sends as DTLS client (`client`) or server, from the
    /// exported keying material: client key, server key, client salt, server salt (RFC 5764
    /// §4.2).
    pub fn from_keying_material(
        profile: Profile,
        material: &[u8],
        client: bool,
    ) -> Result<Self, SrtpError> {
        RtpCipher::derived(
            profile,
            material,
            client,
            LABEL_RTP_ENCRYPTION,
            LABEL_RTP_SALT,
        )
    }

    /// The SRTCP cipher of that side: what opens the RTCP it sends ([`RtpCipher::open_rtcp`]).
    pub fn rtcp_from_keying_material(
        profile: Profile,
        material: &[u8],
        client: bool,
    ) -> Result<Self, SrtpError> {
        RtpCipher::derived(
            profile,
            material,
            client,
            LABEL_RTCP_ENCRYPTION,
            LABEL_RTCP_SALT,
        )
    }

    fn derived(
        profile: Profile,
        material: &[u8],
        client: bool,
        key_label: u8,
        salt_label: u8,
    ) -> Result<Self, SrtpError> {
        let (k, s) = (profile.key_len(), SALT_LEN);
        if material.len() != 2 * k + 2 * s {
            return Err(SrtpError::MaterialLength(material.len()));
        }
        let (key_at, salt_at) = if client { (0, 2 * k) } else { (k, 2 * k + s) };
        let master_key = &material[key_at..key_at + k];
        let master_salt = &material[salt_at..salt_at + s];
        let mut session_key = [0u8; 32];
        derive(master_key, master_salt, key_label, &mut session_key[..k])?;
        let mut session_salt = [0u8; SALT_LEN];
        derive(master_key, master_salt, salt_label, &mut session_salt)?;
        RtpCipher::new(profile, &session_key[..k], session_salt)
    }

    /// Authenticates and decrypts an SRTCP packet (RFC 7714 §9: the header and sender SSRC
    /// clear, the E flag and index after the tag) into `out`: the compound RTCP packet.
    /// Receive side only: Cascade never sends SRTCP of its own beside str0m's.
    pub fn open_rtcp(&self, datagram: &[u8], out: &mut Vec<u8>) -> Result<(), SrtpError> {
        if datagram.len() < SRTCP_HEADER_LEN + TAG_LEN + SRTCP_INDEX_LEN {
            return Err(SrtpError::Short);
        }
        let index_at = datagram.len() - SRTCP_INDEX_LEN;
        let mut index = [0u8; SRTCP_INDEX_LEN];
        index.copy_from_slice(&datagram[index_at..]);
        let e_and_index = u32::from_be_bytes(index);
        if e_and_index & 0x8000_0000 == 0 {
            // Authenticated only: WebRTC endpoints encrypt their RTCP; not worth a path.
            return Err(SrtpError::Authentication);
        }
        let mut iv = [0u8; SALT_LEN];
        iv[2..6].copy_from_slice(&datagram[4..8]);
        iv[8..12].copy_from_slice(&(e_and_index & 0x7fff_ffff).to_be_bytes());
        for (byte, salt) in iv.iter_mut().zip(self.salt) {
            *byte ^= salt;
        }
        let mut aad = [0u8; SRTCP_HEADER_LEN + SRTCP_INDEX_LEN];
        aad[..SRTCP_HEADER_LEN].copy_from_slice(&datagram[..SRTCP_HEADER_LEN]);
        aad[SRTCP_HEADER_LEN..].copy_from_slice(&index);
        out.clear();
        out.extend_from_slice(&datagram[..index_at]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(iv),
                Aad::from(&aad),
                &mut out[SRTCP_HEADER_LEN..],
            )
            .map_err(|_| SrtpError::Authentication)?
            .len();
        out.truncate(SRTCP_HEADER_LEN + plain);
        Ok(())
    }

    /// RFC 7714 §8.1: the salt XOR (0, 0, SSRC, ROC, SEQ).
    fn nonce(&self, header: &[u8], roc: u32) -> Nonce {
        let mut iv = [0u8; SALT_LEN];
        iv[2..6].copy_from_slice(&header[8..12]);
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&header[2..4]);
        for (byte, salt) in iv.iter_mut().zip(self.salt) {
            *byte ^= salt;
        }
        Nonce::assume_unique_for_key(iv)
    }

    /// Encrypts `packet[header_len..]` in place and appends the tag (RFC 7714 §5.2.1);
    /// `roc` is the rollover counter of the packet's sequence number.
    pub fn seal(&self, packet: &mut Vec<u8>, header_len: usize, roc: u32) -> Result<(), SrtpError> {
        let len = packet.len();
        packet.resize(len + TAG_LEN, 0);
        self.seal_datagram(packet, header_len, roc)
            .inspect_err(|_| packet.truncate(len))
    }

    /// Seals a datagram laid out in place as header, payload and room for the tag (its
    /// last [`TAG_LEN`] bytes): the form a send batch holds it in.
    pub fn seal_datagram(
        &self,
        datagram: &mut [u8],
        header_len: usize,
        roc: u32,
    ) -> Result<(), SrtpError> {
        if header_len < 12 || datagram.len() < header_len + TAG_LEN {
            return Err(SrtpError::Short);
        }
        let (header, rest) = datagram.split_at_mut(header_len);
        let (payload, tag_room) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce = self.nonce(header, roc);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
            .map_err(|_| SrtpError::Key)?;
        tag_room.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Authenticates and decrypts `packet` in place, dropping the tag (RFC 7714 §5.2.2).
    pub fn open(&self, packet: &mut Vec<u8>, header_len: usize, roc: u32) -> Result<(), SrtpError> {
        if packet.len() < header_len + TAG_LEN || header_len < 12 {
            return Err(SrtpError::Short);
        }
        let (header, sealed) = packet.split_at_mut(header_len);
        let nonce = self.nonce(header, roc);
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&*header), sealed)
            .map_err(|_| SrtpError::Authentication)?
            .len();
        packet.truncate(header_len + plain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn session_keys_follow_rfc_3711_appendix_b3() {
        let master_key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let master_salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut key = [0u8; 16];
        derive(&master_key, &master_salt, LABEL_RTP_ENCRYPTION, &mut key).unwrap();
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&master_key, &master_salt, LABEL_RTP_SALT, &mut salt).unwrap();
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    }

    // RFC 7714 §16.1.1: AEAD_AES_128_GCM, ROC 0.
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const SALT: &str = "517569642070726f2071756f";
    const PLAIN: &str = "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e697320646976697361\
                         20696e207061727465732074726573";
    const SEALED: &str = "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f\
                          42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce";

    fn rfc_cipher() -> RtpCipher {
        let salt: [u8; SALT_LEN] = hex(SALT).try_into().unwrap();
        RtpCipher::new(Profile::AeadAes128Gcm, &hex(KEY), salt).unwrap()
    }

    #[test]
    fn sealing_in_place_matches_rfc_7714_and_opening_reverses_it() {
        let cipher = rfc_cipher();
        let mut packet = hex(PLAIN);
        packet.reserve(TAG_LEN);
        let capacity = packet.capacity();
        cipher.seal(&mut packet, 12, 0).unwrap();
        assert_eq!(packet, hex(SEALED));
        assert_eq!(
            packet.capacity(),
            capacity,
            "sealed where it was, no new buffer"
        );
        cipher.open(&mut packet, 12, 0).unwrap();
        assert_eq!(packet, hex(PLAIN));
    }

    #[test]
    fn a_changed_byte_or_the_wrong_rollover_counter_does_not_open() {
        let cipher = rfc_cipher();
        let mut tampered = hex(SEALED);
        tampered[20] ^= 1;
        assert_eq!(
            cipher.open(&mut tampered, 12, 0),
            Err(SrtpError::Authentication)
        );
        let mut wrong_roc = hex(SEALED);
        assert_eq!(
            cipher.open(&mut wrong_roc, 12, 1),
            Err(SrtpError::Authentication)
        );
        assert_eq!(
            cipher.open(&mut vec![0x80; 20], 12, 0),
            Err(SrtpError::Short)
        );
    }

    #[test]
    fn srtcp_opens_as_rfc_7714_says() {
        // RFC 7714 §16.1.2: an SR with SRTCP index 0x5d4, sealed with the same session key
        // and salt as the RTP vector.
        let plain = hex("81c8000d4d617273\
                         4e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef");
        let sealed = hex(
            "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
        );
        let mut opened = Vec::new();
        rfc_cipher().open_rtcp(&sealed, &mut opened).unwrap();
        assert_eq!(opened, plain);
        let mut tampered = sealed.clone();
        tampered[12] ^= 1;
        assert_eq!(
            rfc_cipher().open_rtcp(&tampered, &mut opened),
            Err(SrtpError::Authentication)
        );
        assert_eq!(
            rfc_cipher().open_rtcp(&sealed[..20], &mut opened),
            Err(SrtpError::Short)
        );
    }

    #[test]
    fn each_side_takes_its_own_half_of_the_keying_material() {
        let material: Vec<u8> = (0..56u8).collect(); // 2 x 16-byte keys, 2 x 12-byte salts
        let client =
            RtpCipher::from_keying_material(Profile::AeadAes128Gcm, &material, true).unwrap();
        let server =
            RtpCipher::from_keying_material(Profile::AeadAes128Gcm, &material, false).unwrap();
        let mut packet = hex(PLAIN);
        client.seal(&mut packet, 12, 0).unwrap();
        let mut copy = packet.clone();
        assert!(
            server.open(&mut copy, 12, 0).is_err(),
            "the other side's keys"
        );
        client.open(&mut packet, 12, 0).unwrap();
        assert_eq!(packet, hex(PLAIN));
        assert_eq!(
            RtpCipher::from_keying_material(Profile::AeadAes128Gcm, &material[..50], true).err(),
            Some(SrtpError::MaterialLength(50))
        );
    }
}
