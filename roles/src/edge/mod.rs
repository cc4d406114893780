//! The edge role: serving viewers. WebRTC viewers over WHEP, each moved along the stream's
//! renditions by its bandwidth estimate ([`abr`]) unless it pinned one.

pub(crate) mod abr;
pub mod fast_path;
pub(crate) mod viewer_egress;
pub mod whep;
