//! The `cascade` node: configuration, the HTTP surface (WHIP, WHEP, REST API, `/metrics`, the
//! page) and the startup of the roles it plays.
//!
//! - [`config`]: one config struct from flags, `CASCADE_*` env and a TOML file.
//! - [`access`]: publish/play authorisation as a pure decision.
//! - [`cluster`]: Raft, the replicated state, joining, load and routing decisions.
//! - [`ingest`]: the access and placement decision for RTMP publishers.
//! - [`http`]: the routes; one file per surface (`whip.rs`, `whep.rs`, `api.rs`, ...).
//! - [`node_cli`]: `cascade node list|drain|remove` against the admin API.
//! - [`node`]: wiring a node together and running it.

pub mod access;
pub mod cluster;
pub mod config;
pub mod history;
pub mod http;
pub mod ingest;
pub mod node;
pub mod node_cli;
pub mod observer;
pub mod webhooks;

mod error;

pub use error::NodeError;
