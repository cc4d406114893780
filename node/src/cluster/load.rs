//! Soft state: each node's load, reported to the leader every second and never written to
//! the Raft log. The leader answers each report with everyone's latest, so every node has a
//! view at most a second or two old for routing viewers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cascade_protocol::cluster::{Load, NodeId};

/// A node is healthy while its last report is younger than this.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(3);

/// One node's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Who reports.
    pub node: NodeId,
    /// CPU, viewers, egress, streams.
    pub load: Load,
    /// Streams published on this node (it is their origin and has them live).
    pub live_streams: Vec<String>,
    /// The pulls this node runs and how each is doing.
    #[serde(default)]
    pub pulls: Vec<cascade_protocol::pull::PullStatus>,
    /// Streams published on this node that need renditions (the transcoder's plan says so).
    #[serde(default)]
    pub transcode_wanted: Vec<String>,
    /// Viewers of each stream on this node (streams without viewers left out).
    #[serde(default)]
    pub stream_viewers: BTreeMap<String, u32>,
}

/// Every node's latest report with its age in milliseconds when sent.
pub type LoadTable = BTreeMap<NodeId, (LoadReport, u64)>;

/// What a node knows of the others' load.
#[derive(Debug, Default)]
pub struct LoadView {
    reports: BTreeMap<NodeId, (LoadReport, Instant)>,
}

impl LoadView {
    /// Records a report received now.
    pub fn record(&mut self, report: LoadReport, now: Instant) {
        self.reports.insert(report.node, (report, now));
    }

    /// Merges a table from the leader, keeping whichever report is newer.
    pub fn merge(&mut self, table: LoadTable, now: Instant) {
        for (node, (report, age_ms)) in table {
            let at = now
                .checked_sub(Duration::from_millis(age_ms))
                .unwrap_or(now);
            match self.reports.get(&node) {
                Some((_, known)) if *known >= at => {}
                _ => {
                    self.reports.insert(node, (report, at));
                }
            }
        }
    }

    /// The table to send back, with ages as of `now`.
    pub fn table(&self, now: Instant) -> LoadTable {
        self.reports
            .iter()
            .map(|(node, (report, at))| {
                let age = now.saturating_duration_since(*at).as_millis() as u64;
                (*node, (report.clone(), age))
            })
            .collect()
    }

    /// Nodes heard from within [`HEALTHY_WITHIN`].
    pub fn healthy(&self, now: Instant) -> BTreeSet<NodeId> {
        self.heard_within(HEALTHY_WITHIN, now)
    }

    /// Nodes heard from within `within`.
    pub fn heard_within(&self, within: Duration, now: Instant) -> BTreeSet<NodeId> {
        self.reports
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < within)
            .map(|(node, _)| *node)
            .collect()
    }

    /// Per node heard from within `within`, the streams it says need renditions.
    pub fn transcode_wanted(
        &self,
        within: Duration,
        now: Instant,
    ) -> BTreeMap<NodeId, Vec<String>> {
        self.reports
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < within)
            .map(|(node, (report, _))| (*node, report.transcode_wanted.clone()))
            .collect()
    }

    /// Viewers of `stream` on nodes other than `myself` heard from within
    /// [`HEALTHY_WITHIN`].
    pub fn viewers_elsewhere(&self, myself: NodeId, stream: &str, now: Instant) -> u32 {
        self.reports
            .iter()
            .filter(|(node, (_, at))| {
                **node != myself && now.saturating_duration_since(*at) < HEALTHY_WITHIN
            })
            .filter_map(|(_, (report, _))| report.stream_viewers.get(stream))
            .sum()
    }

    /// Every pull each node reported running.
    pub fn pulls(&self) -> impl Iterator<Item = (NodeId, &cascade_protocol::pull::PullStatus)> {
        self.reports
            .iter()
            .flat_map(|(node, (report, _))| report.pulls.iter().map(move |p| (*node, p)))
    }

    /// How long each node has not been heard from, for those silent longer than
    /// [`HEALTHY_WITHIN`]; `members` never heard from count from `since`.
    pub fn unreachable_for(
        &self,
        members: &BTreeSet<NodeId>,
        since: Instant,
        now: Instant,
    ) -> BTreeMap<NodeId, Duration> {
        members
            .iter()
            .filter_map(|node| {
                let last = self.reports.get(node).map_or(since, |(_, at)| *at);
                let silent = now.saturating_duration_since(last);
                (silent >= HEALTHY_WITHIN).then_some((*node, silent))
            })
            .collect()
    }

    /// The latest load of each node.
    pub fn loads(&self) -> BTreeMap<NodeId, Load> {
        self.reports
            .iter()
            .map(|(node, (report, _))| (*node, report.load))
            .collect()
    }

    /// The latest report of one node and its age.
    pub fn report(&self, node: NodeId, now: Instant) -> Option<(&LoadReport, Duration)> {
        self.reports
            .get(&node)
            .map(|(r, at)| (r, now.saturating_duration_since(*at)))
    }
}

/// CPU use of this process between two readings of `/proc/self/stat`, as a percentage of
/// the whole machine.
#[derive(Debug)]
pub struct CpuMeter {
    last: Option<(u64, Instant)>,
    cores: f32,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            last: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f32,
        }
    }
}

impl CpuMeter {
    /// The share since the last call (0 on the first).
    pub fn sample(&mut self) -> f32 {
        let now = Instant::now();
        let Some(ticks) = process_cpu_ticks() else {
            return 0.0;
        };
        let share = match self.last {
            Some((before, at)) => {
                let secs = now.duration_since(at).as_secs_f32().max(0.001);
                // Linux reports in clock ticks of 1/100 s on every platform we run on.
                let busy = (ticks.saturating_sub(before)) as f32 / 100.0;
                (busy / secs / self.cores * 100.0).clamp(0.0, 100.0)
            }
            None => 0.0,
        };
        self.last = Some((ticks, now));
        share
    }
}

fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: NodeId, cpu: f32) -> LoadReport {
        LoadReport {
            node,
            load: Load {
                cpu_pct: cpu,
                ..Load::default()
            },
            live_streams: vec![],
            pulls: vec![],
            transcode_wanted: vec![],
            stream_viewers: BTreeMap::new(),
        }
    }

    #[test]
    fn viewers_elsewhere_sum_the_other_healthy_nodes_reports_of_that_stream() {
        let now = Instant::now();
        let mut view = LoadView::default();
        for (node, viewers) in [(1, 5), (2, 3), (3, 7)] {
            let mut r = report(node, 10.0);
            r.stream_viewers.insert("show".into(), viewers);
            view.record(r, now);
        }
        assert_eq!(view.viewers_elsewhere(1, "show", now), 10);
        assert_eq!(view.viewers_elsewhere(1, "other", now), 0);
        assert_eq!(
            view.viewers_elsewhere(1, "show", now + HEALTHY_WITHIN),
            0,
            "silent nodes no longer count"
        );
    }

    #[test]
    fn a_node_is_healthy_while_it_reports_and_the_newer_report_wins_a_merge() {
        let t0 = Instant::now();
        let mut view = LoadView::default();
        view.record(report(1, 10.0), t0);
        view.record(report(2, 20.0), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(4);
        assert_eq!(view.healthy(now), BTreeSet::from([2]));
        let members = BTreeSet::from([1, 2, 3]);
        let silent = view.unreachable_for(&members, t0, now);
        assert_eq!(silent.keys().copied().collect::<Vec<_>>(), vec![1, 3]);

        let mut table = LoadTable::new();
        table.insert(2, (report(2, 99.0), 3_000)); // older than what we have
        table.insert(1, (report(1, 50.0), 0)); // newer
        view.merge(table, now);
        assert_eq!(view.loads()[&2].cpu_pct, 20.0);
        assert_eq!(view.loads()[&1].cpu_pct, 50.0);
    }
}
