//! A track's timeline stays continuous when its publisher changes.
//!
//! A publisher that reconnects starts a fresh RTP clock at a random value. Viewers that stayed
//! connected must see timestamps that keep increasing with wall-clock time, or their jitter
//! buffers stall. [`Timeline`] maps each publisher's timestamps onto one track timeline.

use std::time::Instant;

/// Maps source timestamps (wrapping 32-bit RTP time or any monotonic clock) onto a continuous
/// 64-bit track timeline.
#[derive(Debug, Clone)]
pub struct Timeline {
    clock_rate: u32,
    /// Track time = source time (unwrapped) + offset.
    offset: i128,
    last_source: Option<u64>,
    last_track: Option<(u64, Instant)>,
}

impl Timeline {
    /// A timeline ticking at `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            offset: 0,
            last_source: None,
            last_track: None,
        }
    }

    /// Forget the current source: the next timestamp comes from a new publisher.
    pub fn new_source(&mut self) {
        self.last_source = None;
    }

    /// Maps a 32-bit RTP timestamp received at `now` onto the track timeline.
    pub fn map_rtp(&mut self, rtp: u32, now: Instant) -> u64 {
        let unwrapped = match self.last_source {
            None => u64::from(rtp),
            Some(last) => {
                let delta = rtp.wrapping_sub(last as u32) as i32;
                (last as i64 + i64::from(delta)).max(0) as u64
            }
        };
        self.map(unwrapped, now)
    }

    /// Maps an already-unwrapped source timestamp received at `now` onto the track timeline.
    pub fn map(&mut self, source: u64, now: Instant) -> u64 {
        if self.last_source.is_none() {
            // A new source: continue from the last track time plus the wall-clock gap.
            let target = match self.last_track {
                None => source as i128,
                Some((last, at)) => {
                    let gap = now.saturating_duration_since(at).as_secs_f64();
                    let ticks = (gap * f64::from(self.clock_rate)).max(1.0) as i128;
                    last as i128 + ticks
                }
            };
            self.offset = target - source as i128;
        }
        self.last_source = Some(source);
        let track = (source as i128 + self.offset).max(0) as u64;
        self.last_track = Some((track, now));
        track
    }
}

/// Unwraps a publisher's 32-bit millisecond clock (RTMP/FLV timestamps, which wrap after
/// 49.7 days and may start anywhere) into a 64-bit one. Audio and video of one connection share
/// one `MillisClock`, so they stay on one timeline.
#[derive(Debug, Clone, Default)]
pub struct MillisClock {
    last: Option<u64>,
}

impl MillisClock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The unwrapped time of a 32-bit timestamp: the nearest value to the last one seen, so
    /// that wraparound goes forwards and a timestamp slightly behind (audio and video
    /// interleaved, jitter) goes backwards by as little.
    pub fn unwrap(&mut self, timestamp: u32) -> u64 {
        let unwrapped = match self.last {
            None => u64::from(timestamp) + (1 << 32), // room to go backwards from the start
            Some(last) => {
                let delta = timestamp.wrapping_sub(last as u32) as i32;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        self.last = Some(unwrapped);
        unwrapped
    }
}

/// `millis` expressed in a timescale of `rate` ticks per second, computed from the absolute
/// time every time (never accumulated), so that no rounding error can build up over hours.
pub fn millis_to_ticks(millis: u64, rate: u32) -> u64 {
    (u128::from(millis) * u128::from(rate) / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hours_of_interleaved_jittery_millisecond_timestamps_keep_audio_and_video_in_sync() {
        // Six hours of 30 fps video and 44.1 kHz AAC (1024 samples a frame) on one RTMP clock
        // that starts just before its 32-bit wraparound, with each timestamp jittered by up
        // to ±3 ms the way encoders round them.
        let start: u64 = u64::from(u32::MAX) - 10_000;
        let mut clock = MillisClock::new();
        let (mut video, mut audio) = (Timeline::new(90_000), Timeline::new(44_100));
        let t0 = Instant::now();
        let hours = 6.0;
        let mut next_video = 0.0f64;
        let mut next_audio = 0.0f64;
        let mut seed = 7u32;
        let mut jitter = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            i64::from((seed >> 16) % 7) - 3
        };
        let (mut last_v, mut last_a) = (0u64, 0u64);
        let mut worst_skew_ms = 0f64;
        while next_video < hours * 3_600_000.0 {
            let video_turn = next_video <= next_audio;
            let exact = if video_turn { next_video } else { next_audio };
            let sent = (start as i64 + exact.round() as i64 + jitter()) as u64 as u32;
            let ms = clock.unwrap(sent);
            if video_turn {
                last_v = video.map(millis_to_ticks(ms, 90_000), t0);
                next_video += 1000.0 / 30.0;
            } else {
                last_a = audio.map(millis_to_ticks(ms, 44_100), t0);
                next_audio += 1024.0 * 1000.0 / 44_100.0;
            }
            // Compare the newest frame of each on the shared wall of seconds.
            let v_ms = last_v as f64 / 90.0;
            let a_ms = last_a as f64 / 44.1;
            if last_v > 0 && last_a > 0 {
                let skew = (v_ms - a_ms).abs();
                if skew > worst_skew_ms {
                    worst_skew_ms = skew;
                }
            }
        }
        let video_ms = last_v as f64 / 90.0;
        let expected_ms = (next_video - 1000.0 / 30.0) + (start + (1 << 32)) as f64;
        assert!(
            (video_ms - expected_ms).abs() <= 4.0,
            "after six hours video is at {video_ms} ms, the encoder at {expected_ms} ms"
        );
        // The newest frames of each are at most one video frame (33.3 ms) plus both jitters
        // (6 ms) plus a tick's rounding apart, after six hours as in the first second; a
        // drift would grow this without bound.
        assert!(
            worst_skew_ms < 33.4 + 6.0 + 1.0,
            "audio and video drifted apart by {worst_skew_ms} ms"
        );
    }

    #[test]
    fn a_millisecond_clock_unwraps_forwards_over_the_32_bit_edge_and_takes_small_steps_back() {
        let mut clock = MillisClock::new();
        let a = clock.unwrap(u32::MAX - 5);
        let b = clock.unwrap(10);
        assert_eq!(b - a, 16);
        let c = clock.unwrap(3);
        assert_eq!(b - c, 7, "a slightly older timestamp stays slightly older");
    }

    #[test]
    fn rtp_wraparound_keeps_increasing() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(90_000);
        let a = tl.map_rtp(u32::MAX - 1000, t0);
        let b = tl.map_rtp(2000, t0);
        assert_eq!(b - a, 3001);
    }

    #[test]
    fn a_new_publisher_continues_after_the_wall_clock_gap() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(90_000);
        let last = tl.map_rtp(1_000_000, t0);
        tl.new_source();
        let first_of_new = tl.map_rtp(77, t0 + Duration::from_secs(2));
        assert_eq!(first_of_new, last + 180_000);
        assert_eq!(
            tl.map_rtp(77 + 3000, t0 + Duration::from_secs(2)),
            last + 183_000
        );
    }
}
