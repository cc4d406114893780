//! The watch page falls back from WebRTC to LL-HLS by itself: in a network namespace whose
//! firewall drops UDP and closes the node's WebRTC port to TCP (so neither ICE over UDP nor
//! ICE-TCP can connect, while HTTP works), a stock Chromium opens `/?watch=show`; the page
//! tries WHEP, sees no picture, and plays LL-HLS with hls.js, saying which path it uses and
//! how far behind live it is.

use std::time::Duration;

use crate::support::browser::ChromeDriver;
use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::netns::Namespace;
use crate::support::node::Node;

/// Set for the inner test's process: it runs only inside the namespace.
const INSIDE: &str = "CASCADE_E2E_INSIDE_WEBRTC_BLOCKED_NAMESPACE";

#[test]
fn the_watch_page_plays_ll_hls_by_itself_where_webrtc_cannot_connect() {
    let namespace = Namespace::create(
        "webrtc-blocked",
        &[
            "meta l4proto udp drop",
            "tcp dport 18443 drop",
            "tcp sport 18443 drop",
        ],
    );
    assert!(
        namespace.run_test(
            "hls_fallback::inside_a_network_where_webrtc_cannot_connect",
            INSIDE
        ),
        "the test inside the namespace failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs inside its namespace, started by the test above"]
async fn inside_a_network_where_webrtc_cannot_connect() {
    assert!(
        std::env::var_os(INSIDE).is_some(),
        "run the_watch_page_plays_ll_hls_by_itself_where_webrtc_cannot_connect instead"
    );
    let node = Node::start(&[]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(30)).await;

    let mut driver = ChromeDriver::start().await;
    let watcher = driver.open().await;
    watcher.goto(&node.url("/?watch=show")).await;
    let mut last = serde_json::Value::Null;
    let playing = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            last = watcher.eval("return window.cascade.watch").await;
            let time: f64 = last["currentTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            if last["path"] == "ll-hls" && last["state"] == "playing" && time > 4.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        playing.is_ok(),
        "the page plays LL-HLS by itself; watch: {last}"
    );
    assert!(
        last["fallbackReason"]
            .as_str()
            .is_some_and(|r| r.contains("WebRTC")),
        "it says why: {last}"
    );
    let latency: f64 = last["latencySeconds"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::MAX);
    eprintln!("LL-HLS in Chromium (hls.js) after the fallback: {latency} s behind live");
    assert!(latency < 10.0, "it shows how far behind live it is: {last}");
    assert_eq!(
        (last["width"].as_u64(), last["height"].as_u64()),
        (Some(640), Some(360)),
        "{last}"
    );
    watcher.close().await;
}
