//! The roles a Cascade node plays.
//!
//! - [`broadcast`]: the live media of a stream (tracks, group cache, fan-out to subscribers).
//! - [`origin`]: streams on this node, their actors, and WHIP ingest.
//! - [`edge`]: viewers, today WHEP.
//! - [`webrtc`]: the shared WebRTC engine (one UDP socket, str0m sessions) both use.
//! - [`quic`]: node-to-node QUIC with mutual TLS under the cluster CA.
//! - [`relay`]: media between nodes over QUIC (`docs/relay.md`): serving and pulling broadcasts.
//! - [`session`]: the per-session actor that owns a publisher's or viewer's lifecycle.
//!
//! Actors (ractor) carry lifecycle and control; media never passes through a mailbox.

pub mod admission;
pub mod broadcast;
pub mod edge;
pub mod origin;
pub mod quic;
pub mod relay;
pub mod session;
pub mod webrtc;

mod error;

pub use error::RoleError;
