//! Publisher media as the node reads it: Annex B splitting, NAL types, keyframe detection
//! and SPS parsing (the catalog's resolution). Errors or values, never a panic.
#![no_main]

use cascade_protocol::h264;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for nal in h264::nal_units(data) {
        let _ = h264::nal_type(nal);
        let _ = h264::sps_resolution(nal);
    }
    let _ = h264::is_keyframe(data);
    let _ = h264::resolution_of_access_unit(data);
    let _ = h264::split_access_units(data);
    let _ = cascade_protocol::vp8::keyframe_resolution(data);
});
