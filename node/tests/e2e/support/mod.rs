//! Shared helpers: real nodes, real media, real WebRTC peers; conditions with deadlines.

pub mod aiortc;
pub mod browser;
pub mod camera;
pub mod encoder;
pub mod hls_player;
pub mod link;
pub mod loadtest;
pub mod media;
pub mod mongodb;
pub mod netns;
pub mod node;
pub mod peer;

use std::future::Future;
use std::time::Duration;

/// Held by tests whose assertions are about timing (no freeze when the Raft leader dies) and
/// by tests that load both cores (browsers, Python peers): they take turns, so that on a
/// two-core CI machine one does not starve the other into a false failure.
pub async fn one_heavy_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
