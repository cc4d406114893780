//! Shared helpers: real nodes, real media, real WebRTC peers; conditions with deadlines.

pub mod browser;
pub mod loadtest;
pub mod media;
pub mod node;
pub mod peer;

use std::future::Future;
use std::time::Duration;

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
