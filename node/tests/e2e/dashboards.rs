//! The alert rules and the Grafana dashboard in `cluster-config/` are valid and name only
//! metrics a running node exports: `promtool check rules`, the rules' unit tests (`promtool
//! test rules`), and every `cascade_*` name they use found in `/metrics`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::encoder::{Encoder, H264File, b_frame_pattern};
use crate::support::node::Node;
use crate::support::peer::Viewer;

fn cluster_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster-config")
}

/// Every `cascade_…` metric name in `text`, without the suffixes Prometheus adds.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("cascade_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

fn promtool(args: &[&str]) {
    let dir = cluster_config().join("prometheus");
    let output = std::process::Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian's prometheus package, scripts/install-deps.sh test)");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_pass_promtool_and_every_metric_they_and_the_dashboard_name_is_exported() {
    promtool(&["check", "rules", "cascade-alerts.yml"]);
    promtool(&["test", "rules", "cascade-alerts.test.yml"]);

    let rules =
        std::fs::read_to_string(cluster_config().join("prometheus/cascade-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(cluster_config().join("grafana/cascade.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<&str> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 4, "the dashboard has its queries");
    let mut wanted = metric_names(&rules);
    wanted.extend(exprs.iter().flat_map(|e| metric_names(e)));

    // A node with a stream packaged, a webhook receiver (that is down) and a refused
    // player: the per-stream, webhook and refusal series exist too.
    let node = Node::start(&[
        "--ladder",
        "none",
        "--webhook-url",
        "http://127.0.0.1:9/events",
        "--play-token",
        "panel-token",
    ])
    .await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &node.rtmp_url("panel"));
    node.wait_live("panel", Duration::from_secs(20)).await;
    // A real viewer (of a stream without B-frames, which WebRTC cannot carry), so that the
    // egress series exist because egress happened.
    let source = H264File::encode(10, "dashboards");
    let _playable = Encoder::flv(&source.args(None), &node.rtmp_url("panel-webrtc"));
    node.wait_live("panel-webrtc", Duration::from_secs(20))
        .await;
    let viewer = Viewer::connect(
        &node.ip,
        &node.url("/whep/panel-webrtc"),
        Some("panel-token"),
    )
    .await
    .unwrap();
    let playlist = reqwest::get(node.url("/hls/panel/index.m3u8?token=panel-token"))
        .await
        .unwrap();
    assert_eq!(playlist.status(), 200);
    let refused = reqwest::get(node.url("/hls/panel/index.m3u8"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // The cluster's gauges are set by the first load report, a delivery fails at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exported = metric_names(&node.metrics().await);
    drop(viewer);
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "named in cluster-config/ but not in /metrics: {missing:?}"
    );
}
