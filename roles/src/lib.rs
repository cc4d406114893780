//! The roles a Cascade node plays.
//!
//! - [`broadcast`]: the live media of a stream (a catalog of named tracks, group cache,
//!   fan-out to subscribers).
//! - [`origin`]: streams on this node, their actors, ingest (WHIP, RTMP, SRT) and restreams.
//! - [`edge`]: viewers, today WHEP.
//! - [`webrtc`]: the WebRTC engines (one for publishers, one for viewers; each a UDP socket,
//!   an ICE-TCP port and str0m sessions).
//! - [`admission`]: whether the node takes one more session (caps and the engine's load).
//! - [`listen`]: accepting TCP connections without spinning on errors.
//! - [`quic`]: node-to-node QUIC with mutual TLS under the cluster CA.
//! - [`relay`]: media between nodes over QUIC (`docs/relay.md`): serving and pulling broadcasts.
//! - [`packager`]: LL-HLS renditions of live streams, packaged on demand.
//! - [`transcoder`]: renditions (ABR rungs, AAC↔Opus) made in a supervised child process.
//! - [`session`]: the per-session actor that owns a publisher's or viewer's lifecycle.
//!
//! Actors (ractor) carry lifecycle and control; media never passes through a mailbox.

pub mod admission;
pub mod broadcast;
pub mod edge;
pub mod listen;
pub mod origin;
pub mod packager;
pub mod quic;
pub mod relay;
pub mod session;
pub mod system_tls;
pub mod transcoder;
pub mod webrtc;

mod error;

pub use error::RoleError;
