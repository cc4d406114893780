//! Transcoders on other nodes than the origin, with a standby: the origin (which may not
//! transcode, `--roles origin,edge`) gets its renditions over the relay from two of three
//! transcoder nodes (`--roles transcoder`), merged into one track. SIGKILL of the node that
//! feeds the rendition costs its viewers at most the rest of one group, and so does draining
//! the active transcoder's node, which hands its transcoding over.

use std::time::Duration;

use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::media::decode_h264;
use crate::support::node::Node;
use crate::support::peer::Viewer;
use crate::support::wait_for;

/// One group of the source (a keyframe every 30 frames at 30 fps) on the 90 kHz clock, and
/// FLV's millisecond rounding: the gap between two pictures when every frame of the rest of
/// a group is lost is less than this.
const ONE_GROUP_TICKS: u32 = 90_000 + 100;

async fn assignment(observer: &Node, stream: &str) -> (Option<String>, Option<String>) {
    let (_, overview) = observer.json("/api/v1/cluster").await;
    (
        overview["transcoders"][stream].as_str().map(str::to_owned),
        overview["transcoder_standbys"][stream]
            .as_str()
            .map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_or_draining_a_transcoders_node_costs_viewers_at_most_one_group() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let token = "e2e-transcoder-standby";
    let origin = Node::start(&[
        "--token",
        token,
        "--roles",
        "origin,edge",
        "--ladder",
        "none",
        "--transcoder-standby",
        "true",
    ])
    .await;
    let join = origin.join_addr();
    let mut transcoders = Vec::new();
    for _ in 0..3 {
        transcoders
            .push(Node::start(&["--join", &join, "--token", token, "--roles", "transcoder"]).await);
    }
    let mut ids = Vec::new();
    for node in &transcoders {
        ids.push(node.id().await);
    }

    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &origin.rtmp_url("relayed"));
    origin.wait_live("relayed", Duration::from_secs(20)).await;
    wait_for(
        "an active and a standby transcoder on the two transcoder nodes",
        Duration::from_secs(30),
        || async {
            let (active, standby) = assignment(&origin, "relayed").await;
            active.is_some_and(|a| ids.contains(&a)) && standby.is_some_and(|s| ids.contains(&s))
        },
    )
    .await;
    let (active, standby) = assignment(&origin, "relayed").await;
    let (active, standby) = (active.unwrap(), standby.unwrap());
    assert_ne!(active, standby);
    wait_for(
        "the origin has the renditions made elsewhere",
        Duration::from_secs(30),
        || async {
            let (_, stream) = origin.json("/api/v1/streams/relayed").await;
            stream["webrtc"]["video"] == "video/360p" && stream["webrtc"]["audio"] == "audio/opus"
        },
    )
    .await;
    let (_, stream) = origin.json("/api/v1/streams/relayed").await;
    assert!(
        stream["transcoder"].is_null(),
        "the origin itself runs no transcoder: {stream}"
    );

    let mut viewer = Viewer::connect(&origin.ip, &origin.url("/whep/relayed"), None)
        .await
        .expect("a viewer of the rendition at the origin");
    let before = viewer.collect(60, Duration::from_secs(5)).await;
    assert!(before.len() >= 60, "got {}", before.len());

    // SIGKILL of the node whose frames the origin takes now (the merge keeps whichever
    // transcoder's group came first, active or standby).
    let (_, stream) = origin.json("/api/v1/streams/relayed").await;
    let feeding = stream["renditions_from"]["video/360p"]
        .as_str()
        .unwrap_or_else(|| panic!("the API says who feeds the rendition: {stream}"))
        .to_owned();
    assert!(feeding == active || feeding == standby, "{stream}");
    let victim = ids.iter().position(|id| *id == feeding).unwrap();
    let survivor = if feeding == active { &standby } else { &active }.clone();
    let spare = ids
        .iter()
        .find(|id| **id != active && **id != standby)
        .unwrap()
        .clone();
    transcoders[victim].kill();
    let after = viewer.collect(150, Duration::from_secs(5)).await;
    assert_at_most_one_group_lost(before, after, "SIGKILL");
    assert!(
        viewer
            .audio_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100,
        "Opus keeps coming"
    );

    wait_for(
        "the surviving transcoder is the active one, the spare node the standby",
        Duration::from_secs(20),
        || async {
            assignment(&origin, "relayed").await == (Some(survivor.clone()), Some(spare.clone()))
        },
    )
    .await;
    let (_, stream) = origin.json("/api/v1/streams/relayed").await;
    let feeding = &stream["renditions_from"]["video/360p"];
    assert!(
        *feeding == survivor.as_str() || *feeding == spare.as_str(),
        "a live transcoder feeds the rendition: {stream}"
    );

    // Draining the active transcoder's node hands its transcoding to the standby.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = viewer.collect(30, Duration::from_secs(3)).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["node", "--api", &origin.join_addr(), "drain", &survivor])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "the drained node's transcoding goes to the standby",
        Duration::from_secs(20),
        || async { assignment(&origin, "relayed").await == (Some(spare.clone()), None) },
    )
    .await;
    let after = viewer.collect(90, Duration::from_secs(5)).await;
    assert_at_most_one_group_lost(before, after, "drain");
    let (_, stream) = origin.json("/api/v1/streams/relayed").await;
    assert_eq!(
        stream["renditions_from"]["video/360p"],
        spare.as_str(),
        "{stream}"
    );
    let drained = ids.iter().position(|id| *id == survivor).unwrap();
    wait_for(
        "the drained node stops transcoding",
        Duration::from_secs(10),
        || async {
            let (_, info) = transcoders[drained].json("/api/v1/streams/relayed").await;
            info["transcoder"].is_null()
        },
    )
    .await;
}

/// Pictures received `before` and `after` an event: every gap between two is less than a
/// group, the viewer never waited much longer, and they decode.
fn assert_at_most_one_group_lost(
    before: Vec<crate::support::peer::ReceivedUnit>,
    after: Vec<crate::support::peer::ReceivedUnit>,
    event: &str,
) {
    assert!(
        after.len() >= 90,
        "{event}: pictures keep coming: got {}",
        after.len()
    );
    let mut all = before;
    all.extend(after);
    let longest = all
        .windows(2)
        .map(|w| w[1].rtp_timestamp.wrapping_sub(w[0].rtp_timestamp))
        .max()
        .unwrap();
    assert!(
        longest <= ONE_GROUP_TICKS,
        "{event}: the longest gap between pictures is {longest} ticks, more than one group"
    );
    let waited = all
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap();
    assert!(
        waited <= Duration::from_millis(1300),
        "{event}: the viewer waited {waited:?} for a picture"
    );
    let from_key = all.iter().position(|u| u.keyframe).unwrap();
    let units: Vec<Vec<u8>> = all[from_key..].iter().map(|u| u.data.clone()).collect();
    let decoded = decode_h264(&units);
    assert!(
        decoded.errors.trim().is_empty(),
        "{event}: the pictures decode: {}",
        decoded.errors
    );
}
