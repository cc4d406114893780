//! RTP payloads of one access unit, made once per frame and shared by every viewer.
//!
//! The WebRTC fan-out sends the same frame to every viewer; only the RTP header (sequence
//! number, timestamp, SSRC) and the encryption differ per viewer. So a frame is packetized
//! once here (RFC 6184 for H.264, RFC 7741 for VP8, RFC 7587 for Opus) into payloads that
//! every viewer's RTP stream references.
//!
//! Payloads are as full as the size limit allows and only the last fragment of a NAL unit
//! is shorter: consecutive packets of the same size are what UDP segmentation offload (GSO)
//! can send in one system call.

use std::sync::Arc;

use crate::h264::{self, NAL_AUD};
use crate::media::{Codec, MediaKind};

/// The largest RTP payload we produce: 1,200 bytes on the wire leave room for the RTP header
/// (12), header extensions (up to ~20 while the MID is still sent) and the SRTP tag (16).
pub const MAX_RTP_PAYLOAD: usize = 1_140;

/// H.264 NAL unit types of the RTP payload formats (RFC 6184 §5.2).
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// One RTP payload of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPayload {
    /// The bytes after the RTP header.
    pub bytes: Arc<[u8]>,
    /// The RTP marker bit: set on the last packet of a video frame.
    pub marker: bool,
}

/// Splits one access unit into RTP payloads no larger than `max` bytes (`max` ≥ 16).
///
/// H.264 access units are Annex B; access unit delimiters are dropped (RFC 6184 leaves them
/// out), small NAL units are aggregated into STAP-A packets, large ones fragmented into FU-A.
pub fn packetize(codec: Codec, access_unit: &[u8], max: usize) -> Vec<RtpPayload> {
    let max = max.max(16);
    let mut payloads = match codec {
        Codec::H264 => packetize_h264(access_unit, max),
        Codec::Vp8 => packetize_vp8(access_unit, max),
        Codec::Opus => vec![access_unit.to_vec()],
        // Not sent over RTP by Cascade: a WebRTC viewer never subscribes to such a track.
        Codec::H265 | Codec::Av1 | Codec::Aac => Vec::new(),
    };
    payloads.retain(|p| !p.is_empty());
    let video = codec.kind() == MediaKind::Video;
    let last = payloads.len().saturating_sub(1);
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| RtpPayload {
            bytes: bytes.into(),
            marker: video && i == last,
        })
        .collect()
}

fn packetize_h264(access_unit: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // NAL units waiting to be sent together in one STAP-A (or alone if only one).
    let mut pending: Vec<&[u8]> = Vec::new();
    let mut pending_size = 1; // the STAP-A header byte
    for nal in h264::nal_units(access_unit) {
        if h264::nal_type(nal) == Some(NAL_AUD) {
            continue;
        }
        let aggregated = 2 + nal.len();
        if pending_size + aggregated <= max {
            pending.push(nal);
            pending_size += aggregated;
            continue;
        }
        flush_aggregate(&mut pending, &mut out);
        pending_size = 1;
        if aggregated < max {
            pending.push(nal);
            pending_size += aggregated;
        } else if nal.len() <= max {
            out.push(nal.to_vec());
        } else {
            fragment_fu_a(nal, max, &mut out);
        }
    }
    flush_aggregate(&mut pending, &mut out);
    out
}

/// One NAL unit goes alone (single NAL unit packet); several go in a STAP-A.
fn flush_aggregate(pending: &mut Vec<&[u8]>, out: &mut Vec<Vec<u8>>) {
    match pending.len() {
        0 => {}
        1 => out.push(pending[0].to_vec()),
        _ => {
            // F is the OR of the aggregated units' F bits, NRI their maximum (RFC 6184 §5.7).
            let f = pending.iter().fold(0, |f, nal| f | (nal[0] & 0x80));
            let nri = pending.iter().map(|nal| nal[0] & 0x60).max().unwrap_or(0);
            let size = 1 + pending.iter().map(|nal| 2 + nal.len()).sum::<usize>();
            let mut packet = Vec::with_capacity(size);
            packet.push(f | nri | STAP_A);
            for nal in pending.iter() {
                packet.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                packet.extend_from_slice(nal);
            }
            out.push(packet);
        }
    }
    pending.clear();
}

fn fragment_fu_a(nal: &[u8], max: usize, out: &mut Vec<Vec<u8>>) {
    let header = nal[0];
    let indicator = (header & 0xe0) | FU_A;
    let body = &nal[1..];
    let chunk = max - 2;
    let count = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let mut fu_header = header & 0x1f;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i + 1 == count {
            fu_header |= 0x40;
        }
        let mut packet = Vec::with_capacity(2 + part.len());
        packet.push(indicator);
        packet.push(fu_header);
        packet.extend_from_slice(part);
        out.push(packet);
    }
}

/// VP8 (RFC 7741): a one-byte payload descriptor, S set on the first packet, partition 0.
fn packetize_vp8(frame: &[u8], max: usize) -> Vec<Vec<u8>> {
    frame
        .chunks(max - 1)
        .enumerate()
        .map(|(i, part)| {
            let mut packet = Vec::with_capacity(1 + part.len());
            packet.push(if i == 0 { 0x10 } else { 0x00 });
            packet.extend_from_slice(part);
            packet
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [&[0u8, 0, 0, 1][..], nal].concat())
            .collect()
    }

    /// Reassembles H.264 payloads the way a receiver does, into NAL units.
    fn depacketize_h264(payloads: &[RtpPayload]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fragment: Vec<u8> = Vec::new();
        for p in payloads {
            let b = &p.bytes;
            match b[0] & 0x1f {
                STAP_A => {
                    let mut rest = &b[1..];
                    while rest.len() >= 2 {
                        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                        nals.push(rest[2..2 + len].to_vec());
                        rest = &rest[2 + len..];
                    }
                    assert!(rest.is_empty(), "STAP-A has trailing bytes");
                }
                FU_A => {
                    if b[1] & 0x80 != 0 {
                        fragment = vec![(b[0] & 0xe0) | (b[1] & 0x1f)];
                    }
                    fragment.extend_from_slice(&b[2..]);
                    if b[1] & 0x40 != 0 {
                        nals.push(std::mem::take(&mut fragment));
                    }
                }
                _ => nals.push(b.to_vec()),
            }
        }
        nals
    }

    #[test]
    fn small_nal_units_share_one_stap_a_and_the_access_unit_delimiter_is_dropped() {
        let sps = [0x67, 1, 2, 3];
        let pps = [0x68, 4, 5];
        let idr = [0x65, 9, 9, 9, 9];
        let au = annex_b(&[&[0x09, 0xf0], &sps, &pps, &idr]);
        let payloads = packetize(Codec::H264, &au, MAX_RTP_PAYLOAD);
        assert_eq!(payloads.len(), 1);
        assert_eq!(payloads[0].bytes[0] & 0x1f, STAP_A);
        assert_eq!(
            payloads[0].bytes[0] & 0x60,
            0x60,
            "NRI is the highest of its units"
        );
        assert!(payloads[0].marker);
        assert_eq!(
            depacketize_h264(&payloads),
            vec![sps.to_vec(), pps.to_vec(), idr.to_vec()]
        );
    }

    #[test]
    fn a_large_nal_unit_is_fragmented_into_full_fu_a_packets_with_a_shorter_last_one() {
        let mut idr = vec![0x65];
        idr.extend((0..5_000u32).map(|i| (i % 251) as u8 + 1));
        let sei = [0x06, 5, 1, 0x80];
        let au = annex_b(&[&sei, &idr]);
        let payloads = packetize(Codec::H264, &au, 1_000);
        let sizes: Vec<usize> = payloads.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(
            sizes[0],
            sei.len(),
            "the SEI goes alone: it does not fit with the IDR"
        );
        let fragments = &sizes[1..];
        assert!(fragments[..fragments.len() - 1].iter().all(|&s| s == 1_000));
        assert!(*fragments.last().unwrap() <= 1_000);
        assert_eq!(
            payloads.iter().filter(|p| p.marker).count(),
            1,
            "only the last packet is marked"
        );
        assert!(payloads.last().unwrap().marker);
        assert_eq!(depacketize_h264(&payloads), vec![sei.to_vec(), idr]);
    }

    #[test]
    fn a_nal_unit_that_exactly_fills_a_packet_is_sent_whole() {
        let nal: Vec<u8> = std::iter::once(0x41).chain(vec![7; 99]).collect();
        let payloads = packetize(Codec::H264, &annex_b(&[&nal]), 100);
        assert_eq!(payloads.len(), 1);
        assert_eq!(&payloads[0].bytes[..], &nal[..]);
    }

    #[test]
    fn vp8_frames_get_a_descriptor_with_the_start_bit_on_the_first_packet_only() {
        let frame: Vec<u8> = (0..250u8).collect();
        let payloads = packetize(Codec::Vp8, &frame, 100);
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads[0].bytes[0], 0x10);
        assert!(payloads[1..].iter().all(|p| p.bytes[0] == 0x00));
        let joined: Vec<u8> = payloads
            .iter()
            .flat_map(|p| p.bytes[1..].to_vec())
            .collect();
        assert_eq!(joined, frame);
        assert!(payloads[2].marker && !payloads[0].marker);
    }

    #[test]
    fn an_opus_packet_is_one_unmarked_payload() {
        let payloads = packetize(Codec::Opus, &[0xfc, 1, 2, 3], MAX_RTP_PAYLOAD);
        assert_eq!(payloads.len(), 1);
        assert_eq!(&payloads[0].bytes[..], &[0xfc, 1, 2, 3]);
        assert!(!payloads[0].marker);
    }

    #[test]
    fn an_empty_access_unit_gives_no_payloads() {
        assert!(packetize(Codec::H264, &[], MAX_RTP_PAYLOAD).is_empty());
        assert!(packetize(Codec::Vp8, &[], MAX_RTP_PAYLOAD).is_empty());
    }
}
