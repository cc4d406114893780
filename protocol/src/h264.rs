//! H.264 Annex B: splitting access units into NAL units and reading the picture size from the
//! sequence parameter set (ITU-T H.264 §7.3.2.1.1).

use crate::ProtocolError;

/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a non-IDR slice.
pub const NAL_SLICE: u8 = 1;
/// NAL unit type of supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 9;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The NAL units of an Annex B byte string, without their start codes.
pub fn nal_units(annex_b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = annex_b;
    std::iter::from_fn(move || {
        loop {
            let start = find_start_code(rest)?;
            let after = &rest[start.0 + start.1..];
            let end = find_start_code(after).map_or(after.len(), |(at, _)| at);
            let nal = &after[..end];
            rest = &after[end..];
            // Trailing zero bytes belong to the next start code, not to the NAL unit.
            let trimmed_len = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            if trimmed_len > 0 {
                return Some(&nal[..trimmed_len]);
            }
        }
    })
}

/// Position and length of the first `00 00 01` or `00 00 00 01` start code.
fn find_start_code(bytes: &[u8]) -> Option<(usize, usize)> {
    let at = bytes.windows(3).position(|w| w == [0, 0, 1])?;
    if at > 0 && bytes[at - 1] == 0 {
        Some((at - 1, 4))
    } else {
        Some((at, 3))
    }
}

/// The NAL unit type (low five bits of the first byte).
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// True if the access unit holds an IDR slice.
pub fn is_keyframe(annex_b: &[u8]) -> bool {
    nal_units(annex_b).any(|nal| nal_type(nal) == Some(NAL_IDR))
}

/// Splits an Annex B elementary stream into access units (each returned in Annex B form with
/// 4-byte start codes). A new access unit starts at an access unit delimiter, or at a
/// parameter set or SEI following a slice, or at a slice whose `first_mb_in_slice` is 0 that
/// follows a slice (ITU-T H.264 §7.4.1.2.3, for streams without delimiters).
pub fn split_access_units(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut seen_slice = false;
    for nal in nal_units(stream) {
        let kind = nal_type(nal).unwrap_or(0);
        let is_slice = kind == NAL_SLICE || kind == NAL_IDR;
        let starts_picture = is_slice && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let boundary = kind == NAL_AUD
            || (seen_slice && matches!(kind, NAL_SEI | NAL_SPS | NAL_PPS))
            || (seen_slice && starts_picture);
        if boundary && !current.is_empty() {
            units.push(std::mem::take(&mut current));
            seen_slice = false;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        seen_slice |= is_slice;
    }
    if !current.is_empty() {
        units.push(current);
    }
    units
}

/// The picture size announced by the first SPS of an access unit, if it carries one.
pub fn resolution_of_access_unit(annex_b: &[u8]) -> Option<(u32, u32)> {
    nal_units(annex_b)
        .find(|nal| nal_type(nal) == Some(NAL_SPS))
        .and_then(|sps| sps_resolution(sps).ok())
}

/// The RFC 6381 codec string (`avc1.42c01e`) of the first SPS of an access unit.
pub fn codec_string_of_access_unit(annex_b: &[u8]) -> Option<String> {
    let sps = nal_units(annex_b).find(|nal| nal_type(nal) == Some(NAL_SPS))?;
    let [profile, constraints, level] = sps.get(1..4)? else {
        return None;
    };
    Some(format!("avc1.{profile:02x}{constraints:02x}{level:02x}"))
}

/// Width and height in pixels from an SPS NAL unit (header byte included), after cropping.
pub fn sps_resolution(sps: &[u8]) -> Result<(u32, u32), ProtocolError> {
    let rbsp = unescape(sps.get(1..).ok_or(ProtocolError::MalformedSps("empty"))?);
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, reserved bits, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bits(1)? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let cycle = r.ue()?;
            if cycle > 255 {
                return Err(ProtocolError::MalformedSps("pic order cycle too long"));
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    // In u64, with the crop below: every field is up to 32 bits from the network, and their
    // products must not overflow (a fuzzed SPS did); anything out of range is refused below.
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bits(1)?);
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.bits(1)? == 1 {
        crop_l = u64::from(r.ue()?);
        crop_r = u64::from(r.ue()?);
        crop_t = u64::from(r.ue()?);
        crop_b = u64::from(r.ue()?);
    }
    let chroma_array_type = if separate_colour_plane {
        0
    } else {
        chroma_format_idc
    };
    let (sub_w, sub_h): (u64, u64) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_unit_x = if chroma_array_type == 0 { 1 } else { sub_w };
    let crop_unit_y = (if chroma_array_type == 0 { 1 } else { sub_h }) * (2 - frame_mbs_only);
    let width = (width_mbs * 16).checked_sub(crop_unit_x * (crop_l + crop_r));
    let height =
        (height_map_units * 16 * (2 - frame_mbs_only)).checked_sub(crop_unit_y * (crop_t + crop_b));
    match (width, height) {
        (Some(w @ 1..=16384), Some(h @ 1..=16384)) => {
            // Both are at most 16384: the conversions cannot fail.
            Ok((
                u32::try_from(w).unwrap_or(16384),
                u32::try_from(h).unwrap_or(16384),
            ))
        }
        _ => Err(ProtocolError::MalformedSps("impossible picture size")),
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), ProtocolError> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256) % 256;
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Removes emulation-prevention bytes (`00 00 03` → `00 00`).
fn unescape(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut zeros = 0;
    for &b in escaped {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn bits(&mut self, n: u32) -> Result<u32, ProtocolError> {
        let mut value = 0u32;
        for _ in 0..n {
            let byte = self
                .bytes
                .get(self.pos / 8)
                .ok_or(ProtocolError::MalformedSps("ends early"))?;
            value = (value << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(value)
    }

    fn ue(&mut self) -> Result<u32, ProtocolError> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(ProtocolError::MalformedSps("exp-Golomb code too long"));
            }
        }
        Ok((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Result<i64, ProtocolError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_sps_with_huge_sizes_is_an_error_not_an_overflow() {
        // Found by the h264_access_unit fuzz target: 32-bit sizes whose products overflowed.
        let crash = [
            0x00, 0x00, 0x00, 0x01, 0xc7, 0xc7, 0xc7, 0x00, 0x00, 0x00, 0xec, 0xec, 0x00, 0x00,
            0xff, 0xc7, 0xc7, 0xc7, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x05,
        ];
        for nal in super::nal_units(&crash) {
            let _ = super::sps_resolution(nal);
        }
        let _ = super::resolution_of_access_unit(&crash);
    }

    use super::*;

    // SPS of a 1280x720 constrained-baseline stream from x264.
    const SPS_720P: [u8; 11] = [
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x06, 0xd0,
    ];
    // SPS of a 320x240 High-profile stream from x264.
    const SPS_240P_HIGH: [u8; 24] = [
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99,
    ];

    #[test]
    fn access_units_split_on_delimiters_and_on_new_pictures() {
        let with_aud = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x65, 0x88, 0, 0, 0, 1, 0x09,
            0xf0, 0, 0, 0, 1, 0x41, 0x9a,
        ];
        let units = split_access_units(&with_aud);
        assert_eq!(units.len(), 2);
        assert!(is_keyframe(&units[0]));
        assert!(!is_keyframe(&units[1]));
        // Without delimiters: a second picture starts at a slice with first_mb_in_slice = 0.
        let without = [
            0, 0, 1, 0x67, 1, 0, 0, 1, 0x65, 0x88, 0, 0, 1, 0x41, 0x9a, 0, 0, 1, 0x41, 0x9b,
        ];
        let units = split_access_units(&without);
        assert_eq!(units.len(), 3);
        assert_eq!(units[2], vec![0, 0, 0, 1, 0x41, 0x9b]);
    }

    #[test]
    fn splits_annex_b_with_three_and_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5,
        ];
        let nals: Vec<&[u8]> = nal_units(&au).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4, 5]]);
        assert!(is_keyframe(&au));
        assert!(!is_keyframe(&[0, 0, 1, 0x41, 9]));
    }

    #[test]
    fn reads_picture_size_from_baseline_and_high_profile_sps() {
        assert_eq!(sps_resolution(&SPS_720P).unwrap(), (1280, 720));
        assert_eq!(sps_resolution(&SPS_240P_HIGH).unwrap(), (320, 240));
    }

    #[test]
    fn truncated_sps_is_an_error_not_a_panic() {
        for len in 0..SPS_720P.len() - 1 {
            let _ = sps_resolution(&SPS_720P[..len]);
        }
        assert!(sps_resolution(&[0x67]).is_err());
        assert!(sps_resolution(&[0x67, 0x42, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
