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

    /// Maps a 32-bit RTP timestamp received at `now` onto the track timeline. Each RTP
    /// stream starts its clock at a random value, so the first one a track ever gets is
    /// placed at the wall-clock time since `epoch` (the broadcast's start): a publisher's
    /// audio and video then share one timeline, as a muxer or a transcoder needs, to within
    /// their first packets' arrival.
    pub fn map_rtp(&mut self, rtp: u32, now: Instant, epoch: Instant) -> u64 {
        if self.last_track.is_none() && self.last_source.is_none() {
            let since = now.saturating_duration_since(epoch).as_secs_f64();
            let target = (since * f64::from(self.clock_rate)) as i128;
            self.offset = target - i128::from(rtp);
            self.last_source = Some(u64::from(rtp));
        }
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

/// Unwraps a publisher's wrapping clock into a 64-bit one: RTMP/FLV's 32-bit milliseconds
/// (which wrap after 49.7 days), MPEG-TS's 33-bit 90 kHz PTS (26.5 hours). Clocks may start
/// anywhere. Audio and video of one connection share one `WrappingClock`, so they stay on
/// one timeline.
#[derive(Debug, Clone)]
pub struct WrappingClock {
    bits: u32,
    last: Option<u64>,
}

impl WrappingClock {
    /// RTMP's clock: 32-bit milliseconds.
    pub fn millis() -> Self {
        Self {
            bits: 32,
            last: None,
        }
    }

    /// MPEG-TS's clock: 33-bit 90 kHz ticks.
    pub fn mpeg() -> Self {
        Self {
            bits: 33,
            last: None,
        }
    }

    /// The unwrapped time of a timestamp (its low `bits` are used): the nearest value to the
    /// last one seen, so that wraparound goes forwards and a timestamp slightly behind (audio
    /// and video interleaved, B-frames, jitter) goes backwards by as little.
    pub fn unwrap(&mut self, timestamp: u64) -> u64 {
        let modulus = 1u64 << self.bits;
        let raw = timestamp & (modulus - 1);
        let unwrapped = match self.last {
            // Start one turn in, so that the first timestamps can be followed by older ones.
            None => raw + modulus,
            Some(last) => {
                let forward = raw.wrapping_sub(last) & (modulus - 1);
                if forward < modulus / 2 {
                    last + forward
                } else {
                    last.saturating_sub(modulus - forward)
                }
            }
        };
        self.last = Some(unwrapped);
        unwrapped
    }
}

/// `ticks` of a `from`-Hz clock in a `to`-Hz timescale, computed from the absolute time every
/// time (never accumulated), so that no rounding error can build up over hours.
pub fn rescale(ticks: u64, from: u32, to: u32) -> u64 {
    if from == to || from == 0 {
        return ticks;
    }
    (u128::from(ticks) * u128::from(to) / u128::from(from)) as u64
}

/// `millis` expressed in a timescale of `rate` ticks per second ([`rescale`]).
pub fn millis_to_ticks(millis: u64, rate: u32) -> u64 {
    rescale(millis, 1000, rate)
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
        let mut clock = WrappingClock::millis();
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
            let ms = clock.unwrap(u64::from(sent));
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
        let mut clock = WrappingClock::millis();
        let a = clock.unwrap(u64::from(u32::MAX - 5));
        let b = clock.unwrap(10);
        assert_eq!(b - a, 16);
        let c = clock.unwrap(3);
        assert_eq!(b - c, 7, "a slightly older timestamp stays slightly older");
    }

    #[test]
    fn an_mpeg_clock_unwraps_over_33_bits() {
        let mut clock = WrappingClock::mpeg();
        let a = clock.unwrap((1 << 33) - 3000);
        let b = clock.unwrap(3000);
        assert_eq!(b - a, 6000);
        assert_eq!(rescale(90_000, 90_000, 48_000), 48_000);
        assert_eq!(rescale(90_000, 90_000, 44_100), 44_100);
    }

    #[test]
    fn rtp_wraparound_keeps_increasing() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(90_000);
        let a = tl.map_rtp(u32::MAX - 1000, t0, t0);
        let b = tl.map_rtp(2000, t0, t0);
        assert_eq!(b - a, 3001);
    }

    #[test]
    fn a_new_publisher_continues_after_the_wall_clock_gap() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(90_000);
        let last = tl.map_rtp(1_000_000, t0, t0);
        tl.new_source();
        let first_of_new = tl.map_rtp(77, t0 + Duration::from_secs(2), t0);
        assert_eq!(first_of_new, last + 180_000);
        assert_eq!(
            tl.map_rtp(77 + 3000, t0 + Duration::from_secs(2), t0),
            last + 183_000
        );
    }

    #[test]
    fn rtp_streams_with_random_clocks_start_on_one_wall_clock_timeline() {
        let epoch = Instant::now();
        let (mut video, mut audio) = (Timeline::new(90_000), Timeline::new(48_000));
        let v = video.map_rtp(3_000_000_000, epoch + Duration::from_millis(500), epoch);
        let a = audio.map_rtp(17, epoch + Duration::from_millis(520), epoch);
        assert_eq!(v, 45_000, "half a second after the broadcast began");
        assert_eq!(a, 24_960, "520 ms at 48 kHz");
        assert_eq!(
            video.map_rtp(3_000_003_000, epoch + Duration::from_millis(533), epoch),
            48_000,
            "then the RTP clock rules"
        );
    }
}
