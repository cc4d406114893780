//! The edge role: serving viewers. Today WebRTC viewers over WHEP on the stream's own node.

pub mod whep;
