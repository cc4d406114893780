//! Several real `cascade` processes on loopback as one cluster: joining, routing, the relay
//! between nodes, and what survives SIGKILL. Media comes from `cascade-loadtest publish`
//! and is watched by `cascade-loadtest webrtc`, whose report says what viewers saw.

use std::time::Duration;

use crate::support::loadtest::{self, LoadPublisher};
use crate::support::node::Node;
use crate::support::wait_for;

const TOKEN: &str = "e2e-join-token";
/// Routing (409, 307) is decided before the offer is negotiated, so any SDP body will do.
const ROUTED_OFFER: &str = "v=0\r\n";

async fn cluster(n: usize, extra: &[&str]) -> Vec<Node> {
    Node::cluster(n, TOKEN, extra).await
}

/// Publishes `stream` through `urls` (with reconnect) and waits until the cluster places it.
async fn publish(urls: &[String], local_ip: &str, stream: &str, on: &Node) -> LoadPublisher {
    let publisher = LoadPublisher::start(
        &urls.join(","),
        local_ip,
        &["--source", "synthetic", "--duration", "300s", "--reconnect"],
    );
    on.wait_live(stream, Duration::from_secs(30)).await;
    publisher
}

fn whep(node: &Node, stream: &str) -> String {
    node.url(&format!("/whep/{stream}"))
}

fn whip(node: &Node, stream: &str) -> String {
    node.url(&format!("/whip/{stream}"))
}

async fn leader(node: &Node) -> Option<String> {
    let (_, overview) = node.json("/api/v1/cluster").await;
    overview["leader"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_another_node_is_fed_over_the_relay_and_a_second_publisher_anywhere_gets_409() {
    let nodes = cluster(3, &[]).await;
    let _publisher = publish(
        &[whip(&nodes[0], "relayed")],
        &nodes[0].ip,
        "relayed",
        &nodes[0],
    )
    .await;

    let (code, report, output) = loadtest::webrtc(
        &whep(&nodes[1], "relayed"),
        &nodes[1].ip,
        &["--viewers", "6", "--duration", "8s"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["sessions_joined"], 6, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    let expected = report["frames_expected"].as_f64().unwrap();
    assert!(expected > 6.0 * 30.0 * 4.0, "{stdout}");
    assert_eq!(
        report["frames_received"].as_f64().unwrap(),
        expected,
        "{stdout}"
    );
    // One relay subscription per track on the edge, however many viewers it has.
    let metrics = nodes[1].metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cascade_relay_bytes_total") && l.contains("direction=\"in\"")),
        "the edge received relay bytes:\n{metrics}"
    );
    let (_, streams) = nodes[1].json("/api/v1/streams/relayed").await;
    assert_eq!(streams["publisher"]["protocol"], "relay", "{streams}");

    // A second publisher of the same stream on a third node is refused.
    let response = reqwest::Client::new()
        .post(whip(&nodes[2], "relayed"))
        .header("content-type", "application/sdp")
        .body(ROUTED_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("already has a live publisher")
    );

    // A draining node sends new viewers elsewhere with a 307.
    let drained = nodes[1].id().await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["node", "--api", &nodes[2].join_addr(), "drain", &drained])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "the drain is replicated",
        Duration::from_secs(10),
        || async {
            let (_, overview) = nodes[1].json("/api/v1/cluster").await;
            overview["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["id"] == drained.as_str() && n["draining"] == true)
            })
        },
    )
    .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .post(whep(&nodes[1], "relayed"))
        .header("content-type", "application/sdp")
        .body(ROUTED_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 307);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.contains(&nodes[0].ip) || location.contains(&nodes[2].ip),
        "{location}"
    );
    // The redirect's signed pass is honoured where it points: the target serves the request
    // itself (and refuses the dummy SDP) instead of routing it again.
    let followed = no_redirects
        .post(&location)
        .header("content-type", "application/sdp")
        .body(ROUTED_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status().as_u16(), 400, "{location}");
    // A client cannot make its own pass to skip the drain: the old `routed=1`, a forged
    // pass, or a real pass issued for another node are all routed again.
    let pass = location.split("routed=").nth(1).unwrap().to_owned();
    for forged in [
        "1".to_owned(),
        format!("9999999999.{}.{}", drained, "00".repeat(32)),
        pass,
    ] {
        let response = no_redirects
            .post(format!("{}?routed={forged}", whep(&nodes[1], "relayed")))
            .header("content-type", "application/sdp")
            .body(ROUTED_OFFER)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 307, "routed={forged}");
    }
    assert!(
        nodes[1]
            .metrics()
            .await
            .contains("cascade_route_pass_refused_total"),
        "refused passes are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_edge_is_killed_its_viewers_see_frames_again_from_another_edge_within_2s() {
    let mut nodes = cluster(3, &[]).await;
    let _publisher = publish(
        &[whip(&nodes[0], "edgekill")],
        &nodes[0].ip,
        "edgekill",
        &nodes[0],
    )
    .await;
    let urls = format!(
        "{},{}",
        whep(&nodes[1], "edgekill"),
        whep(&nodes[2], "edgekill")
    );
    let ip = nodes[1].ip.clone();
    let viewers = tokio::spawn(async move {
        loadtest::webrtc(
            &urls,
            &ip,
            &[
                "--viewers",
                "10",
                "--duration",
                "14s",
                "--reconnect",
                "--media-timeout",
                "1s",
            ],
        )
        .await
    });
    wait_for(
        "viewers are watching on the edge",
        Duration::from_secs(20),
        || async {
            let (status, info) = nodes[1].json("/api/v1/streams/edgekill").await;
            status == 200 && info["viewers"] == 10
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[1].kill();
    let (_, report, output) = viewers.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let recovery = &report["recovery"];
    assert_eq!(recovery["samples"], 10, "every viewer came back: {stdout}");
    let max = recovery["max_ms"].as_f64().unwrap();
    println!("edge failover recovery: {recovery}");
    assert!(max < 2000.0, "recovery took {max} ms: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_raft_leader_loses_no_frame_and_a_new_leader_keeps_the_state() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    // Five nodes: the leader (the first) is neither the stream's origin nor its edge.
    let mut nodes = cluster(5, &["--voters", "5"]).await;
    let old_leader = nodes[0].id().await;
    assert_eq!(
        leader(&nodes[1]).await.as_deref(),
        Some(old_leader.as_str())
    );
    let _publisher = publish(
        &[whip(&nodes[1], "steady")],
        &nodes[1].ip,
        "steady",
        &nodes[1],
    )
    .await;
    let url = whep(&nodes[2], "steady");
    let ip = nodes[2].ip.clone();
    let viewers = tokio::spawn(async move {
        loadtest::webrtc(&url, &ip, &["--viewers", "5", "--duration", "12s"]).await
    });
    wait_for("viewers are watching", Duration::from_secs(20), || async {
        let (status, info) = nodes[2].json("/api/v1/streams/steady").await;
        status == 200 && info["viewers"] == 5
    })
    .await;
    nodes[0].kill();
    wait_for(
        "a new leader is elected",
        Duration::from_secs(10),
        || async { leader(&nodes[1]).await.is_some_and(|l| l != old_leader) },
    )
    .await;
    let (code, report, output) = viewers.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    assert_eq!(
        report["frames_received"], report["frames_expected"],
        "no frame lost: {stdout}"
    );
    // No frame waited on Raft: measured from each frame's capture time, so that a pause of
    // the test's own publisher (starved by the election's CPU burst on a two-core machine: a
    // gap in capture, latency unchanged) is not mistaken for the cluster holding media.
    let worst = report["latency"]["max_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(worst < 100.0, "a frame waited {worst} ms: {stdout}");
    let (_, overview) = nodes[3].json("/api/v1/cluster").await;
    let origin = nodes[1].id().await;
    assert_eq!(
        overview["placements"]["steady"],
        origin.as_str(),
        "{overview}"
    );
    assert_eq!(overview["nodes"].as_array().unwrap().len(), 5, "{overview}");
}

/// Kills the origin of a stream watched on an edge; the publisher's second URL is node
/// `fallback`. Viewers on the edge must keep their sessions and get media again.
async fn origin_failover(stream: &str, fallback: usize) {
    let mut nodes = cluster(3, &[]).await;
    // The publisher uses the origin first and another node after it dies.
    let urls = [whip(&nodes[1], stream), whip(&nodes[fallback], stream)];
    let _publisher = publish(&urls, &nodes[1].ip, stream, &nodes[1]).await;
    let url = whep(&nodes[2], stream);
    let ip = nodes[2].ip.clone();
    let viewers = tokio::spawn(async move {
        loadtest::webrtc(
            &url,
            &ip,
            &[
                "--viewers",
                "4",
                "--duration",
                "20s",
                "--media-timeout",
                "15s",
            ],
        )
        .await
    });
    wait_for("viewers are watching", Duration::from_secs(20), || async {
        let (status, info) = nodes[2].json(&format!("/api/v1/streams/{stream}")).await;
        status == 200 && info["viewers"] == 4
    })
    .await;
    let old_origin = nodes[1].id().await;
    nodes[1].kill();
    let new_origin = nodes[fallback].id().await;
    wait_for(
        "the stream is placed on its new origin",
        Duration::from_secs(15),
        || async {
            let (_, overview) = nodes[2].json("/api/v1/cluster").await;
            overview["placements"][stream] == new_origin.as_str()
        },
    )
    .await;
    assert_ne!(old_origin, new_origin);
    let (code, report, output) = viewers.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(code, 0, "{stdout}");
    // The viewers kept their sessions on the surviving edge and the media came back.
    assert_eq!(report["sessions_started"], 4, "{stdout}");
    assert_eq!(report["failed_sessions"], 0, "{stdout}");
    let (_, info) = nodes[2].json(&format!("/api/v1/streams/{stream}")).await;
    assert_eq!(info["state"], "live", "{info}");
    let received = report["frames_received"].as_f64().unwrap();
    // 20 s at 30 fps for 4 viewers, less the gap while the publisher moved.
    assert!(received > 4.0 * 30.0 * 10.0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_origin_is_killed_the_publisher_reconnects_elsewhere_and_edge_viewers_resume() {
    // The publisher comes back through a third node; the edge resubscribes by itself.
    origin_failover("moving", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_publisher_comes_back_through_the_viewers_edge_that_edge_becomes_the_origin() {
    // The edge that pulled the stream ends its pull and takes the publisher; its viewers stay.
    origin_failover("landing", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_voter_is_replaced_by_a_healthy_learner() {
    let mut nodes = cluster(4, &["--voter-lost-after", "2s"]).await;
    let (_, overview) = nodes[0].json("/api/v1/cluster").await;
    let learners: Vec<String> = serde_json::from_value(overview["learners"].clone()).unwrap();
    assert_eq!(
        learners.len(),
        1,
        "three voters and one learner: {overview}"
    );
    let leader_id = leader(&nodes[0]).await.unwrap();
    let mut victim = None;
    for (i, node) in nodes.iter().enumerate() {
        let id = node.id().await;
        if id != leader_id && !learners.contains(&id) {
            victim = Some((i, id));
            break;
        }
    }
    let (victim, victim_id) = victim.expect("a voter that is not the leader");
    nodes[victim].kill();
    let survivor = if victim == 0 { 1 } else { 0 };
    wait_for(
        "the learner is promoted in place of the lost voter",
        Duration::from_secs(20),
        || async {
            let (_, overview) = nodes[survivor].json("/api/v1/cluster").await;
            let voters: Vec<String> =
                serde_json::from_value(overview["voters"].clone()).unwrap_or_default();
            voters.len() == 3 && voters.contains(&learners[0]) && !voters.contains(&victim_id)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_a_restarted_node_rejoins_as_itself_and_a_removed_node_leaves() {
    let mut nodes = cluster(3, &[]).await;
    let mut stranger = Node::spawn(&["--join", &nodes[0].join_addr(), "--token", "not-the-token"]);
    let code = stranger.exit_code(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "a node with the wrong token does not start");
    let metrics = nodes[0].metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cascade_cluster_refusals_total")
                && l.contains("reason=\"token\"")),
        "{metrics}"
    );

    // The admin API issues another join token, and a node joins with it.
    let issued: serde_json::Value = reqwest::Client::new()
        .post(nodes[1].url("/api/v1/cluster/tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let newcomer = Node::start(&["--join", &nodes[0].join_addr(), "--token", &token]).await;
    let newcomer_id = newcomer.id().await;
    wait_for(
        "the node joined with the issued token",
        Duration::from_secs(10),
        || async {
            let (_, overview) = nodes[0].json("/api/v1/cluster").await;
            overview["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().any(|n| n["id"] == newcomer_id.as_str()))
        },
    )
    .await;

    let id = nodes[2].id().await;
    nodes[2].restart().await;
    assert_eq!(nodes[2].id().await, id, "same identity after a restart");
    wait_for(
        "the restarted node is healthy again",
        Duration::from_secs(15),
        || async {
            let (_, overview) = nodes[0].json("/api/v1/cluster").await;
            let list = overview["nodes"].as_array().cloned().unwrap_or_default();
            list.len() == 4 && list.iter().all(|n| n["healthy"] == true)
        },
    )
    .await;

    let removed = nodes[2].id().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["node", "--api", &nodes[1].join_addr(), "remove", &removed])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    nodes[2].kill();
    wait_for(
        "the node is gone from the cluster",
        Duration::from_secs(10),
        || async {
            let (_, overview) = nodes[0].json("/api/v1/cluster").await;
            let gone = overview["nodes"]
                .as_array()
                .is_some_and(|ns| ns.iter().all(|n| n["id"] != removed.as_str()));
            let not_voter = overview["voters"]
                .as_array()
                .is_some_and(|vs| vs.iter().all(|v| v != removed.as_str()));
            gone && not_voter
        },
    )
    .await;
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["node", "--api", &nodes[0].join_addr(), "list"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three nodes:\n{table}"
    );
    drop(newcomer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_node_script_starts_a_cluster_and_prints_where_to_go() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let state = std::env::temp_dir().join(format!("cascade-three-node-{}", std::process::id()));
    let mut script = std::process::Command::new(root.join("cluster-config/three-node.sh"))
        .env("CASCADE_BIN", env!("CARGO_BIN_EXE_cascade"))
        .env("CASCADE_CLUSTER_DATA", &state)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = script.id();
    let stdout = script.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("ID ");
            lines.push(line);
            if done {
                break;
            }
        }
        lines.join("\n")
    });
    let printed = tokio::time::timeout(Duration::from_secs(60), printed).await;
    let overview = match reqwest::get("http://127.0.0.11:8080/api/v1/cluster").await {
        Ok(response) => response
            .json::<serde_json::Value>()
            .await
            .unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    // Stop the script (it stops its nodes) before judging, so that a failure cannot hang.
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", "--", &format!("-{group}")])
        .status();
    let _ = script.wait();
    let _ = std::fs::remove_dir_all(&state);
    let printed = printed
        .expect("the script prints the URLs within a minute")
        .unwrap();
    assert!(printed.contains("http://127.0.0.12:8080/"), "{printed}");
    assert!(
        printed.contains("Three-node Cascade cluster is up"),
        "{printed}"
    );
    assert_eq!(
        overview["nodes"].as_array().map_or(0, Vec::len),
        3,
        "{overview}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_publisher_comes_back_through_another_node_when_its_node_dies() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    use crate::support::browser::ChromeDriver;
    let mut nodes = cluster(3, &[]).await;
    let mut driver = ChromeDriver::start().await;
    let page = driver.open().await;
    page.goto(&nodes[1].url("/?publish=pagepub")).await;
    wait_for("the page publishes", Duration::from_secs(20), || async {
        page.eval("return window.cascade.publish.state").await == "connected"
    })
    .await;
    let first_origin = nodes[1].id().await;
    wait_for(
        "the stream is placed on the page's node",
        Duration::from_secs(10),
        || async {
            nodes[0].json("/api/v1/cluster").await.1["placements"]["pagepub"]
                == first_origin.as_str()
        },
    )
    .await;
    nodes[1].kill();
    wait_for(
        "the page publishes through another node",
        Duration::from_secs(40),
        || async {
            let (_, overview) = nodes[0].json("/api/v1/cluster").await;
            let origin = overview["placements"]["pagepub"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !origin.is_empty()
                && origin != first_origin
                && page.eval("return window.cascade.publish.state").await == "connected"
        },
    )
    .await;
    let reconnects = page.eval("return window.cascade.publish.reconnects").await;
    assert!(reconnects.as_u64().unwrap_or(0) >= 1, "{reconnects}");
}
