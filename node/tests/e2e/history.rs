//! History: a publisher and a viewer come and go; the node keeps the stream's run and both
//! sessions, answers them filtered and in pages, and still has them after a restart.

use std::time::Duration;

use crate::support::encoder::{Encoder, H264File};
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

async fn page(node: &Node, path: &str) -> serde_json::Value {
    let (status, body) = node.json(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_and_its_sessions_are_kept_filtered_paged_and_survive_a_restart() {
    let mut node = Node::start(&["--reconnect-grace", "1s"]).await;
    let source = H264File::encode(30, "history");
    let encoder = Encoder::flv(&source.args(None), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;
    let viewer = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(viewer.delete().await, 200);
    drop(encoder);
    wait_for("the run is recorded", Duration::from_secs(15), || async {
        let runs = page(&node, "/api/v1/history/streams?stream=show").await;
        runs["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;

    check(&node).await;
    node.restart().await;
    check(&node).await;
}

/// What the node answers about the run of `show` and its two sessions.
async fn check(node: &Node) {
    let runs = page(node, "/api/v1/history/streams?stream=show").await;
    let run = &runs["items"][0];
    assert_eq!(run["protocol"], "rtmp", "{run}");
    assert_eq!(run["peak_viewers"], 1, "{run}");
    let minutes = run["viewer_minutes"].as_f64().unwrap();
    assert!((2.5 / 60.0..6.0 / 60.0).contains(&minutes), "{run}");

    let sessions = page(node, "/api/v1/history/sessions?stream=show").await;
    let items = sessions["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{sessions}");
    let viewer = items.iter().find(|s| s["kind"] == "viewer").unwrap();
    assert_eq!(viewer["protocol"], "whep", "{viewer}");
    assert_eq!(viewer["outcome"], "deleted", "{viewer}");
    assert!(
        viewer["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.")),
        "{viewer}"
    );
    assert!(viewer["duration_secs"].as_f64().unwrap() >= 2.5, "{viewer}");
    // What the viewer went through, as the node saw it: it saw a picture within seconds of
    // its offer, and lost next to nothing on loopback.
    let join_ms = viewer["join_time_ms"].as_u64().expect("a join time");
    assert!((1..10_000).contains(&join_ms), "{viewer}");
    assert!(viewer["keyframe_requests"].is_u64(), "{viewer}");
    assert!(
        viewer["loss_percent"]
            .as_f64()
            .is_none_or(|loss| loss < 5.0),
        "{viewer}"
    );
    assert!(
        items
            .iter()
            .any(|s| s["kind"] == "publisher" && s["protocol"] == "rtmp"),
        "{sessions}"
    );

    let first = page(node, "/api/v1/history/sessions?stream=show&limit=1").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let next = first["next"].as_u64().expect("a second page");
    let second = page(
        node,
        &format!("/api/v1/history/sessions?stream=show&limit=1&before={next}"),
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(first["items"][0], second["items"][0]);
    assert!(second["next"].is_null(), "{second}");
    let viewers = page(node, "/api/v1/history/sessions?stream=show&kind=viewer").await;
    assert_eq!(viewers["items"].as_array().unwrap().len(), 1, "{viewers}");
    let none = page(node, "/api/v1/history/sessions?stream=other").await;
    assert!(none["items"].as_array().unwrap().is_empty());
}
