//! Any bytes POSTed as an SDP offer, through everything before a session exists: our codec
//! check, str0m's SDP parser and negotiation, for a publisher and for a viewer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cascade_roles::webrtc::fuzz_offer(data);
});
