//! Encoders come back: an RTMP or SRT publisher whose connection hangs (the encoder froze,
//! its network stalled) is replaced at once by the same encoder reconnecting, and one that
//! dropped its connection is welcomed back within the grace period; either way the viewers
//! stay and get the new connection's frames whole and in order.

use std::time::{Duration, Instant};

use crate::support::encoder::{Encoder, H264File, assert_contiguous_run};
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

#[derive(Clone, Copy)]
enum Pushed {
    Rtmp,
    Srt,
}

impl Pushed {
    fn name(self) -> &'static str {
        match self {
            Pushed::Rtmp => "rtmp",
            Pushed::Srt => "srt",
        }
    }

    fn publish(self, node: &Node, args: &[String], stream: &str) -> Encoder {
        match self {
            Pushed::Rtmp => Encoder::flv(args, &node.rtmp_url(stream)),
            Pushed::Srt => {
                Encoder::mpegts(args, &node.srt_url(&format!("streamid=publish:{stream}")))
            }
        }
    }
}

/// How the first connection goes away.
#[derive(Clone, Copy, PartialEq)]
enum Gone {
    /// Frozen: the connection stays open and silent.
    Silent,
    /// Killed: the connection is closed (RTMP) or simply stops (SRT).
    Dropped,
}

async fn a_returning_publisher_keeps_the_viewers(protocol: Pushed, gone: Gone) {
    let node = Node::start(&[]).await;
    let stream = format!("{}-return", protocol.name());
    let source = H264File::encode(30, &stream);
    let args = source.args(None);
    let mut first = Some(protocol.publish(&node, &args, &stream));
    node.wait_live(&stream, Duration::from_secs(20)).await;
    let mut viewer = Viewer::connect(&node.ip, &node.url(&format!("/whep/{stream}")), None)
        .await
        .expect("viewer");
    assert!(viewer.collect(30, Duration::from_secs(3)).await.len() >= 30);

    match gone {
        Gone::Silent => first.as_ref().unwrap().pause(),
        Gone::Dropped => first = None,
    }
    let started = Instant::now();
    let _second = protocol.publish(&node, &args, &stream);
    wait_for(
        "the returning publisher is live",
        Duration::from_secs(10),
        || async {
            let (_, info) = node.json(&format!("/api/v1/streams/{stream}")).await;
            info["state"] == "live"
                && info["publisher"]["connected_secs"].as_f64()
                    < Some(started.elapsed().as_secs_f64())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the {} publisher was back after {:?}",
        protocol.name(),
        started.elapsed()
    );
    if gone == Gone::Silent {
        let (_, ended) = node.json("/api/v1/sessions/ended").await;
        assert!(
            ended["sessions"].as_array().is_some_and(|s| s
                .iter()
                .any(|e| e["outcome"] == "replaced" && e["protocol"] == protocol.name())),
            "the silent session ended as replaced: {ended}"
        );
    }
    // The viewer that stayed sees the new publisher's frames, whole and in order (from its
    // first keyframe; what arrived before was the old publisher's).
    let back_at = Instant::now();
    let received = viewer.collect(150, Duration::from_secs(5)).await;
    let from_keyframe: Vec<_> = received
        .into_iter()
        .filter(|u| u.at >= back_at)
        .skip_while(|u| !u.keyframe)
        .collect();
    assert!(
        from_keyframe.len() >= 60,
        "the viewer gets the new publisher's frames ({})",
        from_keyframe.len()
    );
    assert_contiguous_run(&from_keyframe, &source.units, "the viewer that stayed");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_rtmp_publisher_takes_over_from_its_silent_connection_and_viewers_stay() {
    a_returning_publisher_keeps_the_viewers(Pushed::Rtmp, Gone::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_srt_publisher_takes_over_from_its_silent_connection_and_viewers_stay() {
    a_returning_publisher_keeps_the_viewers(Pushed::Srt, Gone::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srt_publisher_that_dropped_and_reconnects_within_the_grace_keeps_its_viewers() {
    a_returning_publisher_keeps_the_viewers(Pushed::Srt, Gone::Dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmp_publisher_that_dropped_and_reconnects_within_the_grace_keeps_its_viewers() {
    a_returning_publisher_keeps_the_viewers(Pushed::Rtmp, Gone::Dropped).await;
}
