//! How one node fetches an HLS object from the stream's packager on another node, over the
//! cluster's QUIC (ALPN `cascade-hls/1`): one bidirectional stream per request.
//!
//! A request is the path and query as the player sent them (`/hls/show/360p/index.m3u8?
//! _HLS_msn=12&_HLS_part=2`), after a 2-byte length. A response is a head (status, content
//! type, cache control, each length-prefixed) and then the body until the stream ends.
//! Both sides are values in and bytes out; the node's drivers own the QUIC streams.

use crate::ProtocolError;

/// ALPN of HLS fetches between nodes.
pub const ALPN_HLS: &[u8] = b"cascade-hls/1";
/// Longest request path and query.
pub const MAX_REQUEST: usize = 2048;
/// Largest body a fetch takes (a segment of a high rendition is a few MB).
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Encodes a request for `path_and_query`; `None` when it is longer than [`MAX_REQUEST`].
pub fn encode_request(path_and_query: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(path_and_query.len())
        .ok()
        .filter(|l| usize::from(*l) <= MAX_REQUEST)?;
    let mut out = Vec::with_capacity(2 + path_and_query.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(path_and_query.as_bytes());
    Some(out)
}

/// Decodes a whole request.
pub fn decode_request(bytes: &[u8]) -> Result<String, ProtocolError> {
    let (len, rest) = split_len(bytes, "HLS fetch request")?;
    if len > MAX_REQUEST {
        return Err(ProtocolError::NameTooLong(len as u64));
    }
    let (path, rest) = take(rest, len, "HLS fetch request")?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes(
            "HLS fetch request",
            rest.len(),
        ));
    }
    let path = std::str::from_utf8(path).map_err(|_| ProtocolError::NameNotUtf8)?;
    if !path.starts_with("/hls/") {
        return Err(ProtocolError::Truncated("HLS fetch request path"));
    }
    Ok(path.to_owned())
}

/// A response's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// `Cache-Control`, as the packager set it.
    pub cache_control: String,
}

impl ResponseHead {
    /// The head's bytes; what follows them is the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.status.to_be_bytes());
        for text in [&self.content_type, &self.cache_control] {
            let text = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            out.extend_from_slice(text);
        }
        out
    }

    /// Decodes a head at the start of `bytes`; returns it and the body after it.
    pub fn decode(bytes: &[u8]) -> Result<(ResponseHead, &[u8]), ProtocolError> {
        let (status, rest) = take(bytes, 2, "HLS fetch response")?;
        let status = u16::from_be_bytes([status[0], status[1]]);
        let mut texts = Vec::with_capacity(2);
        let mut rest = rest;
        for _ in 0..2 {
            let (len, after) = split_len(rest, "HLS fetch response")?;
            let (text, after) = take(after, len, "HLS fetch response")?;
            texts.push(String::from_utf8_lossy(text).into_owned());
            rest = after;
        }
        let cache_control = texts.pop().unwrap_or_default();
        let content_type = texts.pop().unwrap_or_default();
        Ok((
            ResponseHead {
                status,
                content_type,
                cache_control,
            },
            rest,
        ))
    }
}

fn split_len<'a>(bytes: &'a [u8], what: &'static str) -> Result<(usize, &'a [u8]), ProtocolError> {
    let (len, rest) = take(bytes, 2, what)?;
    Ok((usize::from(u16::from_be_bytes([len[0], len[1]])), rest))
}

fn take<'a>(
    bytes: &'a [u8],
    n: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    if bytes.len() < n {
        return Err(ProtocolError::Truncated(what));
    }
    Ok(bytes.split_at(n))
}

/// How long an edge may keep a response, from its `Cache-Control` (`max-age`; errors and
/// responses without one for a second, as the packager's errors say).
pub fn cache_seconds(status: u16, cache_control: &str) -> u64 {
    let max_age = cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.parse::<u64>().ok());
    match (status, max_age) {
        (200, Some(age)) => age,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_bad_ones_are_refused() {
        let path = "/hls/show/360p/index.m3u8?_HLS_msn=12&_HLS_part=2";
        let bytes = encode_request(path).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), path);
        assert!(encode_request(&"x".repeat(MAX_REQUEST + 1)).is_none());
        assert_eq!(
            decode_request(&bytes[..5]),
            Err(ProtocolError::Truncated("HLS fetch request"))
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing),
            Err(ProtocolError::TrailingBytes(..))
        ));
        let other = encode_request("/api/v1/cluster").unwrap();
        assert!(decode_request(&other).is_err(), "only HLS paths");
    }

    #[test]
    fn a_response_head_round_trips_with_the_body_after_it() {
        let head = ResponseHead {
            status: 200,
            content_type: "video/iso.segment".into(),
            cache_control: "max-age=31536000, immutable".into(),
        };
        let mut bytes = head.encode();
        bytes.extend_from_slice(b"moof");
        let (decoded, body) = ResponseHead::decode(&bytes).unwrap();
        assert_eq!(decoded, head);
        assert_eq!(body, b"moof");
        assert!(ResponseHead::decode(&bytes[..3]).is_err());
    }

    #[test]
    fn edges_keep_what_the_packager_says_and_errors_for_a_second() {
        assert_eq!(
            cache_seconds(200, "max-age=31536000, immutable"),
            31_536_000
        );
        assert_eq!(cache_seconds(200, "max-age=1"), 1);
        assert_eq!(cache_seconds(404, "max-age=1"), 1);
        assert_eq!(cache_seconds(503, ""), 1);
        assert_eq!(cache_seconds(200, "no-store"), 1);
    }
}
