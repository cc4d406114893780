//! Proof that a redirect was issued by this cluster: the `routed` query parameter.
//!
//! A node that sends a WHEP viewer to another edge (`307`) appends
//! `?routed=<expires>.<target node>.<mac>`; the target serves the request itself instead of
//! routing it again. The MAC is HMAC-SHA256 under a key every member derives from the
//! replicated cluster CA, over the endpoint, stream, target node and expiry, so a client
//! cannot forge a pass to pick its own edge, skip a drain, or reuse one for another stream
//! or node. Pure functions: time is passed in.

use crate::StreamId;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::cluster::NodeId;

/// How long a pass is valid: enough for a client to follow the redirect.
pub const PASS_LIFETIME_SECS: u64 = 30;

/// Why a pass was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassRefused {
    /// Not `<expires>.<node>.<mac>` with numbers and hex.
    Malformed,
    /// Issued for another node.
    OtherNode,
    /// Older than [`PASS_LIFETIME_SECS`].
    Expired,
    /// The MAC does not match: forged, or for another stream or endpoint.
    BadSignature,
}

impl PassRefused {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            PassRefused::Malformed => "malformed",
            PassRefused::OtherNode => "other_node",
            PassRefused::Expired => "expired",
            PassRefused::BadSignature => "bad_signature",
        }
    }
}

/// The key every member derives from the cluster CA's private key.
pub fn derive_key(ca_key_pem: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"cascade route pass v1\0");
    hasher.update(ca_key_pem.as_bytes());
    hasher.finalize().into()
}

fn mac(
    key: &[u8],
    endpoint: &str,
    stream: &StreamId,
    target: NodeId,
    expires: u64,
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{endpoint}\n{stream}\n{target:016x}\n{expires}").as_bytes());
    mac
}

/// A pass for `target` to serve `endpoint` of `stream` until `now_unix + PASS_LIFETIME_SECS`.
pub fn issue(
    key: &[u8],
    endpoint: &str,
    stream: &StreamId,
    target: NodeId,
    now_unix: u64,
) -> String {
    let expires = now_unix + PASS_LIFETIME_SECS;
    let tag = mac(key, endpoint, stream, target, expires)
        .finalize()
        .into_bytes();
    let hex = crate::flv::hex(&tag);
    format!("{expires}.{target:016x}.{hex}")
}

/// Checks a pass presented to node `me`.
pub fn verify(
    key: &[u8],
    endpoint: &str,
    stream: &StreamId,
    me: NodeId,
    now_unix: u64,
    pass: &str,
) -> Result<(), PassRefused> {
    let mut parts = pass.splitn(3, '.');
    let (Some(expires), Some(target), Some(tag)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(PassRefused::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| PassRefused::Malformed)?;
    if target.len() != 16 {
        return Err(PassRefused::Malformed);
    }
    let target = u64::from_str_radix(target, 16).map_err(|_| PassRefused::Malformed)?;
    let tag = decode_hex(tag).ok_or(PassRefused::Malformed)?;
    if target != me {
        return Err(PassRefused::OtherNode);
    }
    if expires < now_unix || expires > now_unix + PASS_LIFETIME_SECS {
        return Err(PassRefused::Expired);
    }
    // `verify_slice` compares in constant time.
    mac(key, endpoint, stream, target, expires)
        .verify_slice(&tag)
        .map_err(|_| PassRefused::BadSignature)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    // A SHA-256 tag: 32 bytes.
    crate::flv::from_hex(text).filter(|tag| tag.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_pass_admits_only_its_node_stream_and_endpoint_while_fresh() {
        let show = StreamId::parse("show").unwrap();
        let other = StreamId::parse("other").unwrap();
        let pass = issue(KEY, "whep", &show, 7, 1_000);
        assert_eq!(verify(KEY, "whep", &show, 7, 1_000, &pass), Ok(()));
        assert_eq!(verify(KEY, "whep", &show, 7, 1_030, &pass), Ok(()));
        assert_eq!(
            verify(KEY, "whep", &show, 7, 1_031, &pass),
            Err(PassRefused::Expired)
        );
        assert_eq!(
            verify(KEY, "whep", &show, 8, 1_000, &pass),
            Err(PassRefused::OtherNode)
        );
        assert_eq!(
            verify(KEY, "whep", &other, 7, 1_000, &pass),
            Err(PassRefused::BadSignature)
        );
        assert_eq!(
            verify(KEY, "whip", &show, 7, 1_000, &pass),
            Err(PassRefused::BadSignature)
        );
        assert_eq!(
            verify(b"another cluster's key", "whep", &show, 7, 1_000, &pass),
            Err(PassRefused::BadSignature)
        );
    }

    #[test]
    fn forged_and_garbled_passes_are_refused() {
        let show = StreamId::parse("show").unwrap();
        for junk in [
            "1",
            "",
            "1.0000000000000007",
            "x.0000000000000007.00",
            "9999999999.7.ab",
        ] {
            assert_eq!(
                verify(KEY, "whep", &show, 7, 1_000, junk),
                Err(PassRefused::Malformed),
                "{junk:?}"
            );
        }
        // A later expiry with the old signature: the MAC covers the expiry.
        let pass = issue(KEY, "whep", &show, 7, 1_000);
        let tampered = pass.replacen("1030", "1029", 1);
        assert_eq!(
            verify(KEY, "whep", &show, 7, 1_000, &tampered),
            Err(PassRefused::BadSignature)
        );
        // A pass claiming an expiry far in the future is not believed either.
        let far = format!("99999.{}", pass.split_once('.').unwrap().1);
        assert_eq!(
            verify(KEY, "whep", &show, 7, 1_000, &far),
            Err(PassRefused::Expired)
        );
    }
}
