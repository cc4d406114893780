//! A viewer joining mid-GOP decodes at once: with a 10 s keyframe interval, a viewer arriving
//! 5 s in gets a keyframe (the cached current group) immediately, not 5 s later.

use std::sync::Arc;
use std::time::Duration;

use crate::support::media::{encode_h264, fingerprint, nal_units};
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_five_seconds_into_a_ten_second_gop_starts_decoding_at_once() {
    let video = Arc::new(encode_h264(9, 300));
    let node = Node::start(&[]).await;
    let publisher = Arc::new(
        Publisher::connect(&node.ip, &node.url("/whip/gop10"), None)
            .await
            .unwrap(),
    );
    let streaming = {
        let (publisher, video) = (publisher.clone(), video.clone());
        tokio::spawn(async move { publisher.stream(&video, &[]).await })
    };
    // The scenario itself: join five seconds into the ten-second group.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/gop10"), None)
        .await
        .unwrap();
    let first = viewer.collect(1, Duration::from_secs(4)).await;
    let first = first.first().expect("the late viewer received video");
    let waited = first.at.duration_since(viewer.requested_at);
    assert!(
        first.keyframe,
        "the first access unit a late viewer gets is a keyframe"
    );
    assert_eq!(
        first.fingerprint,
        fingerprint(&nal_units(&video[0])),
        "it is the group's keyframe"
    );
    assert!(
        waited < Duration::from_secs(2),
        "first keyframe after {waited:?}; the next natural one is ~5 s away"
    );
    // And it keeps decoding: the rest of the group follows without a gap.
    let more = viewer.collect(60, Duration::from_secs(3)).await;
    assert_eq!(more.len(), 60, "frames keep coming after the primed group");
    streaming.abort();
}
