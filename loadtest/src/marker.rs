//! The capture-time marker: every published video frame carries when it was captured, so that
//! a viewer can compute glass-to-glass latency from what it receives.
//!
//! Carried as an H.264 SEI "user data unregistered" message (see `docs/loadtest.md`): a fixed
//! UUID, then 8 bytes of capture time (microseconds since the Unix epoch, big-endian) and 8
//! bytes of frame number (big-endian). It is part of the bitstream, so any server that
//! forwards H.264 (ours, or another) passes it through untouched; a server that transcodes
//! drops it, and the report then says latency was not measured.

use cascade_protocol::h264::{NAL_AUD, nal_type, nal_units};
use cascade_protocol::sei;

/// Identifies Cascade's marker among other SEI user data.
pub const MARKER_UUID: [u8; 16] = *b"CascadeCaptureTm";

/// What a marker says about its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Capture time, microseconds since the Unix epoch.
    pub captured_unix_us: u64,
    /// The publisher's frame number, counting from 0 and never repeating within a run.
    pub frame: u64,
}

impl Marker {
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.captured_unix_us.to_be_bytes());
        bytes[8..].copy_from_slice(&self.frame.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Marker> {
        let captured = bytes.get(..8)?.try_into().ok()?;
        let frame = bytes.get(8..16)?.try_into().ok()?;
        Some(Marker {
            captured_unix_us: u64::from_be_bytes(captured),
            frame: u64::from_be_bytes(frame),
        })
    }
}

/// Returns the access unit with a marker SEI inserted before its first non-delimiter NAL unit
/// (SEI must follow an access unit delimiter and precede the slices, §7.4.1.2.3).
pub fn stamp(access_unit: &[u8], marker: Marker) -> Vec<u8> {
    let sei = sei::user_data_nal(&MARKER_UUID, &marker.to_bytes());
    let mut out = Vec::with_capacity(access_unit.len() + sei.len() + 8);
    let mut inserted = false;
    for nal in nal_units(access_unit) {
        if !inserted && nal_type(nal) != Some(NAL_AUD) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&sei);
            inserted = true;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    out
}

/// The marker of a received access unit, if it carries one.
pub fn read(access_unit: &[u8]) -> Option<Marker> {
    sei::find_user_data(access_unit, &MARKER_UUID).and_then(|data| Marker::from_bytes(&data))
}

/// Every marker in `bytes`, however its NAL units are framed (a CMAF part's length-prefixed
/// samples as well as Annex B): each marker UUID found, with the 16 bytes after it once
/// emulation prevention is undone.
pub fn read_all(bytes: &[u8]) -> Vec<Marker> {
    let mut markers = Vec::new();
    let mut from = 0;
    while let Some(at) = bytes[from..]
        .windows(MARKER_UUID.len())
        .position(|w| w == MARKER_UUID)
    {
        let start = from + at + MARKER_UUID.len();
        let mut payload = Vec::with_capacity(16);
        let mut zeros = 0;
        for &b in bytes.iter().skip(start) {
            if payload.len() == 16 {
                break;
            }
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            payload.push(b);
        }
        if let Some(marker) = Marker::from_bytes(&payload) {
            markers.push(marker);
        }
        from = start;
    }
    markers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_access_unit_keeps_its_nal_units_and_yields_the_marker() {
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x65, 0x88, 0x84, 0, 0, 0, 1, 0x65, 0x00, 0x42,
        ];
        let marker = Marker {
            captured_unix_us: 1_795_000_000_000_001,
            frame: 0x0000_0100_0000_0001, // zero bytes that need emulation prevention
        };
        let stamped = stamp(&au, marker);
        assert_eq!(read(&stamped), Some(marker));
        let nals: Vec<&[u8]> = nal_units(&stamped).collect();
        assert_eq!(nals.len(), 4);
        assert_eq!(nals[0], &[0x09, 0xf0], "the delimiter stays first");
        assert_eq!(nal_type(nals[1]), Some(6), "then the marker SEI");
        assert_eq!(&nals[2..], &[&[0x65, 0x88, 0x84][..], &[0x65, 0x00, 0x42]]);
    }

    #[test]
    fn markers_are_found_in_length_prefixed_samples_with_emulation_prevention_undone() {
        let marker = Marker {
            captured_unix_us: 1_795_000_000_000_001,
            frame: 0x0000_0100_0000_0001,
        };
        let stamped = stamp(&[0, 0, 0, 1, 0x65, 0x88], marker);
        // As in an mdat: each NAL unit after a 4-byte length instead of a start code.
        let mut sample = Vec::new();
        for nal in nal_units(&stamped) {
            sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            sample.extend_from_slice(nal);
        }
        sample.extend_from_slice(&sample.clone());
        assert_eq!(read_all(&sample), vec![marker, marker]);
        assert!(read_all(&[0, 0, 0, 1, 0x65]).is_empty());
    }

    #[test]
    fn unmarked_or_damaged_access_units_have_no_marker() {
        assert_eq!(read(&[0, 0, 0, 1, 0x65, 0x88]), None);
        let marker = Marker {
            captured_unix_us: 5,
            frame: 6,
        };
        let stamped = stamp(&[0, 0, 0, 1, 0x65, 0x88], marker);
        assert_eq!(read(&stamped[..12]), None, "a truncated SEI is not read");
    }
}
