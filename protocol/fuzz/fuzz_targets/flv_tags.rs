//! Any bytes as an FLV video tag, an audio tag, a decoder configuration record and an AVCC
//! frame: `cascade_protocol::flv` returns a value or an error, never panics.
#![no_main]

use cascade_protocol::flv::{self, AudioSpecificConfig, AvcConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flv::parse_video(data);
    let _ = flv::parse_audio(data);
    let _ = AudioSpecificConfig::parse(data);
    // The first bytes as a record, the rest as a frame of it.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (record, frame) = data.split_at(split);
    if let Ok(avc) = AvcConfig::parse(record) {
        let _ = avc.to_annex_b(frame, true);
    }
    for length_size in [1, 2, 4] {
        let _ = flv::split_length_prefixed(data, length_size);
    }
});
