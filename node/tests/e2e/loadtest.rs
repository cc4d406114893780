//! `cascade-loadtest` against a real node: what its report says must match what happened.

use std::time::Duration;

use crate::support::loadtest::{self, LoadPublisher};
use crate::support::node::Node;

async fn live_stream(node: &Node, stream: &str, extra: &[&str]) -> LoadPublisher {
    let publisher = LoadPublisher::start(&node.url(&format!("/whip/{stream}")), &node.ip, extra);
    node.wait_live(stream, Duration::from_secs(60)).await;
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_viewers_join_and_receive_the_frames_with_latency_and_join_figures() {
    let node = Node::start(&[]).await;
    // The default clip: real H.264 from FFmpeg (generated once, then cached).
    let _publisher = live_stream(&node, "fifty", &[]).await;
    let run = loadtest::webrtc(
        &node.url("/whep/fifty"),
        &node.ip,
        &["--viewers", "50", "--ramp", "25", "--duration", "20s"],
    )
    .await;
    // 50 viewers for about 18 s at 30 fps each.
    let received = loadtest::assert_all_watched(&run, 50, 10.0);
    let (_, report, output) = &run;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Every frame number and capture time came through the server intact: latency is
    // measured on (nearly) every frame, and it is plausible for loopback.
    assert!(
        report["latency"]["samples"].as_f64().unwrap() > received * 0.8,
        "{stdout}"
    );
    let p95 = report["latency"]["p95_ms"].as_f64().unwrap();
    assert!(p95 > 0.0 && p95 < 2000.0, "{stdout}");
    let join_p95 = report["join_time"]["p95_ms"].as_f64().unwrap();
    assert!(join_p95 > 0.0 && join_p95 < 5000.0, "{stdout}");
    assert!(stdout.contains("glass-to-glass"), "{stdout}");
    // Lip sync: the node's Sender Reports (str0m's, from the fast path's anchors) put audio
    // and video sent together this close, for every viewer.
    let av = &report["av_sync"];
    eprintln!("{stdout}");
    assert_eq!(av["samples"].as_f64(), Some(50.0), "{stdout}");
    assert!(av["max_ms"].as_f64().unwrap() < 40.0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_ll_hls_players_get_every_part_at_the_live_edge_with_latency_figures() {
    let node = Node::start(&["--ladder", "none"]).await;
    let _publisher = live_stream(&node, "hlsload", &["--source", "synthetic"]).await;
    let (code, report, output) = loadtest::hls(
        &node.url("/hls/hlsload/index.m3u8"),
        &["--players", "30", "--ramp", "15", "--duration", "15s"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["sessions_joined"], 30, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    assert_eq!(report["freezes"], 0, "no stalls: {stdout}");
    // About 3 parts a second for about 14 s, every one of them.
    let received = report["frames_received"].as_f64().unwrap();
    assert!(received >= 30.0 * 3.0 * 12.0, "{stdout}");
    assert_eq!(
        report["frames_expected"], report["frames_received"],
        "{stdout}"
    );
    // The publisher's capture-time markers come through the packager: latency at the live
    // edge is measured, and is plausible for loopback.
    let p50 = report["latency"]["p50_ms"]
        .as_f64()
        .expect("latency measured");
    assert!(p50 > 0.0 && p50 < 1000.0, "{stdout}");
    assert!(report["hls"]["part_latency"]["samples"].as_u64().unwrap() > 100);
    assert!(
        report["hls"]["requests_per_sec"].as_f64().unwrap() > 30.0 * 4.0,
        "{stdout}"
    );

    // A gate it misses makes the exit code 2.
    let (code, _, output) = loadtest::hls(
        &node.url("/hls/hlsload/index.m3u8"),
        &[
            "--players",
            "2",
            "--duration",
            "3s",
            "--max-p95-latency-ms",
            "0.001",
        ],
    )
    .await;
    assert_eq!(code, 2, "{}", String::from_utf8_lossy(&output.stdout));
    let (code, _, _) =
        loadtest::hls(&node.url("/hls/nobody/index.m3u8"), &["--duration", "2s"]).await;
    assert_eq!(code, 1, "no player got a part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sampling_mode_the_report_says_so_and_counted_viewers_see_every_packet() {
    let node = Node::start(&[]).await;
    let _publisher = live_stream(&node, "sampled", &[]).await;
    let (code, report, output) = loadtest::webrtc(
        &node.url("/whep/sampled"),
        &node.ip,
        &[
            "--viewers",
            "30",
            "--ramp",
            "30",
            "--duration",
            "12s",
            "--verify",
            "5",
            "--workers",
            "1",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["verification"], "sampled", "{stdout}");
    assert_eq!(report["verified_viewers"], 5, "{stdout}");
    assert_eq!(report["counted_viewers"], 25, "{stdout}");
    assert_eq!(report["sessions_joined"], 30, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    // Counted viewers numbered the server's packets from their clear-text headers.
    let loss = report["counted_packet_loss_pct"].as_f64().unwrap();
    assert!(loss < 1.0, "{stdout}");
    // Frame and latency figures come from the verified five: about 10 s at 30 fps each.
    let expected = report["frames_expected"].as_f64().unwrap();
    assert!(
        expected > 5.0 * 30.0 * 8.0 && expected < 5.0 * 30.0 * 14.0,
        "{stdout}"
    );
    assert!(
        report["latency"]["samples"].as_f64().unwrap() > expected * 0.8,
        "{stdout}"
    );
    // The summary line tells the same story as the JSON. Freezes themselves are a timing
    // figure (a debug build on a busy two-core CI machine may stall 100 ms while 30 DTLS
    // handshakes land at once), so they are checked for consistency, not for zero.
    let freezes = report["verified_freezes"].as_u64().unwrap();
    assert!(
        stdout.contains(&format!(
            "5 viewers verified ({freezes} freezes among them), 25 counted"
        )),
        "{stdout}"
    );
}

/// Deletes one viewer session of `stream` through its WHEP resource once two are connected.
async fn delete_one_viewer(node: &Node, stream: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let session = loop {
        let (_, list) = node
            .json(&format!("/api/v1/streams/{stream}/sessions"))
            .await;
        let viewers: Vec<String> = list["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == "viewer")
            .filter_map(|s| s["session"].as_str().map(str::to_owned))
            .collect();
        if viewers.len() == 2 {
            break viewers[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two viewers never connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = reqwest::Client::new()
        .delete(node.url(&format!("/whep/{stream}/{session}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_viewer_session_is_reported_lost_and_with_reconnect_it_recovers() {
    let node = Node::start(&[]).await;
    let _publisher = live_stream(&node, "deleted", &["--source", "synthetic"]).await;
    let url = node.url("/whep/deleted");

    let run = loadtest::webrtc(&url, &node.ip, &["--viewers", "2", "--duration", "10s"]);
    let (_, (code, report, output)) = tokio::join!(delete_one_viewer(&node, "deleted"), run);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "one viewer still got media: {stdout}");
    assert_eq!(report["sessions_joined"], 2, "{stdout}");
    assert_eq!(report["failures"]["session_lost"], 1, "{stdout}");
    assert_eq!(report["recovery"]["samples"], 0, "{stdout}");

    // Counting viewers (driven by the worker's shared poll, not their own tasks) notice the
    // loss and come back the same way.
    let run = loadtest::webrtc(
        &url,
        &node.ip,
        &[
            "--viewers",
            "2",
            "--duration",
            "10s",
            "--reconnect",
            "--verify",
            "0",
        ],
    );
    let (_, (_, report, output)) = tokio::join!(delete_one_viewer(&node, "deleted"), run);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(report["failures"]["session_lost"], 1, "{stdout}");
    assert_eq!(
        report["sessions_joined"], 3,
        "the viewer came back: {stdout}"
    );
    assert_eq!(report["recovery"]["samples"], 1, "{stdout}");
    let recovery = report["recovery"]["max_ms"].as_f64().unwrap();
    assert!(recovery > 0.0 && recovery < 3000.0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_missing_endpoints_fail_by_reason_with_a_non_zero_exit() {
    let node = Node::start(&[]).await;
    let (code, report, output) = loadtest::webrtc(
        &node.url("/whep/nobody-publishes-this"),
        &node.ip,
        &["--viewers", "3", "--duration", "3s"],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(report["failures"]["http_404"], 3);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no viewer received media"));

    // Nothing listens on this loopback port.
    let (code, report, _) = loadtest::webrtc(
        &format!("http://{}:9/whep/x", node.ip),
        &node.ip,
        &["--viewers", "2", "--duration", "2s"],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(report["failures"]["unreachable"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_slo_gate_makes_the_exit_code_2() {
    let node = Node::start(&[]).await;
    let _publisher = live_stream(&node, "gated", &["--source", "synthetic"]).await;
    let (code, report, output) = loadtest::webrtc(
        &node.url("/whep/gated"),
        &node.ip,
        &[
            "--viewers",
            "2",
            "--duration",
            "4s",
            "--max-p95-latency-ms",
            "0.001",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(report["sessions_joined"], 2, "{stdout}");
    let missed = report["gates_missed"][0].as_str().unwrap();
    assert!(missed.starts_with("p95 latency ms"), "{missed}");
    assert!(stdout.contains("SLO gates missed"), "{stdout}");
}
