//! Any bytes as an MPEG-TS stream (what SRT callers send), fed in uneven pieces: units or
//! skipped garbage, never a panic; and any bytes as an SRT streamid.
#![no_main]

use cascade_protocol::mpegts::TsDemuxer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut demuxer = TsDemuxer::new();
    let step = data.first().map_or(188, |&b| usize::from(b).max(1));
    for piece in data.chunks(step) {
        for unit in demuxer.push(piece) {
            assert!(!unit.data.is_empty() || unit.codec.kind() == cascade_protocol::MediaKind::Audio);
        }
    }
    let _ = cascade_protocol::srt_stream_id::parse(Some(&String::from_utf8_lossy(data)));
});
