//! One track fed by two upstreams that make the same frames (an active and a standby
//! transcoder): which frames go into the track.
//!
//! Both upstreams start their groups at the source's timestamps, so the track can take any
//! group from either and stay continuous: it never goes back in time and never mixes two
//! upstreams' frames within a group.
//!
//! - **Video**: a group is taken from whichever upstream's group start arrives first; its
//!   other frames come from that upstream only. When an upstream dies mid-group, the rest of
//!   that group is lost and the other upstream's next group goes on: a dead upstream costs
//!   at most one group.
//! - **Audio** (every frame starts a group, and two encoders' frames fall on different
//!   grids): frames come from the current upstream only, until it has been silent for
//!   [`STALE_AFTER_MS`]; then the other takes over.

/// An audio upstream silent this long has stopped; the other may take over.
pub const STALE_AFTER_MS: u64 = 150;

/// The merge's state for one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMerge {
    /// Audio: stick to one upstream while it sends.
    sticky: bool,
    current: Option<u64>,
    newest: Option<u64>,
    last_taken_ms: u64,
}

impl GroupMerge {
    /// The merge of a video track (groups of frames, each starting at a keyframe).
    pub fn video() -> Self {
        Self::new(false)
    }

    /// The merge of an audio track (every frame stands alone).
    pub fn audio() -> Self {
        Self::new(true)
    }

    fn new(sticky: bool) -> Self {
        GroupMerge {
            sticky,
            current: None,
            newest: None,
            last_taken_ms: 0,
        }
    }

    /// Whether the frame at `timestamp` (a group start when `keyframe`) from upstream `from`,
    /// received at `now_ms`, goes into the track.
    pub fn take(&mut self, from: u64, timestamp: u64, keyframe: bool, now_ms: u64) -> bool {
        let newer = self.newest.is_none_or(|newest| timestamp > newest);
        let take = if self.current == Some(from) {
            // The current upstream's frames arrive in order; a repeat is dropped.
            newer
        } else {
            let current_silent = self.current.is_none()
                || now_ms.saturating_sub(self.last_taken_ms) >= STALE_AFTER_MS;
            keyframe && newer && (!self.sticky || current_silent)
        };
        if take {
            self.current = Some(from);
            self.newest = Some(timestamp);
            self.last_taken_ms = now_ms;
        }
        take
    }

    /// The upstream frames are taken from now.
    pub fn current(&self) -> Option<u64> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `(from, timestamp, keyframe, now_ms)` and returns what was taken.
    fn run(mut merge: GroupMerge, frames: &[(u64, u64, bool, u64)]) -> Vec<(u64, u64)> {
        frames
            .iter()
            .filter(|(from, ts, key, now)| merge.take(*from, *ts, *key, *now))
            .map(|(from, ts, _, _)| (*from, *ts))
            .collect()
    }

    #[test]
    fn each_video_group_comes_whole_from_the_upstream_whose_group_start_came_first() {
        let taken = run(
            GroupMerge::video(),
            &[
                (1, 0, true, 0),
                (2, 0, true, 5),
                (1, 3000, false, 33),
                (2, 3000, false, 38),
                (2, 6000, true, 66),
                (1, 6000, true, 70),
                (1, 9000, false, 99),
                (2, 9000, false, 100),
            ],
        );
        assert_eq!(taken, [(1, 0), (1, 3000), (2, 6000), (2, 9000)]);
    }

    #[test]
    fn when_a_video_upstream_dies_mid_group_the_other_goes_on_at_its_next_group() {
        let taken = run(
            GroupMerge::video(),
            &[
                (1, 0, true, 0),
                (2, 0, true, 5),
                (1, 3000, false, 33),
                (2, 3000, false, 38),
                // Upstream 1 dies here. Upstream 2's frames mid-group are of no use to a
                // decoder that did not get its group start.
                (2, 6000, false, 71),
                (2, 9000, true, 104),
                (2, 12_000, false, 137),
            ],
        );
        assert_eq!(taken, [(1, 0), (1, 3000), (2, 9000), (2, 12_000)]);
    }

    #[test]
    fn time_never_goes_back() {
        let taken = run(
            GroupMerge::video(),
            &[(1, 6000, true, 0), (2, 3000, true, 1), (2, 6000, true, 2)],
        );
        assert_eq!(taken, [(1, 6000)]);
    }

    #[test]
    fn audio_comes_from_one_upstream_until_it_falls_silent() {
        // Two encoders' 20 ms grids, 5 ms apart: never interleaved.
        let taken = run(
            GroupMerge::audio(),
            &[
                (1, 960, true, 0),
                (2, 1200, true, 2),
                (1, 1920, true, 20),
                (2, 2160, true, 22),
                (1, 2880, true, 40),
                // Upstream 1 stops: upstream 2 takes over once 1 has been silent long enough.
                (2, 3120, true, 42),
                (2, 9840, true, 190),
                (2, 10_800, true, 210),
            ],
        );
        assert_eq!(
            taken,
            [(1, 960), (1, 1920), (1, 2880), (2, 9840), (2, 10_800)]
        );
    }
}
