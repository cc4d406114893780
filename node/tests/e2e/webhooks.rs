//! Webhooks as an integrator's receiver sees them: a small HTTP server of the test's own
//! takes the node's POSTs and checks each `Cascade-Signature` with its own HMAC. A publisher
//! and two viewers come and go: `stream.started`, then `stream.ended` with the viewers'
//! minutes. Then the receiver is down for more than 10 s, while a second show runs and the
//! node restarts: every event still arrives afterwards, in order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::encoder::{Encoder, H264File};
use crate::support::node::Node;
use crate::support::peer::{Publisher, Viewer};
use crate::support::wait_for;

const SECRET: &str = "the receiver's webhook secret";

/// Events as received: the signature header and the body.
type Log = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// How the receiver answers a body: after how long, with which status.
type Answer = Arc<dyn Fn(&[u8]) -> (Duration, &'static str) + Send + Sync>;

/// An HTTP receiver on 127.0.0.1, one connection at a time and each closed after its answer,
/// so that stopping it refuses the next delivery at once.
struct Receiver {
    port: u16,
    log: Log,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Answers every POST `204` at once.
    async fn start(port: u16, log: Log) -> Receiver {
        Self::answering(port, log, Arc::new(|_| (Duration::ZERO, "204 No Content"))).await
    }

    async fn answering(port: u16, log: Log, answer: Answer) -> Receiver {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{port}").parse().unwrap())
            .unwrap();
        let listener = socket.listen(16).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let Some(request) = read_request(&mut connection).await else {
                    continue;
                };
                let (after, status) = answer(&request.1);
                served.lock().unwrap().push(request);
                let answer = async move {
                    tokio::time::sleep(after).await;
                    let _ = connection
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                };
                // A slow answer must not hold up the next request.
                tokio::spawn(answer);
            }
        });
        Receiver {
            port,
            log,
            task: Some(task),
        }
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The events received so far, each checked for a valid signature.
    fn events(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(signature, body)| {
                verify(
                    signature.as_deref().expect("every delivery is signed"),
                    body,
                );
                serde_json::from_slice(body).expect("a JSON body")
            })
            .collect()
    }

    /// Waits for the first event whose type and stream match.
    async fn wait_event(&self, kind: &str, stream: &str, limit: Duration) -> serde_json::Value {
        let found = || {
            self.events()
                .into_iter()
                .find(|e| e["type"] == kind && e["data"]["stream"] == stream)
        };
        wait_for(&format!("{kind} of {stream}"), limit, || async {
            found().is_some()
        })
        .await;
        found().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP request's `Cascade-Signature` header and body.
async fn read_request(connection: &mut tokio::net::TcpStream) -> Option<(Option<String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = connection.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    while buffer.len() < head_end + length {
        let n = connection.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((
        header("cascade-signature"),
        buffer[head_end..head_end + length].to_vec(),
    ))
}

/// The receiver's own check: `t=<unix>,v1=<hex HMAC-SHA256("<t>.<body>")>`, t within 5 min.
fn verify(header: &str, body: &[u8]) {
    let fields: std::collections::HashMap<&str, &str> = header
        .split(',')
        .filter_map(|f| f.split_once('='))
        .collect();
    let t: u64 = fields["t"].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t) < 300, "a fresh timestamp: {header}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(fields["v1"], expected, "the signature matches the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_signed_runs_with_viewer_minutes_and_every_event_after_an_outage_and_a_restart()
 {
    let log = Log::default();
    let mut receiver = Receiver::start(0, log.clone()).await;
    let mut node = Node::start(&[
        "--webhook-url",
        &receiver.url(),
        "--webhook-secret",
        SECRET,
        "--reconnect-grace",
        "1s",
    ])
    .await;
    let source = H264File::encode(60, "webhooks");

    // A publisher and two viewers come and go.
    let encoder = Encoder::flv(&source.args(None), &node.rtmp_url("show"));
    node.wait_live("show", Duration::from_secs(20)).await;
    let started = receiver
        .wait_event("stream.started", "show", Duration::from_secs(10))
        .await;
    assert_eq!(started["data"]["protocol"], "rtmp", "{started}");
    assert!(started["id"].is_string() && started["node"].is_string());

    let before_first = Instant::now();
    let first = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .unwrap();
    let after_first = Instant::now();
    let second = Viewer::connect(&node.ip, &node.url("/whep/show"), None)
        .await
        .unwrap();
    let after_second = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_second_left = Instant::now();
    assert_eq!(second.delete().await, 200);
    let second_left = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_first_left = Instant::now();
    assert_eq!(first.delete().await, 200);
    let first_left = Instant::now();
    let watched = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64();
    let most = watched(before_first, first_left) + watched(after_first, second_left);
    let least = watched(after_first, before_first_left) + watched(after_second, before_second_left);
    drop(encoder);

    let ended = receiver
        .wait_event("stream.ended", "show", Duration::from_secs(15))
        .await;
    let data = &ended["data"];
    assert_eq!(data["peak_viewers"], 2, "{ended}");
    let seconds = data["viewer_minutes"].as_f64().unwrap() * 60.0;
    assert!(
        seconds >= least - 0.5 && seconds <= most + 0.5,
        "viewer-minutes {seconds} s watched, between {least:.1} and {most:.1}: {ended}"
    );
    assert!(data["duration_secs"].as_f64().unwrap() >= 7.0, "{ended}");
    assert!(data["bytes_in"].as_u64().unwrap() > 0, "{ended}");

    // The receiver goes down; a second show runs and the node restarts meanwhile.
    let down_at = Instant::now();
    receiver.stop();
    let encoder = Encoder::flv(&source.args(None), &node.rtmp_url("encore"));
    node.wait_live("encore", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(encoder);
    wait_for("encore ends", Duration::from_secs(10), || async {
        node.json("/api/v1/streams/encore").await.0 == 404
    })
    .await;
    let (_, status) = node.json("/api/v1/webhooks").await;
    let pending = status["receivers"][0]["pending"].as_u64().unwrap_or(0);
    assert!(
        pending >= 1,
        "the API shows events waiting for the receiver: {status}"
    );
    node.restart().await;
    let down_for = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    tokio::time::sleep(down_for).await;
    let port = receiver.port;
    let receiver = Receiver::start(port, log.clone()).await;

    receiver
        .wait_event("stream.ended", "encore", Duration::from_secs(45))
        .await;
    let order: Vec<(String, String)> = receiver
        .events()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["stream"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let order: Vec<(&str, &str)> = order
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .collect();
    // At least once: an event the receiver took just as the node was killed may come twice.
    let mut distinct = order.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        [
            ("stream.started", "show"),
            ("stream.ended", "show"),
            ("stream.started", "encore"),
            ("stream.ended", "encore"),
        ],
        "every event, in order"
    );
    wait_for("the backlog drains", Duration::from_secs(10), || async {
        let (_, status) = node.json("/api/v1/webhooks").await;
        status["receivers"][0]["pending"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_callback_denies_a_publisher_and_a_slow_one_follows_the_fail_policy() {
    let log = Log::default();
    let callback = Receiver::answering(
        0,
        log.clone(),
        Arc::new(|body: &[u8]| {
            let request: serde_json::Value = serde_json::from_slice(body).unwrap();
            match request["stream"].as_str().unwrap_or("") {
                "banned" => (Duration::ZERO, "403 Forbidden"),
                "slow" => (Duration::from_secs(3), "204 No Content"),
                _ => (Duration::ZERO, "204 No Content"),
            }
        }),
    )
    .await;
    let url = callback.url();
    let closed = Node::start(&[
        "--on-publish-url",
        &url,
        "--on-publish-timeout",
        "1s",
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
    ])
    .await;
    let open = Node::start(&[
        "--on-publish-url",
        &url,
        "--on-publish-timeout",
        "1s",
        "--on-publish-fail-open",
        "true",
    ])
    .await;

    let _allowed = Publisher::connect(&closed.ip, &closed.url("/whip/studio"), None)
        .await
        .expect("the callback admits studio");
    let (status, body) = Publisher::connect(&closed.ip, &closed.url("/whip/banned"), None)
        .await
        .err()
        .expect("the callback refuses banned");
    assert_eq!(status, 403, "{body}");
    let (ok, said) = Encoder::try_flv(&closed.rtmp_url("banned"));
    assert!(
        !ok && said.contains("did not authorise"),
        "FFmpeg shows: {said}"
    );
    let (status, body) = Publisher::connect(&closed.ip, &closed.url("/whip/slow"), None)
        .await
        .err()
        .expect("fail-closed: no answer in time refuses");
    assert_eq!(status, 503, "{body}");
    let _slow = Publisher::connect(&open.ip, &open.url("/whip/slow"), None)
        .await
        .expect("fail-open: no answer in time admits");

    let asked: Vec<serde_json::Value> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .filter(|r: &serde_json::Value| r["type"] == "publish.authorize")
        .collect();
    let studio = asked
        .iter()
        .find(|r| r["stream"] == "studio")
        .expect("the callback was asked about studio");
    assert_eq!(studio["protocol"], "whip", "{studio}");
    assert!(
        studio["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.")),
        "{studio}"
    );
    assert!(
        asked
            .iter()
            .any(|r| r["stream"] == "banned" && r["protocol"] == "rtmp"),
        "{asked:?}"
    );
    let signed = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(signature, _)| signature.is_some())
        .count();
    assert!(
        signed >= 1,
        "with a webhook secret the callback is signed too"
    );
    for (node, result) in [
        (&closed, "denied"),
        (&closed, "refused_fail_closed"),
        (&open, "admitted_fail_open"),
    ] {
        let metrics = node.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("cascade_on_publish_total") && l.contains(result)),
            "{result} counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hears_of_nodes_joining_and_lost_and_of_a_finished_recording() {
    let log = Log::default();
    let receiver = Receiver::start(0, log.clone()).await;
    let url = receiver.url();
    let mut nodes = Node::cluster(
        2,
        "e2e-webhook-cluster",
        &[
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--record",
            "show",
            "--reconnect-grace",
            "1s",
        ],
    )
    .await;
    let joined = nodes[1].id().await;
    let event = |kind: &'static str, id: String| {
        let receiver = &receiver;
        async move {
            wait_for(&format!("{kind} {id}"), Duration::from_secs(30), || async {
                receiver
                    .events()
                    .iter()
                    .any(|e| e["type"] == kind && e["data"]["id"] == id.as_str())
            })
            .await;
        }
    };
    event("node.joined", joined.clone()).await;

    let source = H264File::encode(30, "webhook-recording");
    let encoder = Encoder::flv(&source.args(None), &nodes[0].rtmp_url("show"));
    nodes[0].wait_live("show", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(encoder);
    let ready = receiver
        .wait_event("recording.ready", "show", Duration::from_secs(30))
        .await;
    assert!(
        ready["data"]["duration_seconds"].as_f64().unwrap() >= 2.0,
        "{ready}"
    );
    let playlist = ready["data"]["url"].as_str().unwrap();
    let recorded_on = ready["node"].as_str().unwrap();
    let holder = if nodes[0].id().await == recorded_on {
        &nodes[0]
    } else {
        &nodes[1]
    };
    let status = reqwest::get(holder.url(playlist)).await.unwrap().status();
    assert_eq!(
        status, 200,
        "the event's playlist is served by {recorded_on}"
    );

    nodes[1].kill();
    event("node.lost", joined).await;
}
