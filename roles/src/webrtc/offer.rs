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

/// Whether the offer's first video m-line lists VP8 before H.264 (the offerer's preference,
/// RFC 3264 §6.1). str0m answers with the first of its own codecs that the offer has, so the
/// engine enables the codecs in the offerer's order.
pub fn prefers_vp8(sdp: &str) -> bool {
    let mut lines = sdp.lines().map(str::trim);
    let Some(video) = lines.find(|l| l.starts_with("m=video")) else {
        return false;
    };
    // m=video <port> <proto> <pt> <pt> ...
    let order: Vec<&str> = video.split_whitespace().skip(3).collect();
    let encoding_of = |pt: &str| {
        sdp.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .find(|l| l.split_whitespace().next() == Some(pt))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|enc| enc.split('/').next())
            .map(str::to_ascii_lowercase)
    };
    order
        .iter()
        .filter_map(|pt| encoding_of(pt))
        .find(|enc| enc == "vp8" || enc == "h264")
        .is_some_and(|enc| enc == "vp8")
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

    #[test]
    fn the_offerers_video_codec_order_is_read_from_its_first_video_line() {
        let vp8_first = "v=0\r\nm=audio 9 X 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 X 96 97 102\r\na=rtpmap:102 H264/90000\r\na=rtpmap:97 rtx/90000\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(prefers_vp8(vp8_first));
        let h264_first =
            "v=0\r\nm=video 9 X 102 96\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";
        assert!(!prefers_vp8(h264_first));
        assert!(!prefers_vp8("v=0\r\nm=audio 9 X 111\r\n"), "no video");
        assert!(!prefers_vp8("m=video"), "malformed");
    }
}
