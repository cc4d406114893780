//! Whether this node takes one more session: fixed caps per node and an automatic guard that
//! refuses new viewers while the WebRTC engine is at capacity, so that the viewers already
//! watching keep their quality and the publisher they depend on is never starved.
//!
//! The decision is a pure function ([`decide`]); the engine measures itself over short
//! windows and shares the figures lock-free ([`EngineLoad`]): its lag (how long a frame waited
//! in its queue, the worst of the window) and how busy it was (the share of the window it
//! spent working rather than waiting for input). Busy is the earlier signal: measured on one
//! core, viewers' latency grew by seconds while frames still waited < 300 ms in the queue
//! (the backlog builds in the kernel's socket buffers instead). Once both fall back, new
//! viewers are admitted again by themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::session::SessionKind;

/// New viewers are refused while frames wait longer than this in the engine's queue.
pub const MAX_ENGINE_LAG: Duration = Duration::from_millis(100);
/// New viewers are refused while the engine spends more than this share of its time working,
/// in each of its last two windows (a second).
pub const MAX_ENGINE_BUSY_PCT: u32 = 65;
/// What a refused client is told to wait before trying again (`Retry-After`).
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The node's fixed caps (`--max-viewers`, `--max-publishers`); `None` is no fixed cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// WebRTC viewer sessions on this node.
    pub max_viewers: Option<usize>,
    /// Publisher sessions on this node.
    pub max_publishers: Option<usize>,
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    /// The node has `max` viewers.
    #[error("this node serves its maximum of {max} viewers")]
    ViewerCap {
        /// `--max-viewers`.
        max: usize,
    },
    /// The node has `max` publishers.
    #[error("this node serves its maximum of {max} publishers")]
    PublisherCap {
        /// `--max-publishers`.
        max: usize,
    },
    /// The WebRTC engine is behind by `lag_ms`: new viewers would degrade everyone.
    #[error("this node is at capacity (media {lag_ms} ms behind); try again shortly")]
    Lagging {
        /// The engine's lag.
        lag_ms: u64,
    },
    /// The WebRTC engine is busy `busy_pct` % of the time: one more viewer and it falls behind.
    #[error("this node is at capacity (media engine {busy_pct} % busy); try again shortly")]
    Saturated {
        /// The engine's busy share.
        busy_pct: u32,
    },
}

impl Overload {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Overload::ViewerCap { .. } => "viewer_cap",
            Overload::PublisherCap { .. } => "publisher_cap",
            Overload::Lagging { .. } => "engine_lagging",
            Overload::Saturated { .. } => "engine_saturated",
        }
    }
}

/// What the engine measured over its last window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFigures {
    /// The worst frame queueing delay.
    pub lag: Duration,
    /// The share of the window spent working, in percent.
    pub busy_pct: u32,
}

/// Decides one more session of `kind`, with `viewers` and `publishers` present now.
/// Publishers are never refused for engine load: every viewer depends on them.
pub fn decide(
    kind: SessionKind,
    viewers: usize,
    publishers: usize,
    limits: Limits,
    engine: EngineFigures,
) -> Result<(), Overload> {
    match kind {
        SessionKind::Publisher => match limits.max_publishers {
            Some(max) if publishers >= max => Err(Overload::PublisherCap { max }),
            _ => Ok(()),
        },
        SessionKind::Viewer => match limits.max_viewers {
            Some(max) if viewers >= max => Err(Overload::ViewerCap { max }),
            _ if engine.lag > MAX_ENGINE_LAG => Err(Overload::Lagging {
                lag_ms: u64::try_from(engine.lag.as_millis()).unwrap_or(u64::MAX),
            }),
            _ if engine.busy_pct > MAX_ENGINE_BUSY_PCT => Err(Overload::Saturated {
                busy_pct: engine.busy_pct,
            }),
            _ => Ok(()),
        },
    }
}

/// The engine's figures, written by the engine once per window, read by admission.
#[derive(Debug, Default)]
pub struct EngineLoad {
    lag_micros: AtomicU64,
    busy_pct: AtomicU64,
}

impl EngineLoad {
    /// The figures of the last window.
    pub fn get(&self) -> EngineFigures {
        EngineFigures {
            lag: Duration::from_micros(self.lag_micros.load(Ordering::Relaxed)),
            busy_pct: u32::try_from(self.busy_pct.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
        }
    }

    /// Publishes the figures of the window that just closed.
    pub fn set(&self, figures: EngineFigures) {
        let micros = u64::try_from(figures.lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_micros.store(micros, Ordering::Relaxed);
        self.busy_pct
            .store(u64::from(figures.busy_pct), Ordering::Relaxed);
        metrics::gauge!("cascade_webrtc_engine_lag_seconds").set(figures.lag.as_secs_f64());
        metrics::gauge!("cascade_webrtc_engine_busy_ratio")
            .set(f64::from(figures.busy_pct) / 100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_lag_and_saturation_refuse_viewers_but_never_a_publisher() {
        let open = Limits::default();
        let capped = Limits {
            max_viewers: Some(10),
            max_publishers: Some(2),
        };
        let calm = EngineFigures {
            lag: Duration::from_millis(5),
            busy_pct: 40,
        };
        let behind = EngineFigures {
            lag: Duration::from_millis(250),
            busy_pct: 40,
        };
        let saturated = EngineFigures {
            lag: Duration::from_millis(5),
            busy_pct: 95,
        };
        assert_eq!(decide(SessionKind::Viewer, 5_000, 0, open, calm), Ok(()));
        assert_eq!(
            decide(SessionKind::Viewer, 10, 0, capped, calm),
            Err(Overload::ViewerCap { max: 10 })
        );
        assert_eq!(decide(SessionKind::Viewer, 9, 0, capped, calm), Ok(()));
        assert_eq!(
            decide(SessionKind::Viewer, 1, 0, open, behind),
            Err(Overload::Lagging { lag_ms: 250 })
        );
        assert_eq!(
            decide(SessionKind::Viewer, 1, 0, open, saturated),
            Err(Overload::Saturated { busy_pct: 95 })
        );
        let at_limits = EngineFigures {
            lag: MAX_ENGINE_LAG,
            busy_pct: MAX_ENGINE_BUSY_PCT,
        };
        assert_eq!(
            decide(SessionKind::Viewer, 1, 0, open, at_limits),
            Ok(()),
            "at the limits is still fine"
        );
        assert_eq!(decide(SessionKind::Publisher, 0, 1, capped, behind), Ok(()));
        assert_eq!(
            decide(SessionKind::Publisher, 0, 0, open, saturated),
            Ok(())
        );
        assert_eq!(
            decide(SessionKind::Publisher, 0, 2, capped, calm),
            Err(Overload::PublisherCap { max: 2 })
        );
    }
}
