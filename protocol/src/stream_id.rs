//! The validated name of a live stream.

use std::fmt;
use std::sync::Arc;

use crate::ProtocolError;

/// Longest stream id we accept; keeps metric labels and URLs bounded.
pub const MAX_STREAM_ID_LEN: usize = 64;

/// A stream id: 1 to 64 characters from `[A-Za-z0-9_-]`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates `name` as a stream id.
    pub fn parse(name: &str) -> Result<Self, ProtocolError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > MAX_STREAM_ID_LEN || !name.chars().all(valid_char) {
            return Err(ProtocolError::InvalidStreamId(
                name.chars().take(80).collect(),
            ));
        }
        Ok(Self(name.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A stream key as encoders send it: the stream's name and, after `?`, a token as `key=` or
/// `token=` (`show?key=s3cret`), the way RTMP stream keys and SRT streamids carry one.
pub fn split_key(key: &str) -> (&str, Option<String>) {
    let (name, query) = key.split_once('?').unwrap_or((key, ""));
    let token = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "key" || *k == "token")
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty());
    (name, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_digits_dash_and_underscore() {
        assert_eq!(StreamId::parse("Cam_01-a").unwrap().as_str(), "Cam_01-a");
        assert!(StreamId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        for bad in ["", "a b", "a/b", "ü", "a.b", "../x", &"a".repeat(65)] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
