//! CMAF (fragmented MP4) for LL-HLS: the initialisation segment of an H.264 or AAC track and
//! the fragments (`moof` + `mdat`) that make its parts and segments. The boxes are `mp4-atom`'s;
//! what goes in them is decided here.
//!
//! A fragment's samples are our frames converted from Annex B (start codes) to the
//! length-prefixed form MP4 carries, with each frame's duration being the time to the next
//! one; the fragment's decode time (`tfdt`) is the first frame's, so parts and segments cut
//! anywhere stay on the track's timeline.

use mp4_atom::{
    Audio, Avc1, Avcc, Codec, Dinf, Dref, Encode, Esds, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf,
    Moof, Moov, Mp4a, Mvex, Mvhd, Smhd, Stbl, Stco, Stsd, Styp, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex,
    Trun, TrunEntry, TrunSamples, Url, Visual, Vmhd,
};

use crate::ProtocolError;
use crate::h264::{nal_type, nal_units};

/// An H.264 track's parameters, from its first keyframe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Track {
    /// The track id in the file (1 for a video-only rendition).
    pub track_id: u32,
    /// Ticks per second of the timestamps (90 kHz).
    pub timescale: u32,
    /// Picture size.
    pub width: u16,
    /// Picture size.
    pub height: u16,
    /// The sequence parameter set (without start code).
    pub sps: Vec<u8>,
    /// The picture parameter set (without start code).
    pub pps: Vec<u8>,
}

impl H264Track {
    /// The track described by a keyframe access unit (Annex B with its SPS and PPS).
    pub fn from_keyframe(
        track_id: u32,
        timescale: u32,
        keyframe: &[u8],
    ) -> Result<H264Track, ProtocolError> {
        let mut sps = None;
        let mut pps = None;
        for nal in nal_units(keyframe) {
            match nal_type(nal) {
                Some(7) => sps = Some(nal.to_vec()),
                Some(8) => pps = Some(nal.to_vec()),
                _ => {}
            }
        }
        let (Some(sps), Some(pps)) = (sps, pps) else {
            return Err(ProtocolError::Cmaf(
                "a keyframe without SPS and PPS cannot start a CMAF track",
            ));
        };
        let (width, height) = crate::h264::sps_resolution(&sps)?;
        Ok(H264Track {
            track_id,
            timescale,
            width: width.min(u32::from(u16::MAX)) as u16,
            height: height.min(u32::from(u16::MAX)) as u16,
            sps,
            pps,
        })
    }
}

/// An AAC track's parameters (from its AudioSpecificConfig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacTrack {
    /// The track id in the file.
    pub track_id: u32,
    /// Ticks per second of the timestamps (the sample rate).
    pub timescale: u32,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u8,
    /// The AudioSpecificConfig.
    pub config: Vec<u8>,
}

/// An Opus track's parameters (RFC 7845's identification header, as `dOps` carries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusTrack {
    /// The track id in the file.
    pub track_id: u32,
    /// Ticks per second of the timestamps (48 kHz, Opus's clock).
    pub timescale: u32,
    /// Channels (1 or 2: mapping family 0).
    pub channels: u8,
    /// Samples at 48 kHz the decoder drops at the start (the encoder's look-ahead).
    pub pre_skip: u16,
}

/// A track of a CMAF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Track {
    /// H.264 video: samples are converted from Annex B.
    H264(H264Track),
    /// AAC audio: samples are raw AAC frames, as they are.
    Aac(AacTrack),
    /// Opus audio: samples are Opus packets, as they are.
    Opus(OpusTrack),
}

impl Track {
    fn id(&self) -> u32 {
        match self {
            Track::H264(t) => t.track_id,
            Track::Aac(t) => t.track_id,
            Track::Opus(t) => t.track_id,
        }
    }

    fn timescale(&self) -> u32 {
        match self {
            Track::H264(t) => t.timescale,
            Track::Aac(t) => t.timescale,
            Track::Opus(t) => t.timescale,
        }
    }
}

/// One frame of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Decode timestamp, in the track's timescale.
    pub decode_time: u64,
    /// Presentation minus decode time (B-frames), in the track's timescale.
    pub composition_offset: u32,
    /// A keyframe (sync sample).
    pub keyframe: bool,
    /// The access unit: Annex B for H.264, a raw frame for AAC.
    pub annex_b: &'a [u8],
}

/// `ftyp` + `moov` for `track`: what a player fetches once (`EXT-X-MAP`).
pub fn init_segment(track: &Track) -> Result<Vec<u8>, ProtocolError> {
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    let (codec, handler, width, height) = match track {
        Track::H264(video) => (Codec::Avc1(avc1(video)), b"vide", video.width, video.height),
        Track::Aac(audio) => (Codec::Mp4a(mp4a(audio)), b"soun", 0, 0),
        Track::Opus(audio) => (Codec::Opus(opus(audio)), b"soun", 0, 0),
    };
    let video = matches!(track, Track::H264(_));
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: track.id() + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: vec![Trex {
                track_id: track.id(),
                default_sample_description_index: 1,
                ..Default::default()
            }],
        }),
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: track.id(),
                enabled: true,
                in_movie: true,
                volume: if video { 0.into() } else { 1.into() },
                width: width.into(),
                height: height.into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: track.timescale(),
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr: Hdlr {
                    handler: handler.into(),
                    name: if video {
                        "Cascade video"
                    } else {
                        "Cascade audio"
                    }
                    .into(),
                },
                minf: Minf {
                    vmhd: video.then(Vmhd::default),
                    smhd: (!video).then(Smhd::default),
                    dinf: Dinf {
                        dref: Dref {
                            entries: vec![Url::default().into()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd {
                            codecs: vec![codec],
                        },
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).map_err(encoding)?;
    moov.encode(&mut out).map_err(encoding)?;
    Ok(out)
}

fn opus(track: &OpusTrack) -> mp4_atom::Opus {
    mp4_atom::Opus {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(track.channels),
            sample_size: 16,
            sample_rate: 48_000u16.into(),
        },
        dops: mp4_atom::Dops {
            output_channel_count: track.channels,
            pre_skip: track.pre_skip,
            input_sample_rate: 48_000,
            output_gain: 0,
            channel_mapping: None,
        },
        btrt: None,
    }
}

fn mp4a(track: &AacTrack) -> Mp4a {
    let config = &track.config;
    Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(track.channels),
            sample_size: 16,
            sample_rate: (track.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
        },
        esds: Esds {
            es_desc: mp4_atom::esds::EsDescriptor {
                es_id: track.track_id as u16,
                depends_on_es_id: None,
                url: None,
                ocr_es_id: None,
                stream_priority: 0,
                dec_config: mp4_atom::esds::DecoderConfig {
                    // MPEG-4 audio, an audio stream.
                    object_type_indication: 0x40,
                    stream_type: 5,
                    dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                        profile: config.first().map_or(2, |b| b >> 3),
                        freq_index: 0,
                        chan_conf: track.channels,
                        raw: config.clone(),
                    }),
                    ..Default::default()
                },
                sl_config: mp4_atom::esds::SLConfig {},
            },
        },
        btrt: None,
        taic: None,
    }
}

fn avc1(track: &H264Track) -> Avc1 {
    Avc1 {
        visual: Visual {
            data_reference_index: 1,
            width: track.width,
            height: track.height,
            ..Default::default()
        },
        avcc: Avcc {
            configuration_version: 1,
            avc_profile_indication: track.sps.get(1).copied().unwrap_or(66),
            profile_compatibility: track.sps.get(2).copied().unwrap_or(0),
            avc_level_indication: track.sps.get(3).copied().unwrap_or(30),
            length_size: 4,
            sequence_parameter_sets: vec![track.sps.clone()],
            picture_parameter_sets: vec![track.pps.clone()],
            ext: None,
        },
        btrt: None,
        colr: None,
        pasp: None,
        taic: None,
        fiel: None,
        spatial: None,
    }
}

/// `styp` for the start of a segment (CMAF's segment type box).
pub fn segment_type() -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    Styp {
        major_brand: b"msdh".into(),
        minor_version: 0,
        compatible_brands: vec![b"msdh".into(), b"msix".into(), b"cmfc".into()],
    }
    .encode(&mut out)
    .map_err(encoding)?;
    Ok(out)
}

/// One fragment (`moof` + `mdat`) of `samples`, numbered `sequence` (1, 2, ... in the
/// track). `next_decode_time` is when the frame after the last one decodes: the last
/// sample's duration. A part is one fragment; a segment is its parts in a row.
pub fn fragment(
    track: &Track,
    sequence: u32,
    samples: &[Sample<'_>],
    next_decode_time: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let Some(first) = samples.first() else {
        return Err(ProtocolError::Cmaf("a fragment needs a sample"));
    };
    let mut data = Vec::new();
    let mut entries = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let next = samples
            .get(i + 1)
            .map_or(next_decode_time, |s| s.decode_time);
        let start = data.len();
        match track {
            Track::H264(_) => {
                for nal in nal_units(sample.annex_b) {
                    // Delimiters have no place in MP4. Parameter sets are in the init
                    // segment and stay in keyframes too (ISO/IEC 14496-15 allows them in
                    // samples): a decoder that keeps one configuration across a new
                    // `EXT-X-MAP` (FFmpeg's HLS reader does) still decodes a publisher that
                    // came back with other ones.
                    if nal_type(nal) == Some(9) {
                        continue;
                    }
                    data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    data.extend_from_slice(nal);
                }
            }
            Track::Aac(_) | Track::Opus(_) => data.extend_from_slice(sample.annex_b),
        }
        entries.push(TrunEntry {
            duration: Some(
                next.saturating_sub(sample.decode_time)
                    .min(u64::from(u32::MAX)) as u32,
            ),
            size: Some((data.len() - start) as u32),
            flags: Some(if sample.keyframe {
                SYNC_SAMPLE
            } else {
                NON_SYNC_SAMPLE
            }),
            cts: Some(i64::from(sample.composition_offset)),
        });
    }
    let moof = |data_offset: i32| Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: vec![Traf {
            tfhd: Tfhd {
                track_id: track.id(),
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(Tfdt {
                base_media_decode_time: first.decode_time,
            }),
            trun: vec![Trun {
                data_offset: Some(data_offset),
                samples: TrunSamples::Explicit(entries.clone()),
            }],
            ..Default::default()
        }],
    };
    // The data offset counts from the start of the moof to the first byte of mdat's data:
    // the moof's own size (which does not depend on the offset's value) and mdat's header.
    let mut sized = Vec::new();
    moof(0).encode(&mut sized).map_err(encoding)?;
    let offset = sized.len() + 8;
    let mut out = Vec::with_capacity(offset + data.len());
    moof(offset as i32).encode(&mut out).map_err(encoding)?;
    Mdat { data }.encode(&mut out).map_err(encoding)?;
    Ok(out)
}

/// `sample_depends_on = 2` (depends on no other), not a non-sync sample.
const SYNC_SAMPLE: u32 = 0x0200_0000;
/// `sample_depends_on = 1`, `sample_is_non_sync_sample = 1`.
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

fn encoding(_: mp4_atom::Error) -> ProtocolError {
    ProtocolError::Cmaf("an MP4 box could not be written")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::Decode;

    /// A keyframe: SPS (320x240 baseline), PPS, IDR slice.
    fn keyframe() -> Vec<u8> {
        let sps = [
            0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
            0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
        ];
        let pps = [0x68, 0xcb, 0x83, 0xcb, 0x20];
        let mut au = Vec::new();
        for nal in [&sps[..], &pps[..], &[0x65, 0x88, 0x84, 0x00, 0x33][..]] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        au
    }

    #[test]
    fn the_track_is_described_by_its_first_keyframe_and_a_delta_frame_cannot_start_it() {
        let track = H264Track::from_keyframe(1, 90_000, &keyframe()).unwrap();
        assert_eq!((track.width, track.height), (320, 240));
        assert_eq!(track.sps[0], 0x67);
        assert!(H264Track::from_keyframe(1, 90_000, &[0, 0, 0, 1, 0x41, 0x9a]).is_err());
    }

    #[test]
    fn a_fragment_points_its_run_at_its_data_and_keeps_durations_and_sync_flags() {
        let track = Track::H264(H264Track::from_keyframe(1, 90_000, &keyframe()).unwrap());
        // A delta frame after an access unit delimiter, which MP4 has no place for.
        let delta = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 0x9a, 0x01, 0x02];
        let key = keyframe();
        let samples = [
            Sample {
                decode_time: 90_000,
                composition_offset: 0,
                keyframe: true,
                annex_b: &key,
            },
            Sample {
                decode_time: 93_000,
                composition_offset: 0,
                keyframe: false,
                annex_b: &delta,
            },
        ];
        let bytes = fragment(&track, 7, &samples, 96_000).unwrap();
        let mut cursor = std::io::Cursor::new(&bytes);
        let moof = Moof::decode(&mut cursor).unwrap();
        let mdat = Mdat::decode(&mut cursor).unwrap();
        assert_eq!(moof.mfhd.sequence_number, 7);
        let traf = &moof.traf[0];
        assert_eq!(traf.tfdt.as_ref().unwrap().base_media_decode_time, 90_000);
        let trun = &traf.trun[0];
        let TrunSamples::Explicit(entries) = &trun.samples else {
            panic!("explicit samples");
        };
        assert_eq!(entries[0].duration, Some(3000));
        assert_eq!(
            entries[1].duration,
            Some(3000),
            "to the next fragment's first frame"
        );
        assert_eq!(entries[0].flags, Some(SYNC_SAMPLE));
        assert_eq!(entries[1].flags, Some(NON_SYNC_SAMPLE));
        // The keyframe whole, parameter sets included (each NAL unit after its length), and
        // the delta slice without the delimiter (4 + length).
        let keyframe_len: usize = nal_units(&key).map(|n| 4 + n.len()).sum();
        assert_eq!(entries[0].size, Some(keyframe_len as u32));
        assert_eq!(entries[1].size, Some(8));
        let offset = trun.data_offset.unwrap() as usize;
        let moof_len = bytes.len() - mdat.data.len() - 8;
        assert_eq!(
            offset,
            moof_len + 8,
            "the run starts at the mdat's first byte"
        );
        // The keyframe's first NAL unit, its SPS, after its length.
        let sps_len = nal_units(&key).next().unwrap().len() as u32;
        assert_eq!(&bytes[offset..offset + 4], &sps_len.to_be_bytes());
        assert_eq!(bytes[offset + 4], 0x67);
    }
}
