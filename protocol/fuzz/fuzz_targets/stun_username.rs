//! Any datagram from an unknown source, as the WebRTC engine routes it: the STUN USERNAME
//! reader returns a ufrag or nothing, never panics, and the ufrag is inside the datagram.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(ufrag) = cascade_protocol::stun::binding_request_recipient_ufrag(data) {
        assert!(!ufrag.is_empty() && !ufrag.contains(':'));
    }
});
