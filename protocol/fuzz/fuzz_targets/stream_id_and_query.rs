//! What a client puts in a URL: the stream id path segment, and the query string of a
//! WHIP/WHEP POST (`region`, `routed`) decoded as the HTTP layer decodes it, with the route
//! pass checked. A valid id is always `[A-Za-z0-9_-]{1,64}`; a pass made up by the client
//! never verifies.
#![no_main]

use cascade_protocol::{StreamId, route_pass};

#[derive(serde::Deserialize)]
struct RouteQuery {
    region: Option<String>,
    routed: Option<String>,
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    let stream = StreamId::parse(path);
    if let Ok(stream) = &stream {
        let id = stream.as_str();
        assert!(!id.is_empty() && id.len() <= 64);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    }
    if let Ok(parsed) = serde_urlencoded::from_str::<RouteQuery>(query) {
        let _ = parsed.region;
        if let (Some(pass), Ok(stream)) = (parsed.routed, &stream) {
            let key = [7u8; 32];
            assert!(route_pass::verify(&key, "whep", stream, 1, 1_000, &pass).is_err());
        }
    }
});
