//! Any bytes on the relay's control stream or a group stream, split anywhere, fed to both
//! decoders and to sessions of both roles: an error or items, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cascade_protocol::relay::fuzz_decoders(data, std::time::Instant::now());
});
