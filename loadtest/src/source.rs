//! What a publisher sends: a real H.264 + Opus clip (generated once with FFmpeg and cached, or
//! any file the user gives, converted once), or a synthetic stream of correctly framed H.264
//! access units of a chosen bitrate and GOP, made without an encoder.

use std::path::{Path, PathBuf};
use std::process::Command;

use cascade_protocol::h264::{is_keyframe, split_access_units};

use crate::LoadtestError;

/// Frames per second of every source (the default clip and the synthetic stream).
pub const FPS: u32 = 30;

/// One video access unit, Annex B.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// Media ready to be looped: video starts with a keyframe; audio is 20 ms Opus packets.
#[derive(Debug)]
pub struct Media {
    pub video: Vec<VideoFrame>,
    pub audio: Vec<Vec<u8>>,
    pub description: String,
}

/// Where the media comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// The default 1280x720 30 fps ~1.5 Mbit/s clip with a 2 s GOP (generated and cached).
    DefaultClip,
    /// Any file FFmpeg can read, converted once to H.264 baseline (no B-frames) and Opus.
    File(PathBuf),
    /// Correctly framed but undecodable access units: pure forwarding tests.
    Synthetic { bitrate_bps: u64, gop_frames: u32 },
}

impl SourceSpec {
    /// Reads `--source`: `synthetic`, a file path, or nothing for the default clip.
    pub fn parse(source: Option<&str>, bitrate_bps: u64, gop_frames: u32) -> SourceSpec {
        match source {
            None | Some("clip") => SourceSpec::DefaultClip,
            Some("synthetic") => SourceSpec::Synthetic {
                bitrate_bps,
                gop_frames,
            },
            Some(path) => SourceSpec::File(PathBuf::from(path)),
        }
    }
}

/// Loads (generating or converting first if needed) the media of `spec`.
pub fn load(spec: &SourceSpec) -> Result<Media, LoadtestError> {
    match spec {
        SourceSpec::Synthetic {
            bitrate_bps,
            gop_frames,
        } => Ok(synthetic(*bitrate_bps, *gop_frames)),
        SourceSpec::DefaultClip => {
            let dir = cache_dir()?;
            let video = dir.join("default-720p30-1500k-gop2s.h264");
            let audio = dir.join("default-opus.ogg");
            if !video.exists() || !audio.exists() {
                tracing::info!(dir = %dir.display(), "generating the default clip with FFmpeg (first use only)");
                ffmpeg_encode(
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc2=size=1280x720:rate=30:duration=10",
                    ],
                    &video,
                )?;
                ffmpeg_opus(
                    &["-f", "lavfi", "-i", "sine=frequency=440:duration=10"],
                    &audio,
                )?;
            }
            read_pair(
                &video,
                &audio,
                "default clip 1280x720 30 fps ~1.5 Mbit/s, 2 s GOP",
            )
        }
        SourceSpec::File(path) => {
            let input = path.canonicalize().map_err(|e| {
                LoadtestError::Source(format!("cannot read {}: {e}", path.display()))
            })?;
            let stamp = std::fs::metadata(&input)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let key = format!(
                "{}-{stamp}",
                input
                    .to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let dir = cache_dir()?;
            let video = dir.join(format!("{key}.h264"));
            let audio = dir.join(format!("{key}.ogg"));
            let input_arg = input.to_string_lossy().to_string();
            if !video.exists() {
                ffmpeg_encode(&["-i", &input_arg, "-an", "-r", "30"], &video)?;
            }
            if !audio.exists() {
                // A file without audio gets silence, so that viewers still see an audio track.
                if ffmpeg_opus(&["-i", &input_arg, "-vn"], &audio).is_err() {
                    ffmpeg_opus(&["-f", "lavfi", "-i", "anullsrc=duration=10"], &audio)?;
                }
            }
            read_pair(&video, &audio, &format!("file {}", path.display()))
        }
    }
}

fn cache_dir() -> Result<PathBuf, LoadtestError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("cascade-loadtest");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LoadtestError::Source(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// H.264 constrained baseline, no B-frames, 1.5 Mbit/s, keyframe every 2 s, with access unit
/// delimiters so that splitting is exact.
fn ffmpeg_encode(input: &[&str], output: &Path) -> Result<(), LoadtestError> {
    let partial = output.with_extension("partial");
    run_ffmpeg(
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y"])
            .args(input)
            .args([
                "-c:v",
                "libx264",
                "-profile:v",
                "baseline",
                "-pix_fmt",
                "yuv420p",
            ])
            .args([
                "-bf",
                "0",
                "-g",
                "60",
                "-keyint_min",
                "60",
                "-sc_threshold",
                "0",
            ])
            .args(["-b:v", "1500k", "-maxrate", "1500k", "-bufsize", "1500k"])
            .args(["-x264-params", "aud=1", "-f", "h264"])
            .arg(&partial),
    )?;
    std::fs::rename(&partial, output).map_err(|e| LoadtestError::Source(e.to_string()))
}

fn ffmpeg_opus(input: &[&str], output: &Path) -> Result<(), LoadtestError> {
    let partial = output.with_extension("partial");
    run_ffmpeg(
        Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y"])
            .args(input)
            .args(["-c:a", "libopus", "-frame_duration", "20", "-ar", "48000"])
            .args(["-b:a", "32000", "-f", "ogg"])
            .arg(&partial),
    )?;
    std::fs::rename(&partial, output).map_err(|e| LoadtestError::Source(e.to_string()))
}

fn run_ffmpeg(command: &mut Command) -> Result<(), LoadtestError> {
    let output = command.output().map_err(|e| {
        LoadtestError::Source(format!(
            "cannot run ffmpeg ({e}); install it (apt install ffmpeg) or use --source synthetic"
        ))
    })?;
    if !output.status.success() {
        return Err(LoadtestError::Source(format!(
            "ffmpeg failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

fn read_pair(video: &Path, audio: &Path, description: &str) -> Result<Media, LoadtestError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| LoadtestError::Source(format!("{}: {e}", p.display())))
    };
    let mut frames: Vec<VideoFrame> = split_access_units(&read(video)?)
        .into_iter()
        .map(|data| VideoFrame {
            keyframe: is_keyframe(&data),
            data,
        })
        .collect();
    // Loop from a keyframe to a keyframe: drop anything before the first and after the last.
    let first = frames.iter().position(|f| f.keyframe).ok_or_else(|| {
        LoadtestError::Source(format!("{} holds no H.264 keyframe", video.display()))
    })?;
    frames.drain(..first);
    if let Some(last) = frames.iter().rposition(|f| f.keyframe)
        && last > 0
    {
        frames.truncate(last);
    }
    let audio = cascade_protocol::ogg::opus_packets(&read(audio)?);
    Ok(Media {
        video: frames,
        audio,
        description: description.to_owned(),
    })
}

/// SPS and PPS of a 1280x720 constrained-baseline stream, so the server's catalog shows a size.
const SPS_720P: [u8; 11] = [
    0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x06, 0xd0,
];
const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
/// A 20 ms Opus frame of silence (CELT, fullband).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// One GOP of synthetic access units: the keyframe carries five times the average frame size.
fn synthetic(bitrate_bps: u64, gop_frames: u32) -> Media {
    let gop = gop_frames.max(1) as u64;
    let per_frame = (bitrate_bps / 8 / u64::from(FPS)).max(16);
    let key_size = per_frame * 5.min(gop);
    let delta_size = if gop > 1 {
        (per_frame * gop - key_size) / (gop - 1)
    } else {
        per_frame
    }
    .max(16);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut filler = |len: u64| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed as u8) | 1 // never zero: no start code emulation
            })
            .collect()
    };
    let mut video = Vec::with_capacity(gop as usize);
    for i in 0..gop {
        let mut au = vec![0, 0, 0, 1, 0x09, 0xf0];
        if i == 0 {
            for nal in [&SPS_720P[..], &PPS[..]] {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(nal);
            }
            au.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88]);
            au.extend(filler(key_size));
        } else {
            au.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x9a]);
            au.extend(filler(delta_size));
        }
        video.push(VideoFrame {
            keyframe: i == 0,
            data: au,
        });
    }
    Media {
        video,
        audio: vec![OPUS_SILENCE.to_vec(); 50],
        description: format!(
            "synthetic H.264 {} kbit/s, keyframe every {gop} frames",
            bitrate_bps / 1000
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_access_units_are_framed_like_h264_at_the_asked_bitrate() {
        let media = synthetic(1_500_000, 60);
        assert_eq!(media.video.len(), 60);
        assert!(media.video[0].keyframe && is_keyframe(&media.video[0].data));
        assert!(media.video[1..].iter().all(|f| !is_keyframe(&f.data)));
        let bytes: usize = media.video.iter().map(|f| f.data.len()).sum();
        let bitrate = bytes as f64 * 8.0 / 2.0;
        assert!((1_400_000.0..1_600_000.0).contains(&bitrate), "{bitrate}");
        assert_eq!(
            cascade_protocol::h264::resolution_of_access_unit(&media.video[0].data),
            Some((1280, 720))
        );
        // Re-splitting the concatenation gives the same access units back.
        let stream: Vec<u8> = media.video.iter().flat_map(|f| f.data.clone()).collect();
        assert_eq!(split_access_units(&stream).len(), 60);
    }
}
