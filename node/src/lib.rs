//! The `cascade` node: configuration, the HTTP surface (WHIP, WHEP, REST API, `/metrics`, the
//! page) and the startup of the roles it plays.
//!
//! - [`config`]: one config struct from flags, `CASCADE_*` env and a TOML file.
//! - [`access`]: publish/play authorisation as a pure decision.
//! - [`cluster`]: Raft, the replicated state, joining, load and routing decisions.
//! - [`http`]: the routes; one file per surface (`whip.rs`, `whep.rs`, `api.rs`, ...).
//! - [`node`]: wiring a node together and running it.

pub mod access;
pub mod cluster;
pub mod config;
pub mod http;
pub mod node;

mod error;

pub use error::NodeError;
