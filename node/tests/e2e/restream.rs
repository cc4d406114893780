//! Restreaming to RTMP destinations, against FFmpeg listening as an RTMP server (what a
//! recorder or a platform ingest looks like from here): the output is a decodable H.264 + AAC
//! stream by `ffprobe`; a target that refuses the connection shows as retrying with its
//! error and costs nothing to the stream or the other target.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::encoder::{Encoder, H264File};
use crate::support::node::Node;
use crate::support::wait_for;

async fn post_json(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn restreams(node: &Node, stream: &str) -> Vec<serde_json::Value> {
    let (_, list) = node
        .json(&format!("/api/v1/streams/{stream}/restreams"))
        .await;
    list["restreams"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_restreamed_to_an_rtmp_receiver_and_a_refusing_target_only_fails_itself() {
    let node = Node::start(&[]).await;
    let source = H264File::encode(30, "restream-source");
    let _encoder = Encoder::flv(&source.args(Some(44100)), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;

    // A target nobody listens on: refused at once, retried with backoff.
    let refusing = format!("rtmp://{}:19352/live/nobody-home", node.ip);
    let (status, failing) = post_json(
        &node.url("/api/v1/streams/show/restreams"),
        serde_json::json!({ "url": refusing }),
    )
    .await;
    assert_eq!(status, 201, "{failing}");
    assert_eq!(
        failing["target"],
        format!("rtmp://{}:19352/live/<key>", node.ip),
        "the key is never shown"
    );

    // FFmpeg as the receiving RTMP server, recording what it gets for six seconds.
    let recording =
        std::env::temp_dir().join(format!("cascade-e2e-{}-restream.flv", std::process::id()));
    let receiver_url = format!("rtmp://{}:19351/live/secret-key", node.ip);
    let mut receiver = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-listen",
            "1",
            "-i",
            &receiver_url,
        ])
        .args(["-c", "copy", "-t", "6", "-f", "flv"])
        .arg(&recording)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    tokio::time::sleep(Duration::from_millis(500)).await; // until it listens
    let (status, good) = post_json(
        &node.url("/api/v1/streams/show/restreams"),
        serde_json::json!({ "url": receiver_url }),
    )
    .await;
    assert_eq!(status, 201, "{good}");
    let good_id = good["id"].as_u64().unwrap();
    wait_for(
        "the restream to FFmpeg is live",
        Duration::from_secs(10),
        || async {
            restreams(&node, "show").await.iter().any(|r| {
                r["id"] == good_id
                    && r["state"] == "live"
                    && r["bytes_sent"].as_u64() > Some(10_000)
            })
        },
    )
    .await;
    wait_for(
        "the refusing target shows its error, retrying",
        Duration::from_secs(10),
        || async {
            restreams(&node, "show").await.iter().any(|r| {
                r["id"] == failing["id"]
                    && r["state"] != "live"
                    && r["attempts"].as_u64() >= Some(2)
                    && r["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot connect"))
            })
        },
    )
    .await;

    // The receiver got a decodable stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = receiver.kill();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&recording)
        .output()
        .unwrap();
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let video_frames: u64 = streams
        .lines()
        .find_map(|l| l.strip_prefix("h264,"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("an H.264 stream in the recording: {streams}"));
    assert!(
        video_frames >= 120,
        "six seconds of 30 fps video decoded: {video_frames} frames ({streams})"
    );
    assert!(
        streams.lines().any(|l| l.starts_with("aac,")),
        "AAC audio too: {streams}"
    );
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&recording)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "the recording decodes without errors: {}",
        String::from_utf8_lossy(&decode.stderr)
    );

    // The stream never noticed; the failing target is removed.
    let (_, stream) = node.json("/api/v1/streams/show").await;
    assert_eq!(stream["state"], "live", "{stream}");
    let client = reqwest::Client::new();
    let remove = |id: &serde_json::Value| {
        client
            .delete(node.url(&format!("/api/v1/streams/show/restreams/{id}")))
            .send()
    };
    assert_eq!(remove(&failing["id"]).await.unwrap().status().as_u16(), 200);
    assert_eq!(remove(&failing["id"]).await.unwrap().status().as_u16(), 404);
    assert!(
        restreams(&node, "show")
            .await
            .iter()
            .all(|r| r["id"] != failing["id"])
    );
    let metrics = node.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cascade_restream_failures_total")),
        "{metrics}"
    );
    let (status, _) = post_json(
        &node.url("/api/v1/streams/show/restreams"),
        serde_json::json!({ "url": "http://not-rtmp/x/y" }),
    )
    .await;
    assert_eq!(status, 400, "a URL that is no RTMP is refused");
    let _ = std::fs::remove_file(recording);
}
