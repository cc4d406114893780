//! Our CMAF fragments read by FFmpeg: H.264 from FFmpeg's libx264, cut into an init segment
//! and fragments of ten frames (as parts would be), decodes to every frame at its size.

use std::process::Command;

use cascade_protocol::h264::{is_keyframe, split_access_units};
use cascade_protocol::hls::cmaf::{
    AacTrack, H264Track, Sample, Track, fragment, init_segment, segment_type,
};

#[test]
fn ffprobe_decodes_every_frame_of_our_init_segment_and_fragments() {
    let encoded = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x180:rate=30",
        ])
        .args([
            "-t", "2", "-c:v", "libx264", "-bf", "0", "-g", "30", "-f", "h264", "-",
        ])
        .output()
        .expect("ffmpeg runs (scripts/install-deps.sh test installs it)");
    assert!(encoded.status.success());
    let units = split_access_units(&encoded.stdout);
    assert_eq!(units.len(), 60);
    let track = Track::H264(H264Track::from_keyframe(1, 90_000, &units[0]).unwrap());
    let mut file = init_segment(&track).unwrap();
    file.extend(segment_type().unwrap());
    let samples: Vec<Sample<'_>> = units
        .iter()
        .enumerate()
        .map(|(i, unit)| Sample {
            decode_time: 90_000 + i as u64 * 3000,
            composition_offset: 0,
            keyframe: is_keyframe(unit),
            annex_b: unit,
        })
        .collect();
    for (n, chunk) in samples.chunks(10).enumerate() {
        let next = chunk.last().unwrap().decode_time + 3000;
        file.extend(fragment(&track, n as u32 + 1, chunk, next).unwrap());
    }
    let path = std::env::temp_dir().join(format!("cascade-cmaf-{}.mp4", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,nb_read_frames,codec_name",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let times = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let _ = std::fs::remove_file(&path);
    let times: Vec<String> = String::from_utf8_lossy(&times.stdout)
        .lines()
        // The first frame's line also has an empty side-data column.
        .map(|line| line.trim_end_matches(',').to_owned())
        .collect();
    assert_eq!(
        (
            times.first().map(String::as_str),
            times.last().map(String::as_str)
        ),
        (Some("1.000000"), Some("2.966667")),
        "frames keep the track's timeline (tfdt and durations)"
    );
    let errors = String::from_utf8_lossy(&probe.stderr);
    assert!(errors.trim().is_empty(), "ffprobe: {errors}");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        "h264,320,180,60",
        "every frame decodes at its size"
    );
}

/// Raw AAC frames and the AudioSpecificConfig of an ADTS stream.
fn adts_frames(adts: &[u8]) -> (Vec<u8>, Vec<&[u8]>) {
    let mut frames = Vec::new();
    let mut config = Vec::new();
    let mut at = 0;
    while at + 7 <= adts.len() {
        let header = &adts[at..at + 7];
        assert_eq!(
            (header[0], header[1] & 0xf0),
            (0xff, 0xf0),
            "ADTS sync at {at}"
        );
        let protection_absent = header[1] & 1 == 1;
        let profile = (header[2] >> 6) + 1;
        let freq = (header[2] >> 2) & 0x0f;
        let channels = ((header[2] & 1) << 2) | (header[3] >> 6);
        let length = (usize::from(header[3] & 3) << 11)
            | (usize::from(header[4]) << 3)
            | usize::from(header[5] >> 5);
        let header_len = if protection_absent { 7 } else { 9 };
        if config.is_empty() {
            config = vec![
                (profile << 3) | (freq >> 1),
                ((freq & 1) << 7) | (channels << 3),
            ];
        }
        frames.push(&adts[at + header_len..at + length]);
        at += length;
    }
    (config, frames)
}

#[test]
fn ffprobe_decodes_every_frame_of_our_aac_fragments() {
    let encoded = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
        ])
        .args(["-t", "2", "-ac", "2", "-c:a", "aac", "-f", "adts", "-"])
        .output()
        .expect("ffmpeg runs (scripts/install-deps.sh test installs it)");
    assert!(encoded.status.success());
    let (config, frames) = adts_frames(&encoded.stdout);
    let track = Track::Aac(AacTrack {
        track_id: 1,
        timescale: 48_000,
        sample_rate: 48_000,
        channels: 2,
        config,
    });
    let mut file = init_segment(&track).unwrap();
    let samples: Vec<Sample<'_>> = frames
        .iter()
        .enumerate()
        .map(|(i, frame)| Sample {
            decode_time: i as u64 * 1024,
            composition_offset: 0,
            keyframe: true,
            annex_b: frame,
        })
        .collect();
    for (n, chunk) in samples.chunks(16).enumerate() {
        let next = chunk.last().unwrap().decode_time + 1024;
        file.extend(fragment(&track, n as u32 + 1, chunk, next).unwrap());
    }
    let path = std::env::temp_dir().join(format!("cascade-cmaf-aac-{}.mp4", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "a:0"])
        .args([
            "-show_entries",
            "stream=codec_name,sample_rate,channels,nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let _ = std::fs::remove_file(&path);
    let errors = String::from_utf8_lossy(&probe.stderr);
    assert!(errors.trim().is_empty(), "ffprobe: {errors}");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        format!("aac,48000,2,{}", frames.len()),
        "every AAC frame decodes"
    );
}
