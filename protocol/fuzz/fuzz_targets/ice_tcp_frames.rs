//! Any bytes read from an ICE-TCP connection, cut into RFC 4571 frames: whole frames or a
//! wait for more, never a panic; re-framing what was cut gives the same bytes back.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut read = BytesMut::from(data);
    let mut reframed = Vec::new();
    while let Some(frame) = cascade_protocol::ice_tcp::next_frame(&mut read) {
        assert!(cascade_protocol::ice_tcp::frame_into(&mut reframed, &frame));
    }
    assert!(reframed.len() + read.len() <= data.len());
});
