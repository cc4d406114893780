//! End-to-end tests: real `cascade` processes, FFmpeg-encoded media, webrtc-rs peers and
//! headless Chromium. One behaviour per module.

mod support;

mod abr;
mod admission;
mod api_contract;
mod bad_input;
mod browser_page;
mod cluster;
mod config_samples;
mod dashboards;
mod fast_path;
mod handshake_timeout;
mod history;
mod history_mongodb;
mod hls;
mod hls_edge;
mod hls_fallback;
mod host_address;
mod https;
mod ice_tcp;
mod interop_stacks;
mod late_joiner;
mod loadtest;
mod publisher_reconnect;
mod publisher_return;
mod publisher_takeover;
mod recording;
mod restream;
mod rtmp_ingest;
mod rtsp_pull;
mod session_ownership;
mod signed_tokens;
mod snapshot;
mod srt_ingest;
mod transcoder;
mod transcoder_standby;
mod webhooks;
mod whip_whep_interop;
