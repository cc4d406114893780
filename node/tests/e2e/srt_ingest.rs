//! SRT ingest from Debian's FFmpeg (libsrt) as a contribution encoder: MPEG-TS with a
//! streamid in either form and the stream's passphrase reaches a WHEP viewer intact and in
//! order; a wrong passphrase, a missing one and a stream id that is no stream are refused and
//! counted while the live stream plays on.

use std::time::Duration;

use crate::support::encoder::{Encoder, H264File, assert_contiguous_run};
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

const PASSPHRASE: &str = "correct-horse-battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srt_publisher_with_the_stream_passphrase_reaches_whep_viewers_and_wrong_ones_are_refused()
 {
    let config = std::env::temp_dir().join(format!("cascade-e2e-{}-srt.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[streams.contribution]\nsrt-passphrase = \"{PASSPHRASE}\"\n"),
    )
    .unwrap();
    let node = Node::start(&["--config", config.to_str().unwrap()]).await;
    let source = H264File::encode(25, "srt-contribution");
    let _encoder = Encoder::mpegts(
        &source.args(Some(48000)),
        &node.srt_url(&format!(
            "streamid=#!::r=contribution,m=publish&passphrase={PASSPHRASE}"
        )),
    );
    node.wait_live("contribution", Duration::from_secs(20))
        .await;
    wait_for(
        "both tracks are described",
        Duration::from_secs(5),
        || async {
            let (_, stream) = node.json("/api/v1/streams/contribution").await;
            stream["tracks"].as_array().is_some_and(|t| t.len() >= 2)
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/contribution").await;
    assert_eq!(stream["publisher"]["protocol"], "srt", "{stream}");
    assert_eq!(stream["tracks"][0]["codec"], "H264", "{stream}");
    assert_eq!(stream["tracks"][1]["codec"], "AAC", "{stream}");
    assert_eq!(stream["tracks"][1]["sample_rate"], 48_000, "{stream}");
    wait_for(
        "the AAC is bridged to Opus for WebRTC viewers",
        Duration::from_secs(10),
        || async {
            let (_, stream) = node.json("/api/v1/streams/contribution").await;
            stream["webrtc"]["audio"] == "audio/opus"
        },
    )
    .await;

    let mut viewer = Viewer::connect(&node.ip, &node.url("/whep/contribution"), None)
        .await
        .expect("a WHEP viewer of the SRT stream");
    let received = viewer.collect(120, Duration::from_secs(5)).await;
    assert!(
        received.len() >= 120,
        "the viewer decoded {} frames",
        received.len()
    );
    assert!(received[0].keyframe, "it starts at a keyframe");
    assert_contiguous_run(
        &received,
        &source.units,
        "the WHEP viewer of the SRT stream",
    );
    assert!(
        viewer
            .audio_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "Opus made from the stream's AAC arrives"
    );

    // Refused while the stream plays: a second publisher (with a wrong passphrase, which is
    // never tried: the stream is live), a stream id that is no stream, an unreadable streamid.
    for (query, reason) in [
        (
            "streamid=publish:contribution&passphrase=not-the-passphrase",
            "already_live",
        ),
        ("streamid=publish:../../etc", "bad_stream_id"),
        ("streamid=nonsense", "bad_stream_id"),
    ] {
        let (ok, said) = Encoder::mpegts(
            &["-f", "lavfi", "-i", "testsrc", "-c:v", "libx264", "-t", "2"],
            &node.srt_url(query),
        )
        .refusal();
        assert!(!ok, "{query} is refused: {said}");
        let metrics = node.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("cascade_ingest_refusals_total")
                    && l.contains("protocol=\"srt\"")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{query} counted as {reason}:\n{metrics}"
        );
    }

    // The live stream played on.
    let received = viewer.collect(60, Duration::from_secs(3)).await;
    assert!(
        received.len() >= 60,
        "the viewer still gets frames ({})",
        received.len()
    );
    assert_contiguous_run(&received, &source.units, "the viewer after the refusals");
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srt_caller_without_the_passphrase_or_with_a_wrong_one_is_refused_and_counted() {
    let config = std::env::temp_dir().join(format!(
        "cascade-e2e-{}-srt-locked.toml",
        std::process::id()
    ));
    std::fs::write(
        &config,
        format!("[streams.locked]\nsrt-passphrase = \"{PASSPHRASE}\"\n"),
    )
    .unwrap();
    let node = Node::start(&["--config", config.to_str().unwrap()]).await;
    for query in [
        "streamid=publish:locked&passphrase=wrong-passphrase-1".to_owned(),
        "streamid=publish:locked".to_owned(),
    ] {
        let (ok, said) = Encoder::mpegts(
            &["-f", "lavfi", "-i", "testsrc", "-c:v", "libx264", "-t", "2"],
            &node.srt_url(&query),
        )
        .refusal();
        assert!(!ok, "{query} is refused: {said}");
    }
    let metrics = node.metrics().await;
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("cascade_ingest_refusals_total")
                && l.contains("protocol=\"srt\"")
                && l.contains("bad_passphrase")
        })
        .unwrap_or_else(|| panic!("bad passphrases counted:\n{metrics}"));
    assert!(refused.ends_with(" 2"), "{refused}");
    let (status, _) = node.json("/api/v1/streams/locked").await;
    assert_eq!(status, 404, "a refused caller leaves no stream behind");

    // The known srt-protocol 0.4.4 hazard (roles/src/origin/srt.rs): an encrypting caller
    // on a stream without a passphrase panics its listener task. The node listens again at
    // once and the next caller publishes.
    let (ok, _) = Encoder::mpegts(
        &["-f", "lavfi", "-i", "testsrc", "-c:v", "libx264", "-t", "2"],
        &node.srt_url("streamid=publish:open&passphrase=a-passphrase-nobody-set"),
    )
    .refusal();
    assert!(!ok, "an encrypting caller on an open stream is not served");
    let _plain = Encoder::mpegts(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=rate=30",
            "-c:v",
            "libx264",
            "-bf",
            "0",
        ],
        &node.srt_url("streamid=publish:open"),
    );
    node.wait_live("open", Duration::from_secs(15)).await;
    let _ = std::fs::remove_file(config);
}
