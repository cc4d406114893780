//! FLV audio and video tag bodies, as RTMP carries them, turned into catalog facts and
//! access units.
//!
//! Legacy FLV (H.264 `codec id 7`, AAC `sound format 10`) and enhanced RTMP (the `IsExHeader`
//! bit with a FourCC: `hvc1`, `av01`, `vp09`, and `avc1` spelled the new way) are both read.
//! Bytes in, values out: nothing here allocates more than the access unit it returns, and any
//! input gets a value or an [`FlvError`], never a panic.
//!
//! H.264 arrives in AVCC form (length-prefixed NAL units, parameter sets out of band in the
//! AVCDecoderConfigurationRecord); [`AvcConfig::to_annex_b`] turns a frame into the Annex B
//! access unit the rest of Cascade carries, with SPS and PPS in band before every keyframe so
//! that any viewer can start at any keyframe.

use crate::media::Codec;

/// What was wrong with a tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    /// The tag ends before a field it announces.
    #[error("FLV tag truncated: {0}")]
    Truncated(&'static str),
    /// A codec or packet type Cascade does not take.
    #[error("unsupported FLV {0}")]
    Unsupported(String),
    /// A decoder configuration record that does not parse.
    #[error("bad decoder configuration: {0}")]
    BadConfig(&'static str),
    /// A frame whose NAL unit lengths run past its end.
    #[error("bad AVCC frame: a NAL unit length runs past the end of the frame")]
    BadNalLength,
}

/// One video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag<'a> {
    /// The decoder configuration (AVCDecoderConfigurationRecord, HEVCDecoderConfigurationRecord,
    /// AV1CodecConfigurationRecord): sent before the first frame and when it changes.
    SequenceStart {
        /// The codec.
        codec: Codec,
        /// The record as sent.
        config: &'a [u8],
    },
    /// One coded frame.
    Frame {
        /// The codec.
        codec: Codec,
        /// A keyframe (decoders can start here).
        keyframe: bool,
        /// Presentation time minus decode time, milliseconds (non-zero with B-frames).
        composition_offset_ms: i32,
        /// The frame in the codec's FLV form (AVCC length-prefixed NAL units for H.264/H.265).
        data: &'a [u8],
    },
    /// The end of the sequence, or a tag that carries nothing to decode (metadata, a
    /// command frame).
    Nothing,
}

/// One audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag<'a> {
    /// The decoder configuration (AAC AudioSpecificConfig, Opus `OpusHead`).
    SequenceStart {
        /// The codec.
        codec: Codec,
        /// The record as sent.
        config: &'a [u8],
    },
    /// One coded frame.
    Frame {
        /// The codec.
        codec: Codec,
        /// The raw frame (AAC without ADTS header).
        data: &'a [u8],
    },
}

const FOURCC_AVC: [u8; 4] = *b"avc1";
const FOURCC_HEVC: [u8; 4] = *b"hvc1";
const FOURCC_AV1: [u8; 4] = *b"av01";

fn u24_signed(bytes: &[u8]) -> i32 {
    let raw = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
    // Sign-extend 24 bits.
    ((raw << 8) as i32) >> 8
}

fn fourcc_codec(fourcc: [u8; 4]) -> Result<Codec, FlvError> {
    match fourcc {
        FOURCC_AVC => Ok(Codec::H264),
        FOURCC_HEVC => Ok(Codec::H265),
        FOURCC_AV1 => Ok(Codec::Av1),
        other => Err(FlvError::Unsupported(format!(
            "video FourCC {:?}",
            String::from_utf8_lossy(&other)
        ))),
    }
}

/// Reads one video tag body (the RTMP video message payload).
pub fn parse_video(tag: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    let first = *tag.first().ok_or(FlvError::Truncated("empty video tag"))?;
    if first & 0x80 != 0 {
        return parse_enhanced_video(tag);
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    if frame_type == 5 {
        return Ok(VideoTag::Nothing); // a video info / command frame
    }
    if codec_id != 7 {
        return Err(FlvError::Unsupported(format!(
            "video codec id {codec_id} (Cascade takes H.264, id 7, and enhanced RTMP FourCCs)"
        )));
    }
    if tag.len() < 5 {
        return Err(FlvError::Truncated("AVC packet header"));
    }
    let composition_offset_ms = u24_signed(&tag[2..5]);
    let data = &tag[5..];
    match tag[1] {
        0 => Ok(VideoTag::SequenceStart {
            codec: Codec::H264,
            config: data,
        }),
        1 => Ok(VideoTag::Frame {
            codec: Codec::H264,
            keyframe: frame_type == 1,
            composition_offset_ms,
            data,
        }),
        2 => Ok(VideoTag::Nothing),
        other => Err(FlvError::Unsupported(format!("AVC packet type {other}"))),
    }
}

fn parse_enhanced_video(tag: &[u8]) -> Result<VideoTag<'_>, FlvError> {
    if tag.len() < 5 {
        return Err(FlvError::Truncated("enhanced video header"));
    }
    let frame_type = (tag[0] >> 4) & 0x07;
    let packet_type = tag[0] & 0x0f;
    let codec = fourcc_codec([tag[1], tag[2], tag[3], tag[4]])?;
    let body = &tag[5..];
    if frame_type == 5 {
        return Ok(VideoTag::Nothing);
    }
    let keyframe = frame_type == 1;
    match packet_type {
        0 => Ok(VideoTag::SequenceStart {
            codec,
            config: body,
        }),
        // CodedFrames: H.264 and H.265 carry a composition offset first.
        1 if matches!(codec, Codec::H264 | Codec::H265) => {
            if body.len() < 3 {
                return Err(FlvError::Truncated("composition time offset"));
            }
            Ok(VideoTag::Frame {
                codec,
                keyframe,
                composition_offset_ms: u24_signed(&body[..3]),
                data: &body[3..],
            })
        }
        // CodedFrames without an offset (AV1), CodedFramesX (offset zero).
        1 | 3 => Ok(VideoTag::Frame {
            codec,
            keyframe,
            composition_offset_ms: 0,
            data: body,
        }),
        2 | 4 => Ok(VideoTag::Nothing), // SequenceEnd, Metadata
        other => Err(FlvError::Unsupported(format!(
            "enhanced video packet type {other}"
        ))),
    }
}

/// Reads one audio tag body (the RTMP audio message payload).
pub fn parse_audio(tag: &[u8]) -> Result<AudioTag<'_>, FlvError> {
    let first = *tag.first().ok_or(FlvError::Truncated("empty audio tag"))?;
    let format = first >> 4;
    match format {
        10 => {
            let (&packet_type, data) = tag[1..]
                .split_first()
                .ok_or(FlvError::Truncated("AAC packet type"))?;
            Ok(match packet_type {
                0 => AudioTag::SequenceStart {
                    codec: Codec::Aac,
                    config: data,
                },
                _ => AudioTag::Frame {
                    codec: Codec::Aac,
                    data,
                },
            })
        }
        // Enhanced audio: packet type in the low nibble, then a FourCC.
        9 => {
            if tag.len() < 5 {
                return Err(FlvError::Truncated("enhanced audio header"));
            }
            let codec = match &tag[1..5] {
                b"Opus" => Codec::Opus,
                b"mp4a" => Codec::Aac,
                other => {
                    return Err(FlvError::Unsupported(format!(
                        "audio FourCC {:?}",
                        String::from_utf8_lossy(other)
                    )));
                }
            };
            let data = &tag[5..];
            match first & 0x0f {
                0 => Ok(AudioTag::SequenceStart {
                    codec,
                    config: data,
                }),
                1 => Ok(AudioTag::Frame { codec, data }),
                other => Err(FlvError::Unsupported(format!(
                    "enhanced audio packet type {other}"
                ))),
            }
        }
        other => Err(FlvError::Unsupported(format!(
            "sound format {other} (Cascade takes AAC, format 10, and Opus)"
        ))),
    }
}

/// An AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// `profile_idc`.
    pub profile: u8,
    /// The constraint flags byte.
    pub compatibility: u8,
    /// `level_idc`.
    pub level: u8,
    /// Bytes of each NAL unit length prefix in frames (1, 2 or 4).
    pub length_size: usize,
    /// Sequence parameter sets.
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets.
    pub pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    /// Parses the record.
    pub fn parse(record: &[u8]) -> Result<Self, FlvError> {
        let mut at = Reader { bytes: record };
        let version = at.u8()?;
        if version != 1 {
            return Err(FlvError::BadConfig("AVC configuration version is not 1"));
        }
        let profile = at.u8()?;
        let compatibility = at.u8()?;
        let level = at.u8()?;
        let length_size = usize::from(at.u8()? & 0x03) + 1;
        if length_size == 3 {
            return Err(FlvError::BadConfig("NAL unit length size 3"));
        }
        let sps_count = at.u8()? & 0x1f;
        let mut sps = Vec::with_capacity(usize::from(sps_count));
        for _ in 0..sps_count {
            sps.push(at.sized()?.to_vec());
        }
        let pps_count = at.u8()?;
        let mut pps = Vec::with_capacity(usize::from(pps_count));
        for _ in 0..pps_count {
            pps.push(at.sized()?.to_vec());
        }
        if sps.is_empty() {
            return Err(FlvError::BadConfig("no sequence parameter set"));
        }
        Ok(Self {
            profile,
            compatibility,
            level,
            length_size,
            sps,
            pps,
        })
    }

    /// The RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile, self.compatibility, self.level
        )
    }

    /// Whether the profile can carry B-frames at all (Baseline and Constrained Baseline cannot).
    pub fn profile_allows_b_frames(&self) -> bool {
        self.profile != 66
    }

    /// Turns one AVCC frame into an Annex B access unit; a keyframe gets this record's SPS
    /// and PPS in front unless it carries its own.
    pub fn to_annex_b(&self, frame: &[u8], keyframe: bool) -> Result<Vec<u8>, FlvError> {
        let nals = split_length_prefixed(frame, self.length_size)?;
        let has_sps = nals.iter().any(|n| n.first().map(|b| b & 0x1f) == Some(7));
        let parameter_sets = self.sps.iter().chain(&self.pps).map(Vec::as_slice);
        let prefix: Vec<&[u8]> = if keyframe && !has_sps {
            parameter_sets.collect()
        } else {
            Vec::new()
        };
        Ok(annex_b(prefix.into_iter().chain(nals)))
    }
}

impl AvcConfig {
    /// The configuration of an Annex B keyframe that carries its SPS and PPS in band (what
    /// every source Cascade takes sends before a keyframe).
    pub fn from_annex_b(access_unit: &[u8]) -> Option<Self> {
        let mut sps = Vec::new();
        let mut pps = Vec::new();
        for nal in crate::h264::nal_units(access_unit) {
            match nal.first().map(|b| b & 0x1f) {
                Some(7) => sps.push(nal.to_vec()),
                Some(8) => pps.push(nal.to_vec()),
                _ => {}
            }
        }
        let first = sps.first()?;
        let [profile, compatibility, level] = *first.get(1..4)? else {
            return None;
        };
        if pps.is_empty() {
            return None;
        }
        Some(Self {
            profile,
            compatibility,
            level,
            length_size: 4,
            sps,
            pps,
        })
    }

    /// The AVCDecoderConfigurationRecord.
    pub fn to_record(&self) -> Vec<u8> {
        let mut record = vec![
            1,
            self.profile,
            self.compatibility,
            self.level,
            0xfc | (self.length_size as u8 - 1),
            0xe0 | (self.sps.len().min(31) as u8),
        ];
        for sps in self.sps.iter().take(31) {
            record.extend_from_slice(&(sps.len() as u16).to_be_bytes());
            record.extend_from_slice(sps);
        }
        record.push(self.pps.len().min(255) as u8);
        for pps in self.pps.iter().take(255) {
            record.extend_from_slice(&(pps.len() as u16).to_be_bytes());
            record.extend_from_slice(pps);
        }
        record
    }
}

/// The FLV video tag that announces an H.264 configuration (AVC sequence header).
pub fn avc_sequence_header_tag(config: &AvcConfig) -> Vec<u8> {
    let mut tag = vec![0x17, 0, 0, 0, 0];
    tag.extend(config.to_record());
    tag
}

/// The FLV video tag of one Annex B H.264 access unit (4-byte AVCC lengths; access unit
/// delimiters left out), composition offset 0.
pub fn avc_frame_tag(access_unit: &[u8], keyframe: bool, composition_offset_ms: u32) -> Vec<u8> {
    let mut tag = Vec::with_capacity(access_unit.len() + 16);
    // The composition time is a signed 24-bit field.
    let cts = composition_offset_ms.min(0x7f_ffff).to_be_bytes();
    tag.extend_from_slice(&[
        if keyframe { 0x17 } else { 0x27 },
        1,
        cts[1],
        cts[2],
        cts[3],
    ]);
    for nal in crate::h264::nal_units(access_unit) {
        if nal.first().map(|b| b & 0x1f) == Some(9) {
            continue;
        }
        tag.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        tag.extend_from_slice(nal);
    }
    tag
}

/// The FLV audio tag announcing an AAC AudioSpecificConfig.
pub fn aac_sequence_header_tag(audio_specific_config: &[u8]) -> Vec<u8> {
    let mut tag = vec![0xaf, 0];
    tag.extend_from_slice(audio_specific_config);
    tag
}

/// The FLV audio tag of one raw AAC frame.
pub fn aac_frame_tag(frame: &[u8]) -> Vec<u8> {
    let mut tag = Vec::with_capacity(frame.len() + 2);
    tag.extend_from_slice(&[0xaf, 1]);
    tag.extend_from_slice(frame);
    tag
}

/// Bytes from lower-case or upper-case hex (the catalog's configuration records).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign ("+f").
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// NAL units with start codes in front of each: an Annex B access unit.
pub fn annex_b<'a>(nals: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for nal in nals {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    out
}

/// Splits length-prefixed NAL units (AVCC/HVCC form); empty units are skipped.
pub fn split_length_prefixed(frame: &[u8], length_size: usize) -> Result<Vec<&[u8]>, FlvError> {
    let mut nals = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(FlvError::BadNalLength);
        }
        let (prefix, tail) = rest.split_at(length_size);
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len > tail.len() {
            return Err(FlvError::BadNalLength);
        }
        let (nal, tail) = tail.split_at(len);
        if !nal.is_empty() {
            nals.push(nal);
        }
        rest = tail;
    }
    Ok(nals)
}

/// An MPEG-4 AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), the parts a catalog needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type (2 = AAC-LC, 5 = HE-AAC).
    pub object_type: u8,
    /// Sampling frequency, Hz.
    pub sample_rate: u32,
    /// Channel configuration (1 = mono, 2 = stereo, ...).
    pub channels: u8,
}

const AAC_SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

impl AudioSpecificConfig {
    /// Parses the first fields of the config.
    pub fn parse(config: &[u8]) -> Result<Self, FlvError> {
        let mut bits = Bits::new(config);
        let mut object_type = bits.take(5)? as u8;
        if object_type == 31 {
            object_type = 32 + bits.take(6)? as u8;
        }
        let index = bits.take(4)? as usize;
        let sample_rate = if index == 15 {
            bits.take(24)?
        } else {
            *AAC_SAMPLE_RATES
                .get(index)
                .ok_or(FlvError::BadConfig("reserved AAC sampling frequency index"))?
        };
        let channels = bits.take(4)? as u8;
        if sample_rate == 0 {
            return Err(FlvError::BadConfig("AAC sample rate 0"));
        }
        Ok(Self {
            object_type,
            sample_rate,
            channels,
        })
    }

    /// The RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

/// Lower-case hex of `bytes`, as the catalog carries configuration records.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, FlvError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or(FlvError::BadConfig("record truncated"))?;
        self.bytes = rest;
        Ok(first)
    }

    /// A 16-bit length, then that many bytes.
    fn sized(&mut self) -> Result<&'a [u8], FlvError> {
        let len = usize::from(u16::from_be_bytes([self.u8()?, self.u8()?]));
        if len > self.bytes.len() {
            return Err(FlvError::BadConfig("parameter set runs past the record"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }
}

struct Bits<'a> {
    bytes: &'a [u8],
    bit: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, bit: 0 }
    }

    fn take(&mut self, count: usize) -> Result<u32, FlvError> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self
                .bytes
                .get(self.bit / 8)
                .ok_or(FlvError::BadConfig("AudioSpecificConfig truncated"))?;
            let bit = (byte >> (7 - self.bit % 8)) & 1;
            value = (value << 1) | u32::from(bit);
            self.bit += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x264 High-profile record: one SPS, one PPS, 4-byte lengths.
    fn avcc_record() -> Vec<u8> {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9];
        let pps = [0x68, 0xeb, 0xe3, 0xcb];
        let mut record = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        record.extend_from_slice(&sps);
        record.extend_from_slice(&[1, 0, pps.len() as u8]);
        record.extend_from_slice(&pps);
        record
    }

    #[test]
    fn an_avc_sequence_header_becomes_the_catalog_facts() {
        let mut tag = vec![0x17, 0, 0, 0, 0];
        tag.extend(avcc_record());
        let VideoTag::SequenceStart { codec, config } = parse_video(&tag).unwrap() else {
            panic!("not a sequence start");
        };
        assert_eq!(codec, Codec::H264);
        let avc = AvcConfig::parse(config).unwrap();
        assert_eq!(avc.codec_string(), "avc1.64001f");
        assert_eq!(avc.length_size, 4);
        assert!(avc.profile_allows_b_frames());
    }

    #[test]
    fn an_avcc_keyframe_becomes_annex_b_with_parameter_sets_in_front() {
        let avc = AvcConfig::parse(&avcc_record()).unwrap();
        let idr = [0x65, 0x88, 0x84];
        let mut frame = vec![0, 0, 0, 3];
        frame.extend_from_slice(&idr);
        let mut tag = vec![0x17, 1, 0, 0, 0x28]; // composition offset 40 ms
        tag.extend_from_slice(&frame);
        let VideoTag::Frame {
            keyframe,
            composition_offset_ms,
            data,
            ..
        } = parse_video(&tag).unwrap()
        else {
            panic!("not a frame");
        };
        assert!(keyframe);
        assert_eq!(composition_offset_ms, 40);
        let annex_b = avc.to_annex_b(data, keyframe).unwrap();
        let nals: Vec<&[u8]> = crate::h264::nal_units(&annex_b).collect();
        assert_eq!(nals.len(), 3, "SPS, PPS, IDR");
        assert_eq!(nals[0][0] & 0x1f, 7);
        assert_eq!(nals[1][0] & 0x1f, 8);
        assert_eq!(nals[2], &idr);
        let delta = avc.to_annex_b(data, false).unwrap();
        assert_eq!(crate::h264::nal_units(&delta).count(), 1);
    }

    #[test]
    fn frames_muxed_back_into_flv_read_as_they_were() {
        let avc = AvcConfig::parse(&avcc_record()).unwrap();
        let annex_b = avc
            .to_annex_b(&[0, 0, 0, 3, 0x65, 0x88, 0x84], true)
            .unwrap();
        let rebuilt = AvcConfig::from_annex_b(&annex_b).unwrap();
        assert_eq!(rebuilt.to_record(), avcc_record(), "the same record");
        let header = avc_sequence_header_tag(&rebuilt);
        assert!(matches!(
            parse_video(&header),
            Ok(VideoTag::SequenceStart {
                codec: Codec::H264,
                ..
            })
        ));
        let tag = avc_frame_tag(&annex_b, true, 67);
        let VideoTag::Frame {
            keyframe,
            data,
            composition_offset_ms,
            ..
        } = parse_video(&tag).unwrap()
        else {
            panic!("not a frame");
        };
        assert!(keyframe);
        assert_eq!(composition_offset_ms, 67, "the composition time survives");
        assert_eq!(rebuilt.to_annex_b(data, true).unwrap(), annex_b);
        assert_eq!(from_hex(&hex(&[0, 0xab, 0x10])), Some(vec![0, 0xab, 0x10]));
        assert_eq!(from_hex("abc"), None);
        let asc = aac_sequence_header_tag(&[0x12, 0x10]);
        assert!(matches!(
            parse_audio(&asc),
            Ok(AudioTag::SequenceStart {
                codec: Codec::Aac,
                ..
            })
        ));
    }

    #[test]
    fn a_negative_composition_offset_is_read_as_negative() {
        let tag = [0x27, 1, 0xff, 0xff, 0xd8, 0, 0, 0, 1, 0x41];
        let VideoTag::Frame {
            composition_offset_ms,
            ..
        } = parse_video(&tag).unwrap()
        else {
            panic!("not a frame");
        };
        assert_eq!(composition_offset_ms, -40);
    }

    #[test]
    fn enhanced_rtmp_hevc_and_av1_are_recognised() {
        let mut hevc = vec![0x90]; // ex header, keyframe, SequenceStart
        hevc.extend_from_slice(b"hvc1");
        hevc.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            parse_video(&hevc).unwrap(),
            VideoTag::SequenceStart {
                codec: Codec::H265,
                config: &[1, 2, 3]
            }
        );
        let mut av1 = vec![0x91];
        av1.extend_from_slice(b"av01");
        av1.extend_from_slice(&[0x12, 0]);
        assert_eq!(
            parse_video(&av1).unwrap(),
            VideoTag::Frame {
                codec: Codec::Av1,
                keyframe: true,
                composition_offset_ms: 0,
                data: &[0x12, 0]
            }
        );
        let mut vp9 = vec![0x91];
        vp9.extend_from_slice(b"vp09");
        assert!(matches!(parse_video(&vp9), Err(FlvError::Unsupported(_))));
    }

    #[test]
    fn an_aac_sequence_header_gives_rate_and_channels() {
        // AAC-LC, 44.1 kHz, stereo: 0x12 0x10.
        let tag = [0xaf, 0, 0x12, 0x10];
        let AudioTag::SequenceStart { codec, config } = parse_audio(&tag).unwrap() else {
            panic!("not a sequence start");
        };
        assert_eq!(codec, Codec::Aac);
        let asc = AudioSpecificConfig::parse(config).unwrap();
        assert_eq!((asc.sample_rate, asc.channels), (44_100, 2));
        assert_eq!(asc.codec_string(), "mp4a.40.2");
        assert_eq!(
            parse_audio(&[0xaf, 1, 9, 9]).unwrap(),
            AudioTag::Frame {
                codec: Codec::Aac,
                data: &[9, 9]
            }
        );
    }

    #[test]
    fn truncated_and_foreign_tags_are_errors_not_panics() {
        for tag in [
            &[][..],
            &[0x17],
            &[0x17, 1, 0],
            &[0x12],
            &[0x2f],
            &[0xaf],
            &[0x90, b'h'],
        ] {
            let video = parse_video(tag);
            let audio = parse_audio(tag);
            assert!(video.is_err() || audio.is_err(), "{tag:?}");
        }
        let avc = AvcConfig::parse(&avcc_record()).unwrap();
        assert_eq!(
            avc.to_annex_b(&[0, 0, 0, 9, 1], false),
            Err(FlvError::BadNalLength)
        );
        assert!(AvcConfig::parse(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 40, 1]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x12]).is_err());
    }
}
