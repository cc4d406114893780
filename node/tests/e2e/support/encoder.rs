//! FFmpeg as the encoder users run, publishing over RTMP or SRT, and what a viewer must
//! have received of what it sent.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::media::{encode_h264, fingerprint, nal_units};
use super::peer::ReceivedUnit;

/// FFmpeg publishing until dropped.
pub struct Encoder(Child);

impl Encoder {
    /// `ffmpeg -re <inputs and codecs> -f <format> <url>`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], format: &str, url: &str) -> Encoder {
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-re"])
            .args(args)
            .args(["-f", format, url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg is installed (the README's test command installs it)");
        Encoder(child)
    }

    /// Publishes FLV over RTMP to `url`.
    pub fn flv<S: AsRef<std::ffi::OsStr>>(args: &[S], url: &str) -> Encoder {
        Self::start(args, "flv", url)
    }

    /// Three seconds of FFmpeg's test pattern over RTMP to `url`, run to its end: whether
    /// FFmpeg succeeded and what it printed (a refused publisher sees why).
    pub fn try_flv(url: &str) -> (bool, String) {
        Self::flv(
            &["-f", "lavfi", "-i", "testsrc", "-c:v", "libx264", "-t", "3"],
            url,
        )
        .refusal()
    }

    /// Publishes MPEG-TS over SRT to `url`.
    pub fn mpegts<S: AsRef<std::ffi::OsStr>>(args: &[S], url: &str) -> Encoder {
        Self::start(args, "mpegts", url)
    }

    /// Freezes the encoder (SIGSTOP): its connection stays open and goes silent, as when an
    /// encoder hangs or its network stalls.
    pub fn pause(&self) {
        let status = Command::new("kill")
            .args(["-STOP", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for FFmpeg to give up; its exit status and what it printed.
    pub fn refusal(mut self) -> (bool, String) {
        let output = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// FFmpeg's input and codec arguments for a live 640x360 test pattern encoded by x264 with
/// two B-frames (as OBS and many encoders send by default) and a keyframe every `gop` frames;
/// with `aac`, a 44.1 kHz AAC tone as well.
pub fn b_frame_pattern(gop: u32, aac: bool) -> Vec<String> {
    let gop = gop.to_string();
    let mut args: Vec<String> = ["-re", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30"]
        .map(String::from)
        .to_vec();
    if aac {
        args.extend(
            [
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-c:a",
                "aac",
            ]
            .map(String::from),
        );
    }
    args.extend(
        [
            "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", &gop, "-pix_fmt", "yuv420p",
        ]
        .map(String::from),
    );
    args
}

/// A test pattern with a live stream's x264 settings (no B-frames) at 30 fps, as a raw H.264
/// file for FFmpeg to send as it is (`-c:v copy`); removed when dropped.
pub struct H264File {
    path: PathBuf,
    /// Its access units, as a viewer must receive them.
    pub units: Vec<Vec<u8>>,
}

impl H264File {
    /// `seconds` of it, named for the test.
    pub fn encode(seconds: u32, name: &str) -> Self {
        let units = encode_h264(seconds, 30);
        let path =
            std::env::temp_dir().join(format!("cascade-e2e-{}-{name}.h264", std::process::id()));
        std::fs::write(&path, units.concat()).unwrap();
        Self { path, units }
    }

    /// FFmpeg's input and codec arguments: this video as it is, and with `aac_rate` an AAC
    /// tone at that sample rate.
    pub fn args(&self, aac_rate: Option<u32>) -> Vec<String> {
        let mut args: Vec<String> = ["-f", "h264", "-framerate", "30", "-i"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.path.to_string_lossy().into_owned());
        match aac_rate {
            None => args.extend(["-c:v", "copy"].map(String::from)),
            Some(rate) => {
                args.extend(["-f", "lavfi", "-i"].map(String::from));
                args.push(format!("sine=frequency=440:sample_rate={rate}"));
                args.extend(
                    [
                        "-map",
                        "0:v",
                        "-map",
                        "1:a",
                        "-c:v",
                        "copy",
                        "-c:a",
                        "aac",
                        "-shortest",
                    ]
                    .map(String::from),
                );
            }
        }
        args
    }
}

impl Drop for H264File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asserts that `received` is a run of `sent` access units: the first is one that was sent,
/// byte for byte, and each next one is the next that was sent (none corrupted, missing or
/// out of order).
pub fn assert_contiguous_run(received: &[ReceivedUnit], sent_units: &[Vec<u8>], who: &str) {
    let sent: Vec<[u8; 32]> = sent_units
        .iter()
        .map(|au| fingerprint(&nal_units(au)))
        .collect();
    let first = received.first().expect("something was received");
    let start = sent
        .iter()
        .position(|f| *f == first.fingerprint)
        .unwrap_or_else(|| {
            panic!(
                "{who}: the first frame received is not one that was sent: {} bytes, {} received, \
                 NAL units (type, bytes) {:?}; the first sent: {:?}",
                first.data.len(),
                received.len(),
                nal_summary(&first.data),
                sent_units.first().map(|au| nal_summary(au)),
            )
        });
    for (i, unit) in received.iter().enumerate() {
        assert!(
            sent.get(start + i) == Some(&unit.fingerprint),
            "{who}: frame {i} received is not frame {} sent: corrupted, missing or out of order \
             (received NAL units {:?}, sent {:?})",
            start + i,
            nal_summary(&unit.data),
            sent_units.get(start + i).map(|au| nal_summary(au)),
        );
    }
}

/// Each NAL unit of an Annex B access unit as (type, length): enough to tell a truncated,
/// merged or re-parameterised frame from the one that was sent.
fn nal_summary(access_unit: &[u8]) -> Vec<(u8, usize)> {
    nal_units(access_unit)
        .iter()
        .map(|nal| (nal[0] & 0x1f, nal.len()))
        .collect()
}
