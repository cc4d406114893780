//! Edges shield the packager: players ask any node for `/hls/…`; a node that does not
//! package the stream fetches from the node that does, over QUIC, once per object however
//! many players ask at once, and moves to the standby packager when the active one dies
//! (an LL-HLS player and the load tester's players see no stall as long as a segment).

use std::time::Duration;

use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::hls_player;
use crate::support::loadtest;
use crate::support::media::{probe_frames, probe_result};
use crate::support::node::Node;
use crate::support::wait_for;

/// The sum of every series of the counter `name` in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn packagers(observer: &Node, stream: &str) -> (Option<String>, Option<String>) {
    let (_, overview) = observer.json("/api/v1/cluster").await;
    (
        overview["packagers"][stream].as_str().map(str::to_owned),
        overview["packager_standbys"][stream]
            .as_str()
            .map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_players_at_an_edge_cost_the_packager_one_fetch_per_object() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let token = "e2e-hls-edge";
    let origin = Node::start(&["--token", token, "--ladder", "none"]).await;
    let edge = Node::start(&[
        "--join",
        &origin.join_addr(),
        "--token",
        token,
        "--roles",
        "edge",
    ])
    .await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &origin.rtmp_url("crowd"));
    origin.wait_live("crowd", Duration::from_secs(20)).await;
    let origin_id = origin.id().await;
    wait_for(
        "the origin packages the stream",
        Duration::from_secs(20),
        || async { packagers(&edge, "crowd").await.0.as_deref() == Some(origin_id.as_str()) },
    )
    .await;

    let client = reqwest::Client::new();
    let multivariant = client
        .get(edge.url("/hls/crowd/index.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        multivariant.status(),
        200,
        "the edge serves the stream it does not package"
    );
    assert!(
        multivariant
            .text()
            .await
            .unwrap()
            .contains("source/index.m3u8")
    );
    let playlist = client
        .get(edge.url("/hls/crowd/source/index.m3u8"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let init = hls_player::map_uri(&playlist).expect("an EXT-X-MAP");
    assert!(
        init.starts_with("init-"),
        "the init segment is named by its content: {init}"
    );
    let init = client
        .get(edge.url(&format!("/hls/crowd/source/{init}")))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    assert_eq!(
        init.headers()["cache-control"],
        "max-age=31536000, immutable",
        "the edge passes the packager's caching on"
    );
    let hint = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a preload hint")
        .to_owned();
    let (msn, index) = hint
        .strip_prefix("part")
        .and_then(|h| h.strip_suffix(".m4s"))
        .and_then(|h| h.split_once('.'))
        .unwrap();
    // Two objects that do not exist yet: the next part and the playlist that lists it.
    let blocking = format!("/hls/crowd/source/index.m3u8?_HLS_msn={msn}&_HLS_part={index}");
    let part = format!("/hls/crowd/source/{hint}");

    let edge_before = edge.metrics().await;
    let origin_before = origin.metrics().await;
    const PLAYERS: usize = 1000;
    let mut players = tokio::task::JoinSet::new();
    for _ in 0..PLAYERS {
        let (blocking, part) = (edge.url(&blocking), edge.url(&part));
        players.spawn(async move {
            // One connection per player, as separate players have.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let playlist = client.get(&blocking).send().await.unwrap();
            let playlist = (playlist.status().as_u16(), playlist.bytes().await.unwrap());
            let part = client.get(&part).send().await.unwrap();
            let part = (part.status().as_u16(), part.bytes().await.unwrap());
            (playlist, part)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = players.join_next().await {
        answers.push(answer.expect("a player task"));
    }
    let ((_, first_playlist), (_, first_part)) = &answers[0];
    assert!(
        String::from_utf8_lossy(first_playlist).contains(&hint),
        "the blocking reload lists the part it waited for"
    );
    assert!(!first_part.is_empty());
    for ((playlist_status, playlist), (part_status, part)) in &answers {
        assert_eq!((*playlist_status, *part_status), (200, 200));
        assert_eq!(
            playlist, first_playlist,
            "every player got the same playlist"
        );
        assert_eq!(part, first_part, "every player got the same part");
    }

    let edge_after = edge.metrics().await;
    let origin_after = origin.metrics().await;
    let fetched = counter(&edge_after, "cascade_hls_edge_upstream_fetches_total")
        - counter(&edge_before, "cascade_hls_edge_upstream_fetches_total");
    let served = counter(&origin_after, "cascade_hls_upstream_requests_total")
        - counter(&origin_before, "cascade_hls_upstream_requests_total");
    let answered = counter(&edge_after, "cascade_hls_edge_requests_total")
        - counter(&edge_before, "cascade_hls_edge_requests_total");
    println!(
        "{PLAYERS} players x 2 objects: edge answered {answered}, fetched {fetched} upstream; the packager served {served}"
    );
    assert_eq!(answered, 2 * PLAYERS as u64);
    assert_eq!(fetched, 2, "one upstream fetch per object");
    assert_eq!(served, 2, "the packager saw one request per object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_at_an_edge_keeps_playing_through_sigkill_of_the_active_packager() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let token = "e2e-hls-standby";
    let standby = ["--packager-standby", "true"];
    let origin = Node::start(&[
        "--token",
        token,
        "--roles",
        "origin,transcoder,edge",
        "--ladder",
        "none",
        standby[0],
        standby[1],
    ])
    .await;
    let join = origin.join_addr();
    let mut packager_nodes = Vec::new();
    for _ in 0..2 {
        packager_nodes.push(
            Node::start(&[
                "--join", &join, "--token", token, "--roles", "packager", standby[0], standby[1],
            ])
            .await,
        );
    }
    let edge = Node::start(&["--join", &join, "--token", token, "--roles", "edge"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &origin.rtmp_url("resilient"));
    origin.wait_live("resilient", Duration::from_secs(20)).await;
    let mut ids = Vec::new();
    for node in &packager_nodes {
        ids.push(node.id().await);
    }
    wait_for(
        "an active and a standby packager on the two packager nodes",
        Duration::from_secs(30),
        || async {
            let (active, standby) = packagers(&edge, "resilient").await;
            active.is_some_and(|a| ids.contains(&a)) && standby.is_some_and(|s| ids.contains(&s))
        },
    )
    .await;
    let (active, _) = packagers(&edge, "resilient").await;
    let active_index = ids
        .iter()
        .position(|id| Some(id) == active.as_ref())
        .unwrap();

    let client = reqwest::Client::new();
    let multivariant = client
        .get(edge.url("/hls/resilient/index.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(multivariant.status(), 200);
    // The edge's requests keep the standby packaging (and aligned) from now on.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let url = edge.url("/hls/resilient/source/index.m3u8");
    let player = tokio::spawn(async move { hls_player::play(&url, Duration::from_secs(16)).await });
    // And the load tester's players, which call a wait over one segment (2 s) a stall.
    let multivariant_url = edge.url("/hls/resilient/index.m3u8");
    let crowd = tokio::spawn(async move {
        loadtest::hls(
            &multivariant_url,
            &["--players", "5", "--duration", "16s", "--stall-after", "2s"],
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    packager_nodes[active_index].kill();
    let played = player.await.unwrap();
    let (code, report, output) = crowd.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(report["sessions_joined"], 5, "{stdout}");
    assert_eq!(
        report["freezes"], 0,
        "no load-tester player stalled: {stdout}"
    );
    assert_eq!(report["failed_sessions"], 0, "no request failed: {stdout}");
    assert_eq!(
        report["frames_expected"], report["frames_received"],
        "{stdout}"
    );

    let gap = played.longest_gap();
    println!(
        "{} parts played; longest wait between parts {gap:?}; errors {:?}",
        played.parts.len(),
        played.errors
    );
    for pair in played.parts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            (b.msn == a.msn && b.index == a.index + 1) || (b.msn == a.msn + 1 && b.index == 0),
            "parts follow each other: {}.{} then {}.{}",
            a.msn,
            a.index,
            b.msn,
            b.index
        );
    }
    assert!(
        gap < Duration::from_secs(2),
        "no stall as long as a segment (2 s): {gap:?}"
    );
    assert!(played.parts.len() >= 36, "about 16 s of 1/3 s parts");

    // The parts from both packagers make one stream that decodes without an error.
    let file =
        std::env::temp_dir().join(format!("cascade-hls-failover-{}.mp4", std::process::id()));
    std::fs::write(&file, played.file()).unwrap();
    let decoded = probe_result(probe_frames(&file.to_string_lossy(), "v:0", "", None));
    let _ = std::fs::remove_file(&file);
    let (_, frames) = decoded.expect("every part decodes");
    assert!(frames >= 15 * 30 - 30, "{frames} frames decode");
}
