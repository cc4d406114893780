//! Our CMAF fragments read by FFmpeg: H.264 from FFmpeg's libx264, cut into an init segment
//! and fragments of ten frames (as parts would be), decodes to every frame at its size.

use std::process::Command;

use cascade_protocol::h264::{is_keyframe, split_access_units};
use cascade_protocol::hls::cmaf::{
    AacTrack, H264Track, Sample, Track, fragment, init_segment, segment_type,
};

/// Appends `samples` as fragments of `per_fragment` samples, each `tick` long.
fn append_fragments(
    file: &mut Vec<u8>,
    track: &Track,
    samples: &[Sample<'_>],
    per_fragment: usize,
    tick: u64,
) {
    for (n, chunk) in samples.chunks(per_fragment).enumerate() {
        let next = chunk.last().unwrap().decode_time + tick;
        file.extend(fragment(track, n as u32 + 1, chunk, next).unwrap());
    }
}

/// Runs ffprobe with `args` on `stream` of the MP4 file `bytes` (CSV output).
fn ffprobe(bytes: &[u8], stream: &str, args: &[&str]) -> std::process::Output {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "cascade-cmaf-{}-{}.mp4",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(args)
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs (scripts/install-deps.sh test installs it)");
    let _ = std::fs::remove_file(&path);
    output
}

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
    append_fragments(&mut file, &track, &samples, 10, 3000);
    let probe = ffprobe(
        &file,
        "v:0",
        &[
            "-count_frames",
            "-show_entries",
            "stream=width,height,nb_read_frames,codec_name",
        ],
    );
    let times = ffprobe(&file, "v:0", &["-show_entries", "frame=pts_time"]);
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
    append_fragments(&mut file, &track, &samples, 16, 1024);
    let probe = ffprobe(
        &file,
        "a:0",
        &[
            "-count_frames",
            "-show_entries",
            "stream=codec_name,sample_rate,channels,nb_read_frames",
        ],
    );
    let errors = String::from_utf8_lossy(&probe.stderr);
    assert!(errors.trim().is_empty(), "ffprobe: {errors}");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        format!("aac,48000,2,{}", frames.len()),
        "every AAC frame decodes"
    );
}
