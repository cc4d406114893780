//! Restreaming to RTMP destinations, against FFmpeg listening as an RTMP server (what a
//! recorder or a platform ingest looks like from here): the output is a decodable H.264 + AAC
//! stream by `ffprobe`; a target that refuses the connection shows as retrying with its
//! error and costs nothing to the stream or the other target.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::encoder::{Encoder, H264File, b_frame_pattern};
use crate::support::media::{
    beep_times, encode_h264, encode_h264_from, encode_opus, encode_opus_from, flash_times,
};
use crate::support::node::Node;
use crate::support::peer::Publisher;
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
    let receiver_url = format!("rtmp://{}:19351/live/secret-key", node.ip);
    let mut receiver = Receiver::start(&receiver_url, "restream");
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

    // The receiver got a decodable stream, with AAC audio too.
    let streams = receiver.decoded().await;
    assert!(
        streams.lines().any(|l| l.starts_with("aac,")),
        "AAC audio too: {streams}"
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
}

/// FFmpeg listening as an RTMP server (a recorder, a platform's ingest), recording six
/// seconds of what it receives.
struct Receiver {
    child: std::process::Child,
    recording: std::path::PathBuf,
}

impl Receiver {
    fn start(url: &str, name: &str) -> Receiver {
        let recording =
            std::env::temp_dir().join(format!("cascade-e2e-{}-{name}.flv", std::process::id()));
        let child = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-listen",
                "1",
                "-i",
                url,
            ])
            .args(["-c", "copy", "-t", "6", "-f", "flv"])
            .arg(&recording)
            .stdin(Stdio::null())
            .spawn()
            .expect("ffmpeg");
        Receiver { child, recording }
    }

    /// Waits for the six seconds, then checks the recording: at least 120 H.264 frames that
    /// decode without an error. Returns ffprobe's `codec,frames` lines. The recording stays
    /// until the receiver is dropped.
    async fn decoded(&mut self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.child.kill();
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
            .arg(&self.recording)
            .output()
            .unwrap();
        let streams = String::from_utf8_lossy(&probe.stdout).into_owned();
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
        let decode = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&self.recording)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            decode.status.success() && decode.stderr.is_empty(),
            "the recording decodes without errors: {}",
            String::from_utf8_lossy(&decode.stderr)
        );
        streams
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.recording);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_restreamed_over_rtmps_through_a_tls_terminator_with_its_certificate_checked() {
    // A private CA the node trusts through SSL_CERT_FILE, and stunnel (OpenSSL) terminating
    // TLS in front of FFmpeg's RTMP server, as RTMPS ingests are built.
    let dir = std::env::temp_dir().join(format!("cascade-e2e-{}-rtmps", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Cascade test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (tls_port, rtmp_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("stunnel.conf"),
        format!(
            "foreground = yes\npid =\n[rtmps]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{rtmp_port}\ncert = {}\nkey = {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let mut stunnel = Command::new("stunnel4")
        .arg(dir.join("stunnel.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel4 (the README's test command installs it)");

    let ca = dir.join("ca.pem").to_string_lossy().into_owned();
    let node = Node::start_with_env(&[], &[("SSL_CERT_FILE", &ca)]).await;
    let source = H264File::encode(30, "rtmps-source");
    let _encoder = Encoder::flv(&source.args(Some(44100)), &node.rtmp_url("secure"));
    node.wait_live("secure", Duration::from_secs(20)).await;
    let mut receiver = Receiver::start(&format!("rtmp://127.0.0.1:{rtmp_port}/live/k3y"), "rtmps");
    tokio::time::sleep(Duration::from_millis(500)).await; // until it listens
    let (status, created) = post_json(
        &node.url("/api/v1/streams/secure/restreams"),
        serde_json::json!({ "url": format!("rtmps://localhost:{tls_port}/live/k3y") }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    wait_for(
        "the RTMPS restream is live",
        Duration::from_secs(10),
        || async {
            restreams(&node, "secure")
                .await
                .iter()
                .any(|r| r["state"] == "live" && r["bytes_sent"].as_u64() > Some(10_000))
        },
    )
    .await;
    receiver.decoded().await;

    // The same target by an address its certificate does not name is refused by TLS.
    let (status, _) = post_json(
        &node.url("/api/v1/streams/secure/restreams"),
        serde_json::json!({ "url": format!("rtmps://127.0.0.1:{tls_port}/live/k3y") }),
    )
    .await;
    assert_eq!(status, 201);
    wait_for(
        "the mismatched name shows as a TLS failure",
        Duration::from_secs(10),
        || async {
            restreams(&node, "secure").await.iter().any(|r| {
                r["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("127.0.0.1"))
                    && r["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("TLS with the target failed"))
            })
        },
    )
    .await;
    let _ = stunnel.kill();
    let _ = stunnel.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_b_frames_is_restreamed_with_its_decode_and_presentation_times() {
    let node = Node::start(&[]).await;
    let _encoder = Encoder::flv(&b_frame_pattern(30, false), &node.rtmp_url("reordered"));
    node.wait_live("reordered", Duration::from_secs(20)).await;
    let mut receiver = Receiver::start(&format!("rtmp://{}:19353/live/k", node.ip), "bframes");
    tokio::time::sleep(Duration::from_millis(500)).await; // until it listens
    let (status, created) = post_json(
        &node.url("/api/v1/streams/reordered/restreams"),
        serde_json::json!({ "url": format!("rtmp://{}:19353/live/k", node.ip) }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    receiver.decoded().await;
    // Decode times strictly increase; some frames are presented later than decoded.
    let packets = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts,dts",
            "-of",
            "csv=p=0",
        ])
        .arg(&receiver.recording)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&packets.stdout);
    let times: Vec<(i64, i64)> = text
        .lines()
        .filter_map(|l| {
            let (pts, dts) = l.split_once(',')?;
            Some((pts.trim().parse().ok()?, dts.trim().parse().ok()?))
        })
        .collect();
    assert!(times.len() >= 120, "{text}");
    assert!(
        times.windows(2).all(|w| w[1].1 > w[0].1),
        "decode times strictly increase: {text}"
    );
    assert!(
        times.iter().filter(|(pts, dts)| pts > dts).count() > times.len() / 3,
        "the B-frame structure arrives (presentation after decode): {text}"
    );
    assert!(times.iter().all(|(pts, dts)| pts >= dts), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publishers_opus_gets_an_aac_track_that_goes_out_to_rtmp_and_decodes() {
    let node = Node::start(&[]).await;
    let video = encode_h264(20, 30);
    let audio = encode_opus(20);
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/webcam"), None)
        .await
        .expect("a WHIP publisher");
    let _sending = tokio::spawn(async move {
        publisher.stream(&video, &audio).await;
        publisher
    });
    wait_for(
        "the transcoder's AAC track is in the catalog",
        Duration::from_secs(15),
        || async {
            let (_, stream) = node.json("/api/v1/streams/webcam").await;
            stream["tracks"].as_array().is_some_and(|tracks| {
                tracks
                    .iter()
                    .any(|t| t["name"] == "audio/aac" && t["codec"] == "AAC")
            })
        },
    )
    .await;
    let (_, stream) = node.json("/api/v1/streams/webcam").await;
    assert_eq!(
        stream["webrtc"]["audio"], "audio/source",
        "WebRTC keeps the Opus: {stream}"
    );

    let receiver_url = format!("rtmp://{}:19353/live/aac-key", node.ip);
    let mut receiver = Receiver::start(&receiver_url, "opus-to-aac");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, created) = post_json(
        &node.url("/api/v1/streams/webcam/restreams"),
        serde_json::json!({ "url": receiver_url }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let streams = receiver.decoded().await;
    let aac_frames: u64 = streams
        .lines()
        .find_map(|l| l.strip_prefix("aac,"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("an AAC stream in the recording: {streams}"));
    // 48 kHz AAC is 46.9 frames a second; six seconds were recorded, whose video starts
    // with the cached group (up to a second old), the audio live.
    assert!(
        aac_frames >= 200,
        "{aac_frames} AAC frames decoded: {streams}"
    );
    let restreamed = restreams(&node, "webcam").await;
    assert!(
        restreamed[0]["left_out"].is_null(),
        "nothing left out: {restreamed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aac_made_from_a_whip_publishers_opus_stays_in_sync_with_its_video() {
    // A white flash and a 1 kHz beep at the same instant every two seconds.
    let video = encode_h264_from(
        "color=c=black:size=640x360:rate=30:duration=24,\
         drawbox=color=white:t=fill:enable='lt(mod(t,2),0.03)'",
        30,
    );
    let audio = encode_opus_from(
        "sine=frequency=1000:sample_rate=48000:samples_per_frame=240:duration=24,\
         volume=volume='if(lt(mod(t,2),0.1),1,0)':eval=frame",
    );
    let node = Node::start(&[]).await;
    let publisher = Publisher::connect(&node.ip, &node.url("/whip/lipsync"), None)
        .await
        .expect("a WHIP publisher");
    let _sending = tokio::spawn(async move {
        publisher.stream(&video, &audio).await;
        publisher
    });
    wait_for("the AAC track", Duration::from_secs(15), || async {
        let (_, stream) = node.json("/api/v1/streams/lipsync").await;
        stream["tracks"]
            .as_array()
            .is_some_and(|tracks| tracks.iter().any(|t| t["name"] == "audio/aac"))
    })
    .await;
    let receiver_url = format!("rtmp://{}:19354/live/lipsync", node.ip);
    let mut receiver = Receiver::start(&receiver_url, "lipsync");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, created) = post_json(
        &node.url("/api/v1/streams/lipsync/restreams"),
        serde_json::json!({ "url": receiver_url }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    receiver.decoded().await;
    let flashes = flash_times(&receiver.recording);
    let beeps = beep_times(&receiver.recording);
    let offsets: Vec<f64> = flashes
        .iter()
        .filter_map(|flash| {
            beeps
                .iter()
                .map(|beep| beep - flash)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()))
                // A flash of the cached group, before the recording's sound began, has no beep.
                .filter(|offset| offset.abs() < 1.0)
        })
        .collect();
    println!("audio minus video at each flash (s): {offsets:?}");
    assert!(
        offsets.len() >= 2,
        "flashes {flashes:?}, beeps {beeps:?} in the recording"
    );
    // Within what viewers cannot notice (ITU-R BT.1359: sound up to 45 ms early or 125 ms
    // late), with margin for the publisher's own packet timing.
    for offset in &offsets {
        assert!(
            (-0.045..=0.1).contains(offset),
            "audio {offset:+.3} s off the video: {offsets:?}"
        );
    }
}
