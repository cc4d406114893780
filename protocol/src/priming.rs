//! Where a viewer's timeline goes when it is (re)started from the cached group.
//!
//! A viewer that joins mid-group, or that lost the keyframe it was primed with, is sent the
//! newest group from the cache: its keyframe and every frame since. Those frames are old, so
//! their own timestamps would make the player wait out the whole group in real time. Instead
//! they are given consecutive ticks, so the player decodes the burst at once and then plays
//! live frames at their natural pace.
//!
//! - First priming: the burst ends exactly on the newest cached frame's timestamp, and live
//!   frames keep their own timestamps (offset 0).
//! - Re-priming (the viewer already got frames up to `last_sent`): RTP time must not go
//!   backwards, so the burst starts one tick after `last_sent`, and from then on the viewer's
//!   frames are shifted by the returned offset (a few ticks: one per cached frame).

/// Output timestamps for a burst of cached frames plus the offset to apply to later frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimingPlan {
    /// One output timestamp per cached frame, strictly increasing.
    pub timestamps: Vec<u64>,
    /// Added to every later frame's track timestamp for this viewer.
    pub offset: i64,
}

/// Plans a burst for cached frames whose track timestamps are `cached` (oldest first), for a
/// viewer whose newest output timestamp so far is `last_sent` (`None`: nothing sent yet).
pub fn plan_priming(cached: &[u64], last_sent: Option<u64>) -> PrimingPlan {
    let Some(&newest) = cached.last() else {
        return PrimingPlan {
            timestamps: Vec::new(),
            offset: 0,
        };
    };
    let count = cached.len() as u64;
    let first = match last_sent {
        None => newest.saturating_sub(count - 1),
        Some(last) => last.saturating_add(1),
    };
    let timestamps: Vec<u64> = (0..count).map(|i| first.saturating_add(i)).collect();
    let last_out = *timestamps.last().unwrap_or(&first);
    let offset = i64::try_from(i128::from(last_out) - i128::from(newest)).unwrap_or(0);
    PrimingPlan { timestamps, offset }
}

/// A track timestamp shifted by a viewer's offset, clamped to the valid range.
pub fn shifted(timestamp: u64, offset: i64) -> u64 {
    timestamp.saturating_add_signed(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_priming_squeezes_the_group_into_the_ticks_before_the_newest_frame() {
        let plan = plan_priming(&[0, 3000, 6000, 9000], None);
        assert_eq!(plan.timestamps, vec![8997, 8998, 8999, 9000]);
        assert_eq!(plan.offset, 0, "live frames keep their own timestamps");
    }

    #[test]
    fn re_priming_never_goes_back_in_time() {
        // The viewer already got the whole group (up to 9000) but lost its keyframe.
        let plan = plan_priming(&[0, 3000, 6000, 9000], Some(9000));
        assert_eq!(plan.timestamps, vec![9001, 9002, 9003, 9004]);
        assert_eq!(
            plan.offset, 4,
            "the next live frame (12000) goes out at 12004"
        );
        assert!(shifted(12000, plan.offset) > *plan.timestamps.last().unwrap());
    }

    #[test]
    fn re_priming_behind_newer_cached_frames_gives_a_negative_offset() {
        // The engine sent up to 3000 (shifted by 10) while 6000 and 9000 are still queued.
        let plan = plan_priming(&[0, 3000, 6000, 9000], Some(3010));
        assert_eq!(plan.timestamps, vec![3011, 3012, 3013, 3014]);
        assert_eq!(plan.offset, 3014 - 9000);
        assert_eq!(shifted(12000, plan.offset), 12000 + 3014 - 9000);
    }

    #[test]
    fn an_empty_cache_plans_nothing() {
        assert_eq!(
            plan_priming(&[], Some(5)),
            PrimingPlan {
                timestamps: vec![],
                offset: 0
            }
        );
    }

    #[test]
    fn timestamps_near_zero_do_not_underflow() {
        let plan = plan_priming(&[0, 1, 2], None);
        assert_eq!(plan.timestamps, vec![0, 1, 2]);
        assert_eq!(shifted(0, -5), 0);
    }
}
