//! Headless Chromium publishes its (fake) camera from the page and another page watches: the
//! watching page decodes video frames, and the API sees the publisher's resolution.

use std::time::Duration;

use crate::support::browser::ChromeDriver;
use crate::support::node::Node;
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known failure: Chromium publishes fine, but the watching Chromium page connects and decodes no frames yet (see issue 2 note); run with --ignored"]
async fn a_page_publishes_the_camera_and_another_page_decodes_it() {
    let node = Node::start(&[]).await;
    let mut driver = ChromeDriver::start().await;
    let publisher = driver.open().await;
    publisher.goto(&node.url("/?publish=browser")).await;
    wait_for(
        "the publishing page is connected",
        Duration::from_secs(20),
        || async { publisher.eval("return window.cascade.publish.state").await == "connected" },
    )
    .await;

    let watcher = driver.open().await;
    watcher.goto(&node.url("/?watch=browser")).await;
    wait_for(
        "the watching page decodes frames",
        Duration::from_secs(20),
        || async {
            watcher
                .eval("return window.cascade.watch.framesDecoded")
                .await
                .as_u64()
                .unwrap_or(0)
                > 30
        },
    )
    .await;
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
    watcher.close().await;
    publisher.close().await;
}
