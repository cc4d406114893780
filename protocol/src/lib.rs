//! Pure, sans-IO building blocks of Cascade.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: time is always
//! passed in. That keeps every rule here testable in one thread, deterministically.
//!
//! - [`stream_id`]: the validated name of a live stream (`[A-Za-z0-9_-]{1,64}`).
//! - [`media`]: the Broadcast ▸ Track ▸ Group ▸ Frame vocabulary shared by every role.
//! - [`mpegts`]: an MPEG-TS demuxer (H.264, H.265, AAC/ADTS, Opus) for SRT ingest.
//! - [`hls`]: LL-HLS media and multivariant playlists and the blocking-reload rule.
//! - [`h264`]: Annex B splitting and SPS parsing (resolution for the catalog).
//! - [`flv`]: FLV audio/video tag bodies as RTMP carries them (legacy and enhanced RTMP),
//!   decoder configuration records, AVCC to Annex B.
//! - [`sei`]: H.264 user-data SEI messages (the load tester's capture-time stamps).
//! - [`ogg`]: Ogg pages to Opus packets (the load tester's audio source).
//! - [`vp8`]: VP8 keyframe header parsing (resolution for the catalog).
//! - [`keyframe`]: coalescing and rate-limiting keyframe requests on their way upstream.
//! - [`timeline`]: keeping a track's timestamps continuous when its publisher changes, and
//!   unwrapping 32-bit millisecond and 33-bit 90 kHz clocks without drift.
//! - [`rtmp`]: one RTMP publishing connection, sans-IO (handshake, chunk stream, commands).
//! - [`rtp_payload`]: a frame's RTP payloads, made once and shared by every viewer.
//! - [`abr`]: which video rendition a WebRTC viewer gets from its bandwidth estimate, with hysteresis.
//! - [`priming`]: the timestamps of a cached group sent to a viewer that joins or lost a keyframe.
//! - [`pull`]: pulled sources (RTSP cameras): what a pull asks for, its states, its backoff.
//! - [`cluster`]: the cluster's decisions as values (roles, stream placement, edge choice, voters).
//! - [`relay`]: the node-to-node relay protocol (wire format and session state machine).
//! - [`transcode`]: which renditions a source gets (the ladder), and the node ↔ transcoder pipe.
//! - [`srt_stream_id`]: what an SRT caller's `streamid` asks for (both forms).
//! - [`secret`]: comparing tokens and digests in constant time.
//! - [`ice_tcp`]: RFC 4571 framing of ICE datagrams on TCP (ICE-TCP, RFC 6544).
//! - [`stun`]: the recipient ufrag of an ICE check, to route a new peer's first datagram in O(1).
//! - [`route_pass`]: the signed pass a redirected request carries to the node it was sent to.
//! - [`duration`]: the `30s` / `5m` / `250ms` duration syntax used in every config and CLI.

pub mod abr;
pub mod clock;
pub mod cluster;
pub mod duration;
pub mod flv;
pub mod h264;
pub mod hls;
pub mod ice_tcp;
pub mod keyframe;
pub mod media;
pub mod mpegts;
pub mod ogg;
pub mod priming;
pub mod pull;
pub mod relay;
pub mod route_pass;
pub mod rtmp;
pub mod rtp_payload;
pub mod secret;
pub mod sei;
pub mod srt_stream_id;
pub mod stream_id;
pub mod stun;
pub mod timeline;
pub mod transcode;
pub mod vp8;

mod error;

pub use error::ProtocolError;
pub use media::{Codec, Frame, MediaKind, TrackInfo, WebRtcPlan};
pub use stream_id::StreamId;
