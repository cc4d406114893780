//! Any bytes as an RTMP publisher's connection after the handshake: the chunk stream, AMF0
//! commands and the FLV tags inside, through `cascade_protocol::rtmp::RtmpServer`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cascade_protocol::rtmp::fuzz_connection(data);
});
