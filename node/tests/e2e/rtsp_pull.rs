//! RTSP pull from an IP camera (GStreamer's RTSP server, with a password): a stream created
//! through the API reaches WHEP viewers intact and in order over TCP and UDP; the pull
//! reconnects when the camera loses power and says why meanwhile; when the pulling node is
//! killed, another node takes the pull over and a viewer on a third node watches on.

use std::time::{Duration, Instant};

use crate::support::camera::Camera;
use crate::support::encoder::assert_contiguous_run;
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

/// `POST /api/v1/streams` with `body`; the status and the answer's text.
async fn create(node: &Node, body: serde_json::Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(node.url("/api/v1/streams"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The pull of `stream` as `node` lists it in `GET /api/v1/streams`.
async fn pull_of(node: &Node, stream: &str) -> serde_json::Value {
    let (_, list) = node.json("/api/v1/streams").await;
    list["pulls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"] == stream)
        .cloned()
        .unwrap_or_default()
}

/// How many frames `viewer` receives from now on (not those it had queued), up to `wanted`,
/// within 10 s.
async fn frames_from_now(viewer: &mut Viewer, wanted: usize) -> usize {
    let from = Instant::now();
    let deadline = from + Duration::from_secs(10);
    let mut fresh = 0;
    while fresh < wanted && Instant::now() < deadline {
        let batch = viewer.collect(10, Duration::from_secs(2)).await;
        fresh += batch.iter().filter(|u| u.at > from).count();
    }
    fresh
}

async fn wait_pull_state(node: &Node, stream: &str, state: &str, limit: Duration) {
    wait_for(
        &format!("the pull of {stream} is {state}"),
        limit,
        || async { pull_of(node, stream).await["state"] == state },
    )
    .await;
}

/// Pulls `camera` as `stream` over `transport` into one node; a viewer must get its frames
/// byte for byte, in order.
async fn pulled_frames_reach_a_viewer_intact(transport: &str) {
    let camera = Camera::start(30, 30).await;
    let node = Node::start(&[]).await;
    let stream = format!("cam-{transport}");
    let (status, created) = create(
        &node,
        serde_json::json!({"id": stream, "source": camera.url(), "transport": transport}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(
        !created.contains("p%40ss"),
        "the password is never shown: {created}"
    );
    node.wait_live(&stream, Duration::from_secs(20)).await;
    let pull = pull_of(&node, &stream).await;
    assert_eq!(pull["state"], "live", "{pull}");
    assert_eq!(pull["transport"], transport, "{pull}");
    assert_eq!(
        pull["source"],
        format!("rtsp://admin:***@127.0.0.1:{}/stream", camera.port),
        "{pull}"
    );
    let (_, info) = node.json(&format!("/api/v1/streams/{stream}")).await;
    assert_eq!(info["publisher"]["protocol"], "rtsp", "{info}");
    let video = &info["tracks"][0];
    assert_eq!(video["codec"], "H264", "{info}");
    assert_eq!(video["width"], 640, "{info}");
    assert_eq!(video["height"], 360, "{info}");
    assert!(
        video["config"].as_str().unwrap().starts_with("0142"),
        "the catalog carries an AVC decoder configuration record: {info}"
    );

    let mut viewer = Viewer::connect(&node.ip, &node.url(&format!("/whep/{stream}")), None)
        .await
        .expect("a WHEP viewer of the pulled stream");
    let received = viewer.collect(120, Duration::from_secs(5)).await;
    assert!(
        received.len() >= 120,
        "the viewer got {} frames",
        received.len()
    );
    assert!(received[0].keyframe, "it starts at a keyframe");
    assert_contiguous_run(&received, &camera.units, "the viewer of the camera");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_pulled_over_tcp_reaches_a_whep_viewer_intact_and_in_order() {
    pulled_frames_reach_a_viewer_intact("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_pulled_over_udp_reaches_a_whep_viewer_intact_and_in_order() {
    pulled_frames_reach_a_viewer_intact("udp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_reconnects_when_the_camera_comes_back_and_says_why_meanwhile() {
    let mut camera = Camera::start(60, 30).await;
    let node = Node::start(&[]).await;

    // Bad requests are refused with the reason.
    for (body, reason) in [
        (
            serde_json::json!({"id": "x", "source": "http://cam/s"}),
            "only rtsp:// sources can be pulled",
        ),
        (
            serde_json::json!({"id": "bad id!", "source": camera.url()}),
            "invalid stream id",
        ),
        (serde_json::json!({"id": "x"}), "missing field `source`"),
    ] {
        let (status, answer) = create(&node, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(reason), "{answer}");
    }

    // A wrong password: the pull keeps trying and shows the camera's refusal.
    let (status, _) = create(
        &node,
        serde_json::json!({"id": "locked", "source": camera.url_with_wrong_password()}),
    )
    .await;
    assert_eq!(status, 201);
    wait_for(
        "the refused pull shows the camera's 401",
        Duration::from_secs(15),
        || async {
            let pull = pull_of(&node, "locked").await;
            pull["state"] == "reconnecting"
                && pull["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("401"))
        },
    )
    .await;
    let (status, _) = create(
        &node,
        serde_json::json!({"id": "locked", "source": camera.url()}),
    )
    .await;
    assert_eq!(status, 409, "a stream keeps its source until it is deleted");
    let status = reqwest::Client::new()
        .delete(node.url("/api/v1/streams/locked"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert!(pull_of(&node, "locked").await.is_null());

    let (status, _) = create(
        &node,
        serde_json::json!({"id": "door", "source": camera.url()}),
    )
    .await;
    assert_eq!(status, 201);
    node.wait_live("door", Duration::from_secs(20)).await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/door"), None)
        .await
        .expect("a viewer");
    assert!(viewer.collect(30, Duration::from_secs(5)).await.len() >= 30);

    // The camera loses power: the pull says it is reconnecting and why.
    camera.power_off();
    wait_for(
        "the pull reports the camera gone",
        Duration::from_secs(15),
        || async {
            let pull = pull_of(&node, "door").await;
            pull["state"] == "reconnecting" && pull["last_error"].is_string()
        },
    )
    .await;
    // It comes back: the pull is live again by itself and the same viewer watches on.
    camera.power_on().await;
    wait_pull_state(&node, "door", "live", Duration::from_secs(20)).await;
    let fresh = frames_from_now(&mut viewer, 60).await;
    assert!(
        fresh >= 60,
        "the viewer got {fresh} frames after the camera came back"
    );
    let metrics = node.metrics().await;
    assert!(
        metrics.contains("cascade_pull_failures_total"),
        "failures are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_pulling_node_is_killed_another_takes_the_pull_over_and_viewers_watch_on() {
    let _heavy = crate::support::one_heavy_test_at_a_time().await;
    let camera = Camera::start(90, 15).await;
    let mut nodes = Node::cluster(3, "e2e-rtsp-token", &[]).await;
    let (status, created) = create(
        &nodes[0],
        serde_json::json!({"id": "lobby", "source": camera.url()}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    wait_pull_state(&nodes[0], "lobby", "live", Duration::from_secs(20)).await;
    let puller = pull_of(&nodes[0], "lobby").await["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = Vec::new();
    for node in &nodes {
        ids.push(node.id().await);
    }
    let doomed = ids.iter().position(|id| *id == puller).unwrap();
    let watcher = (doomed + 1) % 3;
    let witness = (doomed + 2) % 3;

    // A viewer on a node that does not pull: it watches over the relay.
    let mut viewer = Viewer::connect(&nodes[watcher].ip, &nodes[watcher].url("/whep/lobby"), None)
        .await
        .expect("a viewer on another node");
    assert!(viewer.collect(30, Duration::from_secs(5)).await.len() >= 30);

    nodes[doomed].kill();
    let killed_at = Instant::now();
    let mut moved_after = None;
    let live_after = loop {
        let pull = pull_of(&nodes[witness], "lobby").await;
        let moved = pull["node"].as_str().is_some_and(|n| n != puller);
        if moved && moved_after.is_none() {
            moved_after = Some(killed_at.elapsed());
        }
        if moved && pull["state"] == "live" {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no other node pulled the camera within 15 s: {pull}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved_after = moved_after.unwrap();
    eprintln!("pull moved {moved_after:?} and was live {live_after:?} after the kill");
    assert!(
        moved_after <= Duration::from_secs(3),
        "the cluster moved the pull {moved_after:?} after its node died"
    );
    assert!(
        live_after <= Duration::from_secs(3),
        "the new puller was live {live_after:?} after the kill"
    );

    // The viewer on the surviving node watches on by itself, from a keyframe.
    let fresh = frames_from_now(&mut viewer, 60).await;
    assert!(
        fresh >= 60,
        "the viewer got {fresh} frames after the takeover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_pull_connects_for_a_viewer_on_any_node_and_idles_after_the_last_leaves() {
    let camera = Camera::start(90, 15).await;
    let nodes = Node::cluster(2, "e2e-rtsp-demand", &[]).await;
    let (status, created) = create(
        &nodes[0],
        serde_json::json!({"id": "porch", "source": camera.url(), "on_demand": true}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    wait_pull_state(&nodes[0], "porch", "idle", Duration::from_secs(10)).await;
    let puller = pull_of(&nodes[0], "porch").await["node"]
        .as_str()
        .unwrap()
        .to_owned();
    // The viewer asks the node that does not pull: the edge's relay is the consumer.
    let edge = if nodes[0].id().await == puller {
        &nodes[1]
    } else {
        &nodes[0]
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pull_of(edge, "porch").await["state"],
        "idle",
        "nothing consumes the stream: the camera is not pulled"
    );

    let mut viewer = Viewer::connect(&edge.ip, &edge.url("/whep/porch"), None)
        .await
        .expect("a viewer of the idle on-demand stream is admitted and waits");
    wait_pull_state(edge, "porch", "live", Duration::from_secs(15)).await;
    let received = viewer.collect(60, Duration::from_secs(10)).await;
    assert!(
        received.len() >= 60,
        "the viewer got {} frames once the camera was pulled",
        received.len()
    );
    assert!(received[0].keyframe, "it starts at a keyframe");
    assert_contiguous_run(&received, &camera.units, "the on-demand viewer");

    // The last viewer leaves: the pull lingers, then idles.
    let status = reqwest::Client::new()
        .delete(&viewer.session_url)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the viewer ends its session");
    let _ = viewer.pc.close().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        pull_of(edge, "porch").await["state"],
        "live",
        "it lingers a while after the last viewer"
    );
    // The edge drops its relay 5 s after its last viewer, the puller 10 s after that.
    wait_pull_state(edge, "porch", "idle", Duration::from_secs(25)).await;
}
