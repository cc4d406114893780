//! `GET /api/v1/streams/{stream}/snapshot.jpg`: a picture of a live stream that a real JPEG
//! reader (FFmpeg's) opens at the stream's resolution, from any node of the cluster; clear
//! refusals for streams that are not live.

use std::process::Command;
use std::time::Duration;

use crate::support::encoder::{Encoder, H264File};
use crate::support::media::scratch_file;
use crate::support::node::Node;

/// `GET` the snapshot, following redirects: status, content type, body.
async fn snapshot(node: &Node, stream: &str) -> (u16, String, Vec<u8>) {
    let response = reqwest::get(node.url(&format!("/api/v1/streams/{stream}/snapshot.jpg")))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// `(width, height)` of a JPEG as ffprobe reads it.
fn dimensions(jpeg: &[u8]) -> String {
    let path = scratch_file("snapshot.jpg");
    std::fs::write(&path, jpeg).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    String::from_utf8_lossy(&probe.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_has_a_snapshot_any_jpeg_reader_opens_from_any_node() {
    let nodes = Node::cluster(2, "e2e-snapshot", &[]).await;
    let source = H264File::encode(30, "snapshot");
    let _encoder = Encoder::flv(&source.args(None), &nodes[0].rtmp_url("lobby"));
    nodes[0].wait_live("lobby", Duration::from_secs(20)).await;

    for node in &nodes {
        let (status, content_type, jpeg) = snapshot(node, "lobby").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&jpeg));
        assert_eq!(content_type, "image/jpeg");
        assert_eq!(dimensions(&jpeg), "mjpeg,640,360", "a 640x360 picture");
    }
    let (status, _, body) = snapshot(&nodes[1], "nobody-here").await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = snapshot(&nodes[1], "bad id!").await;
    assert_eq!(status, 400);
    let metrics = nodes[0].metrics().await;
    assert!(metrics.contains("cascade_snapshots_total"), "{metrics}");
}
