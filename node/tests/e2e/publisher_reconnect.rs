//! A publisher that drops and comes back within the grace period keeps its viewers; after the
//! grace period the viewers' sessions are ended.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::media::encode_h264;
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_survive_a_publisher_reconnect_and_end_after_the_grace_period() {
    let video = encode_h264(2, 30);
    let node = Node::start(&["--reconnect-grace", "3s"]).await;
    let first = Publisher::connect(&node.ip, &node.url("/whip/show"), None)
        .await
        .unwrap();
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .unwrap();
    first.stream(&video, &[]).await;
    assert_eq!(
        viewer
            .collect(video.len(), Duration::from_secs(3))
            .await
            .len(),
        video.len()
    );
    assert_eq!(first.delete().await, 200);

    let (_, info) = node.json("/api/v1/streams/show").await;
    assert_eq!(info["state"], "reconnecting");
    assert_eq!(
        info["viewers"], 1,
        "the viewer is kept while the publisher is away"
    );

    let second = Publisher::connect(&node.ip, &node.url("/whip/show"), None)
        .await
        .expect("the publisher comes back");
    second.stream(&video, &[]).await;
    let resumed = viewer.collect(video.len(), Duration::from_secs(3)).await;
    assert!(
        resumed.len() >= video.len() - 1,
        "the same viewer session got {} of {} frames from the new publisher",
        resumed.len(),
        video.len()
    );
    assert!(resumed[0].keyframe, "it resumed at a keyframe");

    assert_eq!(second.delete().await, 200);
    wait_for(
        "the stream ends after the grace period",
        Duration::from_secs(8),
        || async { node.json("/api/v1/streams/show").await.0 == 404 },
    )
    .await;
    let (counted, metrics) = node.counted_session_end("viewer", "stream_ended").await;
    assert!(counted, "{metrics}");
    assert!(
        viewer.wait_ended(Duration::from_secs(30)).await,
        "the viewer's connection ends"
    );
    let _ = viewer.audio_packets.load(Ordering::Relaxed);
}
