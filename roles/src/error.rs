/// Everything a role can refuse or fail at. Each variant maps to one HTTP status in the node.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The SDP offer could not be parsed or negotiated.
    #[error("malformed SDP offer: {0}")]
    BadOffer(String),
    /// The offer has no media line with a codec Cascade carries.
    #[error(
        "the offer has no codec Cascade supports (video: H264 packetization-mode=1 or VP8; audio: opus); offered: {0}"
    )]
    NoSupportedCodec(String),
    /// Nobody publishes this stream (and no publisher is expected back).
    #[error("stream {0} is not live on this node")]
    StreamNotFound(cascade_protocol::StreamId),
    /// A publisher is already live on this stream.
    #[error(
        "stream {0} already has a live publisher; end that session first or use another stream id"
    )]
    PublisherAlreadyLive(cascade_protocol::StreamId),
    /// The stream cannot be watched over WebRTC as it is (B-frames, a codec browsers'
    /// WebRTC does not take); a transcoder would make a rendition that can.
    #[error("stream {stream} cannot be played over WebRTC: {unfit}")]
    NotForWebRtc {
        /// The stream asked for.
        stream: cascade_protocol::StreamId,
        /// Why.
        unfit: cascade_protocol::media::WebRtcUnfit,
    },
    /// A viewer pinned a rendition the stream does not have, or one WebRTC cannot carry.
    #[error("stream {stream} has no rendition {rendition} WebRTC viewers can be given; it has: {}", available.join(", "))]
    UnknownRendition {
        /// The stream asked for.
        stream: cascade_protocol::StreamId,
        /// The rendition asked for.
        rendition: String,
        /// What it has.
        available: Vec<String>,
    },
    /// An ingest connection named its stream badly (an RTMP stream key that is no stream id).
    #[error("{0}")]
    BadIngest(String),
    /// The publisher did not present a token that may publish this stream.
    #[error("not allowed to publish stream {stream}: {why}")]
    NotAuthorized {
        /// The stream asked for.
        stream: cascade_protocol::StreamId,
        /// What was missing or wrong, for the client.
        why: &'static str,
    },
    /// The stream is live with a publisher on another node of the cluster.
    #[error(
        "stream {stream} already has a live publisher on node {node}; end that session first or use another stream id"
    )]
    LiveElsewhere {
        /// The stream asked for.
        stream: cascade_protocol::StreamId,
        /// The node it is live on.
        node: String,
    },
    /// No session with this id exists on this stream.
    #[error("no session {session} on stream {stream}")]
    SessionNotFound {
        /// The stream named in the request.
        stream: cascade_protocol::StreamId,
        /// The session named in the request.
        session: String,
    },
    /// A DELETE for a session opened with a Bearer token did not carry that token.
    #[error(
        "this session on stream {stream} was opened with a Bearer token: end it with the same Authorization header"
    )]
    NotSessionOwner {
        /// The stream named in the request.
        stream: cascade_protocol::StreamId,
    },
    /// The node is at capacity: a fixed cap or the engine's lag (a `503` with `Retry-After`,
    /// or a `307` to another edge that has room).
    #[error("{0}")]
    Overloaded(crate::admission::Overload),
    /// The node is shutting down or an internal task has stopped.
    #[error("the node is not accepting sessions right now: {0}")]
    Unavailable(String),
    /// The WebRTC socket could not be opened.
    #[error("cannot bind the WebRTC UDP socket {addr}: {source}")]
    Bind {
        /// The address from `webrtc-addr`.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Certificates or TLS between nodes could not be set up.
    #[error("cluster trust: {0}")]
    Trust(String),
    /// A transcoder pipeline could not be built or failed.
    #[error("transcoder: {0}")]
    Transcoder(String),
    /// The media relay to another node failed.
    #[error("relay: {0}")]
    Relay(String),
    /// A recording cannot be started or stopped as asked (one is already running, none is).
    #[error("recording: {0}")]
    RecordingConflict(String),
    /// A recording could not be written to disk.
    #[error("recording storage: {0}")]
    RecordingStorage(String),
}
