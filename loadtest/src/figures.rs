//! The figures a run produces, as plain values: per-viewer frame tracking (loss, freezes,
//! latency) and totals that merge across viewers and worker threads. No I/O, no clock reads:
//! every instant is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

/// Why a viewer (or publisher) session failed, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// The endpoint answered with this HTTP status instead of `201`.
    Http(u16),
    /// No TCP connection to the endpoint.
    Unreachable,
    /// The signalling request took longer than its timeout.
    HttpTimeout,
    /// The answer was not a usable SDP answer.
    BadAnswer,
    /// ICE never connected.
    IceTimeout,
    /// ICE connected but DTLS never completed.
    DtlsFailure,
    /// Connected, but no complete keyframe arrived in time.
    NoMedia,
    /// The session was lost after media flowed (server ended it, or the path died).
    SessionLost,
}

impl FailureReason {
    /// Why a session that ended (or timed out) early failed, from how far it got.
    pub fn from_stage(media_flowed: bool, dtls_connected: bool, ice_connected: bool) -> Self {
        if media_flowed {
            FailureReason::SessionLost
        } else if dtls_connected {
            FailureReason::NoMedia
        } else if ice_connected {
            FailureReason::DtlsFailure
        } else {
            FailureReason::IceTimeout
        }
    }

    /// The label used in the report (`http_404`, `ice_timeout`, ...).
    pub fn label(self) -> String {
        match self {
            FailureReason::Http(status) => format!("http_{status}"),
            FailureReason::Unreachable => "unreachable".into(),
            FailureReason::HttpTimeout => "http_timeout".into(),
            FailureReason::BadAnswer => "bad_answer".into(),
            FailureReason::IceTimeout => "ice_timeout".into(),
            FailureReason::DtlsFailure => "dtls_failure".into(),
            FailureReason::NoMedia => "no_media".into(),
            FailureReason::SessionLost => "session_lost".into(),
        }
    }
}

/// Frame interval assumed until markers tell the real one.
const DEFAULT_FRAME_INTERVAL: Duration = Duration::from_micros(33_333);
/// A freeze is no new frame for more than this many frame intervals.
const FREEZE_INTERVALS: u32 = 3;
/// Freeze start times kept per viewer (for when they happened; the count has no limit).
const MAX_FREEZE_STARTS: usize = 256;

/// When the run started: freeze times are reported as whole seconds since then.
pub fn run_started() -> Instant {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// Lip sync as a viewer's Sender Reports tell it. Each media unit's RTP time, mapped to the
/// sender's wall clock through the latest Sender Report of its stream, is compared with when
/// it arrived; per kind the least delayed unit counts. Audio and video sent together then
/// map to times as far apart as the two streams' reports disagree: a player syncing on those
/// reports shows them that far apart. On one host (the load tester beside the server) the
/// two clocks are one.
#[derive(Debug, Default, Clone, Copy)]
pub struct AvSync {
    /// Per kind (video, audio): the largest sender time minus arrival time seen, in µs.
    best_us: [Option<i64>; 2],
}

impl AvSync {
    /// One unit of `video` (else audio) with RTP time `rtp` at `clock_hz`, arrived at
    /// `arrived`; its stream's latest report mapped `report_rtp` to `report_wall`.
    pub fn observe(
        &mut self,
        video: bool,
        rtp: u32,
        clock_hz: u32,
        (report_rtp, report_wall): (u32, SystemTime),
        arrived: SystemTime,
    ) {
        if clock_hz == 0 {
            return;
        }
        let ticks = i64::from(rtp.wrapping_sub(report_rtp) as i32);
        let since_report_us = ticks * 1_000_000 / i64::from(clock_hz);
        let wall = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        let sender_minus_arrival = wall(report_wall) + since_report_us - wall(arrived);
        let best = &mut self.best_us[usize::from(!video)];
        *best = Some(best.map_or(sender_minus_arrival, |b| b.max(sender_minus_arrival)));
    }

    /// How far apart the reports put audio and video, in µs, once both were seen.
    pub fn offset_us(&self) -> Option<u64> {
        match self.best_us {
            [Some(video), Some(audio)] => Some(video.abs_diff(audio)),
            _ => None,
        }
    }
}

/// Follows one viewer's video frames: counts, gaps, freezes, latency samples.
#[derive(Debug)]
pub struct FrameTracker {
    last_at: Option<Instant>,
    last_frame: Option<u64>,
    last_captured_us: Option<u64>,
    interval: Duration,
    catching_up: bool,
    /// Arrival minus capture time of the previous frame while catching up.
    last_lateness_us: Option<u64>,
    pub received: u64,
    pub expected: u64,
    pub freezes: u64,
    pub freeze_total: Duration,
    /// When the first `MAX_FREEZE_STARTS` freezes began (the last frame before each).
    pub freeze_starts: Vec<Instant>,
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker {
            last_at: None,
            last_frame: None,
            last_captured_us: None,
            interval: DEFAULT_FRAME_INTERVAL,
            catching_up: true,
            last_lateness_us: None,
            received: 0,
            expected: 0,
            freezes: 0,
            freeze_total: Duration::ZERO,
            freeze_starts: Vec::new(),
        }
    }
}

impl FrameTracker {
    /// A complete frame arrived at `at`; `marker` is `(frame number, capture time µs)` when
    /// the frame carried one. Returns the frame's glass-to-glass latency in µs, measured
    /// against `now_unix_us`, when it can be computed.
    pub fn on_frame(
        &mut self,
        at: Instant,
        marker: Option<(u64, u64)>,
        now_unix_us: u64,
    ) -> Option<u64> {
        let Some((frame, captured_us)) = marker else {
            self.received += 1;
            self.expected += 1;
            self.check_freeze(at);
            self.last_at = Some(at);
            return None;
        };
        if self.last_frame.is_some_and(|last| frame <= last) {
            return None; // sent again (a re-priming after a lost keyframe): not a new frame
        }
        self.received += 1;
        self.check_freeze(at);
        self.last_at = Some(at);
        match (self.last_frame, self.last_captured_us) {
            (Some(last), Some(last_captured)) => {
                self.expected += frame - last;
                let per_frame = captured_us.saturating_sub(last_captured) / (frame - last);
                if per_frame > 0 {
                    self.interval = Duration::from_micros(per_frame);
                }
            }
            _ => self.expected += 1,
        }
        self.last_frame = Some(frame);
        self.last_captured_us = Some(captured_us);
        // The cached group a viewer gets at join (and the live frames queued behind it) is
        // sent faster than real time, so each of those frames is less late than the one
        // before: they are old by design and not sampled. Live pace is reached when lateness
        // stops falling (by more than a quarter frame interval of jitter).
        let lateness = now_unix_us.saturating_sub(captured_us);
        if self.catching_up {
            let tolerance = self.interval.as_micros() as u64 / 4;
            let previous = self.last_lateness_us.replace(lateness);
            match previous {
                Some(previous) if lateness + tolerance >= previous => {
                    self.catching_up = false;
                    self.last_lateness_us = None;
                }
                _ => return None,
            }
        }
        Some(lateness)
    }

    /// The session ended or the run stopped at `at`: a trailing gap counts as a freeze too.
    pub fn finish(&mut self, at: Instant) {
        self.check_freeze(at);
        self.last_at = Some(at);
    }

    /// The viewer reconnected: frame numbering continues, but the gap is not a freeze (it is
    /// measured as recovery time instead).
    pub fn restart(&mut self) {
        self.last_at = None;
        self.catching_up = true;
        self.last_lateness_us = None;
    }

    /// When the newest frame arrived.
    pub fn last_frame_at(&self) -> Option<Instant> {
        self.last_at
    }

    fn check_freeze(&mut self, at: Instant) {
        if let Some(last) = self.last_at {
            let gap = at.saturating_duration_since(last);
            if gap > self.interval * FREEZE_INTERVALS {
                self.freezes += 1;
                self.freeze_total += gap;
                if self.freeze_starts.len() < MAX_FREEZE_STARTS {
                    self.freeze_starts.push(last);
                }
            }
        }
    }
}

/// Everything counted in a run, mergeable across viewers and workers.
#[derive(Debug, Clone)]
pub struct Totals {
    pub join_us: Histogram<u64>,
    pub latency_us: Histogram<u64>,
    pub recovery_us: Histogram<u64>,
    /// Per verified viewer with audio and video: how far apart its Sender Reports put
    /// them ([`AvSync`]).
    pub av_offset_us: Histogram<u64>,
    pub sessions_started: u64,
    pub sessions_joined: u64,
    pub failures: BTreeMap<String, u64>,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub freezes: u64,
    pub freeze_total: Duration,
    /// The freezes of fully verified viewers alone (the first admitted, in an overload run).
    pub verified_freezes: u64,
    /// Verified viewers' freezes by the whole second of the run they began in: many viewers
    /// freezing in the same second point at the server (or the source), scattered ones at
    /// the client.
    pub verified_freeze_seconds: BTreeMap<u64, u64>,
    pub video_bytes: u64,
    pub bytes: u64,
    /// Sum over sessions of the time media flowed (for the per-viewer bitrate).
    pub viewer_time: Duration,
    pub nacks_sent: u64,
    pub plis_sent: u64,
    pub verified_viewers: u64,
    pub counted_viewers: u64,
    /// Video RTP packets of counted viewers (sampling mode), from sequence numbers.
    pub counted_packets_expected: u64,
    pub counted_packets_received: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            join_us: histogram(),
            latency_us: histogram(),
            recovery_us: histogram(),
            av_offset_us: histogram(),
            sessions_started: 0,
            sessions_joined: 0,
            failures: BTreeMap::new(),
            frames_expected: 0,
            frames_received: 0,
            freezes: 0,
            freeze_total: Duration::ZERO,
            verified_freezes: 0,
            verified_freeze_seconds: BTreeMap::new(),
            video_bytes: 0,
            bytes: 0,
            viewer_time: Duration::ZERO,
            nacks_sent: 0,
            plis_sent: 0,
            verified_viewers: 0,
            counted_viewers: 0,
            counted_packets_expected: 0,
            counted_packets_received: 0,
        }
    }
}

impl Totals {
    /// Counts a failure.
    pub fn fail(&mut self, reason: FailureReason) {
        *self.failures.entry(reason.label()).or_default() += 1;
    }

    /// Records a value in µs into a histogram, clamping to its range.
    pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
        let _ = histogram.record(micros.clamp(1, 3_600_000_000));
    }

    /// Adds a finished frame tracker of a verified viewer.
    pub fn add_frames(&mut self, frames: &FrameTracker) {
        self.frames_expected += frames.expected;
        self.frames_received += frames.received;
        self.verified_freezes += frames.freezes;
        let started = run_started();
        for at in &frames.freeze_starts {
            let second = at.saturating_duration_since(started).as_secs();
            *self.verified_freeze_seconds.entry(second).or_default() += 1;
        }
        self.add_freezes(frames);
    }

    /// Adds the freezes of a counted viewer: its frames cannot be numbered (they are not
    /// decrypted), so it adds to packet counts instead of frame counts.
    pub fn add_freezes(&mut self, frames: &FrameTracker) {
        self.freezes += frames.freezes;
        self.freeze_total += frames.freeze_total;
    }

    /// Adds another worker's totals.
    pub fn merge(&mut self, other: &Totals) {
        let _ = self.join_us.add(&other.join_us);
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.recovery_us.add(&other.recovery_us);
        let _ = self.av_offset_us.add(&other.av_offset_us);
        self.sessions_started += other.sessions_started;
        self.sessions_joined += other.sessions_joined;
        for (reason, count) in &other.failures {
            *self.failures.entry(reason.clone()).or_default() += count;
        }
        self.frames_expected += other.frames_expected;
        self.frames_received += other.frames_received;
        self.freezes += other.freezes;
        self.freeze_total += other.freeze_total;
        self.verified_freezes += other.verified_freezes;
        for (second, count) in &other.verified_freeze_seconds {
            *self.verified_freeze_seconds.entry(*second).or_default() += count;
        }
        self.video_bytes += other.video_bytes;
        self.bytes += other.bytes;
        self.viewer_time += other.viewer_time;
        self.nacks_sent += other.nacks_sent;
        self.plis_sent += other.plis_sent;
        self.verified_viewers += other.verified_viewers;
        self.counted_viewers += other.counted_viewers;
        self.counted_packets_expected += other.counted_packets_expected;
        self.counted_packets_received += other.counted_packets_received;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lip_sync_is_how_far_apart_the_reports_put_audio_and_video_sent_together() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |n: u64| Duration::from_millis(n);
        let mut sync = AvSync::default();
        // Video's report: RTP 90,000 at t0. A frame 1 s later in RTP time, arriving 1.002 s
        // after t0: sent 2 ms before it arrived.
        sync.observe(true, 180_000, 90_000, (90_000, t0), t0 + ms(1002));
        assert_eq!(sync.offset_us(), None, "no audio yet");
        // Audio's report is 40 ms off: audio sent with that frame maps 40 ms later.
        sync.observe(
            false,
            48_000 + 48_000,
            48_000,
            (48_000, t0 - ms(40)),
            t0 + ms(1002),
        );
        assert_eq!(sync.offset_us(), Some(40_000));
        // The least delayed unit counts, and RTP times wrap.
        sync.observe(true, 5_000, 90_000, (u32::MAX - 84_999, t0), t0 + ms(1000));
        assert_eq!(sync.offset_us(), Some(42_000));
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn lost_frames_are_expected_but_not_received() {
        let t0 = Instant::now();
        let mut f = FrameTracker::default();
        for (i, frame) in [10u64, 11, 12, 15, 16].iter().enumerate() {
            f.on_frame(t0 + MS * 33 * i as u32, Some((*frame, frame * 33_333)), 0);
        }
        assert_eq!((f.received, f.expected), (5, 7));
    }

    #[test]
    fn a_gap_longer_than_three_frame_intervals_is_a_freeze() {
        let t0 = Instant::now();
        let mut f = FrameTracker::default();
        f.on_frame(t0, Some((0, 0)), 0);
        f.on_frame(t0 + MS * 33, Some((1, 33_333)), 0);
        f.on_frame(t0 + MS * 500, Some((2, 66_666)), 0);
        f.on_frame(t0 + MS * 533, Some((3, 99_999)), 0);
        assert_eq!(f.freezes, 1);
        assert_eq!(f.freeze_total, MS * 467);
        f.finish(t0 + MS * 540);
        assert_eq!(f.freezes, 1, "a short tail is no freeze");
        f.finish(t0 + MS * 2000);
        assert_eq!(f.freezes, 2, "a long tail is");
    }

    #[test]
    fn latency_is_sampled_once_frames_stop_catching_up() {
        let t0 = Instant::now();
        let mut f = FrameTracker::default();
        // Frame n was captured at 10 s + n × 33.333 ms; the viewer's wall clock is set so that
        // frame 62, arriving 114 ms after t0, is 15 ms late.
        let wall_at_t0 = 10_000_000 + 62 * 33_333 + 15_000 - 114_000;
        let mut sample = |arrival_ms: u64, frame: u64| {
            let captured_us = 10_000_000 + frame * 33_333;
            let now_unix_us = wall_at_t0 + arrival_ms * 1_000;
            f.on_frame(
                t0 + MS * arrival_ms as u32,
                Some((frame, captured_us)),
                now_unix_us,
            )
        };
        // The cached group: a burst within milliseconds, then paced slices 20 ms apart whose
        // gaps alone look live (an arrival-gap rule sampled these at ~2 s).
        for (arrival, frame) in [(0, 0), (1, 1), (2, 2), (20, 3), (21, 4), (40, 5), (60, 6)] {
            assert_eq!(
                sample(arrival, frame),
                None,
                "frame {frame} is still catching up"
            );
        }
        // Live frames queued behind the group drain at the pacer's rate until the newest.
        assert_eq!(sample(80, 60), None);
        assert_eq!(sample(81, 61), None);
        // Then live pace: every frame about as late as the one before.
        assert_eq!(sample(114, 62), Some(15_000));
        assert_eq!(sample(147, 63), Some(14_667));
    }

    #[test]
    fn a_viewer_joining_right_after_a_keyframe_is_sampled_from_its_second_frame() {
        let t0 = Instant::now();
        let mut f = FrameTracker::default();
        assert_eq!(f.on_frame(t0, Some((0, 1_000_000)), 1_010_000), None);
        assert_eq!(
            f.on_frame(t0 + MS * 33, Some((1, 1_033_333)), 1_045_000),
            Some(11_667)
        );
    }

    #[test]
    fn a_reconnect_gap_is_not_a_freeze_and_replayed_frames_are_not_new() {
        let t0 = Instant::now();
        let mut f = FrameTracker::default();
        f.on_frame(t0, Some((5, 0)), 0);
        f.restart();
        f.on_frame(t0 + Duration::from_secs(2), Some((4, 0)), 0);
        f.on_frame(t0 + Duration::from_secs(2), Some((6, 0)), 0);
        assert_eq!(f.freezes, 0);
        assert_eq!((f.received, f.expected), (2, 2));
    }

    #[test]
    fn a_failure_is_named_after_the_last_stage_reached() {
        assert_eq!(
            FailureReason::from_stage(true, true, true),
            FailureReason::SessionLost
        );
        assert_eq!(
            FailureReason::from_stage(false, true, true),
            FailureReason::NoMedia
        );
        assert_eq!(
            FailureReason::from_stage(false, false, true),
            FailureReason::DtlsFailure
        );
        assert_eq!(
            FailureReason::from_stage(false, false, false),
            FailureReason::IceTimeout
        );
    }

    #[test]
    fn failure_labels_name_the_reason() {
        assert_eq!(FailureReason::Http(404).label(), "http_404");
        assert_eq!(FailureReason::IceTimeout.label(), "ice_timeout");
        let mut a = Totals::default();
        a.fail(FailureReason::Http(404));
        let mut b = Totals::default();
        b.fail(FailureReason::Http(404));
        b.fail(FailureReason::NoMedia);
        a.merge(&b);
        assert_eq!(a.failures["http_404"], 2);
        assert_eq!(a.failures["no_media"], 1);
    }
}
