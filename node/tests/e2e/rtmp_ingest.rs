//! RTMP ingest from Debian's FFmpeg, the encoder users run (OBS speaks the same RTMP): its
//! frames reach a WHEP viewer on another node of a three-node cluster intact and in order;
//! without a transcoder, sources WebRTC cannot carry as they are get the documented answer; bad publishers are
//! closed and counted without touching a live stream.

use std::time::Duration;

use crate::support::encoder::{Encoder, H264File, assert_contiguous_run, b_frame_pattern};
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_publisher_reaches_a_whep_viewer_on_another_node_intact_and_in_order() {
    // Without the transcoder role: AAC is left out, and the API says so.
    let nodes = Node::cluster(3, "e2e-rtmp-token", &["--roles", "origin,edge"]).await;
    let source = H264File::encode(25, "rtmp-show");
    let _encoder = Encoder::flv(&source.args(Some(44100)), &nodes[0].rtmp_url("rtmp-show"));
    nodes[0]
        .wait_live("rtmp-show", Duration::from_secs(20))
        .await;

    let (_, stream) = nodes[0].json("/api/v1/streams/rtmp-show").await;
    assert_eq!(stream["publisher"]["protocol"], "rtmp", "{stream}");
    let tracks = stream["tracks"].as_array().unwrap();
    let video = tracks
        .iter()
        .find(|t| t["name"] == "video/source")
        .expect("a video track");
    assert_eq!(video["codec"], "H264", "{stream}");
    assert_eq!(video["timescale"], 90_000, "{stream}");
    assert!(
        video["codec_string"]
            .as_str()
            .unwrap()
            .starts_with("avc1.42"),
        "{stream}"
    );
    let audio = tracks
        .iter()
        .find(|t| t["name"] == "audio/source")
        .expect("an audio track");
    assert_eq!(audio["codec"], "AAC", "{stream}");
    assert_eq!(audio["sample_rate"], 44_100, "{stream}");
    assert_eq!(audio["timescale"], 44_100, "{stream}");
    // AAC cannot go to WebRTC viewers as it is: they get video only, and the API says so.
    assert_eq!(stream["webrtc"]["playable"], true, "{stream}");
    assert_eq!(stream["webrtc"]["video"], "video/source", "{stream}");
    assert!(stream["webrtc"]["audio"].is_null(), "{stream}");
    assert_eq!(
        stream["webrtc"]["left_out"][0]["track"], "audio/source",
        "{stream}"
    );

    // The viewer asks another node, which pulls the stream over the relay.
    let mut viewer = Viewer::connect(&nodes[1].ip, &nodes[1].url("/whep/rtmp-show"), None)
        .await
        .expect("the edge serves a WHEP viewer of the RTMP stream");
    let received = viewer.collect(150, Duration::from_secs(5)).await;
    assert!(
        received.len() >= 150,
        "the viewer decoded {} frames in 5 s",
        received.len()
    );
    assert!(received[0].keyframe, "it starts at a keyframe");
    assert_contiguous_run(&received, &source.units, "the WHEP viewer on another node");
    assert_eq!(
        viewer
            .audio_packets
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no AAC is sent as if it were Opus"
    );
    let (_, edge) = nodes[1].json("/api/v1/streams/rtmp-show").await;
    assert_eq!(edge["publisher"]["protocol"], "relay", "{edge}");
    // The relay carries the catalog as the origin has it; the edge says it got each track
    // over the relay.
    let mut edge_tracks = edge["tracks"].clone();
    for track in edge_tracks.as_array_mut().unwrap() {
        assert_eq!(track["relayed"], true, "{edge}");
        track.as_object_mut().unwrap().remove("relayed");
    }
    assert_eq!(
        edge_tracks,
        stream["tracks"].clone(),
        "the relay carries the catalog as the origin has it"
    );

    // An RTMP publisher of the same stream on a third node is refused: it is live elsewhere.
    let (ok, said) = Encoder::try_flv(&nodes[2].rtmp_url("rtmp-show"));
    assert!(
        !ok && said.contains("already has a live publisher on node"),
        "FFmpeg shows why: {said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_webrtc_cannot_carry_as_they_are_get_the_reason_instead_of_bad_pictures() {
    // Without the transcoder role, nothing makes a rendition WebRTC can carry.
    let node = Node::start(&["--roles", "origin,edge"]).await;
    let _bframes = Encoder::flv(&b_frame_pattern(60, false), &node.rtmp_url("with-bframes"));
    let _aac_only = Encoder::flv(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-c:a",
            "aac",
        ],
        &node.rtmp_url("aac-only"),
    );
    node.wait_live("with-bframes", Duration::from_secs(20))
        .await;
    node.wait_live("aac-only", Duration::from_secs(20)).await;
    wait_for(
        "the B-frames are noticed",
        Duration::from_secs(10),
        || async {
            let (_, stream) = node.json("/api/v1/streams/with-bframes").await;
            stream["webrtc"]["playable"] == false
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/with-bframes").await;
    assert_eq!(stream["tracks"][0]["bframes"], true, "{stream}");
    assert!(
        stream["webrtc"]["reason"]
            .as_str()
            .unwrap()
            .contains("B-frames"),
        "{stream}"
    );

    let (status, body) = Viewer::connect(&node.ip, &node.url("/whep/with-bframes"), None)
        .await
        .err()
        .expect("a B-frame source is not offered over WHEP");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("B-frames"), "{body}");

    let (status, body) = Viewer::connect(&node.ip, &node.url("/whep/aac-only"), None)
        .await
        .err()
        .expect("an AAC-only source is not offered over WHEP");
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("AAC"), "{body}");
    let metrics = node.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cascade_webrtc_unplayable_total") && l.contains("b_frames")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unauthorised_rtmp_publishers_are_closed_and_counted_while_a_live_stream_plays_on()
 {
    let node = Node::start(&["--publish-token", "pub-secret"]).await;
    let source = H264File::encode(20, "rtmp-guarded");
    let _encoder = Encoder::flv(&source.args(None), &node.rtmp_url("guarded?key=pub-secret"));
    node.wait_live("guarded", Duration::from_secs(20)).await;
    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/guarded"), None)
        .await
        .expect("viewer");

    let (ok, said) = Encoder::try_flv(&node.rtmp_url("intruder"));
    assert!(
        !ok && said.contains("needs a token"),
        "FFmpeg shows why: {said}"
    );
    let (ok, said) = Encoder::try_flv(&node.rtmp_url("guarded?key=pub-secret"));
    assert!(
        !ok && said.contains("already has a live publisher"),
        "{said}"
    );

    // Bytes that are no RTMP at all, and a handshake followed by garbage chunks.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rtmp = format!("{}:{}", node.ip, crate::support::node::RTMP_PORT);
    let mut http = tokio::net::TcpStream::connect(&rtmp).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), http.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the node closes a connection that is no RTMP"
    );
    let mut garbage = tokio::net::TcpStream::connect(&rtmp).await.unwrap();
    let mut hello = vec![3u8];
    hello.extend(std::iter::repeat_n(0u8, 1536 * 2));
    garbage.write_all(&hello).await.unwrap();
    // A chunk that continues a message on a chunk stream that never started one.
    garbage.write_all(&[0xc5, 1, 2, 3]).await.unwrap();
    let mut sink = Vec::new();
    // Closed for what it sent, well before the 10 s silence limit.
    let closed = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the node closes a connection that sends garbage chunks"
    );

    let metrics = node.metrics().await;
    let counted = |needle: &str| {
        metrics.lines().any(|l| {
            l.starts_with("cascade_ingest_")
                && l.contains("protocol=\"rtmp\"")
                && l.contains(needle)
        })
    };
    assert!(counted("reason=\"unauthorized\""), "{metrics}");
    assert!(counted("reason=\"already_live\""), "{metrics}");
    assert!(counted("reason=\"handshake\""), "{metrics}");
    assert!(counted("reason=\"malformed\""), "{metrics}");

    // The live stream never noticed.
    let received = viewer.collect(60, Duration::from_secs(3)).await;
    assert!(
        received.len() >= 60,
        "the viewer still gets frames ({})",
        received.len()
    );
    assert_contiguous_run(&received, &source.units, "the viewer of the live stream");
}
