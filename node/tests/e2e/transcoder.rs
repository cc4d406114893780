//! The transcoder: FFmpeg publishes RTMP with B-frames and AAC, as OBS does by default; the
//! node makes a keyframe-aligned ladder and an Opus track in a child process, and a WHEP
//! viewer (the `webrtc` crate) gets pictures FFmpeg decodes without B-frames, and sound.
//! Killing that child leaves the node, its other streams and their viewers alone.

use std::time::Duration;

use serde_json::Value;

use crate::support::browser::ChromeDriver;
use crate::support::encoder::{Encoder, H264File, assert_contiguous_run, b_frame_pattern};
use crate::support::loadtest::LoadPublisher;
use crate::support::media::decode_h264;
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

fn keyframes(stream: &Value, track: &str) -> Vec<u64> {
    stream["keyframes"][track]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_frame_aac_source_becomes_an_aligned_ladder_that_webrtc_viewers_decode_with_opus() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&["--ladder", "360p:800,180p:250"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;
    wait_for(
        "WebRTC viewers are offered the renditions",
        Duration::from_secs(20),
        || async {
            let (_, stream) = node.json("/api/v1/streams/show").await;
            stream["webrtc"]["video"] == "video/360p" && stream["webrtc"]["audio"] == "audio/opus"
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/show").await;
    let names: Vec<&str> = stream["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for expected in ["video/360p", "video/180p", "audio/opus"] {
        assert!(names.contains(&expected), "{expected} listed: {stream}");
    }
    let rung = stream["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "video/180p")
        .unwrap();
    assert_eq!(
        (
            &rung["codec"],
            &rung["width"],
            &rung["height"],
            &rung["bitrate_kbps"]
        ),
        (&"H264".into(), &320.into(), &180.into(), &250.into()),
        "the catalog says what the rung is: {stream}"
    );
    assert_eq!(stream["transcoder"]["state"], "running", "{stream}");
    let (_, overview) = node.json("/api/v1/cluster").await;
    assert_eq!(
        overview["transcoders"]["show"],
        node.id().await.as_str(),
        "the cluster says who transcodes: {overview}"
    );

    // Rungs are encoded while someone watches them: a viewer of the default rung, and one
    // who pins the 180p rung.
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .expect("a WHEP viewer of the B-frame source");
    let mut pinned = Viewer::connect(&node.ip, &node.url("/whep/show?rendition=video/180p"), None)
        .await
        .expect("a viewer pinned to the 180p rung");

    // Every rung starts its groups exactly where the source does.
    wait_for(
        "four groups in every rung",
        Duration::from_secs(20),
        || async {
            let (_, stream) = node.json("/api/v1/streams/show").await;
            ["video/360p", "video/180p"]
                .iter()
                .all(|t| keyframes(&stream, t).len() >= 4)
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/show").await;
    let source = keyframes(&stream, "video/source");
    for rung in ["video/360p", "video/180p"] {
        let rendition = keyframes(&stream, rung);
        let overlap: Vec<u64> = rendition
            .iter()
            .copied()
            .filter(|t| *t >= source[0] && t <= source.last().unwrap())
            .collect();
        assert!(
            overlap.len() >= 3,
            "{rung}: {rendition:?} vs source {source:?}"
        );
        for t in &overlap {
            assert!(
                source.contains(t),
                "{rung} has a group at {t} where the source has none: {rendition:?} vs {source:?}"
            );
        }
        let expected: Vec<u64> = source
            .iter()
            .copied()
            .filter(|t| *t >= rendition[0] && t <= rendition.last().unwrap())
            .collect();
        assert_eq!(overlap, expected, "{rung} misses a source group");
    }

    // A WHEP viewer gets pictures a decoder takes in the order they come, and Opus.
    let received = viewer.collect(90, Duration::from_secs(5)).await;
    assert!(received.len() >= 90, "received {} frames", received.len());
    assert!(received[0].keyframe, "it starts at a keyframe");
    let units: Vec<Vec<u8>> = received.into_iter().map(|u| u.data).collect();
    let decoded = decode_h264(&units);
    assert_eq!(
        decoded.pictures.len(),
        units.len(),
        "every frame decodes: {}",
        decoded.errors
    );
    assert!(decoded.errors.trim().is_empty(), "{}", decoded.errors);
    assert!(
        decoded
            .pictures
            .iter()
            .all(|(kind, w, h)| kind != "B" && (*w, *h) == (640, 360)),
        "no B-frames, 640x360: {:?}",
        &decoded.pictures[..10]
    );
    let audio = viewer
        .audio_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(audio >= 50, "Opus packets arrived: {audio}");
    let metrics = node.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "cascade_transcoders 1"),
        "{metrics}"
    );

    // The pinned viewer gets the rung it asked for; one the stream does not have is refused
    // with the list.
    let received = pinned.collect(30, Duration::from_secs(5)).await;
    let units: Vec<Vec<u8>> = received.into_iter().map(|u| u.data).collect();
    let decoded = decode_h264(&units);
    assert!(decoded.pictures.len() >= 30, "{}", decoded.errors);
    assert!(
        decoded
            .pictures
            .iter()
            .all(|(_, w, h)| (*w, *h) == (320, 180)),
        "the pinned viewer gets 320x180: {:?}",
        &decoded.pictures[..3]
    );
    let (status, body) = Viewer::connect(
        &node.ip,
        &node.url("/whep/show?rendition=video/source"),
        None,
    )
    .await
    .err()
    .expect("the B-frame source cannot be pinned");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("video/360p, video/180p"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_transcoder_process_leaves_the_node_and_other_streams_alone_and_it_restarts() {
    // No ladder: the B-frame source still gets a WebRTC-safe rung at its own size.
    let node = Node::start(&[]).await;
    // Not transcoded: WebRTC-safe video, no ladder, no audio.
    let plain = H264File::encode(25, "transcoder-plain");
    let _plain = Encoder::flv(&plain.args(None), &node.rtmp_url("plain"));
    let _show = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("show"));
    node.wait_live("plain", Duration::from_secs(20)).await;
    wait_for("the transcoder runs", Duration::from_secs(20), || async {
        let (_, stream) = node.json("/api/v1/streams/show").await;
        stream["transcoder"]["state"] == "running" && stream["webrtc"]["video"] == "video/360p"
    })
    .await;
    let (_, plain_info) = node.json("/api/v1/streams/plain").await;
    assert!(plain_info["transcoder"].is_null(), "{plain_info}");
    let mut plain_viewer = Viewer::connect(&node.ip, &node.url("/whep/plain"), None)
        .await
        .unwrap();
    let mut show_viewer = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .unwrap();
    show_viewer.assert_decodable(30, "rendition frames").await;

    let (_, stream) = node.json("/api/v1/streams/show").await;
    let pid = stream["transcoder"]["pid"].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The other stream's viewer misses nothing while the transcoder is down and back.
    let received = plain_viewer.collect(120, Duration::from_secs(3)).await;
    assert!(received.len() >= 120, "plain viewer got {}", received.len());
    assert_contiguous_run(&received, &plain.units, "the viewer of the other stream");

    wait_for(
        "the transcoder restarted",
        Duration::from_secs(15),
        || async {
            let (_, stream) = node.json("/api/v1/streams/show").await;
            stream["transcoder"]["state"] == "running"
                && stream["transcoder"]["restarts"] == 1
                && stream["transcoder"]["pid"].as_u64() != Some(pid)
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/show").await;
    assert!(
        stream["transcoder"]["last_error"]
            .as_str()
            .unwrap()
            .contains("signal: 9"),
        "{stream}"
    );
    // The rendition's viewer kept its session and gets pictures again.
    while show_viewer.video.try_recv().is_ok() {}
    let after = show_viewer.collect(30, Duration::from_secs(5)).await;
    assert!(
        after.len() >= 30,
        "rendition frames after the restart: {}",
        after.len()
    );
    let metrics = node.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "cascade_transcoder_restarts_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_another_node_gets_the_renditions_even_when_it_asks_before_they_exist() {
    let nodes = Node::cluster(2, "e2e-transcode-token", &["--ladder", "180p:250"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &nodes[0].rtmp_url("far"));
    nodes[0].wait_live("far", Duration::from_secs(20)).await;
    // At once: the edge's pull may well fetch a catalog without renditions; the viewer waits
    // for them instead of getting 409. It pins the top rung: adaptive bitrate would move a
    // viewer starved of CPU (a loaded CI machine) to 180p, which this test later asserts
    // nobody watches.
    let mut viewer = Viewer::connect(
        &nodes[1].ip,
        &nodes[1].url("/whep/far?rendition=video/360p"),
        None,
    )
    .await
    .expect("the edge serves the rendition");
    let received = viewer.collect(60, Duration::from_secs(5)).await;
    assert!(received.len() >= 60, "received {} frames", received.len());
    let units: Vec<Vec<u8>> = received.into_iter().map(|u| u.data).collect();
    let decoded = decode_h264(&units);
    assert_eq!(decoded.pictures.len(), units.len(), "{}", decoded.errors);
    assert!(
        decoded.pictures.iter().all(|(kind, _, _)| kind != "B"),
        "no B-frames"
    );
    let audio = viewer
        .audio_packets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(audio >= 20, "Opus packets arrived: {audio}");
    let (_, edge) = nodes[1].json("/api/v1/streams/far").await;
    assert_eq!(edge["publisher"]["protocol"], "relay", "{edge}");
    assert_eq!(edge["webrtc"]["video"], "video/360p", "{edge}");
    assert_eq!(edge["webrtc"]["audio"], "audio/opus", "{edge}");
    assert!(
        edge["transcoder"].is_null(),
        "the origin transcodes: {edge}"
    );

    // Just in time across the cluster: the edge lists the 180p rung but pulls it (and so the
    // origin encodes it) only while a viewer there watches it.
    assert!(
        edge["tracks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "video/180p")),
        "{edge}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(encoding(&nodes[0], "far").await, ["video/360p"]);
    assert_eq!(
        frames_out(&nodes[0], "video/180p").await,
        0,
        "nobody watches 180p"
    );
    let mut pinned = Viewer::connect(
        &nodes[1].ip,
        &nodes[1].url("/whep/far?rendition=video/180p"),
        None,
    )
    .await
    .expect("a viewer on the edge pinned to 180p");
    pinned
        .assert_decodable(30, "the 180p rung, pulled on demand")
        .await;
    assert_eq!(encoding(&nodes[0], "far").await.len(), 2);
    let _ = pinned.pc.close().await;
    drop(pinned);
    wait_for(
        "the 180p rung stops once the edge no longer pulls it",
        Duration::from_secs(20),
        || async { encoding(&nodes[0], "far").await == ["video/360p"] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_the_rendition_of_a_b_frame_aac_source_with_opus_sound() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&[]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("obs"));
    node.wait_live("obs", Duration::from_secs(20)).await;
    let mut driver = ChromeDriver::start().await;
    let page = driver.open().await;
    page.goto(&node.url("/?watch=obs")).await;
    page.wait_decoded(90, Duration::from_secs(30)).await;
    wait_for("Chromium plays sound", Duration::from_secs(10), || async {
        page.eval("return window.cascade.watch.audioSamplesReceived")
            .await
            .as_u64()
            .unwrap_or(0)
            > 48_000
    })
    .await;
    let watch = page.eval("return window.cascade.watch").await;
    assert_eq!(watch["audioCodec"], "audio/opus", "{watch}");
    assert!(
        watch["codec"]
            .as_str()
            .unwrap_or("")
            .starts_with("video/H264"),
        "{watch}"
    );
    assert_eq!(watch["width"], 640, "{watch}");
    let (_, stream) = node.json("/api/v1/streams/obs").await;
    assert_eq!(stream["webrtc"]["video"], "video/360p", "{stream}");
    page.close().await;
}

/// The node the cluster has transcode `stream`, as `/api/v1/cluster` on `observer` says.
async fn transcoder_of(observer: &Node, stream: &str) -> Option<String> {
    let (_, overview) = observer.json("/api/v1/cluster").await;
    overview["transcoders"][stream].as_str().map(str::to_owned)
}

/// Whether `node` runs `stream`'s transcoder and has its AAC track.
async fn makes_aac(node: &Node, stream: &str) -> bool {
    let (_, info) = node.json(&format!("/api/v1/streams/{stream}")).await;
    info["transcoder"]["state"] == "running"
        && info["tracks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "audio/aac"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transcoder_assignment_follows_the_stream_when_its_origin_dies() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let mut nodes = Node::cluster(3, "e2e-transcoder-moves", &[]).await;
    // The load tester's default clip: H.264 and Opus, which gets an AAC rendition.
    let urls = [nodes[1].url("/whip/moving"), nodes[2].url("/whip/moving")];
    let _publisher = LoadPublisher::start(
        &urls.join(","),
        &nodes[1].ip,
        &["--duration", "300s", "--reconnect"],
    );
    nodes[1].wait_live("moving", Duration::from_secs(60)).await;
    let first = nodes[1].id().await;
    wait_for(
        "the leader assigns the transcoder to the origin",
        Duration::from_secs(15),
        || async { transcoder_of(&nodes[0], "moving").await.as_ref() == Some(&first) },
    )
    .await;
    wait_for("the origin transcodes", Duration::from_secs(15), || {
        makes_aac(&nodes[1], "moving")
    })
    .await;

    nodes[1].kill();
    let second = nodes[2].id().await;
    wait_for(
        "the assignment moves to the new origin",
        Duration::from_secs(30),
        || async { transcoder_of(&nodes[0], "moving").await.as_ref() == Some(&second) },
    )
    .await;
    wait_for("the new origin transcodes", Duration::from_secs(15), || {
        makes_aac(&nodes[2], "moving")
    })
    .await;
}

/// `cascade_transcoder_frames_out_total` of `track` on `node`.
async fn frames_out(node: &Node, track: &str) -> u64 {
    let label = format!("cascade_transcoder_frames_out_total{{track=\"{track}\"}} ");
    node.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&label)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn encoding(node: &Node, stream: &str) -> Vec<String> {
    let (_, info) = node.json(&format!("/api/v1/streams/{stream}")).await;
    info["transcoder"]["encoding"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rung_is_encoded_only_while_someone_watches_it_and_starting_one_disturbs_no_other() {
    let node = Node::start(&["--ladder", "180p:250"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &node.rtmp_url("jit"));
    wait_for("the transcoder runs", Duration::from_secs(20), || async {
        let (_, info) = node.json("/api/v1/streams/jit").await;
        info["transcoder"]["state"] == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        encoding(&node, "jit").await.is_empty(),
        "no viewer, no rung"
    );
    assert_eq!(frames_out(&node, "video/360p").await, 0);
    assert_eq!(frames_out(&node, "video/180p").await, 0);
    assert!(
        node.metrics()
            .await
            .lines()
            .any(|l| l == "cascade_transcoder_rungs_encoding{stream=\"jit\"} 0"),
        "the metric says so"
    );

    let mut watching = Viewer::connect(&node.ip, &node.url("/whep/jit"), None)
        .await
        .expect("a viewer of the default rung");
    watching
        .assert_decodable(30, "frames of the default rung")
        .await;
    assert_eq!(encoding(&node, "jit").await, ["video/360p"]);
    assert_eq!(
        frames_out(&node, "video/180p").await,
        0,
        "nobody watches 180p"
    );

    // Starting the 180p rung: the 360p viewer's pictures keep coming, one every frame time.
    while watching.video.try_recv().is_ok() {}
    let pinned = Viewer::connect(&node.ip, &node.url("/whep/jit?rendition=video/180p"), None)
        .await
        .expect("a viewer pinned to 180p");
    let during = watching.collect(90, Duration::from_secs(3)).await;
    wait_for("both rungs encode", Duration::from_secs(10), || async {
        encoding(&node, "jit").await.len() == 2
    })
    .await;
    assert!(during.len() >= 90, "the 360p viewer got {}", during.len());
    let longest = during
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap();
    assert!(
        longest < Duration::from_millis(250),
        "the 360p viewer waited {longest:?} for a frame while 180p started"
    );

    // The 180p viewer leaves: its rung stops at the next group.
    let _ = pinned.pc.close().await;
    drop(pinned);
    wait_for("the 180p rung stops", Duration::from_secs(20), || async {
        encoding(&node, "jit").await == ["video/360p"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = frames_out(&node, "video/180p").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        frames_out(&node, "video/180p").await,
        stopped,
        "no 180p frame made"
    );
    assert!(watching.collect(30, Duration::from_secs(3)).await.len() >= 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_frame_per_second_rung_gives_a_vision_pipeline_one_decodable_picture_a_second() {
    let node = Node::start(&["--ladder", "180p:100:1"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &node.rtmp_url("vision"));
    wait_for(
        "the 1 fps rung is listed",
        Duration::from_secs(20),
        || async {
            let (_, stream) = node.json("/api/v1/streams/vision").await;
            stream["tracks"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["name"] == "video/180p-1fps" && t["fps"] == 1)
            })
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/vision").await;
    assert_eq!(
        stream["webrtc"]["video"], "video/360p",
        "viewers get the full-rate rendition unless they ask: {stream}"
    );
    let mut pinned = Viewer::connect(
        &node.ip,
        &node.url("/whep/vision?rendition=video/180p-1fps"),
        None,
    )
    .await
    .expect("a viewer pinned to the 1 fps rung");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut received = Vec::new();
    while let Ok(Some(unit)) = tokio::time::timeout_at(deadline, pinned.video.recv()).await {
        received.push(unit);
    }
    assert!(
        (5..=11).contains(&received.len()),
        "about one picture a second for 8 s, got {}",
        received.len()
    );
    let gaps: Vec<Duration> = received
        .windows(2)
        .skip(1)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    assert!(
        gaps.iter()
            .all(|g| *g > Duration::from_millis(500) && *g < Duration::from_millis(1600)),
        "a picture about every second: {gaps:?}"
    );
    let units: Vec<Vec<u8>> = received.into_iter().map(|u| u.data).collect();
    let decoded = decode_h264(&units);
    assert_eq!(decoded.pictures.len(), units.len(), "{}", decoded.errors);
    assert!(
        decoded
            .pictures
            .iter()
            .all(|(_, w, h)| (*w, *h) == (320, 180)),
        "{:?}",
        decoded.pictures
    );
}
