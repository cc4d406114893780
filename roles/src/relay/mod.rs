//! Media between nodes over QUIC, in the protocol of `docs/relay.md`.
//!
//! - [`connection`]: the async driver of one relay connection around the sans-IO session
//!   in `cascade_protocol::relay`; serves local tracks and writes pulled ones.
//! - [`pull`]: [`Relay`], the node's relay: one pull per stream shared by all local viewers,
//!   which follows the stream to a new origin by itself.
//! - [`group`]: track names and how frames are grouped.

pub mod connection;
pub mod group;
pub mod pull;

pub use connection::{PullEvent, PullTarget, RelayConnection, RelaySource};
pub use pull::{OriginLocator, Relay};
