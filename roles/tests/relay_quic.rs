//! The relay over real QUIC (quinn on loopback) with mutual TLS under a cluster CA: frames
//! published on one endpoint arrive intact and in order in a track on the other, and a
//! node whose certificate comes from another CA is refused.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::media::{Codec, Frame, MediaKind, TrackInfo, VIDEO_SOURCE};
use cascade_protocol::relay::Role;
use cascade_roles::broadcast::{Broadcast, Delivery, FrameSink};
use cascade_roles::quic::trust::ClusterCa;
use cascade_roles::quic::{ALPN_RELAY, NodeEndpoint, handshake};
use cascade_roles::relay::{PullEvent, PullTarget, RelayConnection, RelaySource};
use tokio::sync::mpsc;

struct OneBroadcast(Arc<Broadcast>);

impl RelaySource for OneBroadcast {
    fn find(&self, name: &str) -> Option<Arc<Broadcast>> {
        (name == self.0.id().as_str()).then(|| self.0.clone())
    }
}

struct Collect(std_mpsc::Sender<Frame>);

impl FrameSink for Collect {
    fn deliver(&mut self, frame: &Frame) -> Delivery {
        match self.0.send(frame.clone()) {
            Ok(()) => Delivery::Accepted,
            Err(_) => Delivery::Closed,
        }
    }
}

fn endpoint(ca: &ClusterCa, node: u64) -> NodeEndpoint {
    NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), ca.issue(node).unwrap()).unwrap()
}

/// A payload whose bytes say which frame it is, so corruption and reordering both show.
fn payload(n: u32) -> Vec<u8> {
    let mut bytes = n.to_be_bytes().to_vec();
    bytes.extend((0..(n % 7) * 1500).map(|i| (i as u8) ^ (n as u8)));
    bytes
}

#[tokio::test]
async fn frames_published_at_the_origin_arrive_intact_and_in_order_at_the_edge() {
    let ca = ClusterCa::generate("test").unwrap();
    let origin = endpoint(&ca, 1);
    let edge = endpoint(&ca, 2);
    let stream = StreamId::parse("relayed").unwrap();
    let source = Broadcast::new(stream.clone());
    source
        .source(MediaKind::Video)
        .begin_source(TrackInfo::new(VIDEO_SOURCE, Codec::H264), None);
    let served: Arc<dyn RelaySource> = Arc::new(OneBroadcast(source.clone()));
    let accept = origin.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.incoming().await {
            if let Some((connection, alpn)) = handshake(incoming).await {
                assert_eq!(alpn, ALPN_RELAY);
                RelayConnection::start(connection, Role::Server, Some(served.clone()));
            }
        }
    });

    let connection = edge.dial(origin.local_addr(), ALPN_RELAY).await.unwrap();
    let relay = RelayConnection::start(connection, Role::Client, None);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    relay
        .subscribe("relayed", "catalog", PullTarget::Catalog, events_tx.clone())
        .await
        .unwrap();
    let catalog = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
        {
            Some(PullEvent::Catalog(c)) => break c,
            Some(PullEvent::Subscribed) => {}
            other => panic!("expected the catalog, got {other:?}"),
        }
    };
    assert_eq!(catalog.len(), 1);
    assert_eq!(catalog[0].codec, Codec::H264);

    let local = Broadcast::new(stream.clone());
    let local_video = local.source(MediaKind::Video);
    local_video.begin_source(TrackInfo::new(VIDEO_SOURCE, Codec::H264), None);
    let (frames_tx, frames_rx) = std_mpsc::channel();
    local_video.subscribe(Box::new(Collect(frames_tx)));
    relay
        .subscribe(
            "relayed",
            VIDEO_SOURCE,
            PullTarget::Track(local_video),
            events_tx,
        )
        .await
        .unwrap();
    // Wait until the origin has accepted, so that the first frame is not the subscription's
    // starting point by luck.
    let accepted = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(
        matches!(accepted, Ok(Some(PullEvent::Subscribed))),
        "expected the subscription to be accepted, got {accepted:?}"
    );

    const FRAMES: u32 = 300;
    let t0 = Instant::now();
    for n in 0..FRAMES {
        source.source(MediaKind::Video).publish_rtp(
            n * 3000,
            t0,
            n % 30 == 0,
            Arc::from(payload(n)),
        );
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < FRAMES as usize && Instant::now() < deadline {
        match frames_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(frame) => received.push(frame),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert_eq!(received.len(), FRAMES as usize, "every frame arrived");
    for (n, frame) in received.iter().enumerate() {
        assert_eq!(
            &frame.payload[..],
            &payload(n as u32)[..],
            "frame {n} intact and in order"
        );
        assert_eq!(
            frame.keyframe,
            n % 30 == 0,
            "frame {n} keeps its keyframe flag"
        );
    }
    let steps: Vec<u64> = received
        .windows(2)
        .map(|w| w[1].timestamp - w[0].timestamp)
        .collect();
    assert!(
        steps.iter().all(|&s| s == 3000),
        "timestamps keep their spacing: {steps:?}"
    );
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let ours = ClusterCa::generate("ours").unwrap();
    let theirs = ClusterCa::generate("theirs").unwrap();
    let member = endpoint(&ours, 1);
    let stranger = endpoint(&theirs, 9);
    let accept = member.clone();
    let accepted = tokio::spawn(async move {
        let incoming = accept.incoming().await.unwrap();
        handshake(incoming).await.is_some()
    });
    let dialled = stranger.dial(member.local_addr(), ALPN_RELAY).await;
    assert!(
        dialled.is_err(),
        "the stranger does not trust our CA either"
    );
    assert!(!accepted.await.unwrap(), "the member refused the stranger");
}

/// CPU seconds used so far by the calling thread (user + system), from `/proc/thread-self`.
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A single-threaded runtime on its own OS thread, so that one side's CPU can be measured.
fn side_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Relay throughput per core, each side measured on its own: the origin (publishing 64 KiB
/// frames of one video track and serving them) runs on one single-threaded runtime, the edge
/// (receiving them into its track) on another, each on its own thread, mutual TLS over
/// loopback. At most 256 frames in flight, for `RELAY_BENCH_SECS` (default 10). Prints each
/// side's Gbit/s per core of its own CPU. Run in release:
/// `cargo test --release -p cascade-roles --test relay_quic -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: run on demand, see docs/benchmarks.md"]
fn relay_throughput_per_core() {
    let seconds: u64 = std::env::var("RELAY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let ca = ClusterCa::generate("bench").unwrap();
    let (origin_ca, edge_ca) = (ca.clone(), ca);
    let source = Broadcast::new(StreamId::parse("bench").unwrap());
    source
        .source(MediaKind::Video)
        .begin_source(TrackInfo::new(VIDEO_SOURCE, Codec::H264), None);
    let local = Broadcast::new(StreamId::parse("bench").unwrap());
    let local_video = local.source(MediaKind::Video);
    local_video.begin_source(TrackInfo::new(VIDEO_SOURCE, Codec::H264), None);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The edge: dials, subscribes, and receives until told to stop; returns its CPU-seconds.
    let edge_video = local_video.clone();
    let edge_done = done.clone();
    let edge = std::thread::spawn(move || {
        side_runtime().block_on(async move {
            let endpoint = endpoint(&edge_ca, 2);
            let origin_addr = addr_rx.recv().unwrap();
            let connection = endpoint.dial(origin_addr, ALPN_RELAY).await.unwrap();
            let relay = RelayConnection::start(connection, Role::Client, None);
            let (events_tx, mut events) = mpsc::unbounded_channel();
            relay
                .subscribe(
                    "bench",
                    VIDEO_SOURCE,
                    PullTarget::Track(edge_video),
                    events_tx,
                )
                .await
                .unwrap();
            assert!(matches!(events.recv().await, Some(PullEvent::Subscribed)));
            ready_tx.send(()).unwrap();
            let cpu_before = thread_cpu_secs();
            while !edge_done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            thread_cpu_secs() - cpu_before
        })
    });

    // The origin: serves, and publishes as fast as the edge takes frames.
    let (delivered, elapsed, origin_cpu, offered) = side_runtime().block_on(async move {
        let endpoint = endpoint(&origin_ca, 1);
        addr_tx.send(endpoint.local_addr()).unwrap();
        let served: Arc<dyn RelaySource> = Arc::new(OneBroadcast(source.clone()));
        let accept = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.incoming().await {
                if let Some((connection, _)) = handshake(incoming).await {
                    RelayConnection::start(connection, Role::Server, Some(served.clone()));
                }
            }
        });
        while ready_rx.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let payload: Arc<[u8]> = Arc::from(vec![0x5a; 64 * 1024]);
        let frames_before = local_video.frames_in();
        let cpu_before = thread_cpu_secs();
        let start = Instant::now();
        let end = start + Duration::from_secs(seconds);
        let mut n = 0u32;
        while Instant::now() < end {
            // At most 256 frames in flight, so that the CPU measured is the relay's and not a
            // producer spinning on a full queue.
            if u64::from(n) > local_video.frames_in() - frames_before + 256 {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
            // A keyframe every 60 frames, like a 2 s GOP at a high bitrate.
            source.source(MediaKind::Video).publish_rtp(
                n.wrapping_mul(3000),
                Instant::now(),
                n.is_multiple_of(60),
                payload.clone(),
            );
            n += 1;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = thread_cpu_secs() - cpu_before;
        (local_video.frames_in() - frames_before, elapsed, cpu, n)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let edge_cpu = edge.join().unwrap();
    let gbits = delivered as f64 * 64.0 * 1024.0 * 8.0 / elapsed / 1e9;
    println!(
        "relay throughput: {gbits:.2} Gbit/s delivered ({delivered} of {offered} frames) in {elapsed:.1} s; \
         origin {origin_cpu:.1} CPU-s = {:.2} Gbit/s per core; edge {edge_cpu:.1} CPU-s = {:.2} Gbit/s per core",
        gbits / (origin_cpu / elapsed),
        gbits / (edge_cpu / elapsed)
    );
    assert!(delivered > 0);
}
