//! The `Cascade-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! with the node's `--webhook-secret`. A receiver recomputes the HMAC over the timestamp and
//! the raw body and refuses a timestamp outside its replay window ([`verify`] is how).

use cascade_protocol::flv::{from_hex, hex};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "Cascade-Signature";

/// How far a timestamp may be from a receiver's clock, as [`verify`] checks it.
pub const REPLAY_WINDOW_SECS: u64 = 300;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&digest))
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not `t=...,v1=...`.
    Unreadable,
    /// Outside the replay window.
    Stale,
    /// The HMAC does not match.
    Mismatch,
}

/// Checks a header value against `body` at `now` (seconds since the epoch), as a receiver
/// does.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64) -> Result<(), Invalid> {
    let mut timestamp = None;
    let mut signature = None;
    for field in header.split(',') {
        match field.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signature = from_hex(v),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(Invalid::Unreadable);
    };
    if now.abs_diff(timestamp) > REPLAY_WINDOW_SECS {
        return Err(Invalid::Stale);
    }
    mac(secret, timestamp, body)
        .verify_slice(&signature)
        .map_err(|_| Invalid::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies_and_a_changed_body_stale_time_or_other_secret_does_not() {
        let body = br#"{"type":"stream.started"}"#;
        let header = sign(b"secret", 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="), "{header}");
        assert_eq!(verify(b"secret", &header, body, 1_800_000_100), Ok(()));
        assert_eq!(
            verify(
                b"secret",
                &header,
                br#"{"type":"stream.ended"}"#,
                1_800_000_000
            ),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, body, 1_800_000_000),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &header, body, 1_800_000_000 + 301),
            Err(Invalid::Stale)
        );
        assert_eq!(
            verify(b"secret", "v1=zz", body, 0),
            Err(Invalid::Unreadable)
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(b"Jefe", b"0.what do ya want for
        // nothing?", hashlib.sha256).hexdigest().
        assert_eq!(
            sign(b"Jefe", 0, b"what do ya want for nothing?"),
            "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
    }
}
