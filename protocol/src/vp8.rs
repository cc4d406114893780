//! VP8 keyframe header: the resolution of a VP8 stream (RFC 6386 §9.1).

/// Width and height from a VP8 keyframe, or `None` if `frame` is not a keyframe.
pub fn keyframe_resolution(frame: &[u8]) -> Option<(u32, u32)> {
    // 3-byte frame tag (bit 0 clear = keyframe), then the start code 9d 01 2a, then sizes.
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((u32::from(width), u32::from(height)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_size_of_a_keyframe_and_ignores_interframes() {
        let key = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        assert_eq!(keyframe_resolution(&key), Some((640, 480)));
        let inter = [0x51, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        assert_eq!(keyframe_resolution(&inter), None);
        assert_eq!(keyframe_resolution(&[0x50]), None);
    }
}
