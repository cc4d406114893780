/// Everything that can go wrong while interpreting bytes or names that came from outside.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A stream id must be 1 to 64 characters from `[A-Za-z0-9_-]`.
    #[error("invalid stream id {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")]
    InvalidStreamId(String),
    /// A duration such as `10s`, `5m` or `250ms` could not be read.
    #[error("invalid duration {0:?}: write a number followed by ms, s, m or h (e.g. 10s)")]
    InvalidDuration(String),
    /// An H.264 sequence parameter set ended early or held an impossible value.
    #[error("malformed H.264 SPS: {0}")]
    MalformedSps(&'static str),
}
