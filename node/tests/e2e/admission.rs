//! A node admits only what it can serve: beyond `--max-viewers` a WHEP request gets `503`
//! with `Retry-After` on a single node and a `307` to another edge with room in a cluster;
//! beyond `--max-publishers` a WHIP request gets `503`. Room that frees up is given again.

use std::time::Duration;

use crate::support::loadtest::LoadPublisher;
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_caps_a_single_node_answers_503_with_retry_after_and_admits_again_later() {
    let node = Node::start(&["--max-viewers", "2", "--max-publishers", "1"]).await;
    let _publisher = Publisher::connect(&node.ip, &node.url("/whip/capped"), None)
        .await
        .expect("the first publisher");
    let first = Viewer::connect(&node.ip, &node.url("/whep/capped"), None)
        .await
        .expect("viewer 1");
    let _second = Viewer::connect(&node.ip, &node.url("/whep/capped"), None)
        .await
        .expect("viewer 2");

    let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
    let refused = reqwest::Client::new()
        .post(node.url("/whep/capped"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    let body = refused.text().await.unwrap();
    assert!(body.contains("maximum of 2 viewers"), "{body}");

    let other = Publisher::connect(&node.ip, &node.url("/whip/second"), None).await;
    let Err((status, body)) = other else {
        panic!("a second publisher was admitted beyond --max-publishers 1");
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("maximum of 1 publishers"), "{body}");
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("cascade_admission_refusals_total{kind=\"viewer\",reason=\"viewer_cap\"}"),
        "{metrics}"
    );

    // A viewer leaves: the next one is admitted.
    let session = first.session_url.clone();
    assert_eq!(
        reqwest::Client::new()
            .delete(&session)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    wait_for(
        "the freed place is given again",
        Duration::from_secs(5),
        || async {
            Viewer::connect(&node.ip, &node.url("/whep/capped"), None)
                .await
                .is_ok()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_edge_sends_the_next_viewer_to_another_edge_with_room() {
    let first = Node::start(&["--token", "admission-token", "--max-viewers", "1"]).await;
    let join = first.join_addr();
    let second = Node::start(&[
        "--join",
        &join,
        "--token",
        "admission-token",
        "--max-viewers",
        "1",
    ])
    .await;
    wait_for(
        "both nodes are healthy",
        Duration::from_secs(30),
        || async {
            let (_, overview) = first.json("/api/v1/cluster").await;
            overview["nodes"]
                .as_array()
                .is_some_and(|ns| ns.len() == 2 && ns.iter().all(|n| n["healthy"] == true))
        },
    )
    .await;
    let _publisher = LoadPublisher::start(
        &first.url("/whip/roomy"),
        &first.ip,
        &["--source", "synthetic"],
    );
    wait_for("the stream is live", Duration::from_secs(60), || async {
        first.json("/api/v1/streams/roomy").await.1["state"] == "live"
    })
    .await;
    let _watching = Viewer::connect(&first.ip, &first.url("/whep/roomy"), None)
        .await
        .expect("the first viewer fits on the first node");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
    let response = no_redirects
        .post(first.url("/whep/roomy"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 307);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains(&second.ip), "{location}");
    // The redirect is real: a viewer following it watches from the second node.
    let mut viewer = Viewer::connect(&second.ip, &location, None)
        .await
        .expect("the second node takes the redirected viewer");
    assert!(
        viewer.collect(10, Duration::from_secs(5)).await.len() >= 10,
        "it receives frames over the relay"
    );
}
