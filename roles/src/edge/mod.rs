//! The edge role: serving viewers. WebRTC viewers over WHEP, each moved along the stream's
//! renditions by its bandwidth estimate ([`abr`]) unless it pinned one; what each viewer's
//! packets look like ([`viewer_egress`]) and the per-viewer hot path that seals them
//! ([`fast_path`]).

pub(crate) mod abr;
pub mod fast_path;
pub(crate) mod viewer_egress;
pub mod whep;
