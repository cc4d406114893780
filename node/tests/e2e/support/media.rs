//! Real media for tests: H.264 from FFmpeg's libx264 and Opus from libopus, encoded at test
//! time, split into access units; and an H.264 RTP depacketizer of our own (independent of
//! both WebRTC stacks) for the receiving side.

use std::process::Command;

use sha2::{Digest, Sha256};

/// A temporary file of its own for one encoding: tests run in parallel and may ask for the
/// same media.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("cascade-e2e-{}-{n}-{name}", std::process::id()))
}

/// Encodes `seconds` of 640x360 30 fps test pattern with a keyframe every `gop` frames, no
/// B-frames, constrained baseline; returns one Annex B access unit per frame.
pub fn encode_h264(seconds: u32, gop: u32) -> Vec<Vec<u8>> {
    encode_h264_from(
        &format!("testsrc=size=640x360:rate=30:duration={seconds}"),
        gop,
    )
}

/// Like [`encode_h264`], pictures from the lavfi graph `source` (640x360, 30 fps).
pub fn encode_h264_from(source: &str, gop: u32) -> Vec<Vec<u8>> {
    let path = scratch_file(&format!("gop{gop}.h264"));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(source)
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
    encode_opus_from(&format!("sine=frequency=440:duration={seconds}"))
}

/// Like [`encode_opus`], sound from the lavfi graph `source`.
pub fn encode_opus_from(source: &str) -> Vec<Vec<u8>> {
    let path = scratch_file("sound.ogg");
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(source)
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

/// A receiver's reordering buffer, as a jitter buffer does it: packets come out in
/// sequence order; a gap is waited for (a retransmission may fill it) up to `wait` after
/// the first packet held behind it arrived, then skipped.
pub struct Reorder<T> {
    next: Option<u64>,
    held: std::collections::BTreeMap<u64, (std::time::Instant, T)>,
    wait: std::time::Duration,
}

impl<T> Reorder<T> {
    pub fn new(wait: std::time::Duration) -> Reorder<T> {
        Reorder {
            next: None,
            held: std::collections::BTreeMap::new(),
            wait,
        }
    }

    /// Takes a packet; appends to `out` what is now in order. A duplicate, or a packet
    /// older than one already released, is dropped.
    pub fn push(&mut self, seq: u16, now: std::time::Instant, item: T, out: &mut Vec<T>) {
        let next = *self.next.get_or_insert(u64::from(seq) + (1 << 32));
        let ext = next.wrapping_add_signed(i64::from(seq.wrapping_sub(next as u16) as i16));
        if ext < next {
            return;
        }
        self.held.entry(ext).or_insert((now, item));
        self.release(now, out);
    }

    fn release(&mut self, now: std::time::Instant, out: &mut Vec<T>) {
        loop {
            let Some(mut next) = self.next else { return };
            while let Some((_, item)) = self.held.remove(&next) {
                out.push(item);
                next += 1;
            }
            self.next = Some(next);
            let Some((&first, (arrived, _))) = self.held.iter().next() else {
                return;
            };
            if now.duration_since(*arrived) < self.wait {
                return;
            }
            self.next = Some(first);
        }
    }
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

/// Encodes `seconds` of 640x360 30 fps test pattern as VP8 (libvpx, real-time settings) with
/// a keyframe every `gop` frames; returns one frame per element.
pub fn encode_vp8(seconds: u32, gop: u32) -> Vec<Vec<u8>> {
    let path = scratch_file(&format!("{seconds}s-gop{gop}.ivf"));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=640x360:rate=30:duration={seconds}"))
        .args(["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"])
        .args(["-b:v", "1M", "-auto-alt-ref", "0", "-lag-in-frames", "0"])
        .args(["-g", &gop.to_string(), "-keyint_min", &gop.to_string()])
        .args(["-f", "ivf"])
        .arg(&path)
        .status()
        .expect("ffmpeg is installed");
    assert!(status.success(), "ffmpeg failed to encode VP8");
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    ivf_frames(&bytes)
}

/// The frames of an IVF file: a 32-byte header, then per frame a 12-byte header (size, pts).
fn ivf_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let mut rest = &bytes[header_len..];
    let mut frames = Vec::new();
    while rest.len() >= 12 {
        let size = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        frames.push(rest[12..12 + size].to_vec());
        rest = &rest[12 + size..];
    }
    frames
}

/// Identity of a VP8 frame: its bytes.
pub fn vp8_fingerprint(frame: &[u8]) -> [u8; 32] {
    Sha256::digest(frame).into()
}

/// A VP8 keyframe has the inverse keyframe bit (bit 0 of its first byte) clear.
pub fn vp8_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// Reassembles VP8 frames from RTP (RFC 7741): strips each packet's payload descriptor; a
/// frame starts at S=1 with partition 0 and ends at the marker bit.
#[derive(Default)]
pub struct Vp8Depacketizer {
    sequence: Option<u16>,
    frame: Option<Vec<u8>>,
}

impl Vp8Depacketizer {
    /// Feeds one packet; returns a whole frame when the marker bit closes one that had no gap.
    pub fn push(&mut self, sequence: u16, marker: bool, payload: &[u8]) -> Option<Vec<u8>> {
        let gap = self
            .sequence
            .is_some_and(|last| sequence != last.wrapping_add(1));
        self.sequence = Some(sequence);
        if gap {
            self.frame = None;
        }
        let first = *payload.first()?;
        let mut at = 1;
        if first & 0x80 != 0 {
            let extension = *payload.get(1)?;
            at = 2;
            if extension & 0x80 != 0 {
                // PictureID: 15 bits when its M bit is set, else 7.
                at += if payload.get(2)? & 0x80 != 0 { 2 } else { 1 };
            }
            if extension & 0x40 != 0 {
                at += 1; // TL0PICIDX
            }
            if extension & 0x30 != 0 {
                at += 1; // TID / KEYIDX
            }
        }
        let data = payload.get(at..)?;
        let start = first & 0x10 != 0 && first & 0x07 == 0;
        if start {
            self.frame = Some(Vec::new());
        }
        self.frame.as_mut()?.extend_from_slice(data);
        if marker {
            return self.frame.take();
        }
        None
    }
}

/// What FFmpeg's decoder makes of H.264 access units, in the order received: each picture's
/// type (`I`, `P`, `B`) and size, and whatever the decoder complained about.
pub struct Decoded {
    pub pictures: Vec<(String, u32, u32)>,
    pub errors: String,
}

/// Decodes `units` (Annex B, in the order a WebRTC receiver got them) with ffprobe.
pub fn decode_h264(units: &[Vec<u8>]) -> Decoded {
    let path = scratch_file("received.h264");
    std::fs::write(&path, units.concat()).unwrap();
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-f",
            "h264",
            "-show_entries",
            "frame=pict_type,width,height",
        ])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe runs");
    let _ = std::fs::remove_file(&path);
    let pictures = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let width = fields.next()?.parse().ok()?;
            let height = fields.next()?.parse().ok()?;
            Some((fields.next()?.to_owned(), width, height))
        })
        .collect();
    Decoded {
        pictures,
        errors: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Seconds into `file` of each white flash (the first frame of each run of bright frames).
pub fn flash_times(file: &std::path::Path) -> Vec<f64> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("movie={},signalstats", file.display()))
        .args([
            "-show_entries",
            "frame=pts_time:frame_tags=lavfi.signalstats.YAVG",
            "-of",
            "csv=p=0",
        ])
        .output()
        .expect("ffprobe runs");
    let mut flashes = Vec::new();
    let mut bright_before = false;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<f64> = line.split(',').filter_map(|f| f.parse().ok()).collect();
        let [time, luma] = fields[..] else { continue };
        let bright = luma > 128.0;
        if bright && !bright_before {
            flashes.push(time);
        }
        bright_before = bright;
    }
    flashes
}

/// Seconds into `file` where each beep starts (the end of each silence).
pub fn beep_times(file: &std::path::Path) -> Vec<f64> {
    let output = Command::new("ffmpeg")
        .args(["-v", "info", "-nostats", "-i"])
        .arg(file)
        .args([
            "-vn",
            "-af",
            "silencedetect=noise=-30dB:d=0.05",
            "-f",
            "null",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|l| l.split("silence_end: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `ffprobe` decoding `stream` (`v:0`, `a:0`) of `input` (a file or an HLS URL), for
/// `seconds` from the start or all of it, printing `fields` and the frames it read. Started,
/// not waited for, so that several run at once; [`probe_result`] reads it.
pub fn probe_frames(
    input: &str,
    stream: &str,
    fields: &str,
    seconds: Option<u32>,
) -> std::process::Child {
    let mut command = Command::new("ffprobe");
    command.args(["-v", "error", "-count_frames"]);
    if let Some(seconds) = seconds {
        command.args(["-read_intervals", &format!("%+{seconds}")]);
    }
    let entries = if fields.is_empty() {
        "stream=nb_read_frames".to_owned()
    } else {
        format!("stream={fields},nb_read_frames")
    };
    command
        .args(["-select_streams", stream, "-show_entries", &entries])
        .args(["-of", "csv=p=0", input])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffprobe runs")
}

/// A [`probe_frames`] run's fields (comma-separated, as asked) and frame count, or what it
/// printed on stderr when it failed or complained. A stream is listed once per program it
/// is in: the first line says it.
pub fn probe_result(probe: std::process::Child) -> Result<(String, u64), String> {
    let output = probe.wait_with_output().map_err(|e| e.to_string())?;
    let errors = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !errors.trim().is_empty() {
        return Err(errors.into_owned());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .map(|l| l.trim().trim_end_matches(','))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let (fields, frames) = line.rsplit_once(',').unwrap_or(("", line));
    let frames = frames.parse().map_err(|e| format!("{e}: {stdout}"))?;
    Ok((fields.to_owned(), frames))
}
