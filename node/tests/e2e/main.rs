//! End-to-end tests: real `cascade` processes, FFmpeg-encoded media, webrtc-rs peers and
//! headless Chromium. One behaviour per module.

mod support;

mod whip_whep_interop;
