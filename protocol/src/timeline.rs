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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
