//! A WHIP session whose peer never completes ICE and DTLS is ended after the handshake
//! timeout with a reason in the metrics and the admin API, and its stream id is free again.
//! A stream says `connecting` until its first frame and `live` only once media flows.

use std::time::Duration;

use crate::support::media::encode_h264;
use crate::support::node::Node;
use crate::support::peer::{Publisher, offer_and_vanish};
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_connects_is_ended_and_frees_its_stream_id() {
    let node = Node::start(&["--handshake-timeout", "2s", "--admin-token", "adm"]).await;
    let location = offer_and_vanish(&node.ip, &node.url("/whip/ghost")).await;
    let (status, info) = node.json("/api/v1/streams/ghost").await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "connecting", "{info}");
    assert_eq!(info["tracks"], serde_json::json!([]), "{info}");

    wait_for(
        "the unconnected publisher is ended for its handshake timeout",
        Duration::from_secs(8),
        || async {
            node.counted_session_end("publisher", "handshake_timeout")
                .await
                .0
        },
    )
    .await;
    wait_for(
        "the stream that never had media is gone",
        Duration::from_secs(3),
        || async { node.json("/api/v1/streams/ghost").await.0 == 404 },
    )
    .await;
    let (_, ended) = node.json_as("/api/v1/sessions/ended", Some("adm")).await;
    let session = location.rsplit('/').next().unwrap();
    let entry = ended["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session"] == session)
        .unwrap_or_else(|| panic!("the ended session is listed: {ended}"));
    assert_eq!(entry["outcome"], "handshake_timeout", "{entry}");
    assert_eq!(entry["connected"], false, "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("did not complete"),
        "{entry}"
    );

    // The id is free: a real publisher is accepted at once, and the stream is `connecting`
    // until its first frame, then `live` with its tracks.
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/ghost"), None)
        .await
        .expect("a new publisher is accepted after the ghost was ended");
    let (_, info) = node.json("/api/v1/streams/ghost").await;
    assert_eq!(info["state"], "connecting", "{info}");
    publisher.stream(&encode_h264(1, 30), &[]).await;
    wait_for("the stream is live", Duration::from_secs(5), || async {
        let (_, info) = node.json("/api/v1/streams/ghost").await;
        info["state"] == "live" && !info["tracks"].as_array().unwrap().is_empty()
    })
    .await;
}
