//! The per-viewer fast path (issue 14: own RTP header, SRTP sealed in place, batched sends)
//! as unmodified peers see it: a webrtc-rs viewer on a link that loses one media packet in
//! ten still gets every access unit intact and in order, because its NACKs are read
//! from its SRTCP and answered from the shared payloads; a viewer beside it on a clean
//! link gets them all too.

use std::time::Duration;

use crate::support::link::ShapedLink;
use crate::support::media::{encode_h264_from, encode_opus, fingerprint, nal_units};
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_losing_one_packet_in_ten_gets_every_access_unit_resent_from_the_fast_path() {
    // Noise makes every picture several packets long: most packets are not a frame's last.
    let video = encode_h264_from(
        "testsrc=size=640x360:rate=30:duration=6,noise=alls=30:allf=t",
        30,
    );
    let audio = encode_opus(6);
    let node = Node::start(&[]).await;
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/lossy"), None)
        .await
        .expect("WHIP accepted");
    let media = format!("{}:18443", node.ip).parse().unwrap();
    let link = ShapedLink::start(&node.ip, media).await;
    // The viewer's H.264 payload type (`support::peer`): video only, since Opus is not
    // asked again.
    link.lose_every(10, 102);
    let mut lossy = Viewer::connect_with(
        &node.ip,
        &node.url("/whep/lossy"),
        None,
        Some(&link),
        Some(Duration::from_millis(600)),
    )
    .await
    .expect("a WHEP viewer behind the lossy link");
    let mut clean = Viewer::connect(&node.ip, &node.url("/whep/lossy"), None)
        .await
        .expect("a WHEP viewer on a clean link");
    publisher.stream(&video, &audio).await;

    let sent: Vec<[u8; 32]> = video.iter().map(|au| fingerprint(&nal_units(au))).collect();
    clean
        .assert_received_exactly(&sent, "the viewer on a clean link")
        .await;
    lossy
        .assert_received_exactly(&sent, "the viewer losing one packet in ten")
        .await;

    let lost = link.lost();
    let on_fast_path = node
        .metric_sum("cascade_webrtc_fast_path_tracks_total")
        .await;
    let resent = node.metric_sum("cascade_webrtc_nack_resends_total").await;
    eprintln!(
        "the link lost {lost} packets; the fast path resent {resent}; {on_fast_path} tracks on it"
    );
    assert!(lost >= 50, "the link lost only {lost} packets");
    assert!(
        on_fast_path >= 4.0,
        "both viewers' video and audio went on the fast path: {on_fast_path}"
    );
    assert!(
        resent >= lost as f64,
        "the fast path resent {resent} of {lost} lost packets"
    );
}
