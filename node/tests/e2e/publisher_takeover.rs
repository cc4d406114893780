//! A publisher that vanishes without a DELETE (SIGKILL) is replaced at once by the next one
//! for its stream: the new WHIP is accepted within 2 s, the viewers that stayed decode it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::loadtest::LoadPublisher;
use crate::support::media::{encode_h264, fingerprint, nal_units};
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_publisher_is_replaced_at_once_and_its_viewers_decode_the_new_one() {
    let node = Node::start(&[]).await;
    let mut first = LoadPublisher::start(
        &node.url("/whip/comeback"),
        &node.ip,
        &["--source", "synthetic"],
    );
    wait_for(
        "the first publisher is live",
        Duration::from_secs(60),
        || async { node.json("/api/v1/streams/comeback").await.1["state"] == "live" },
    )
    .await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/comeback"), None)
        .await
        .expect("WHEP accepted");
    assert!(
        viewer.collect(30, Duration::from_secs(3)).await.len() >= 30,
        "the viewer watches the first publisher"
    );

    first.kill();
    let killed = Instant::now();
    let second = Publisher::connect(&node.ip, &node.url("/whip/comeback"), None)
        .await
        .expect("the returning publisher is accepted, not refused with 409");
    let accepted_after = killed.elapsed();
    assert!(
        accepted_after < Duration::from_secs(2),
        "accepted {accepted_after:?} after the old publisher died"
    );
    let (counted, metrics) = node.counted_session_end("publisher", "replaced").await;
    assert!(counted, "the old session ended as replaced: {metrics}");

    // Whatever the first publisher left queued is not the new publisher's.
    let _ = viewer.collect(usize::MAX, Duration::from_millis(300)).await;
    let video = encode_h264(2, 30);
    second.stream(&video, &[]).await;
    let sent: HashSet<[u8; 32]> = video.iter().map(|au| fingerprint(&nal_units(au))).collect();
    let received = viewer.collect(video.len(), Duration::from_secs(3)).await;
    assert!(
        received.len() >= video.len() - 1,
        "the viewer that stayed decoded {} of {} frames of the new publisher",
        received.len(),
        video.len()
    );
    assert!(received[0].keyframe, "it resumed at a keyframe");
    assert!(
        received.iter().all(|u| sent.contains(&u.fingerprint)),
        "every frame is one the new publisher sent"
    );
    assert_eq!(node.json("/api/v1/streams/comeback").await.1["viewers"], 1);
}
