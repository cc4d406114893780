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
//!
//! Busy is still late during a ramp: it shows the viewers of the window just closed, and a
//! viewer admitted now costs only once its handshake is done and its media flows. Measured at
//! 100 joins a second on one core, a guard on busy alone let the node take 377 viewers, ~98 %
//! of the core, and everyone froze. So once the engine serves enough sessions for the figure
//! to mean something, the guard also projects: the last window's busy share divided by its
//! sessions is the cost of one, and viewers beyond what keeps the engine at
//! [`TARGET_ENGINE_BUSY_PCT`] are refused before they add their cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::session::SessionKind;

/// New viewers are refused while frames wait longer than this in the engine's queue.
pub const MAX_ENGINE_LAG: Duration = Duration::from_millis(100);
/// New viewers are refused while the engine spends more than this share of its time working,
/// in each of its last two windows (a second).
pub const MAX_ENGINE_BUSY_PCT: u32 = 65;
/// The busy share the projection keeps the engine under (headroom for joins and bursts).
pub const TARGET_ENGINE_BUSY_PCT: u32 = 55;
/// Below this many sessions the cost per session is not projected: a handful of joins (each a
/// DTLS handshake) would make one viewer look like a tenth of the engine.
pub const MIN_SESSIONS_TO_PROJECT: usize = 100;
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
    /// At the engine's measured cost per session, `capacity` viewers keep it at its target.
    #[error("this node is at capacity ({capacity} viewers); try again shortly")]
    Projected {
        /// The projected number of viewers.
        capacity: usize,
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
            Overload::Projected { .. } => "engine_projected_full",
        }
    }
}

/// What the engine measured over its last window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineFigures {
    /// The worst frame queueing delay.
    pub lag: Duration,
    /// The share of the window spent working, in percent (the lower of the last two
    /// windows: one burst of joins is not saturation).
    pub busy_pct: u32,
    /// The share of the last window alone, for the projection.
    pub busy_last_pct: u32,
    /// Sessions on the engine when the window closed.
    pub sessions: usize,
}

impl EngineFigures {
    /// How many sessions keep the engine at [`TARGET_ENGINE_BUSY_PCT`] at the cost per
    /// session of the last window; `None` with too few sessions to tell.
    pub fn projected_capacity(&self) -> Option<usize> {
        if self.sessions < MIN_SESSIONS_TO_PROJECT || self.busy_last_pct == 0 {
            return None;
        }
        let target = TARGET_ENGINE_BUSY_PCT as usize;
        Some(self.sessions * target / self.busy_last_pct as usize)
    }
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
            _ => match engine.projected_capacity() {
                Some(capacity) if viewers >= capacity => Err(Overload::Projected { capacity }),
                _ => Ok(()),
            },
        },
    }
}

/// One shard's figures, as atomics.
#[derive(Debug, Default)]
struct ShardFigures {
    lag_micros: AtomicU64,
    busy_pct: AtomicU64,
    busy_last_pct: AtomicU64,
    sessions: AtomicU64,
}

impl ShardFigures {
    fn get(&self) -> EngineFigures {
        let pct = |a: &AtomicU64| u32::try_from(a.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        EngineFigures {
            lag: Duration::from_micros(self.lag_micros.load(Ordering::Relaxed)),
            busy_pct: pct(&self.busy_pct),
            busy_last_pct: pct(&self.busy_last_pct),
            sessions: usize::try_from(self.sessions.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        }
    }
}

/// The engine's figures, written by each of its shards once per window, read by admission.
#[derive(Debug)]
pub struct EngineLoad {
    /// Which engine (`viewers`, `publishers`): the label of its gauges.
    engine: &'static str,
    shards: Vec<ShardFigures>,
}

impl EngineLoad {
    /// Figures for the engine that serves `engine` (`viewers` or `publishers`), one shard.
    pub fn new(engine: &'static str) -> Self {
        Self::with_shards(engine, 1)
    }

    /// Figures for an engine of `shards` shards (at least one).
    pub fn with_shards(engine: &'static str, shards: usize) -> Self {
        EngineLoad {
            engine,
            shards: (0..shards.max(1))
                .map(|_| ShardFigures::default())
                .collect(),
        }
    }

    /// The figures of the last window, over all shards ([`combine`]).
    pub fn get(&self) -> EngineFigures {
        combine(self.shards.iter().map(ShardFigures::get))
    }

    /// Publishes the figures of the window that just closed on `shard`.
    pub fn set(&self, figures: EngineFigures, shard: usize) {
        let Some(slot) = self.shards.get(shard) else {
            return;
        };
        let micros = u64::try_from(figures.lag.as_micros()).unwrap_or(u64::MAX);
        slot.lag_micros.store(micros, Ordering::Relaxed);
        slot.busy_pct
            .store(u64::from(figures.busy_pct), Ordering::Relaxed);
        slot.busy_last_pct
            .store(u64::from(figures.busy_last_pct), Ordering::Relaxed);
        slot.sessions
            .store(figures.sessions as u64, Ordering::Relaxed);
        let engine = self.engine;
        let all = self.get();
        metrics::gauge!("cascade_webrtc_engine_lag_seconds", "engine" => engine)
            .set(all.lag.as_secs_f64());
        metrics::gauge!("cascade_webrtc_engine_busy_ratio", "engine" => engine)
            .set(f64::from(all.busy_last_pct) / 100.0);
        metrics::gauge!("cascade_webrtc_shard_sessions", "engine" => engine, "shard" => shard.to_string())
            .set(figures.sessions as f64);
    }
}

/// An engine's figures from its shards': the worst lag, the mean busy shares (sessions are
/// placed on the least loaded shard, so the shards fill alike), the sum of sessions. The
/// projection then gives the capacity of all shards together.
pub fn combine(shards: impl Iterator<Item = EngineFigures>) -> EngineFigures {
    let mut all = EngineFigures::default();
    let mut count = 0u32;
    let (mut busy, mut busy_last) = (0u32, 0u32);
    for shard in shards {
        count += 1;
        all.lag = all.lag.max(shard.lag);
        busy += shard.busy_pct;
        busy_last += shard.busy_last_pct;
        all.sessions += shard.sessions;
    }
    all.busy_pct = busy.checked_div(count).unwrap_or(0);
    all.busy_last_pct = busy_last.checked_div(count).unwrap_or(0);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_combine_into_the_worst_lag_the_mean_busy_share_and_all_sessions() {
        let shard = |lag_ms, busy, sessions| EngineFigures {
            lag: Duration::from_millis(lag_ms),
            busy_pct: busy,
            busy_last_pct: busy,
            sessions,
        };
        let all = combine([shard(5, 40, 300), shard(30, 60, 320)].into_iter());
        assert_eq!(all.lag, Duration::from_millis(30));
        assert_eq!((all.busy_pct, all.busy_last_pct), (50, 50));
        assert_eq!(all.sessions, 620);
        assert_eq!(all.projected_capacity(), Some(620 * 55 / 50));
    }

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
            ..EngineFigures::default()
        };
        let behind = EngineFigures {
            lag: Duration::from_millis(250),
            busy_pct: 40,
            ..EngineFigures::default()
        };
        let saturated = EngineFigures {
            lag: Duration::from_millis(5),
            busy_pct: 95,
            ..EngineFigures::default()
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
            ..EngineFigures::default()
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

    #[test]
    fn viewers_beyond_the_projected_capacity_are_refused_before_they_add_their_cost() {
        let open = Limits::default();
        // 300 sessions took 60 % of the last window: 275 keep the engine at 55 %.
        let ramping = EngineFigures {
            lag: Duration::from_millis(5),
            busy_pct: 40,
            busy_last_pct: 60,
            sessions: 300,
        };
        assert_eq!(ramping.projected_capacity(), Some(275));
        assert_eq!(
            decide(SessionKind::Viewer, 300, 0, open, ramping),
            Err(Overload::Projected { capacity: 275 })
        );
        assert_eq!(
            decide(SessionKind::Publisher, 0, 0, open, ramping),
            Ok(()),
            "a publisher is never refused for load"
        );
        // Once the ramp's handshakes are over the same viewers cost less: room again.
        let settled = EngineFigures {
            busy_last_pct: 40,
            ..ramping
        };
        assert_eq!(decide(SessionKind::Viewer, 300, 0, open, settled), Ok(()));
    }

    #[test]
    fn a_few_joining_viewers_are_never_projected() {
        // Ten handshakes can keep a small engine busy; that says nothing about its capacity.
        let joining = EngineFigures {
            lag: Duration::from_millis(5),
            busy_pct: 50,
            busy_last_pct: 60,
            sessions: 10,
        };

        assert_eq!(joining.projected_capacity(), None);
        assert_eq!(
            decide(SessionKind::Viewer, 10, 0, Limits::default(), joining),
            Ok(())
        );
    }
}
