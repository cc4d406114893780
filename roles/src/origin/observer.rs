//! A stream's run as the outside sees it: it started, it ended with this audience; and each
//! session that ended. The stream actors report to a [`StreamObserver`] (the node turns
//! reports into webhooks and history); the audience arithmetic is [`Audience`], a pure
//! accumulator.
//!
//! Viewers on this node are counted exactly, from each session's join and leave; viewers on
//! other nodes (edges pulling the stream) come from their load reports, sampled once a second.

use std::time::Duration;

use cascade_protocol::StreamId;

/// A stream got its first publisher on this node (a reconnect within the grace period is the
/// same run).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStarted {
    /// The stream.
    pub stream: StreamId,
    /// `whip`, `rtmp`, `srt`, `rtsp`.
    pub protocol: &'static str,
    /// Seconds since the epoch.
    pub started_unix: f64,
}

/// A stream's run, once it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRun {
    /// The stream.
    pub stream: StreamId,
    /// The first publisher's protocol.
    pub protocol: &'static str,
    /// Seconds since the epoch.
    pub started_unix: f64,
    /// Seconds since the epoch.
    pub ended_unix: f64,
    /// The most viewers at once, on every node.
    pub peak_viewers: u32,
    /// Viewers times minutes watched, on every node.
    pub viewer_minutes: f64,
    /// Media bytes received from publishers.
    pub bytes_in: u64,
    /// What the run carried: its catalog when it ended (sources and renditions).
    pub tracks: Vec<cascade_protocol::media::TrackInfo>,
    /// Viewers who joined during the run, here and (a lower bound: sampled once a second)
    /// on other nodes.
    pub total_viewers: u32,
}

/// What learns of stream runs. Calls come from the stream actor: they must not block.
pub trait StreamObserver: Send + Sync + 'static {
    /// A stream started on this node (its origin).
    fn started(&self, started: StreamStarted);
    /// A stream that started on this node ended.
    fn ended(&self, run: StreamRun);
    /// Viewers of `stream` on other nodes, as they last reported (0 on a single node).
    fn viewers_elsewhere(&self, stream: &StreamId) -> u32;
    /// A session of any stream on this node ended (publisher or viewer, every protocol).
    fn session_ended(&self, _ended: &super::EndedSession) {}
}

/// A run's audience so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audience {
    /// Most viewers at once.
    pub peak: u32,
    /// Viewers who joined: every join here, and each rise of the count elsewhere.
    pub total: u32,
    /// Viewer-seconds of this node's viewers that left.
    local_seconds: f64,
    /// Viewer-seconds of other nodes' viewers, sampled.
    remote_seconds: f64,
    /// Viewers elsewhere at the last sample.
    remote_now: u32,
}

impl Audience {
    /// A viewer joined this node; `here` viewers watch here now.
    pub fn viewer_joined(&mut self, here: u32) {
        self.total += 1;
        self.viewers_here(here);
    }

    /// A viewer of this node left after `watched`.
    pub fn viewer_left(&mut self, watched: Duration) {
        self.local_seconds += watched.as_secs_f64();
    }

    /// The count of viewers here changed (or a sample came): the peak may move.
    pub fn viewers_here(&mut self, here: u32) {
        self.peak = self.peak.max(here + self.remote_now);
    }

    /// Once a second: `elsewhere` viewers on other nodes over the last `elapsed`.
    pub fn sample_elsewhere(&mut self, elsewhere: u32, here: u32, elapsed: Duration) {
        self.remote_seconds += f64::from(elsewhere) * elapsed.as_secs_f64();
        self.total += elsewhere.saturating_sub(self.remote_now);
        self.remote_now = elsewhere;
        self.viewers_here(here);
    }

    /// Viewer-minutes, with `still_watching` the time this node's remaining viewers watched.
    pub fn viewer_minutes(&self, still_watching: Duration) -> f64 {
        (self.local_seconds + self.remote_seconds + still_watching.as_secs_f64()) / 60.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_viewers_here_and_one_elsewhere_add_up_to_viewer_minutes_and_a_peak_of_three() {
        let mut audience = Audience::default();
        audience.viewer_joined(1);
        audience.viewer_joined(2);
        // One viewer on an edge for 30 one-second samples.
        for _ in 0..30 {
            audience.sample_elsewhere(1, 2, Duration::from_secs(1));
        }
        audience.viewer_left(Duration::from_secs(60));
        audience.viewers_here(1);
        assert_eq!(audience.peak, 3);
        assert_eq!(audience.total, 3, "two joins here, one rise elsewhere");
        // 60 s + 30 s + the remaining local viewer's 90 s.
        let minutes = audience.viewer_minutes(Duration::from_secs(90));
        assert!((minutes - 3.0).abs() < 1e-9, "{minutes}");
    }
}
