//! A webrtc-rs publisher sends real H.264 (libx264) and Opus over WHIP; three webrtc-rs viewers
//! receive over WHEP; every access unit arrives intact and in order, and audio arrives too.
//! The viewers' engine runs as two shards: the viewers are spread over both, behind one port.

use std::sync::atomic::Ordering;

use crate::support::media::{encode_h264, encode_opus, fingerprint, nal_units};
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_unit_reaches_three_viewers_intact_and_in_order() {
    let video = encode_h264(4, 30);
    let audio = encode_opus(4);
    let node = Node::start(&["--webrtc-threads", "2"]).await;
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/interop"), None)
        .await
        .expect("WHIP accepted");
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(
            Viewer::connect(&node.ip, &node.url("/whep/interop"), None)
                .await
                .expect("WHEP accepted"),
        );
    }
    publisher.stream(&video, &audio).await;

    let sent: Vec<[u8; 32]> = video.iter().map(|au| fingerprint(&nal_units(au))).collect();
    for (i, viewer) in viewers.iter_mut().enumerate() {
        viewer
            .assert_received_exactly(&sent, &format!("viewer {i}"))
            .await;
        let audio_packets = viewer.audio_packets.load(Ordering::Relaxed);
        assert!(
            audio_packets as usize > audio.len() / 2,
            "viewer {i} got only {audio_packets} audio packets of {}",
            audio.len()
        );
    }

    let (status, info) = node.json("/api/v1/streams/interop").await;
    assert_eq!(status, 200);
    assert_eq!(info["viewers"], 3);
    assert_eq!(info["publisher"]["protocol"], "whip");
    let video_track = info["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .unwrap();
    assert_eq!(
        (
            video_track["width"].as_u64(),
            video_track["height"].as_u64()
        ),
        (Some(640), Some(360))
    );
    assert_eq!(video_track["codec"], "H264");
    let on_fast_path = node
        .metric_sum("cascade_webrtc_fast_path_tracks_total")
        .await;
    assert_eq!(
        on_fast_path, 6.0,
        "every viewer's video and audio went on the fast path"
    );
    let metrics = node.metrics().await;
    let on_shard = |shard: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("cascade_webrtc_shard_sessions")
                    && l.contains("engine=\"viewers\"")
                    && l.contains(&format!("shard=\"{shard}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        (on_shard("0"), on_shard("1")),
        (Some(2.0), Some(1.0)),
        "the viewers were spread over both shards"
    );
}
