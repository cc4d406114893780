//! Adaptive bitrate: a WebRTC viewer (the `webrtc` crate, which sends transport-wide
//! congestion feedback as browsers do) watches through a link whose rate the test changes
//! (`support::link`: a bottleneck with a queue, like `tc tbf`). Throttled, it steps down to
//! the smaller rendition; when the link recovers it steps back up; each switch happens at a
//! group start, so every picture after it decodes and none is skipped.

use std::time::Duration;

use cascade_protocol::h264::resolution_of_access_unit;

use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::link::ShapedLink;
use crate::support::media::decode_h264;
use crate::support::node::Node;
use crate::support::peer::{ReceivedUnit, Viewer};
use crate::support::wait_for;

/// How long the viewer waits for a retransmission to fill a gap, as a browser's jitter buffer
/// does. It is needed: below the top rung the node asks str0m's estimator to probe for the
/// next one up, and a probe above the throttled link's rate overflows its queue; a player
/// repairs those losses with NACKs, and a viewer without a jitter buffer broke a picture in
/// about one run in six (the retransmission came after the packets behind the gap).
const PLAYER_JITTER_BUFFER: Duration = Duration::from_millis(600);

/// One frame at 30 fps on the 90 kHz RTP clock, give or take FLV's millisecond rounding
/// (33 or 34 ms).
const ONE_FRAME_TICKS: std::ops::RangeInclusive<u32> = 2900..=3100;

/// Receives until a keyframe of `size` arrives (returned with what came before it), or
/// `limit` passes.
async fn until_keyframe_of(
    viewer: &mut Viewer,
    size: (u32, u32),
    limit: Duration,
) -> (Vec<ReceivedUnit>, Option<ReceivedUnit>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut before = Vec::new();
    while let Ok(Some(unit)) = tokio::time::timeout_at(deadline, viewer.video.recv()).await {
        if unit.keyframe && resolution_of_access_unit(&unit.data) == Some(size) {
            return (before, Some(unit));
        }
        before.push(unit);
    }
    (before, None)
}

/// The units from the last keyframe on: a decoder's whole view of the current group.
fn last_group(units: &[ReceivedUnit]) -> &[ReceivedUnit] {
    let start = units.iter().rposition(|u| u.keyframe).unwrap_or(0);
    &units[start..]
}

fn assert_decodes(units: &[ReceivedUnit], what: &str) -> Vec<(String, u32, u32)> {
    let data: Vec<Vec<u8>> = units.iter().map(|u| u.data.clone()).collect();
    let decoded = decode_h264(&data);
    if decoded.pictures.len() != data.len() {
        let timestamps: Vec<u32> = units.iter().map(|u| u.rtp_timestamp).collect();
        eprintln!(
            "{what}: RTP timestamps {timestamps:?}, pictures {:?}",
            decoded.pictures
        );
    }
    assert_eq!(
        decoded.pictures.len(),
        data.len(),
        "{what}: every frame decodes: {}",
        decoded.errors
    );
    assert!(
        decoded.errors.trim().is_empty(),
        "{what}: {}",
        decoded.errors
    );
    decoded.pictures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_a_throttled_link_steps_down_a_rung_and_back_up_without_a_broken_picture() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&["--ladder", "180p:250"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("abr"));
    node.wait_live("abr", Duration::from_secs(20)).await;
    wait_for("both renditions", Duration::from_secs(20), || async {
        let (_, stream) = node.json("/api/v1/streams/abr").await;
        let names: Vec<String> = stream["tracks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.iter().any(|n| n == "video/360p") && names.iter().any(|n| n == "video/180p")
    })
    .await;
    let media = format!("{}:18443", node.ip).parse().unwrap();
    let link = ShapedLink::start(&node.ip, media).await;
    let mut viewer = Viewer::connect_with(
        &node.ip,
        &node.url("/whep/abr"),
        None,
        Some(&link),
        Some(PLAYER_JITTER_BUFFER),
    )
    .await
    .expect("a WHEP viewer behind the link");

    // A good link: the top rendition.
    let good = viewer.collect(60, Duration::from_secs(5)).await;
    assert!(good.len() >= 60, "got {} frames", good.len());
    let pictures = assert_decodes(last_group(&good), "on a good link");
    assert!(
        pictures.iter().all(|(_, w, h)| (*w, *h) == (640, 360)),
        "{pictures:?}"
    );

    // Throttled below the top rendition's rate (691 kbit/s and Opus), well above the
    // smaller one's (250): it steps down at a group start.
    link.set_rate_kbps(600);
    let throttled = std::time::Instant::now();
    let (_, down) = until_keyframe_of(&mut viewer, (320, 180), Duration::from_secs(20)).await;
    let down = down.expect("the viewer stepped down to 320x180 within 20 s");
    eprintln!(
        "stepped down {:?} after the link was throttled",
        throttled.elapsed()
    );
    let mut small = vec![down];
    small.extend(viewer.collect(60, Duration::from_secs(3)).await);
    let pictures = assert_decodes(&small, "after stepping down");
    assert!(
        pictures.iter().all(|(_, w, h)| (*w, *h) == (320, 180)),
        "the smaller rendition fits the link: {pictures:?}"
    );

    // The link recovers: back up, with no frame missing at the switch.
    link.set_rate_kbps(0);
    let recovered = std::time::Instant::now();
    let (before, up) = until_keyframe_of(&mut viewer, (640, 360), Duration::from_secs(60)).await;
    let up = up.expect("the viewer stepped back up to 640x360 within 60 s");
    eprintln!(
        "stepped up {:?} after the link recovered",
        recovered.elapsed()
    );
    let last_small = before.last().expect("frames before stepping up");
    let step = up.rtp_timestamp.wrapping_sub(last_small.rtp_timestamp);
    assert!(
        ONE_FRAME_TICKS.contains(&step),
        "the first picture of the top rendition follows the last small one by one frame: {step} ticks"
    );
    let mut around = last_group(&before).to_vec();
    around.push(up);
    around.extend(viewer.collect(30, Duration::from_secs(3)).await);
    let pictures = assert_decodes(&around, "across the switch up");
    assert!(
        pictures.iter().any(|(_, w, _)| *w == 320) && pictures.iter().any(|(_, w, _)| *w == 640)
    );
    eprintln!(
        "packets resent for the viewer's NACKs: {}",
        node.metric_sum("cascade_webrtc_nack_resends_total").await
    );
    let switches = node.metric_sum("cascade_abr_switches_total").await;
    assert!(
        switches >= 2.0,
        "the metric counts both switches: {switches}"
    );
}
