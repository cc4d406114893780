//! Media between nodes over QUIC, in the protocol of `docs/relay.md`.
//!
//! - [`connection`]: the async driver of one relay connection around the sans-IO session
//!   in `cascade_protocol::relay`; serves local tracks and writes pulled ones.
//! - [`pull`]: [`Relay`], the node's relay: one pull per stream shared by all local viewers,
//!   which follows the stream to a new origin by itself.
//! - [`renditions`]: the origin pulls the renditions of transcoders on other nodes, merging
//!   an active and a standby transcoder's frames into one track.
//! - [`group`]: track names and how frames are grouped.

pub mod connection;
pub mod group;
pub mod pull;
pub mod renditions;

pub use connection::{PullEvent, PullTarget, RelayConnection, RelaySource};
pub use pull::{OriginLocator, PullHold, Relay};
pub use renditions::{RenditionPull, RenditionTracks};
