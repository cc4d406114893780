//! Real media for tests: H.264 from FFmpeg's libx264 and Opus from libopus, encoded at test
//! time, split into access units; and an H.264 RTP depacketizer of our own (independent of
//! both WebRTC stacks) for the receiving side.

use std::process::Command;

use sha2::{Digest, Sha256};

/// Encodes `seconds` of 640x360 30 fps test pattern with a keyframe every `gop` frames, no
/// B-frames, constrained baseline; returns one Annex B access unit per frame.
pub fn encode_h264(seconds: u32, gop: u32) -> Vec<Vec<u8>> {
    let path = std::env::temp_dir().join(format!(
        "cascade-e2e-{}-{seconds}s-gop{gop}.h264",
        std::process::id()
    ));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=640x360:rate=30:duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-bf",
            "0",
        ])
        .args([
            "-g",
            &gop.to_string(),
            "-keyint_min",
            &gop.to_string(),
            "-sc_threshold",
            "0",
        ])
        .args(["-x264-params", "aud=1", "-f", "h264"])
        .arg(&path)
        .status()
        .expect("ffmpeg is installed (the README's test command installs it)");
    assert!(status.success(), "ffmpeg failed to encode H.264");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    cascade_protocol::h264::split_access_units(&bytes)
}

/// Encodes `seconds` of a sine tone as 20 ms Opus packets.
pub fn encode_opus(seconds: u32) -> Vec<Vec<u8>> {
    let path =
        std::env::temp_dir().join(format!("cascade-e2e-{}-{seconds}s.ogg", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency=440:duration={seconds}"))
        .args([
            "-c:a",
            "libopus",
            "-frame_duration",
            "20",
            "-page_duration",
            "20000",
            "-f",
            "ogg",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg failed to encode Opus");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    cascade_protocol::ogg::opus_packets(&bytes)
}

/// NAL units of an Annex B stream (without start codes).
pub fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    cascade_protocol::h264::nal_units(stream).collect()
}

/// Identity of an access unit: its NAL units except delimiters and filler, which packetizers
/// may drop. Two access units with the same fingerprint decode identically.
pub fn fingerprint(nals: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for nal in nals.iter().filter(|n| !matches!(n[0] & 0x1f, 9 | 12)) {
        hasher.update((nal.len() as u32).to_be_bytes());
        hasher.update(nal);
    }
    hasher.finalize().into()
}

pub fn is_idr(nals: &[&[u8]]) -> bool {
    nals.iter().any(|n| n[0] & 0x1f == 5)
}

/// Reassembles H.264 access units from RTP (RFC 6184: single NAL, STAP-A, FU-A).
#[derive(Default)]
pub struct H264Depacketizer {
    sequence: Option<u16>,
    timestamp: Option<u32>,
    nals: Vec<Vec<u8>>,
    fragment: Option<Vec<u8>>,
    broken: bool,
}

impl H264Depacketizer {
    /// Feeds one packet; returns a complete access unit when the marker bit closes one. An
    /// access unit with a missing packet (a gap in sequence numbers) is never returned.
    pub fn push(
        &mut self,
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<Vec<Vec<u8>>> {
        let gap = self
            .sequence
            .is_some_and(|last| sequence != last.wrapping_add(1));
        self.sequence = Some(sequence);
        if self.timestamp != Some(timestamp) {
            self.timestamp = Some(timestamp);
            self.nals.clear();
            self.fragment = None;
            self.broken = false;
        } else if gap {
            self.broken = true;
        }
        if payload.is_empty() {
            self.broken = true;
            return None;
        }
        match payload[0] & 0x1f {
            1..=23 => self.nals.push(payload.to_vec()),
            24 => {
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    if rest.len() < 2 + len {
                        self.broken = true;
                        break;
                    }
                    self.nals.push(rest[2..2 + len].to_vec());
                    rest = &rest[2 + len..];
                }
            }
            28 if payload.len() >= 2 => {
                let (start, end) = (payload[1] & 0x80 != 0, payload[1] & 0x40 != 0);
                if start {
                    self.fragment = Some(vec![(payload[0] & 0xe0) | (payload[1] & 0x1f)]);
                }
                match self.fragment.as_mut() {
                    Some(f) => f.extend_from_slice(&payload[2..]),
                    None => self.broken = true,
                }
                if end && let Some(f) = self.fragment.take() {
                    self.nals.push(f);
                }
            }
            _ => self.broken = true,
        }
        if marker && !self.broken && !self.nals.is_empty() {
            self.timestamp = None;
            return Some(std::mem::take(&mut self.nals));
        }
        None
    }
}
