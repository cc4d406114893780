//! An MPEG-TS demuxer (ISO/IEC 13818-1) for what contribution encoders send over SRT:
//! H.264, H.265 and AAC (ADTS) elementary streams, and Opus when present.
//!
//! Bytes in, access units out: [`TsDemuxer::push`] takes any slice of the transport stream
//! (SRT datagrams carry seven 188-byte packets, but nothing here relies on alignment) and
//! returns the elementary-stream units that became complete. The program is found from the
//! PAT and PMT; each PES is assembled until the next one starts on its PID (or its declared
//! length is reached). Timestamps are the PES's 33-bit 90 kHz PTS/DTS as sent; unwrapping them
//! is the caller's ([`crate::timeline::WrappingClock`]). Anything malformed is skipped and
//! counted in [`TsDemuxer::errors`]; nothing panics.

use std::collections::HashMap;

use crate::media::Codec;

/// Size of a transport stream packet.
pub const TS_PACKET: usize = 188;
/// Largest PES assembled; a larger one is dropped (no encoder sends a 16 MiB picture).
const MAX_PES: usize = 16 * 1024 * 1024;

/// One elementary-stream unit: a video access unit, or one AAC frame (ADTS header removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsUnit {
    /// The PID it came on.
    pub pid: u16,
    /// Its codec.
    pub codec: Codec,
    /// Presentation time, 90 kHz, 33 bits as sent.
    pub pts: u64,
    /// Decode time, 90 kHz (the PTS when the PES had no DTS).
    pub dts: u64,
    /// The unit: Annex B for video, a raw AAC frame, an Opus packet.
    pub data: Vec<u8>,
    /// For AAC: the AudioSpecificConfig derived from the ADTS header.
    pub audio_config: Option<AdtsConfig>,
}

/// What an ADTS header says about its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsConfig {
    /// MPEG-4 audio object type (profile + 1; 2 = AAC-LC).
    pub object_type: u8,
    /// Sampling frequency index.
    pub frequency_index: u8,
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channel configuration.
    pub channels: u8,
}

impl AdtsConfig {
    /// The two-byte AudioSpecificConfig of this stream.
    pub fn audio_specific_config(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.frequency_index >> 1),
            ((self.frequency_index & 1) << 7) | (self.channels << 3),
        ]
    }
}

const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

struct Pes {
    codec: Codec,
    buffer: Vec<u8>,
    /// Bytes the PES header announced (0: unbounded, video).
    expected: usize,
    started: bool,
}

/// The demuxer of one transport stream.
#[derive(Default)]
pub struct TsDemuxer {
    partial: Vec<u8>,
    pmt_pid: Option<u16>,
    streams: HashMap<u16, Pes>,
    errors: u64,
}

impl std::fmt::Debug for TsDemuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsDemuxer")
            .field("pmt_pid", &self.pmt_pid)
            .field("streams", &self.streams.len())
            .field("errors", &self.errors)
            .finish()
    }
}

impl TsDemuxer {
    /// A demuxer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Malformed packets and units skipped so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Codecs of the elementary streams the PMT announced, by PID.
    pub fn streams(&self) -> Vec<(u16, Codec)> {
        let mut streams: Vec<(u16, Codec)> = self
            .streams
            .iter()
            .map(|(&pid, pes)| (pid, pes.codec))
            .collect();
        streams.sort_unstable_by_key(|(pid, _)| *pid);
        streams
    }

    /// Takes more of the stream; returns the units completed by it.
    pub fn push(&mut self, data: &[u8]) -> Vec<EsUnit> {
        let mut out = Vec::new();
        let mut input = data;
        if !self.partial.is_empty() {
            let wanted = TS_PACKET - self.partial.len();
            let take = wanted.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < TS_PACKET {
                return out;
            }
            let packet = std::mem::take(&mut self.partial);
            self.packet(&packet, &mut out);
        }
        while !input.is_empty() {
            if input[0] != 0x47 {
                // Lost sync: find the next sync byte.
                self.errors += 1;
                match input.iter().position(|&b| b == 0x47) {
                    Some(at) => input = &input[at..],
                    None => break,
                }
                continue;
            }
            if input.len() < TS_PACKET {
                self.partial.extend_from_slice(input);
                break;
            }
            let (packet, rest) = input.split_at(TS_PACKET);
            self.packet(packet, &mut out);
            input = rest;
        }
        out
    }

    fn packet(&mut self, packet: &[u8], out: &mut Vec<EsUnit>) {
        let unit_start = packet[1] & 0x40 != 0;
        let pid = (u16::from(packet[1] & 0x1f) << 8) | u16::from(packet[2]);
        let adaptation = (packet[3] >> 4) & 0x03;
        let mut at = 4;
        if adaptation & 0x02 != 0 {
            at += 1 + usize::from(packet[4]);
        }
        if adaptation & 0x01 == 0 || at >= TS_PACKET {
            return; // no payload
        }
        let payload = &packet[at..];
        if pid == 0 {
            if unit_start {
                self.pat(payload);
            }
        } else if Some(pid) == self.pmt_pid {
            if unit_start {
                self.pmt(payload);
            }
        } else if self.streams.contains_key(&pid) {
            self.pes_payload(pid, unit_start, payload, out);
        }
    }

    fn section(payload: &[u8]) -> Option<&[u8]> {
        let pointer = usize::from(*payload.first()?);
        let section = payload.get(1 + pointer..)?;
        let length = (usize::from(*section.get(1)? & 0x0f) << 8) | usize::from(*section.get(2)?);
        // The section without its CRC.
        section.get(..(3 + length).checked_sub(4)?)
    }

    fn pat(&mut self, payload: &[u8]) {
        let Some(section) = Self::section(payload) else {
            self.errors += 1;
            return;
        };
        for entry in section.get(8..).unwrap_or_default().chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some((u16::from(entry[2] & 0x1f) << 8) | u16::from(entry[3]));
                return;
            }
        }
    }

    fn pmt(&mut self, payload: &[u8]) {
        let Some(section) = Self::section(payload) else {
            self.errors += 1;
            return;
        };
        let Some(&[hi, lo]) = section.get(10..12) else {
            self.errors += 1;
            return;
        };
        let program_info = (usize::from(hi & 0x0f) << 8) | usize::from(lo);
        let mut rest = section.get(12 + program_info..).unwrap_or_default();
        while rest.len() >= 5 {
            let stream_type = rest[0];
            let pid = (u16::from(rest[1] & 0x1f) << 8) | u16::from(rest[2]);
            let info_len = (usize::from(rest[3] & 0x0f) << 8) | usize::from(rest[4]);
            let descriptors = rest.get(5..5 + info_len).unwrap_or_default();
            let codec = match stream_type {
                0x1b => Some(Codec::H264),
                0x24 => Some(Codec::H265),
                0x0f => Some(Codec::Aac),
                0x06 if has_registration(descriptors, b"Opus") => Some(Codec::Opus),
                _ => None,
            };
            if let Some(codec) = codec {
                self.streams.entry(pid).or_insert(Pes {
                    codec,
                    buffer: Vec::new(),
                    expected: 0,
                    started: false,
                });
            }
            rest = rest.get(5 + info_len..).unwrap_or_default();
        }
    }

    fn pes_payload(&mut self, pid: u16, unit_start: bool, payload: &[u8], out: &mut Vec<EsUnit>) {
        let Some(pes) = self.streams.get_mut(&pid) else {
            return;
        };
        if unit_start {
            if pes.started {
                let finished = std::mem::take(&mut pes.buffer);
                let codec = pes.codec;
                self.finish(pid, codec, &finished, out);
            }
            let Some(pes) = self.streams.get_mut(&pid) else {
                return;
            };
            pes.started = true;
            pes.buffer.clear();
            pes.expected = match payload {
                [0, 0, 1, _, hi, lo, ..] => {
                    let length = usize::from(u16::from_be_bytes([*hi, *lo]));
                    if length == 0 { 0 } else { 6 + length }
                }
                _ => 0,
            };
        }
        let Some(pes) = self.streams.get_mut(&pid) else {
            return;
        };
        if !pes.started {
            return; // joined mid-PES: wait for the next start
        }
        if pes.buffer.len() + payload.len() > MAX_PES {
            pes.started = false;
            pes.buffer.clear();
            self.errors += 1;
            return;
        }
        pes.buffer.extend_from_slice(payload);
        if pes.expected != 0 && pes.buffer.len() >= pes.expected {
            let mut finished = std::mem::take(&mut pes.buffer);
            finished.truncate(pes.expected);
            pes.started = false;
            let codec = pes.codec;
            self.finish(pid, codec, &finished, out);
        }
    }

    fn finish(&mut self, pid: u16, codec: Codec, pes: &[u8], out: &mut Vec<EsUnit>) {
        let Some((pts, dts, data)) = parse_pes(pes) else {
            self.errors += 1;
            return;
        };
        if data.is_empty() {
            return;
        }
        match codec {
            Codec::Aac => {
                let mut rest = data;
                let mut index = 0u64;
                while !rest.is_empty() {
                    let Some((config, frame, after)) = adts_frame(rest) else {
                        self.errors += 1;
                        return;
                    };
                    // Frames after the first in one PES follow at 1024 samples each.
                    let offset = index * 1024 * 90_000 / u64::from(config.sample_rate);
                    out.push(EsUnit {
                        pid,
                        codec,
                        pts: (pts + offset) & PTS_MASK,
                        dts: (dts + offset) & PTS_MASK,
                        data: frame.to_vec(),
                        audio_config: Some(config),
                    });
                    rest = after;
                    index += 1;
                }
            }
            Codec::Opus => {
                // Opus in TS: each packet behind a control header (0x7fe0 + sizes).
                out.push(EsUnit {
                    pid,
                    codec,
                    pts,
                    dts,
                    data: strip_opus_control_header(data).to_vec(),
                    audio_config: None,
                });
            }
            _ => out.push(EsUnit {
                pid,
                codec,
                pts,
                dts,
                data: data.to_vec(),
                audio_config: None,
            }),
        }
    }
}

const PTS_MASK: u64 = (1 << 33) - 1;

fn has_registration(descriptors: &[u8], format: &[u8; 4]) -> bool {
    let mut rest = descriptors;
    while rest.len() >= 2 {
        let (tag, len) = (rest[0], usize::from(rest[1]));
        if tag == 0x05 && rest.get(2..6) == Some(&format[..]) {
            return true;
        }
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    false
}

fn timestamp(bytes: &[u8]) -> u64 {
    (u64::from(bytes[0] & 0x0e) << 29)
        | (u64::from(bytes[1]) << 22)
        | (u64::from(bytes[2] & 0xfe) << 14)
        | (u64::from(bytes[3]) << 7)
        | (u64::from(bytes[4]) >> 1)
}

/// PTS, DTS and the payload of one PES packet.
fn parse_pes(pes: &[u8]) -> Option<(u64, u64, &[u8])> {
    if pes.get(..3)? != [0, 0, 1] {
        return None;
    }
    let flags = *pes.get(7)?;
    let header_len = usize::from(*pes.get(8)?);
    let payload = pes.get(9 + header_len..)?;
    let pts = if flags & 0x80 != 0 {
        timestamp(pes.get(9..14)?)
    } else {
        return None; // a unit without a time cannot be placed on the timeline
    };
    let dts = if flags & 0x40 != 0 {
        timestamp(pes.get(14..19)?)
    } else {
        pts
    };
    Some((pts, dts, payload))
}

/// One ADTS frame: its config, its raw payload and what follows it.
fn adts_frame(data: &[u8]) -> Option<(AdtsConfig, &[u8], &[u8])> {
    let header = data.get(..7)?;
    if header[0] != 0xff || header[1] & 0xf0 != 0xf0 {
        return None;
    }
    let protection_absent = header[1] & 0x01 != 0;
    let object_type = (header[2] >> 6) + 1;
    let frequency_index = (header[2] >> 2) & 0x0f;
    let sample_rate = *SAMPLE_RATES.get(usize::from(frequency_index))?;
    let channels = ((header[2] & 0x01) << 2) | (header[3] >> 6);
    let frame_len = (usize::from(header[3] & 0x03) << 11)
        | (usize::from(header[4]) << 3)
        | usize::from(header[5] >> 5);
    let header_len = if protection_absent { 7 } else { 9 };
    if frame_len < header_len {
        return None;
    }
    let frame = data.get(header_len..frame_len)?;
    Some((
        AdtsConfig {
            object_type,
            frequency_index,
            sample_rate,
            channels,
        },
        frame,
        &data[frame_len..],
    ))
}

fn strip_opus_control_header(data: &[u8]) -> &[u8] {
    if data.len() < 2 || data[0] != 0x7f || data[1] & 0xe0 != 0xe0 {
        return data;
    }
    let (start_trim, end_trim) = (data[1] & 0x10 != 0, data[1] & 0x08 != 0);
    let mut at = 2;
    while data.get(at) == Some(&0xff) {
        at += 1;
    }
    at += 1; // the last size byte
    if start_trim {
        at += 2;
    }
    if end_trim {
        at += 2;
    }
    data.get(at..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_packet(pid: u16, unit_start: bool, counter: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() <= 184);
        let mut packet = vec![
            0x47,
            (u8::from(unit_start) << 6) | (pid >> 8) as u8,
            pid as u8,
        ];
        let stuffing = 184 - payload.len();
        if stuffing == 0 {
            packet.push(0x10 | (counter & 0x0f));
        } else {
            packet.push(0x30 | (counter & 0x0f));
            packet.push((stuffing - 1) as u8);
            if stuffing > 1 {
                packet.push(0);
                packet.extend(std::iter::repeat_n(0xff, stuffing - 2));
            }
        }
        packet.extend_from_slice(payload);
        assert_eq!(packet.len(), TS_PACKET);
        packet
    }

    fn section(table: u8, body: &[u8]) -> Vec<u8> {
        let length = body.len() + 5 + 4;
        let mut s = vec![
            0,
            table,
            0xb0 | (length >> 8) as u8,
            length as u8,
            0,
            1,
            0xc1,
            0,
            0,
        ];
        s.extend_from_slice(body);
        s.extend_from_slice(&[0, 0, 0, 0]); // CRC, not checked
        s
    }

    fn encode_ts(t: u64, marker: u8) -> [u8; 5] {
        [
            (marker << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1,
            (t >> 22) as u8,
            (((t >> 15) as u8) << 1) | 1,
            (t >> 7) as u8,
            ((t as u8) << 1) | 1,
        ]
    }

    fn pes(stream_id: u8, pts: u64, dts: Option<u64>, payload: &[u8]) -> Vec<u8> {
        let mut header = encode_ts(pts, if dts.is_some() { 3 } else { 2 }).to_vec();
        if let Some(dts) = dts {
            header.extend(encode_ts(dts, 1));
        }
        let flags = if dts.is_some() { 0xc0 } else { 0x80 };
        let mut p = vec![0, 0, 1, stream_id, 0, 0, 0x80, flags, header.len() as u8];
        p.extend(header);
        p.extend_from_slice(payload);
        if stream_id == 0xc0 {
            // Audio PES declare their length (video ones may leave it 0, "unbounded").
            let length = (p.len() - 6) as u16;
            p[4..6].copy_from_slice(&length.to_be_bytes());
        }
        p
    }

    /// A PAT, a PMT with H.264 on 0x100 and AAC on 0x101.
    fn program() -> Vec<u8> {
        let pat = section(0, &[0, 1, 0xf0, 0x00]);
        let pmt = section(
            2,
            &[
                0xe1, 0x00, 0xf0, 0x00, 0x1b, 0xe1, 0x00, 0xf0, 0x00, 0x0f, 0xe1, 0x01, 0xf0, 0x00,
            ],
        );
        let mut ts = ts_packet(0, true, 0, &pat);
        ts.extend(ts_packet(0x1000, true, 0, &pmt));
        ts
    }

    fn adts(payload: &[u8]) -> Vec<u8> {
        // AAC-LC, 48 kHz (index 3), stereo.
        let len = payload.len() + 7;
        let mut h = vec![
            0xff,
            0xf1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) as u8 & 0x03),
            (len >> 3) as u8,
            ((len as u8 & 0x07) << 5) | 0x1f,
            0xfc,
        ];
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn video_and_aac_units_come_out_with_their_times_whatever_the_datagram_boundaries() {
        let picture: Vec<u8> = [0, 0, 0, 1, 0x65]
            .iter()
            .copied()
            .chain(0..=250u8)
            .collect();
        let first = pes(0xe0, 9000, Some(6000), &picture);
        let second = pes(0xe0, 12_000, Some(9000), &[0, 0, 0, 1, 0x41, 7]);
        let audio = pes(
            0xc0,
            9000,
            None,
            &[adts(&[1, 2, 3]), adts(&[4, 5])].concat(),
        );
        let mut ts = program();
        ts.extend(ts_packet(0x100, true, 0, &first[..184]));
        ts.extend(ts_packet(0x100, false, 1, &first[184..]));
        ts.extend(ts_packet(0x101, true, 0, &audio));
        ts.extend(ts_packet(0x100, true, 2, &second));
        // Fed in awkward pieces.
        let mut demuxer = TsDemuxer::new();
        let mut units = Vec::new();
        for piece in ts.chunks(100) {
            units.extend(demuxer.push(piece));
        }
        assert_eq!(
            demuxer.streams(),
            vec![(0x100, Codec::H264), (0x101, Codec::Aac)]
        );
        assert_eq!(demuxer.errors(), 0);
        let video: Vec<&EsUnit> = units.iter().filter(|u| u.codec == Codec::H264).collect();
        assert_eq!(
            video.len(),
            1,
            "the second picture completes when a third starts"
        );
        assert_eq!((video[0].pts, video[0].dts), (9000, 6000));
        assert_eq!(video[0].data, picture);
        let audio: Vec<&EsUnit> = units.iter().filter(|u| u.codec == Codec::Aac).collect();
        assert_eq!(audio.len(), 2);
        assert_eq!(audio[0].data, vec![1, 2, 3]);
        assert_eq!(audio[1].pts, 9000 + 1920, "1024 samples at 48 kHz later");
        let config = audio[0].audio_config.unwrap();
        assert_eq!((config.sample_rate, config.channels), (48_000, 2));
        assert_eq!(config.audio_specific_config(), [0x11, 0x90]);
    }

    #[test]
    fn garbage_between_packets_is_skipped_and_counted() {
        let mut demuxer = TsDemuxer::new();
        let mut ts = vec![1, 2, 3];
        ts.extend(program());
        demuxer.push(&ts);
        assert_eq!(demuxer.streams().len(), 2);
        assert_eq!(demuxer.errors(), 1);
        for len in [0usize, 1, 187, 188, 189, 1000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 71 + 0x47) as u8).collect();
            demuxer.push(&junk);
        }
    }
}
