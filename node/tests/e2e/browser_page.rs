//! Headless Chromium publishes its (fake) camera from the page and another page watches: the
//! watching page decodes video frames, and the API sees the publisher's resolution.

use std::time::Duration;

use crate::support::browser::ChromeDriver;
use crate::support::node::Node;
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_publishes_the_camera_and_another_page_decodes_it() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    // Watching needs a token: the page sends it with the offer, and with the DELETE of Stop.
    let node = Node::start(&["--play-token", "page-play"]).await;
    let mut driver = ChromeDriver::start().await;
    let publisher = driver.open().await;
    publisher.goto(&node.url("/?publish=browser")).await;
    publisher.wait_publishing(Duration::from_secs(20)).await;

    let watcher = driver.open().await;
    watcher.goto(&node.url("/")).await;
    watcher
        .eval(
            "document.getElementById('watch-stream').value = 'browser';
             document.getElementById('watch-token').value = 'page-play';
             document.getElementById('watch-start').click(); return true",
        )
        .await;
    let decoding = tokio::time::timeout(Duration::from_secs(20), async {
        while watcher
            .eval("return window.cascade.watch.framesDecoded")
            .await
            .as_u64()
            .unwrap_or(0)
            <= 30
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    if decoding.is_err() {
        let watch = watcher.eval("return window.cascade.watch").await;
        let publish = publisher.eval("return window.cascade.publish").await;
        panic!("the watching page decodes no frames; watch: {watch}; publish: {publish}");
    }
    let first = watcher
        .eval("return window.cascade.watch.framesDecoded")
        .await
        .as_u64()
        .unwrap();
    wait_for(
        "frames keep being decoded",
        Duration::from_secs(10),
        || async {
            watcher
                .eval("return window.cascade.watch.framesDecoded")
                .await
                .as_u64()
                .unwrap_or(0)
                > first + 30
        },
    )
    .await;
    let width = watcher.eval("return window.cascade.watch.width").await;
    assert!(
        width.as_u64().unwrap_or(0) > 0,
        "the page shows the resolution: {width}"
    );

    let (_, info) = node.json("/api/v1/streams/browser").await;
    assert_eq!(info["viewers"], 1);
    // Chromium negotiates AES-GCM: its video and audio go on the fast path.
    let on_fast_path = node
        .metric_sum("cascade_webrtc_fast_path_tracks_total")
        .await;
    assert_eq!(on_fast_path, 2.0, "the page's tracks on the fast path");

    // The Stop button DELETEs the session it was given in `Location`, with its token (a
    // DELETE without it would be refused with 403).
    watcher
        .eval("document.getElementById('watch-stop').click(); return true")
        .await;
    wait_for(
        "the stopped viewer's session is gone",
        Duration::from_secs(5),
        || async { node.json("/api/v1/streams/browser").await.1["viewers"] == 0 },
    )
    .await;
    let (counted, metrics) = node.counted_session_end("viewer", "deleted").await;
    assert!(
        counted,
        "the page's Stop ended the session with a DELETE: {metrics}"
    );
    assert_eq!(
        watcher
            .eval("return window.cascade.watch.error || null")
            .await,
        serde_json::Value::Null,
        "the page reported an error"
    );
    watcher.close().await;
    publisher.close().await;
}
