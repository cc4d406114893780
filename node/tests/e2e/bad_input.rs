//! Every kind of bad request gets a clear status and message, is counted, and leaves the live
//! stream alone.

use std::time::Duration;

use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

const AV1_ONLY_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 45\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:45 AV1/90000\r\na=sendonly\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_are_counted_without_disturbing_the_live_stream() {
    let node = Node::start(&[]).await;
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/live"), None)
        .await
        .expect("first publisher");
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/live"), None)
        .await
        .expect("viewer");

    let (status, body) = post(
        &node.url("/whip/other"),
        "application/sdp",
        "this is not SDP",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SDP"), "{body}");

    let (status, body) = post(&node.url("/whip/other"), "application/sdp", AV1_ONLY_OFFER).await;
    assert_eq!(status, 406, "{body}");
    assert!(body.contains("codec") && body.contains("AV1"), "{body}");

    let (status, body) = post(
        &node.url("/whip/other"),
        "application/sdp",
        vec![b'v'; 70 * 1024],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 65536"), "{body}");

    let (status, body) = post(&node.url("/whip/bad.id"), "application/sdp", AV1_ONLY_OFFER).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid stream id"), "{body}");

    let (status, body) = post(&node.url("/whip/other"), "text/plain", AV1_ONLY_OFFER).await;
    assert_eq!(status, 415, "{body}");

    let second = Publisher::connect(&node.ip, &node.url("/whip/live"), None).await;
    let (status, body) = second.err().expect("a second publisher is refused");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already has a live publisher"), "{body}");

    let (status, body) = match Viewer::connect(&node.ip, &node.url("/whep/nobody-here"), None).await
    {
        Err(refusal) => refusal,
        Ok(_) => panic!("WHEP on an unknown stream must be refused"),
    };
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("nobody-here") && body.contains("not live"),
        "{body}"
    );

    let client = reqwest::Client::new();
    let response = client
        .delete(node.url("/whip/live/0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.unwrap().contains("no session"));
    let response = client
        .patch(&publisher.session_url)
        .body("a=candidate")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "DELETE");

    let metrics = node.metrics().await;
    for reason in [
        "malformed_sdp",
        "no_supported_codec",
        "body_too_large",
        "invalid_stream_id",
        "publisher_already_live",
        "unknown_stream",
        "unknown_session",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "metric for {reason} missing:\n{metrics}"
        );
    }

    // The live stream was not disturbed: the publisher still reaches its viewer.
    let frames = crate::support::media::encode_h264(1, 30);
    publisher.stream(&frames, &[]).await;
    let received = viewer.collect(frames.len(), Duration::from_secs(3)).await;
    assert_eq!(received.len(), frames.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_play_tokens_are_enforced() {
    let node = Node::start(&[
        "--publish-token",
        "pub-secret",
        "--play-token",
        "play-secret",
    ])
    .await;
    let (status, body) = Publisher::connect(&node.ip, &node.url("/whip/guarded"), None)
        .await
        .err()
        .expect("no token: refused");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Bearer"), "{body}");
    let (status, _) = Publisher::connect(&node.ip, &node.url("/whip/guarded"), Some("wrong"))
        .await
        .err()
        .expect("wrong token: refused");
    assert_eq!(status, 401);
    let _publisher = Publisher::connect(&node.ip, &node.url("/whip/guarded"), Some("pub-secret"))
        .await
        .expect("right token");
    let (status, _) = Viewer::connect(&node.ip, &node.url("/whep/guarded"), Some("pub-secret"))
        .await
        .err()
        .expect("publish token cannot play");
    assert_eq!(status, 401);
    Viewer::connect(&node.ip, &node.url("/whep/guarded"), Some("play-secret"))
        .await
        .expect("play token plays");
}
