//! Publish with one WebRTC stack, watch with another: Chromium, the `webrtc` crate and aiortc
//! (Python, outside Rust), each in its default configuration; VP8 and H.264 video, Opus
//! audio. Viewers decode the frames, and the frames arrive in order.

use std::time::Duration;

use crate::support::aiortc::{self, AiortcPublisher};
use crate::support::browser::ChromeDriver;
use crate::support::media::{encode_h264, encode_vp8, vp8_fingerprint};
use crate::support::node::Node;
use crate::support::peer::{Publisher, VideoCodec, Viewer};

async fn live_with_codec(node: &Node, stream: &str, codec: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, info) = node.json(&format!("/api/v1/streams/{stream}")).await;
        if info["state"] == "live"
            && info["tracks"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["codec"] == codec))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stream} is not live with {codec} after 20 s: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_in_order(summary: &serde_json::Value, at_least: u64, numbered: bool) {
    let frames = summary["frames"].as_u64().unwrap_or(0);
    assert!(
        frames >= at_least,
        "decoded {frames} frames, wanted {at_least}: {summary}"
    );
    assert_eq!(
        summary["pts_increasing"], true,
        "frames out of order: {summary}"
    );
    if numbered {
        assert_eq!(
            summary["increasing"], true,
            "frame numbers out of order: {summary}"
        );
        assert_eq!(
            summary["distinct"], summary["frames"],
            "repeated frames: {summary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_vp8_and_opus_to_aiortc_and_chromium_viewers() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let _publisher = AiortcPublisher::start(&node.url("/whip/py-vp8"), "vp8", 30).await;
    live_with_codec(&node, "py-vp8", "VP8").await;

    let mut driver = ChromeDriver::start().await;
    let page = driver.open().await;
    page.goto(&node.url("/?watch=py-vp8")).await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/py-vp8"), None)
        .await
        .expect("webrtc-rs viewer");
    let summary = aiortc::watch(&node.url("/whep/py-vp8"), 8).await;
    assert_in_order(&summary, 150, true);
    viewer.assert_decodable(90, "whole VP8 frames").await;
    assert!(
        summary["audio_frames"].as_u64().unwrap_or(0) > 100,
        "Opus reached aiortc: {summary}"
    );
    page.wait_decoded(30, Duration::from_secs(10)).await;
    let codec = page.eval("return window.cascade.watch.codec").await;
    assert!(
        codec.as_str().unwrap_or("").contains("VP8"),
        "Chromium decodes VP8: {codec}"
    );
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publishes_h264_to_the_webrtc_crate_and_aiortc() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let _publisher = AiortcPublisher::start(&node.url("/whip/py-h264"), "h264", 30).await;
    live_with_codec(&node, "py-h264", "H264").await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/py-h264"), None)
        .await
        .expect("webrtc-rs viewer");
    let summary = aiortc::watch(&node.url("/whep/py-h264"), 8).await;
    assert_in_order(&summary, 150, true);
    viewer.assert_decodable(90, "H.264 access units").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_the_webrtc_crate_publish_to_an_aiortc_viewer() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let mut driver = ChromeDriver::start().await;
    let page = driver.open().await;
    page.goto(&node.url("/?publish=from-chromium")).await;
    page.wait_publishing(Duration::from_secs(20)).await;
    live_with_codec(&node, "from-chromium", "H264").await;
    let summary = aiortc::watch(&node.url("/whep/from-chromium"), 6).await;
    // Chromium's fake camera runs at 20-30 fps.
    assert_in_order(&summary, 60, false);
    assert!(
        summary["audio_frames"].as_u64().unwrap_or(0) > 100,
        "Chromium's Opus reached aiortc: {summary}"
    );
    page.close().await;

    let publisher = Publisher::connect(&node.ip, &node.url("/whip/from-rust"), None)
        .await
        .expect("webrtc-rs publisher");
    let video = encode_h264(6, 30);
    let url = node.url("/whep/from-rust");
    let (summary, ()) = tokio::join!(aiortc::watch(&url, 7), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        publisher.stream(&video, &[]).await;
    });
    assert_in_order(&summary, 100, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_vp8_to_an_aiortc_viewer() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let mut driver = ChromeDriver::start().await;
    let page = driver.open().await;
    page.goto(&node.url("/?publish=chromium-vp8&codec=vp8"))
        .await;
    page.wait_publishing(Duration::from_secs(20)).await;
    live_with_codec(&node, "chromium-vp8", "VP8").await;
    let summary = aiortc::watch(&node.url("/whep/chromium-vp8"), 6).await;
    assert_in_order(&summary, 60, false);
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webrtc_crate_publishes_vp8_to_the_webrtc_crate_and_aiortc() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let publisher =
        Publisher::connect_with(&node.ip, &node.url("/whip/rust-vp8"), None, VideoCodec::Vp8)
            .await
            .expect("webrtc-rs VP8 publisher");
    let video = encode_vp8(8, 30);
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/rust-vp8"), None)
        .await
        .expect("webrtc-rs viewer");
    let url = node.url("/whep/rust-vp8");
    let (summary, ()) = tokio::join!(aiortc::watch(&url, 9), async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        publisher.stream(&video, &[]).await;
    });
    assert_in_order(&summary, 150, false);
    live_with_codec(&node, "rust-vp8", "VP8").await;

    let sent: Vec<[u8; 32]> = video.iter().map(|f| vp8_fingerprint(f)).collect();
    viewer
        .assert_received_exactly(&sent, "the VP8 viewer")
        .await;
}
