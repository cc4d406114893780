//! LL-HLS on the origin: FFmpeg publishes RTMP (B-frames, AAC) with a ladder; FFmpeg, as a
//! player without LL-HLS support, reads the live playlists and decodes ten seconds of every
//! rendition; a blocking playlist reload returns as soon as the part it names exists, and one
//! too far ahead is refused.

use std::time::{Duration, Instant};

use crate::support::encoder::{Encoder, b_frame_pattern};
use crate::support::media::{probe_frames, probe_result};
use crate::support::node::Node;

/// The newest part of a media playlist: (media sequence number, part index).
fn newest_part(playlist: &str) -> (u64, u64) {
    let hint = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part"))
        .expect("a preload hint");
    let (msn, rest) = hint.split_once('.').unwrap();
    let index: u64 = rest.split_once('.').unwrap().0.parse().unwrap();
    (msn.parse().unwrap(), index)
}

/// ffprobe decoding the first ten seconds of `stream` of the HLS playlist at `url`, printing
/// `fields` and the number of frames read.
fn ten_seconds_of(url: &str, stream: &str, fields: &str) -> std::process::Child {
    probe_frames(url, stream, fields, Some(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_ten_seconds_of_every_rendition_and_blocking_reloads_wait_for_their_part() {
    let _turn = crate::support::one_heavy_test_at_a_time().await;
    let node = Node::start(&["--ladder", "180p:250"]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, true), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;
    crate::support::wait_for("the renditions", Duration::from_secs(20), || async {
        let (_, stream) = node.json("/api/v1/streams/show").await;
        stream["tracks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "video/180p"))
    })
    .await;

    let client = reqwest::Client::new();
    let multivariant = client
        .get(node.url("/hls/show/index.m3u8"))
        .send()
        .await
        .unwrap();
    assert_eq!(multivariant.status(), 200);
    assert_eq!(
        multivariant.headers()["cache-control"],
        "max-age=2",
        "a short-lived multivariant playlist"
    );
    let text = multivariant.text().await.unwrap();
    for rendition in ["source/index.m3u8", "360p/index.m3u8", "180p/index.m3u8"] {
        assert!(text.contains(rendition), "{rendition} listed: {text}");
    }
    assert!(text.contains("RESOLUTION=320x180"), "{text}");
    assert!(
        text.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\"")
            && text.contains("mp4a.40.2")
            && text.contains("AUDIO=\"aac\""),
        "the AAC rendition is every variant's audio: {text}"
    );
    assert!(
        text.contains("GROUP-ID=\"opus\"")
            && text.contains(",opus\"")
            && text.contains("AUDIO=\"opus\""),
        "each variant again with Opus: {text}"
    );

    // FFmpeg reads each rendition as an ordinary live HLS stream: ten seconds decode
    // without an error, at the rendition's size.
    let probes: Vec<_> = [
        ("source", "640,360"),
        ("360p", "640,360"),
        ("180p", "320,180"),
    ]
    .into_iter()
    .map(|(rendition, size)| {
        let url = node.url(&format!("/hls/show/{rendition}/index.m3u8"));
        (rendition, size, ten_seconds_of(&url, "v:0", "width,height"))
    })
    .collect();
    let audio = ten_seconds_of(
        &node.url("/hls/show/aac/index.m3u8"),
        "a:0",
        "codec_name,sample_rate",
    );
    let opus = ten_seconds_of(
        &node.url("/hls/show/opus/index.m3u8"),
        "a:0",
        "codec_name,sample_rate",
    );
    for (rendition, size, probe) in probes {
        let (got_size, frames) = probe_result(probe).unwrap_or_else(|e| panic!("{rendition}: {e}"));
        assert_eq!(got_size, size, "{rendition}");
        assert!(
            frames >= 270,
            "{rendition}: {frames} frames decoded in 10 s"
        );
    }
    // The stream's AAC, and the transcoder's Opus (made for WebRTC viewers), which is an
    // audio rendition too, for players that take Opus in fMP4.
    for (name, probe, codec_rate, least) in [
        ("aac", audio, "aac,44100", 400),
        ("opus", opus, "opus,48000", 480),
    ] {
        let (got, frames) = probe_result(probe).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, codec_rate, "{name}");
        assert!(frames >= least, "{name}: {frames} frames decoded in 10 s");
    }

    // Blocking reload: ask for the part after the newest; the answer comes once it exists.
    let url = node.url("/hls/show/360p/index.m3u8");
    let playlist = client.get(&url).send().await.unwrap();
    assert_eq!(playlist.headers()["cache-control"], "max-age=1");
    let text = playlist.text().await.unwrap();
    for other in ["../source/index.m3u8", "../180p/index.m3u8"] {
        assert!(
            text.contains(&format!("#EXT-X-RENDITION-REPORT:URI=\"{other}\"")),
            "reports the other renditions: {text}"
        );
    }
    let (msn, part) = newest_part(&text);
    let asked = Instant::now();
    let blocked = client
        .get(format!("{url}?_HLS_msn={msn}&_HLS_part={part}"))
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(blocked.status(), 200);
    let text = blocked.text().await.unwrap();
    assert!(
        text.contains(&format!("part{msn}.{part}.m4s")),
        "the answer lists the part: {text}"
    );
    assert!(
        waited < Duration::from_millis(900),
        "answered within about a part of it being written: {waited:?}"
    );
    let part_bytes = client
        .get(node.url(&format!("/hls/show/360p/part{msn}.{part}.m4s")))
        .send()
        .await
        .unwrap();
    assert_eq!(part_bytes.status(), 200);
    assert!(
        part_bytes.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert_eq!(&part_bytes.bytes().await.unwrap()[4..8], b"moof");
    let far = client
        .get(format!("{url}?_HLS_msn={}", msn + 5))
        .send()
        .await
        .unwrap();
    assert_eq!(far.status(), 400, "too far ahead");

    let metrics = node.metrics().await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cascade_hls_playlist_age_seconds{stream=\"show\"} "))
        .expect("the freshness gauge")
        .parse()
        .unwrap();
    assert!(age < 2.0, "the newest part is fresh: {age} s");
}
