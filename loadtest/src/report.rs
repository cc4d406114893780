//! The end-of-run report: figures computed from the merged totals, printed as a table for
//! people and written as JSON for machines, plus the SLO gates that decide the exit code.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::figures::Totals;

/// Percentiles of one distribution, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distribution {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Distribution {
    fn of(histogram: &Histogram<u64>) -> Distribution {
        let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
        let at = |q: f64| (!histogram.is_empty()).then(|| ms(histogram.value_at_quantile(q)));
        Distribution {
            samples: histogram.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: (!histogram.is_empty()).then(|| ms(histogram.max())),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    pub target_viewers: usize,
    pub duration_secs: f64,
    pub workers: usize,
    /// `full`: every viewer decrypts and reassembles every frame. `sampled`: only
    /// `verified_viewers` do; frame counts and latency come from them, and the
    /// `counted_viewers` contribute packet loss (from RTP sequence numbers), freezes, join
    /// time (first complete video frame) and bitrate.
    pub verification: &'static str,
    pub verified_viewers: u64,
    pub counted_viewers: u64,
    /// Video RTP packet loss of the counted viewers (sampling mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_packet_loss_pct: Option<f64>,
    pub sessions_started: u64,
    pub sessions_joined: u64,
    pub failures: std::collections::BTreeMap<String, u64>,
    pub failed_sessions: u64,
    pub join_time: Distribution,
    pub latency: Distribution,
    /// For `--reconnect`: last frame before a session died → first frame of the next one.
    pub recovery: Distribution,
    /// Lip sync: per verified viewer, how far apart the server's Sender Reports put audio
    /// and video that were sent together (`figures::AvSync`).
    pub av_sync: Distribution,
    pub frames_expected: u64,
    pub frames_received: u64,
    pub frame_loss_pct: f64,
    pub freezes: u64,
    pub freeze_total_secs: f64,
    /// Freezes of the fully verified viewers alone (in sampling mode, the first admitted).
    pub verified_freezes: u64,
    /// Verified viewers' freezes by the second of the run they began in.
    pub verified_freeze_seconds: std::collections::BTreeMap<u64, u64>,
    pub bitrate_per_viewer_kbps: f64,
    pub nacks_sent: u64,
    pub plis_sent: u64,
    /// SLO gates that were missed (empty when all passed or none were set).
    pub gates_missed: Vec<String>,
    /// The HLS mode's own figures (its "frames" are parts, its "freezes" stalls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls: Option<HlsFigures>,
}

/// What only the HLS mode measures.
#[derive(Debug, Clone, Serialize)]
pub struct HlsFigures {
    /// Every request sent: playlists, init segments, parts.
    pub requests: u64,
    pub requests_per_sec: f64,
    /// From the program date time of a part's end to the part's arrival: what the packager,
    /// the edges and the network add, measured for any source.
    pub part_latency: Distribution,
}

impl HlsFigures {
    pub fn new(requests: u64, elapsed: Duration, part_latency_us: &[u64]) -> HlsFigures {
        let mut histogram = Totals::default().latency_us;
        for &us in part_latency_us {
            Totals::record(&mut histogram, us);
        }
        HlsFigures {
            requests,
            requests_per_sec: (requests as f64 / elapsed.as_secs_f64().max(1e-3) * 10.0).round()
                / 10.0,
            part_latency: Distribution::of(&histogram),
        }
    }
}

impl Report {
    pub fn new(
        url: &str,
        target_viewers: usize,
        duration: Duration,
        workers: usize,
        t: &Totals,
    ) -> Report {
        let loss = if t.frames_expected == 0 {
            0.0
        } else {
            let lost = t.frames_expected.saturating_sub(t.frames_received);
            (lost as f64 * 10_000.0 / t.frames_expected as f64).round() / 100.0
        };
        let viewer_secs = t.viewer_time.as_secs_f64();
        Report {
            url: url.to_owned(),
            target_viewers,
            duration_secs: (duration.as_secs_f64() * 10.0).round() / 10.0,
            workers,
            verification: if t.counted_viewers == 0 {
                "full"
            } else {
                "sampled"
            },
            verified_viewers: t.verified_viewers,
            counted_viewers: t.counted_viewers,
            counted_packet_loss_pct: (t.counted_viewers > 0).then(|| {
                let lost = t
                    .counted_packets_expected
                    .saturating_sub(t.counted_packets_received);
                let expected = t.counted_packets_expected.max(1);
                (lost as f64 * 10_000.0 / expected as f64).round() / 100.0
            }),
            sessions_started: t.sessions_started,
            sessions_joined: t.sessions_joined,
            failed_sessions: t.failures.values().sum(),
            failures: t.failures.clone(),
            join_time: Distribution::of(&t.join_us),
            latency: Distribution::of(&t.latency_us),
            recovery: Distribution::of(&t.recovery_us),
            av_sync: Distribution::of(&t.av_offset_us),
            frames_expected: t.frames_expected,
            frames_received: t.frames_received,
            frame_loss_pct: loss,
            freezes: t.freezes,
            freeze_total_secs: (t.freeze_total.as_secs_f64() * 100.0).round() / 100.0,
            verified_freezes: t.verified_freezes,
            verified_freeze_seconds: t.verified_freeze_seconds.clone(),
            bitrate_per_viewer_kbps: if viewer_secs > 0.0 {
                (t.bytes as f64 * 8.0 / viewer_secs / 100.0).round() / 10.0
            } else {
                0.0
            },
            nacks_sent: t.nacks_sent,
            plis_sent: t.plis_sent,
            gates_missed: Vec::new(),
            hls: None,
        }
    }

    /// A table for a terminal or a log.
    pub fn table(&self) -> String {
        let d = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let dist = |name: &str, x: &Distribution| {
            format!(
                "{name:<22}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
                d(x.p50_ms),
                d(x.p95_ms),
                d(x.p99_ms),
                d(x.max_ms),
                x.samples
            )
        };
        let mut out = String::new();
        out += &format!(
            "cascade-loadtest: {} viewers target, {:.1} s, {} workers, {} verification\n{}\n",
            self.target_viewers, self.duration_secs, self.workers, self.verification, self.url
        );
        out += &format!(
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            "(ms)", "p50", "p95", "p99", "max", "samples"
        );
        out += &dist("join time", &self.join_time);
        out += &dist("glass-to-glass", &self.latency);
        if self.recovery.samples > 0 {
            out += &dist("reconnect recovery", &self.recovery);
        }
        if self.av_sync.samples > 0 {
            out += &dist("audio/video offset", &self.av_sync);
        }
        out += &format!(
            "sessions: {} started, {} joined, {} failed\n",
            self.sessions_started, self.sessions_joined, self.failed_sessions
        );
        for (reason, count) in &self.failures {
            out += &format!("  failed {reason}: {count}\n");
        }
        let unit = if self.hls.is_some() {
            "parts"
        } else {
            "frames"
        };
        if let Some(hls) = &self.hls {
            out += &dist("part end to arrival", &hls.part_latency);
            out += &format!(
                "requests: {} ({:.1}/s)\n",
                hls.requests, hls.requests_per_sec
            );
        }
        out += &format!(
            "{unit}: {} expected, {} received, loss {:.2}%\n",
            self.frames_expected, self.frames_received, self.frame_loss_pct
        );
        if let Some(loss) = self.counted_packet_loss_pct {
            out += &format!(
                "sampled: {} viewers verified ({} freezes among them), {} counted (video packet loss {loss:.2}%)\n",
                self.verified_viewers, self.verified_freezes, self.counted_viewers
            );
        }
        out += &format!(
            "{}: {} ({:.2} s in total); bitrate per viewer {:.1} kbit/s; NACKs {}, PLIs {}\n",
            if self.hls.is_some() {
                "stalls"
            } else {
                "freezes"
            },
            self.freezes,
            self.freeze_total_secs,
            self.bitrate_per_viewer_kbps,
            self.nacks_sent,
            self.plis_sent
        );
        if !self.gates_missed.is_empty() {
            out += "SLO gates missed:\n";
            for gate in &self.gates_missed {
                out += &format!("  {gate}\n");
            }
        }
        out
    }
}

/// Thresholds that turn a run into a pass or fail (exit code 2 when missed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gates {
    pub max_p95_latency_ms: Option<f64>,
    pub max_loss_pct: Option<f64>,
    pub max_join_p95_ms: Option<f64>,
    pub max_failed_sessions: Option<u64>,
}

impl Gates {
    /// The gates `report` misses, each described with the measured value.
    pub fn missed(&self, report: &Report) -> Vec<String> {
        let mut missed = Vec::new();
        let mut check = |name: &str, limit: Option<f64>, value: Option<f64>| {
            if let Some(limit) = limit {
                match value {
                    Some(v) if v <= limit => {}
                    Some(v) => missed.push(format!("{name}: measured {v}, limit {limit}")),
                    None => missed.push(format!("{name}: not measured, limit {limit}")),
                }
            }
        };
        check(
            "p95 latency ms",
            self.max_p95_latency_ms,
            report.latency.p95_ms,
        );
        check("loss %", self.max_loss_pct, Some(report.frame_loss_pct));
        check(
            "p95 join time ms",
            self.max_join_p95_ms,
            report.join_time.p95_ms,
        );
        check(
            "failed sessions",
            self.max_failed_sessions.map(|m| m as f64),
            Some(report.failed_sessions as f64),
        );
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::FailureReason;

    fn report_with(latencies_ms: &[u64], expected: u64, received: u64) -> Report {
        let mut t = Totals::default();
        for &ms in latencies_ms {
            Totals::record(&mut t.latency_us, ms * 1000);
            Totals::record(&mut t.join_us, ms * 2000);
        }
        t.frames_expected = expected;
        t.frames_received = received;
        t.fail(FailureReason::Http(404));
        Report::new("http://x/whep/a", 2, Duration::from_secs(20), 1, &t)
    }

    #[test]
    fn figures_come_from_the_totals() {
        let r = report_with(&(1..=100).collect::<Vec<_>>(), 1000, 990);
        assert_eq!(r.latency.p50_ms, Some(50.0));
        assert_eq!(r.latency.p95_ms, Some(95.0));
        assert_eq!(r.latency.max_ms, Some(100.0));
        assert_eq!(r.frame_loss_pct, 1.0);
        assert_eq!(r.failures["http_404"], 1);
        assert!(r.table().contains("failed http_404: 1"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency"]["p95_ms"], 95.0);
    }

    #[test]
    fn gates_name_what_was_missed_and_pass_when_met() {
        let r = report_with(&[10, 20, 30], 100, 100);
        let strict = Gates {
            max_p95_latency_ms: Some(1.0),
            max_loss_pct: Some(0.0),
            max_join_p95_ms: Some(1000.0),
            max_failed_sessions: Some(0),
        };
        let missed = strict.missed(&r);
        assert_eq!(missed.len(), 2, "{missed:?}");
        assert!(missed[0].starts_with("p95 latency ms: measured 30"));
        assert!(missed[1].starts_with("failed sessions"));
        assert!(Gates::default().missed(&r).is_empty());
        let empty = report_with(&[], 0, 0);
        assert_eq!(
            Gates {
                max_p95_latency_ms: Some(5.0),
                ..Gates::default()
            }
            .missed(&empty),
            vec!["p95 latency ms: not measured, limit 5".to_owned()]
        );
    }
}
