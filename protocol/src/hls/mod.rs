//! HLS and Low-Latency HLS (RFC 8216 and its second edition draft): the playlists Cascade
//! serves, as pure functions of what the packager has written.
//!
//! - [`cmaf`]: fragmented MP4 (CMAF) init segments and fragments of H.264 tracks.
//! - [`fetch`]: the wire format of HLS fetches from one node to another.
//! - [`packager`]: one rendition cut into parts and segments, with its playlist, sans IO.
//! - [`playlist`]: media and multivariant playlists (parts, preload hints, server control,
//!   rendition reports, discontinuities, delta updates) and the blocking-reload rule.

pub mod cmaf;
pub mod fetch;
pub mod packager;
pub mod playlist;
