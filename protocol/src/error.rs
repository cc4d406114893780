/// Everything that can go wrong while interpreting bytes or names that came from outside.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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

    /// LL-HLS segment, part or window lengths that do not fit together (`hls::packager`).
    #[error("HLS timing: {0}")]
    InvalidHlsTiming(String),
    /// A CMAF track or fragment could not be made (`hls::cmaf`).
    #[error("CMAF: {0}")]
    Cmaf(&'static str),

    // --- relay wire format (`relay::wire`) ---
    #[error("varint does not fit in 62 bits")]
    VarintTooLarge,
    #[error("control message body of {0} bytes exceeds the {max}-byte limit", max = crate::relay::wire::MAX_CONTROL_BODY)]
    ControlTooLong(u64),
    #[error("frame of {0} bytes exceeds the {max}-byte limit", max = crate::relay::wire::MAX_FRAME_BYTES)]
    FrameTooLong(u64),
    #[error("name of {0} bytes exceeds the {max}-byte limit", max = crate::relay::wire::MAX_NAME_BYTES)]
    NameTooLong(u64),
    #[error("name is not UTF-8")]
    NameNotUtf8,
    #[error("{0} body ended early")]
    Truncated(&'static str),
    #[error("{0} body has {1} bytes left over")]
    TrailingBytes(&'static str, usize),
    #[error("unknown stream type {0:#x}")]
    UnknownStreamType(u64),
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("stream ended in the middle of a {0}")]
    EndedMidItem(&'static str),
    /// A pulled source's address is not one Cascade can pull.
    #[error("invalid pull source: {0}")]
    InvalidPullSource(String),
    // --- cluster planning (`cluster`) ---
    #[error("no healthy node can take the {0:?} role")]
    NoCandidate(crate::cluster::NodeRole),
}
