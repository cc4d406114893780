//! Adaptive bitrate for WebRTC viewers: which video rendition a viewer gets, from its
//! bandwidth estimate, loss and round-trip time, with hysteresis.
//!
//! The engine feeds [`decide`] what it knows of a viewer's link (str0m's TWCC estimate, the
//! loss and RTT of its receiver reports) and acts on the rung it returns: at the next group
//! boundary of that rung, never mid-group, so the picture never breaks. Stepping down is
//! immediate and may skip rungs (a stall costs more than a softer picture); stepping up is
//! one rung at a time, only after the estimate has held above the next rung for a while, and
//! an up-switch that the link could not carry makes the next one wait longer.

use crate::media::{MediaKind, TrackInfo};

/// Share of the estimate video may use: the rest is audio, RTCP, retransmissions, and the
/// estimate's own error.
pub const HEADROOM: f64 = 0.85;
/// The estimate must exceed the next rung's bitrate by this factor to step up.
pub const UP_MARGIN: f64 = 1.15;
/// How long the estimate must hold above the next rung before stepping up.
pub const UP_HOLD_MS: u64 = 4_000;
/// The longest an up-switch waits after up-switches that failed (doubling each time).
pub const MAX_UP_HOLD_MS: u64 = 32_000;
/// An up-switch followed by a down-switch within this time failed.
pub const FAILED_UP_WITHIN_MS: u64 = 10_000;
/// Loss above this (receiver reports) is congestion, whatever the estimate says.
pub const CONGESTED_LOSS: f32 = 0.10;
/// Loss above this forbids stepping up.
pub const CLEAN_LOSS: f32 = 0.02;
/// A round trip this long is congestion (a queue is building somewhere).
pub const CONGESTED_RTT_MS: u32 = 1_000;

/// One video rendition a viewer may get, with what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    /// The broadcast track (`video/source`, `video/360p`).
    pub track: String,
    /// Its bitrate in kbit/s (the rendition's target, or the source's measured rate).
    pub kbps: u32,
}

/// What is known of a viewer's downlink now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Link {
    /// The bandwidth estimate available to video (audio already taken out), kbit/s.
    pub estimate_kbps: Option<u32>,
    /// Fraction of packets lost, 0.0 to 1.0, from the newest receiver report.
    pub loss: f32,
    /// Round-trip time, from the newest receiver report.
    pub rtt_ms: Option<u32>,
}

/// A viewer's ABR state: its rung and what it remembers of its switches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AbrState {
    /// The rung the viewer should get (index into the ladder, 0 the best).
    pub rung: usize,
    /// Since when the estimate has held above the next rung up.
    pub above_since_ms: Option<u64>,
    /// The last up-switch, to tell a failed one.
    pub last_up_ms: Option<u64>,
    /// How long the estimate must hold before the next up-switch.
    pub up_hold_ms: u64,
}

impl AbrState {
    /// A viewer starting on `rung`.
    pub fn starting_at(rung: usize) -> AbrState {
        AbrState {
            rung,
            up_hold_ms: UP_HOLD_MS,
            ..AbrState::default()
        }
    }
}

/// The ladder a WebRTC viewer can move along: the playable video tracks of `catalog` in the
/// codec of `default_track` (a viewer's payload type does not change mid-session), without
/// frame-rate-capped renditions, best first. A track's bitrate is its `bitrate_kbps`, else
/// `measured_kbps` of it; a track with neither is left out until it has one.
pub fn ladder(
    catalog: &[TrackInfo],
    default_track: &str,
    measured_kbps: impl Fn(&str) -> Option<u32>,
) -> Vec<Rung> {
    let Some(codec) = catalog
        .iter()
        .find(|t| t.name == default_track)
        .map(|t| t.codec)
    else {
        return Vec::new();
    };
    let mut rungs: Vec<Rung> = catalog
        .iter()
        .filter(|t| {
            t.kind == MediaKind::Video
                && t.codec == codec
                && t.fps.is_none()
                && t.webrtc_unfit().is_none()
        })
        .filter_map(|t| {
            let kbps = t.bitrate_kbps.or_else(|| measured_kbps(&t.name))?;
            Some(Rung {
                track: t.name.clone(),
                kbps,
            })
        })
        .collect();
    rungs.sort_by_key(|r| std::cmp::Reverse(r.kbps));
    rungs
}

/// The viewer's next state, from its ladder, its state and its link at `now_ms`.
pub fn decide(ladder: &[Rung], state: &AbrState, link: &Link, now_ms: u64) -> AbrState {
    let mut next = state.clone();
    if ladder.is_empty() {
        return next;
    }
    next.rung = state.rung.min(ladder.len() - 1);
    let congested =
        link.loss > CONGESTED_LOSS || link.rtt_ms.is_some_and(|rtt| rtt >= CONGESTED_RTT_MS);
    let budget = link
        .estimate_kbps
        .map(|estimate| f64::from(estimate) * HEADROOM);

    // Down: to the best rung that fits, or at least one rung on congestion.
    let fitting = budget.map(|budget| {
        ladder
            .iter()
            .position(|r| f64::from(r.kbps) <= budget)
            .unwrap_or(ladder.len() - 1)
    });
    let mut down_to = fitting.filter(|&fit| fit > next.rung);
    if congested && next.rung + 1 < ladder.len() {
        down_to = Some(down_to.unwrap_or(next.rung + 1).max(next.rung + 1));
    }
    if let Some(rung) = down_to {
        if state
            .last_up_ms
            .is_some_and(|up| now_ms.saturating_sub(up) < FAILED_UP_WITHIN_MS)
        {
            next.up_hold_ms = (state.up_hold_ms.max(UP_HOLD_MS) * 2).min(MAX_UP_HOLD_MS);
        }
        next.rung = rung;
        next.above_since_ms = None;
        next.last_up_ms = None;
        return next;
    }

    // Up: one rung, once the estimate has held above it (with margin) for the hold time.
    let room_above = match (next.rung.checked_sub(1), budget) {
        (Some(up), Some(budget)) if !congested && link.loss <= CLEAN_LOSS => {
            budget >= f64::from(ladder[up].kbps) * UP_MARGIN
        }
        _ => false,
    };
    if !room_above {
        next.above_since_ms = None;
        return next;
    }
    let since = *next.above_since_ms.get_or_insert(now_ms);
    if now_ms.saturating_sub(since) >= next.up_hold_ms.max(UP_HOLD_MS) {
        next.rung -= 1;
        next.above_since_ms = None;
        next.last_up_ms = Some(now_ms);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;

    fn ladder3() -> Vec<Rung> {
        [
            ("video/source", 1500),
            ("video/360p", 800),
            ("video/180p", 250),
        ]
        .map(|(track, kbps)| Rung {
            track: track.into(),
            kbps,
        })
        .into()
    }

    fn link(estimate_kbps: u32) -> Link {
        Link {
            estimate_kbps: Some(estimate_kbps),
            loss: 0.0,
            rtt_ms: Some(40),
        }
    }

    /// Runs `decide` once a second over `estimates` (kbit/s), returning the rung each second.
    fn run(start: usize, estimates: &[u32]) -> Vec<usize> {
        let ladder = ladder3();
        let mut state = AbrState::starting_at(start);
        estimates
            .iter()
            .enumerate()
            .map(|(second, &estimate)| {
                state = decide(&ladder, &state, &link(estimate), second as u64 * 1000);
                state.rung
            })
            .collect()
    }

    #[test]
    fn a_falling_estimate_steps_down_at_once_and_may_skip_rungs() {
        // 1,000 kbit/s: 850 fit 800 (360p); 300: 255 fit 250 (180p).
        assert_eq!(run(0, &[5000, 1000, 1000]), [0, 1, 1]);
        assert_eq!(run(0, &[300]), [2]);
        assert_eq!(run(0, &[100]), [2], "below the lowest rung: the lowest");
    }

    #[test]
    fn a_recovered_estimate_steps_up_one_rung_after_holding_for_the_hold_time() {
        let rungs = run(2, &[5000; 10]);
        // Holds 4 s above 360p (0..=4 s), steps to 360p at 4 s; the next hold starts at 5 s.
        assert_eq!(rungs, [2, 2, 2, 2, 1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn an_estimate_that_dips_restarts_the_hold() {
        // 1,000 kbit/s keeps 180p → 360p room (850 ≥ 920? no): 1,100 gives 935 ≥ 920.
        let rungs = run(2, &[1100, 1100, 1100, 600, 1100, 1100, 1100, 1100, 1100]);
        assert_eq!(rungs, [2, 2, 2, 2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn an_estimate_just_above_the_next_rung_is_not_enough_to_step_up() {
        // 900 kbit/s: 765 of headroom is below 800 × 1.15: stays on 180p.
        assert_eq!(run(2, &[900; 12]), [2; 12]);
    }

    #[test]
    fn loss_or_a_long_round_trip_steps_down_even_with_a_good_estimate() {
        let ladder = ladder3();
        let state = AbrState::starting_at(0);
        let lossy = Link {
            loss: 0.2,
            ..link(5000)
        };
        assert_eq!(decide(&ladder, &state, &lossy, 0).rung, 1);
        let queued = Link {
            rtt_ms: Some(1500),
            ..link(5000)
        };
        assert_eq!(decide(&ladder, &state, &queued, 0).rung, 1);
        let bottom = AbrState::starting_at(2);
        assert_eq!(decide(&ladder, &bottom, &lossy, 0).rung, 2, "nowhere lower");
    }

    #[test]
    fn some_loss_forbids_stepping_up_without_stepping_down() {
        let ladder = ladder3();
        let mut state = AbrState::starting_at(1);
        let lossy = Link {
            loss: 0.05,
            ..link(5000)
        };
        for second in 0..10 {
            state = decide(&ladder, &state, &lossy, second * 1000);
        }
        assert_eq!(state.rung, 1);
    }

    #[test]
    fn an_up_switch_the_link_cannot_carry_doubles_the_next_hold() {
        let ladder = ladder3();
        let mut state = AbrState::starting_at(1);
        for second in 0..=4 {
            state = decide(&ladder, &state, &link(5000), second * 1000);
        }
        assert_eq!(state.rung, 0, "stepped up at 4 s");
        state = decide(&ladder, &state, &link(1000), 6000);
        assert_eq!(state.rung, 1, "the link did not carry it");
        assert_eq!(state.up_hold_ms, 2 * UP_HOLD_MS);
        for second in 7..=14 {
            state = decide(&ladder, &state, &link(5000), second * 1000);
        }
        assert_eq!(state.rung, 1, "7 s of room is not the 8 s hold now");
        state = decide(&ladder, &state, &link(5000), 15_000);
        assert_eq!(state.rung, 0);
    }

    #[test]
    fn no_estimate_keeps_the_rung() {
        let ladder = ladder3();
        let state = AbrState::starting_at(1);
        let unknown = Link::default();
        assert_eq!(decide(&ladder, &state, &unknown, 0), state);
        assert_eq!(decide(&[], &state, &link(100), 0), state);
    }

    #[test]
    fn the_ladder_is_the_playable_full_rate_video_in_the_viewers_codec_best_first() {
        let mut source = TrackInfo::new("video/source", Codec::H264);
        source.width = Some(1280);
        let mut r360 = TrackInfo::new("video/360p", Codec::H264);
        r360.bitrate_kbps = Some(800);
        let mut vision = TrackInfo::new("video/360p-1fps", Codec::H264);
        vision.bitrate_kbps = Some(100);
        vision.fps = Some(1);
        let mut vp8 = TrackInfo::new("video/vp8", Codec::Vp8);
        vp8.bitrate_kbps = Some(500);
        let audio = TrackInfo::new("audio/source", Codec::Opus);
        let catalog = [r360, source, vision, vp8, audio];
        let measured = |name: &str| (name == "video/source").then_some(2400);
        let rungs = ladder(&catalog, "video/source", measured);
        let names: Vec<&str> = rungs.iter().map(|r| r.track.as_str()).collect();
        assert_eq!(names, ["video/source", "video/360p"]);
        assert_eq!(rungs[0].kbps, 2400);
        assert!(
            ladder(&catalog, "video/source", |_| None).len() == 1,
            "a source not yet measured waits"
        );
    }
}
