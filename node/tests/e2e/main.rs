//! End-to-end tests: real `cascade` processes, FFmpeg-encoded media, webrtc-rs peers and
//! headless Chromium. One behaviour per module.

mod support;

mod bad_input;
mod browser_page;
mod cluster;
mod config_samples;
mod late_joiner;
mod loadtest;
mod publisher_reconnect;
mod whip_whep_interop;
