//! Keyframe requests on their way upstream: coalesced and rate-limited at each hop.
//!
//! Many viewers joining at once must cost the publisher one keyframe, not one each; and a
//! viewer on a lossy link must not make the publisher send nothing but keyframes.

use std::time::{Duration, Instant};

/// Default minimum gap between two keyframe requests sent upstream for one track.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Decides whether a keyframe request should be forwarded upstream now.
#[derive(Debug, Clone)]
pub struct KeyframeRequestLimiter {
    min_interval: Duration,
    last_forwarded: Option<Instant>,
}

/// What to do with one keyframe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeDecision {
    /// Send it to the publisher.
    Forward,
    /// One was forwarded recently; the keyframe it produces serves this requester too.
    Coalesced,
}

impl KeyframeRequestLimiter {
    /// A limiter forwarding at most one request per `min_interval`.
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_forwarded: None,
        }
    }

    /// Decides about a request arriving at `now`.
    pub fn request(&mut self, now: Instant) -> KeyframeDecision {
        match self.last_forwarded {
            Some(last) if now.saturating_duration_since(last) < self.min_interval => {
                KeyframeDecision::Coalesced
            }
            _ => {
                self.last_forwarded = Some(now);
                KeyframeDecision::Forward
            }
        }
    }
}

impl Default for KeyframeRequestLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MIN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_requests_costs_one_keyframe_per_interval() {
        let start = Instant::now();
        let mut limiter = KeyframeRequestLimiter::new(Duration::from_millis(500));
        let decisions: Vec<_> = [0, 10, 100, 499, 500, 700, 1001]
            .into_iter()
            .map(|ms| limiter.request(start + Duration::from_millis(ms)))
            .collect();
        use KeyframeDecision::*;
        assert_eq!(
            decisions,
            vec![
                Forward, Coalesced, Coalesced, Coalesced, Forward, Coalesced, Forward
            ]
        );
    }
}
