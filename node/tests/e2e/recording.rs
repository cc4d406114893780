//! Recordings: started and stopped through the API or by `--record`, listed, served over
//! HTTP as VOD HLS that FFmpeg decodes completely, and kept across a SIGKILL of the node
//! (a recording cut short by it is closed as `interrupted` and plays up to the crash).

use std::time::Duration;

use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::media::{probe_frames, probe_result};
use crate::support::node::Node;
use crate::support::wait_for;

/// `ffprobe` decoding every frame of `stream` (`v:0`, `a:0`) of the playlist at `url`: how
/// many, or the errors it printed.
fn decode_all(url: &str, stream: &str) -> Result<u64, String> {
    probe_result(probe_frames(url, stream, "", None)).map(|(_, frames)| frames)
}

/// Decodes a recorded rendition's VOD playlist: as many frames as its listed duration holds
/// (30 fps video, 44.1 kHz AAC), without an error; returns the duration listed.
async fn decodes_completely(node: &Node, id: &str, rendition: &str) -> f64 {
    let playlist_url = node.url(&format!("/recordings/{id}/{rendition}/index.m3u8"));
    let text = reqwest::get(&playlist_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"),
        "{text}"
    );
    let listed: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.trim_end_matches(',').parse::<f64>().ok())
        .sum();
    let (frames, per_second) = if rendition == "aac" {
        (decode_all(&playlist_url, "a:0"), 43.0)
    } else {
        (decode_all(&playlist_url, "v:0"), 30.0)
    };
    let frames = frames.unwrap_or_else(|e| panic!("{id}/{rendition} does not decode: {e}"));
    println!("{id}/{rendition}: {frames} frames in {listed} s listed");
    assert!(
        frames as f64 >= (listed - 0.1) * per_second,
        "{id}/{rendition}: {frames} frames for {listed} s"
    );
    listed
}

async fn recordings(node: &Node) -> Vec<serde_json::Value> {
    let (status, body) = node.json("/api/v1/recordings").await;
    assert_eq!(status, 200, "{body}");
    body["recordings"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_started_stopped_listed_decodes_completely_and_survives_a_crash() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let mut node = Node::start(&["--ladder", "none", "--record", "auto-*"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;
    let client = reqwest::Client::new();

    let started = client
        .post(node.url("/api/v1/streams/show/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let started: serde_json::Value = started.json().await.unwrap();
    assert_eq!(started["state"], "recording");
    let again = client
        .post(node.url("/api/v1/streams/show/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "one recording per stream at a time");
    let unknown = client
        .post(node.url("/api/v1/streams/nobody/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    tokio::time::sleep(Duration::from_secs(8)).await;
    let stopped = client
        .delete(node.url("/api/v1/streams/show/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);
    let stopped: serde_json::Value = stopped.json().await.unwrap();
    println!("stopped: {stopped}");
    assert_eq!(stopped["state"], "finished");
    let seconds = stopped["duration_seconds"].as_f64().unwrap();
    assert!(
        (7.0..=12.0).contains(&seconds),
        "about 8 s recorded: {seconds}"
    );
    let id = stopped["id"].as_str().unwrap().to_owned();
    assert!(
        recordings(&node)
            .await
            .iter()
            .any(|r| r["id"] == id.as_str())
    );

    let url = node.url(&format!("/recordings/{id}/index.m3u8"));
    // Each rendition decodes completely: as many frames as its playlist's duration holds.
    for rendition in ["source", "360p", "aac"] {
        let listed = decodes_completely(&node, &id, rendition).await;
        assert!(listed >= 5.0, "{rendition}: {listed} s");
    }
    decode_all(&url, "v:0").expect("the multivariant playlist plays");
    let escape = client
        .get(node.url(&format!("/recordings/{id}/..%2F..%2Fnode.json/index.m3u8")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        escape.status(),
        404,
        "no way out of the recording's directory"
    );

    // `--record auto-*`: a matching stream is recorded as soon as it is live.
    let _auto = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("auto-1"));
    node.wait_live("auto-1", Duration::from_secs(20)).await;
    wait_for(
        "the automatic recording has segments",
        Duration::from_secs(20),
        || async {
            recordings(&node).await.iter().any(|r| {
                r["stream"] == "auto-1"
                    && r["started_by"] == "config"
                    && r["duration_seconds"].as_f64().unwrap_or(0.0) >= 4.0
            })
        },
    )
    .await;

    // SIGKILL mid-recording: after the restart both recordings are listed, the cut one
    // as interrupted, and both decode.
    node.kill();
    node.restart().await;
    let after = recordings(&node).await;
    let finished = after.iter().find(|r| r["id"] == id.as_str()).expect("kept");
    assert_eq!(finished["state"], "finished");
    let cut = after
        .iter()
        .find(|r| r["stream"] == "auto-1")
        .expect("the interrupted recording is kept");
    assert_eq!(cut["state"], "interrupted");
    decode_all(&url, "v:0").expect("the finished recording still decodes");
    let cut_id = cut["id"].as_str().unwrap();
    let listed = decodes_completely(&node, cut_id, "source").await;
    assert!(listed >= 4.0, "{listed} s up to the crash");
}

/// x264 test pattern at `size`, no B-frames, a keyframe a second.
fn pattern(size: &str) -> Vec<String> {
    [
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc=size={size}:rate=30"),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-bf",
        "0",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_back_at_another_size_gets_its_own_init_segment_and_plays_across_the_change() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&["--ladder", "none"]).await;
    let first = Encoder::flv(&pattern("640x360"), &node.rtmp_url("resize"));
    node.wait_live("resize", Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let started = client
        .post(node.url("/api/v1/streams/resize/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The publisher comes back within the reconnect grace, at another size.
    drop(first);
    let _second = Encoder::flv(&pattern("320x240"), &node.rtmp_url("resize"));
    tokio::time::sleep(Duration::from_secs(7)).await;

    // Live: the new segments name their own init segment after a discontinuity, and both
    // init segments are served.
    let live = client
        .get(node.url("/hls/resize/source/index.m3u8"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let maps: Vec<String> = live
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .map(|l| l.trim_end_matches('"').to_owned())
        .collect();
    assert_eq!(maps.len(), 2, "{live}");
    assert_ne!(maps[0], maps[1]);
    assert!(live.contains("#EXT-X-DISCONTINUITY"), "{live}");
    for init in &maps {
        let response = client
            .get(node.url(&format!("/hls/resize/source/{init}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{init}");
    }

    // Recorded: the VOD playlist carries both, and every frame decodes, on both sides of
    // the change.
    let stopped: serde_json::Value = client
        .delete(node.url("/api/v1/streams/resize/recording"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = stopped["id"].as_str().unwrap();
    let listed = decodes_completely(&node, id, "source").await;
    assert!(listed >= 9.0, "{listed} s recorded");
    let vod = reqwest::get(node.url(&format!("/recordings/{id}/source/index.m3u8")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(vod.matches("#EXT-X-MAP").count(), 2, "{vod}");
}
