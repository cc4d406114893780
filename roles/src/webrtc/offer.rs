//! Quick checks of an SDP offer before negotiating, so that a client hears *why* we refuse.

use crate::RoleError;

/// Accepts the offer when at least one media line offers a codec we carry.
pub fn check_codecs(sdp: &str) -> Result<(), RoleError> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(RoleError::BadOffer(
            "an SDP offer starts with \"v=0\"".into(),
        ));
    }
    if !sdp.lines().any(|l| l.starts_with("m=")) {
        return Err(RoleError::BadOffer(
            "the offer has no media line (m=)".into(),
        ));
    }
    let offered: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|enc| enc.split('/').next())
        .collect();
    let supported =
        |name: &&str| ["h264", "vp8", "opus"].contains(&name.to_ascii_lowercase().as_str());
    if offered.iter().any(supported) {
        Ok(())
    } else {
        let mut names: Vec<&str> = offered;
        names.sort_unstable();
        names.dedup();
        Err(RoleError::NoSupportedCodec(if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_offers_without_our_codecs_and_says_what_was_offered() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 AV1/90000\r\n";
        let err = check_codecs(offer).unwrap_err().to_string();
        assert!(err.contains("AV1"), "{err}");
        assert!(check_codecs("hello").is_err());
        assert!(check_codecs("v=0\r\n").is_err());
        assert!(check_codecs("v=0\r\nm=video 9 X 96\r\na=rtpmap:96 H264/90000\r\n").is_ok());
    }
}
