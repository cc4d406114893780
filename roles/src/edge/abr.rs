//! A WebRTC viewer's adaptive bitrate, as the engine keeps it: what str0m says of the
//! viewer's link (its TWCC bandwidth estimate, the loss and round trip of its receiver
//! reports) goes into [`cascade_protocol::abr::decide`], at most every
//! [`DECIDE_EVERY`]; a changed decision becomes a pending switch, which the engine carries
//! out at the next group start of the new rendition (`webrtc::engine`).

use std::time::{Duration, Instant};

use cascade_protocol::abr::{AbrState, HEADROOM, Link, Rung, UP_MARGIN, decide};

/// Decisions are taken at most this often (estimates come every few tens of milliseconds).
pub(crate) const DECIDE_EVERY: Duration = Duration::from_millis(500);
/// What audio is assumed to take of the estimate (Opus at WebRTC's usual rate).
const AUDIO_KBPS: u32 = 64;
/// The estimate str0m starts from: enough for a 720p rendition, so that a viewer on a good
/// link starts at the top and a weak one steps down within a second or two.
pub(crate) const INITIAL_ESTIMATE_KBPS: u64 = 3_000;

/// One adaptive viewer's state.
#[derive(Debug)]
pub(crate) struct ViewerAbr {
    state: AbrState,
    link: Link,
    started: Instant,
    last_decided: Option<Instant>,
    /// The rendition it moves to at that rendition's next group start.
    pub pending: Option<String>,
}

/// A decision to carry out: the rendition to move to, and what the bandwidth estimator
/// should probe for (the next rung up while below the top, with the top as the goal).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Move {
    pub to: Option<String>,
    pub probe_minimum_kbps: u64,
    pub probe_desired_kbps: u64,
}

impl ViewerAbr {
    pub(crate) fn new(now: Instant) -> ViewerAbr {
        ViewerAbr {
            state: AbrState::starting_at(0),
            link: Link::default(),
            started: now,
            last_decided: None,
            pending: None,
        }
    }

    /// str0m's TWCC estimate of the whole downlink, in bit/s.
    pub(crate) fn on_estimate(&mut self, bps: u64) {
        let kbps = (bps / 1000).min(u64::from(u32::MAX)) as u32;
        self.link.estimate_kbps = Some(kbps.saturating_sub(AUDIO_KBPS));
    }

    /// The video track's receiver-report figures.
    pub(crate) fn on_reports(&mut self, loss: Option<f32>, rtt: Option<Duration>) {
        if let Some(loss) = loss {
            self.link.loss = loss.clamp(0.0, 1.0);
        }
        if let Some(rtt) = rtt {
            self.link.rtt_ms = Some(rtt.as_millis().min(u128::from(u32::MAX)) as u32);
        }
    }

    /// Whether a decision is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last_decided
            .is_none_or(|at| now.duration_since(at) >= DECIDE_EVERY)
    }

    /// Decides over `ladder` for a viewer on `current`: `None` when it is not due or the
    /// ladder has nothing to choose from.
    pub(crate) fn decide(&mut self, ladder: &[Rung], current: &str, now: Instant) -> Option<Move> {
        if !self.due(now) || ladder.len() < 2 {
            return None;
        }
        self.last_decided = Some(now);
        // The ladder changes as renditions come and go: the viewer's place is where its
        // track is now.
        let at = ladder.iter().position(|r| r.track == current)?;
        self.state.rung = at;
        let now_ms = now.duration_since(self.started).as_millis() as u64;
        self.state = decide(ladder, &self.state, &self.link, now_ms);
        let target = &ladder[self.state.rung].track;
        let to =
            (target != current && self.pending.as_ref() != Some(target)).then(|| target.clone());
        // What the estimate must reach to step up to a rung (`decide`'s rule), plus audio.
        let needed =
            |kbps: u32| (f64::from(kbps) * UP_MARGIN / HEADROOM) as u64 + u64::from(AUDIO_KBPS);
        let next_up = ladder[self.state.rung.saturating_sub(1)].kbps;
        Some(Move {
            to,
            probe_minimum_kbps: needed(next_up),
            probe_desired_kbps: needed(ladder[0].kbps) * 5 / 4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> Vec<Rung> {
        [("video/source", 1500), ("video/180p", 250)]
            .map(|(track, kbps)| Rung {
                track: track.into(),
                kbps,
            })
            .into()
    }

    #[test]
    fn a_weak_estimate_moves_the_viewer_down_once_and_probes_for_the_rung_above() {
        let start = Instant::now();
        let mut abr = ViewerAbr::new(start);
        abr.on_estimate(400_000);
        let decision = abr.decide(&ladder(), "video/source", start).unwrap();
        assert_eq!(decision.to.as_deref(), Some("video/180p"));
        // 1,500 × 1.15 / 0.85 + 64: the estimate that would let it step back up.
        assert_eq!(decision.probe_minimum_kbps, 2029 + 64);
        abr.pending = decision.to;
        assert_eq!(
            abr.decide(
                &ladder(),
                "video/source",
                start + Duration::from_millis(100)
            ),
            None,
            "not due yet"
        );
        let again = abr
            .decide(&ladder(), "video/source", start + DECIDE_EVERY)
            .unwrap();
        assert_eq!(again.to, None, "already moving there");
    }

    #[test]
    fn a_viewer_whose_track_left_the_ladder_is_not_moved() {
        let start = Instant::now();
        let mut abr = ViewerAbr::new(start);
        abr.on_estimate(100_000);
        assert_eq!(abr.decide(&ladder(), "video/gone", start), None);
        assert_eq!(abr.decide(&ladder()[..1], "video/source", start), None);
    }
}
