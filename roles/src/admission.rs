//! Whether this node takes one more session: fixed caps per node and an automatic guard that
//! refuses new viewers while the WebRTC engine is falling behind, so that the viewers already
//! watching keep their quality and the publisher they depend on is never starved.
//!
//! The decision is a pure function ([`decide`]); the engine measures its own lag (how long a
//! frame waited in its queue, the worst over a short window) and shares it lock-free
//! ([`EngineLag`]). Once the lag falls back, new viewers are admitted again by themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::session::SessionKind;

/// New viewers are refused while frames wait longer than this in the engine's queue.
pub const MAX_ENGINE_LAG: Duration = Duration::from_millis(100);
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
    #[error(
        "this node is at capacity (media {lag_ms} ms behind); new viewers are refused until it catches up"
    )]
    Lagging {
        /// The engine's lag.
        lag_ms: u64,
    },
}

impl Overload {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Overload::ViewerCap { .. } => "viewer_cap",
            Overload::PublisherCap { .. } => "publisher_cap",
            Overload::Lagging { .. } => "engine_lagging",
        }
    }
}

/// Decides one more session of `kind`, with `viewers` and `publishers` present now.
/// Publishers are never refused for lag: every viewer depends on them.
pub fn decide(
    kind: SessionKind,
    viewers: usize,
    publishers: usize,
    limits: Limits,
    lag: Duration,
) -> Result<(), Overload> {
    match kind {
        SessionKind::Publisher => match limits.max_publishers {
            Some(max) if publishers >= max => Err(Overload::PublisherCap { max }),
            _ => Ok(()),
        },
        SessionKind::Viewer => match limits.max_viewers {
            Some(max) if viewers >= max => Err(Overload::ViewerCap { max }),
            _ if lag > MAX_ENGINE_LAG => Err(Overload::Lagging {
                lag_ms: u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
            }),
            _ => Ok(()),
        },
    }
}

/// The engine's lag, written by the engine once per window, read by admission.
#[derive(Debug, Default)]
pub struct EngineLag(AtomicU64);

impl EngineLag {
    /// The worst queueing delay of the last window.
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    /// Publishes the worst queueing delay of the window that just closed.
    pub fn set(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.0.store(micros, Ordering::Relaxed);
        metrics::gauge!("cascade_webrtc_engine_lag_seconds").set(lag.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_lag_refuse_viewers_but_lag_never_refuses_a_publisher() {
        let open = Limits::default();
        let capped = Limits {
            max_viewers: Some(10),
            max_publishers: Some(2),
        };
        let calm = Duration::from_millis(5);
        let behind = Duration::from_millis(250);
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
            decide(SessionKind::Viewer, 1, 0, open, MAX_ENGINE_LAG),
            Ok(()),
            "at the limit is still fine"
        );
        assert_eq!(decide(SessionKind::Publisher, 0, 1, capped, behind), Ok(()));
        assert_eq!(
            decide(SessionKind::Publisher, 0, 2, capped, calm),
            Err(Overload::PublisherCap { max: 2 })
        );
    }
}
