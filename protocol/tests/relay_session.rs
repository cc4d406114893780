//! The relay session in virtual time: an origin (server) and an edge (client) joined by a
//! simulated QUIC connection in one thread — every stream reliable and ordered, streams
//! interleaved by priority over a link of limited capacity, packets delayed, jittered
//! (reordering across streams) and lost (a lost packet arrives a retransmission timeout
//! later and holds back the rest of its stream, as in QUIC).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_protocol::relay::wire::close_code;
use cascade_protocol::relay::{
    Event, LocalStream, Output, RelayFrame, RemoteStream, Role, Session, SessionConfig,
    SubscribeCode,
};

const FRAME_INTERVAL: Duration = Duration::from_micros(33_333);
const FRAMES_PER_GROUP: u64 = 30;
const KEYFRAME_BYTES: usize = 30_000;
const FRAME_BYTES: usize = 5_000;
const PACKET_BYTES: usize = 1_200;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }

    fn below(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros() as u64;
        Duration::from_micros(if micros == 0 { 0 } else { self.next() % micros })
    }
}

#[derive(Clone, Copy)]
struct LinkConfig {
    delay: Duration,
    jitter: Duration,
    loss: f64,
    /// Capacity per millisecond of virtual time.
    bytes_per_ms: usize,
}

impl LinkConfig {
    fn instant() -> LinkConfig {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            bytes_per_ms: usize::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Control,
    Group(u64),
}

#[derive(Debug)]
enum Delivery {
    Data(Key, Vec<u8>),
    Fin(u64),
    Reset(u64, u32),
    Stop(u64, u32),
}

struct Outgoing {
    priority: i32,
    pending: VecDeque<u8>,
    fin: bool,
}

/// One direction of the connection.
struct Link {
    config: LinkConfig,
    streams: BTreeMap<Key, Outgoing>,
    last_arrival: HashMap<Key, Instant>,
    in_flight: Vec<(Instant, u64, Delivery)>,
    order: u64,
    /// Group streams whose bytes and FIN have all been sent, for the sender's session.
    written: Vec<u64>,
}

impl Link {
    fn new(config: LinkConfig) -> Link {
        let mut streams = BTreeMap::new();
        streams.insert(
            Key::Control,
            Outgoing {
                priority: i32::MAX,
                pending: VecDeque::new(),
                fin: false,
            },
        );
        Link {
            config,
            streams,
            last_arrival: HashMap::new(),
            in_flight: Vec::new(),
            order: 0,
            written: Vec::new(),
        }
    }

    fn schedule(&mut self, at: Instant, delivery: Delivery) {
        self.order += 1;
        self.in_flight.push((at, self.order, delivery));
    }

    fn arrival(&mut self, now: Instant, rng: &mut Rng, key: Option<Key>) -> Instant {
        let mut at = now + self.config.delay + rng.below(self.config.jitter);
        if rng.chance(self.config.loss) {
            at += 3 * self.config.delay.max(Duration::from_millis(10)); // retransmission
        }
        if let Some(key) = key {
            // Reliable and ordered within a stream.
            let last = self.last_arrival.entry(key).or_insert(at);
            at = at.max(*last);
            *last = at;
        }
        at
    }

    fn write(&mut self, key: Key, bytes: &[u8]) {
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.pending.extend(bytes);
        }
    }

    fn open(&mut self, id: u64, priority: i32, header: &[u8]) {
        self.streams.insert(
            Key::Group(id),
            Outgoing {
                priority,
                pending: header.iter().copied().collect(),
                fin: false,
            },
        );
    }

    fn finish(&mut self, id: u64) {
        if let Some(stream) = self.streams.get_mut(&Key::Group(id)) {
            stream.fin = true;
        }
    }

    /// RESET_STREAM: unsent bytes are dropped, the reset overtakes data in flight.
    fn reset(&mut self, now: Instant, rng: &mut Rng, id: u64, code: u32) {
        if self.streams.remove(&Key::Group(id)).is_some() {
            let at = self.arrival(now, rng, None);
            self.schedule(at, Delivery::Reset(id, code));
        }
    }

    fn stop(&mut self, now: Instant, rng: &mut Rng, id: u64, code: u32) {
        let at = self.arrival(now, rng, None);
        self.schedule(at, Delivery::Stop(id, code));
    }

    /// One millisecond of sending: highest priority first, packet by packet.
    fn transmit(&mut self, now: Instant, rng: &mut Rng) {
        let mut budget = self.config.bytes_per_ms;
        while budget > 0 {
            let Some((&key, _)) = self
                .streams
                .iter()
                .filter(|(_, s)| !s.pending.is_empty() || s.fin)
                .max_by_key(|(key, s)| (s.priority, std::cmp::Reverse(**key)))
            else {
                return;
            };
            let stream = self.streams.get_mut(&key).expect("chosen above");
            if stream.pending.is_empty() {
                let Key::Group(id) = key else { return };
                self.streams.remove(&key);
                let at = self.arrival(now, rng, Some(key));
                self.schedule(at, Delivery::Fin(id));
                self.written.push(id);
                continue;
            }
            let take = PACKET_BYTES.min(stream.pending.len()).min(budget);
            let packet: Vec<u8> = stream.pending.drain(..take).collect();
            budget -= take;
            let at = self.arrival(now, rng, Some(key));
            self.schedule(at, Delivery::Data(key, packet));
        }
    }

    fn arrived(&mut self, now: Instant) -> Vec<Delivery> {
        self.in_flight.sort_by_key(|(at, order, _)| (*at, *order));
        let ready = self.in_flight.partition_point(|(at, _, _)| *at <= now);
        self.in_flight
            .drain(..ready)
            .map(|(_, _, delivery)| delivery)
            .collect()
    }
}

/// A session with what its application saw.
struct Peer {
    session: Session,
    events: Vec<(Instant, Event)>,
    closed: Option<(u32, String)>,
    /// Streams reset or finished at this side, so later writes are ignored.
    link: Link,
}

/// The origin's application: a live track with a GOP cache, and the broadcasts it has.
struct Origin {
    frames_made: u64,
    next_frame_at: Instant,
    group_cache: Vec<(u64, RelayFrame)>,
    subscribers: Vec<u64>,
    made_at: HashMap<u64, Instant>,
}

fn payload_of(frame_no: u64) -> Bytes {
    let size = if frame_no.is_multiple_of(FRAMES_PER_GROUP) {
        KEYFRAME_BYTES
    } else {
        FRAME_BYTES
    };
    let mut bytes = frame_no.to_be_bytes().to_vec();
    bytes.extend((0..size - 8).map(|i| (frame_no as usize * 31 + i) as u8));
    Bytes::from(bytes)
}

/// The frame number a payload carries, after checking every byte.
fn check_payload(payload: &[u8]) -> u64 {
    let frame_no = u64::from_be_bytes(payload[..8].try_into().unwrap());
    assert_eq!(
        payload,
        &payload_of(frame_no)[..],
        "frame {frame_no} arrived damaged"
    );
    frame_no
}

struct Sim {
    now: Instant,
    start: Instant,
    rng: Rng,
    edge: Peer,
    origin: Peer,
    app: Origin,
}

impl Sim {
    fn new(
        seed: u64,
        edge_to_origin: LinkConfig,
        origin_to_edge: LinkConfig,
        budget: Duration,
    ) -> Sim {
        let start = Instant::now();
        let config = SessionConfig {
            latency_budget: budget,
            ..SessionConfig::default()
        };
        Sim {
            now: start,
            start,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            edge: Peer {
                session: Session::new(Role::Client, config.clone()),
                events: Vec::new(),
                closed: None,
                link: Link::new(edge_to_origin),
            },
            origin: Peer {
                session: Session::new(Role::Server, config),
                events: Vec::new(),
                closed: None,
                link: Link::new(origin_to_edge),
            },
            app: Origin {
                frames_made: 0,
                next_frame_at: start,
                group_cache: Vec::new(),
                subscribers: Vec::new(),
                made_at: HashMap::new(),
            },
        }
    }

    /// Applies every output of both sessions until neither has any.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            while let Some(output) = self.edge.session.poll_output() {
                any = true;
                apply(&mut self.edge, output, self.now, &mut self.rng);
            }
            while let Some(output) = self.origin.session.poll_output() {
                any = true;
                if let Output::Event(Event::SubscribeRequested { id, broadcast, .. }) = &output {
                    if broadcast == "show" {
                        self.origin.session.accept(*id);
                        self.app.subscribers.push(*id);
                        // Start at the newest group: the cached frames first.
                        for (group, frame) in self.app.group_cache.clone() {
                            self.origin.session.send_frame(*id, group, &frame, self.now);
                        }
                    } else {
                        let reason = format!("no broadcast {broadcast:?} here");
                        self.origin
                            .session
                            .reject(*id, SubscribeCode::NotFound, &reason);
                    }
                }
                if let Output::Event(Event::Unsubscribed { id }) = &output {
                    self.app.subscribers.retain(|s| s != id);
                }
                apply(&mut self.origin, output, self.now, &mut self.rng);
            }
            if !any {
                return;
            }
        }
    }

    /// Runs until `until` (virtual), producing a frame every interval when `live`.
    fn run(&mut self, duration: Duration, live: bool) {
        let until = self.now + duration;
        while self.now < until {
            if live && self.now >= self.app.next_frame_at {
                let frame_no = self.app.frames_made;
                self.app.frames_made += 1;
                self.app.next_frame_at += FRAME_INTERVAL;
                let group = frame_no / FRAMES_PER_GROUP;
                let frame = RelayFrame {
                    timestamp: frame_no * 3_000,
                    composition_offset: 0,
                    keyframe: frame_no.is_multiple_of(FRAMES_PER_GROUP),
                    payload: payload_of(frame_no),
                };
                if frame.keyframe {
                    self.app.group_cache.clear();
                }
                self.app.group_cache.push((group, frame.clone()));
                self.app.made_at.insert(frame_no, self.now);
                for id in self.app.subscribers.clone() {
                    self.origin.session.send_frame(id, group, &frame, self.now);
                }
            }
            self.pump();
            for peer in [&mut self.edge, &mut self.origin] {
                if peer.session.poll_timeout().is_some_and(|at| at <= self.now) {
                    peer.session.handle_timeout(self.now);
                }
            }
            self.pump();
            self.edge.link.transmit(self.now, &mut self.rng);
            self.origin.link.transmit(self.now, &mut self.rng);
            for id in std::mem::take(&mut self.origin.link.written) {
                self.origin.session.group_written(LocalStream(id));
            }
            for id in std::mem::take(&mut self.edge.link.written) {
                self.edge.session.group_written(LocalStream(id));
            }
            let to_origin = self.edge.link.arrived(self.now);
            deliver(&mut self.origin, to_origin, self.now, &mut self.rng);
            let to_edge = self.origin.link.arrived(self.now);
            deliver(&mut self.edge, to_edge, self.now, &mut self.rng);
            self.pump();
            self.now += Duration::from_millis(1);
        }
    }

    /// The frames the edge received: (arrival, group, frame number).
    fn frames(&self) -> Vec<(Instant, u64, u64)> {
        self.edge
            .events
            .iter()
            .filter_map(|(at, e)| match e {
                Event::Frame { group, frame, .. } => {
                    let frame_no = check_payload(&frame.payload);
                    assert_eq!(frame.timestamp, frame_no * 3_000);
                    assert_eq!(frame.keyframe, frame_no.is_multiple_of(FRAMES_PER_GROUP));
                    assert_eq!(*group, frame_no / FRAMES_PER_GROUP, "frame {frame_no}");
                    Some((*at, *group, frame_no))
                }
                _ => None,
            })
            .collect()
    }

    fn latency(&self, frame_no: u64, arrived: Instant) -> Duration {
        arrived - self.app.made_at[&frame_no]
    }
}

fn apply(peer: &mut Peer, output: Output, now: Instant, rng: &mut Rng) {
    match output {
        Output::Control(bytes) => peer.link.write(Key::Control, &bytes),
        Output::OpenGroup {
            stream,
            priority,
            header,
        } => peer.link.open(stream.0, priority, &header),
        Output::GroupData { stream, bytes } => peer.link.write(Key::Group(stream.0), &bytes),
        Output::FinishGroup { stream } => peer.link.finish(stream.0),
        Output::ResetGroup { stream, code } => peer.link.reset(now, rng, stream.0, code),
        Output::StopGroup { stream, code } => peer.link.stop(now, rng, stream.0, code),
        Output::Close { code, reason } => peer.closed = Some((code, reason)),
        Output::Event(event) => peer.events.push((now, event)),
    }
}

fn deliver(peer: &mut Peer, deliveries: Vec<Delivery>, now: Instant, rng: &mut Rng) {
    for delivery in deliveries {
        match delivery {
            Delivery::Data(Key::Control, bytes) => peer.session.handle_control(&bytes),
            Delivery::Data(Key::Group(id), bytes) => {
                peer.session
                    .handle_group_data(RemoteStream(id), &bytes, now)
            }
            Delivery::Fin(id) => peer.session.handle_group_end(RemoteStream(id)),
            Delivery::Reset(id, code) => peer.session.handle_group_reset(RemoteStream(id), code),
            Delivery::Stop(id, code) => {
                // STOP_SENDING: the sender resets the stream in answer.
                peer.session.group_stopped(LocalStream(id));
                peer.link.reset(now, rng, id, code);
            }
        }
    }
}

fn wan(seed_jitter_ms: u64, loss: f64, bytes_per_ms: usize) -> LinkConfig {
    LinkConfig {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(seed_jitter_ms),
        loss,
        bytes_per_ms,
    }
}

/// Frames strictly in order, and each run of consecutive frames starts at a keyframe
/// (a viewer can always decode what it gets).
fn assert_in_order_and_decodable(frames: &[(Instant, u64, u64)]) {
    assert!(!frames.is_empty(), "no frame arrived");
    assert_eq!(
        frames[0].2 % FRAMES_PER_GROUP,
        0,
        "the first frame is a keyframe"
    );
    for pair in frames.windows(2) {
        let (previous, next) = (pair[0].2, pair[1].2);
        assert!(next > previous, "frame {next} after {previous}");
        if next != previous + 1 {
            assert_eq!(
                next % FRAMES_PER_GROUP,
                0,
                "after a gap ({previous} → {next}) comes a keyframe"
            );
        }
    }
}

#[test]
fn frames_arrive_intact_and_in_order_through_delay_reordering_and_loss() {
    for seed in 1..=8 {
        // 20 Mbit/s each way, 20 ms ± 15 ms, 3 % of packets lost and resent.
        let link = wan(15, 0.03, 2_500);
        let mut sim = Sim::new(seed, link, link, Duration::from_millis(500));
        sim.run(Duration::from_millis(700), true); // the broadcast is live before anyone watches
        let id = sim.edge.session.subscribe("show", "video");
        sim.run(Duration::from_secs(10), true);
        sim.run(Duration::from_secs(1), false); // let the last frames land
        assert!(sim.edge.closed.is_none() && sim.origin.closed.is_none());
        assert!(
            sim.edge
                .events
                .iter()
                .any(|(_, e)| *e == Event::Subscribed { id })
        );
        let frames = sim.frames();
        assert_in_order_and_decodable(&frames);
        // Started at the newest group, and nothing was lost after that.
        assert_eq!(frames[0].2, 0, "seed {seed}: the cached group came first");
        let numbers: Vec<u64> = frames.iter().map(|f| f.2).collect();
        let expected: Vec<u64> = (0..sim.app.frames_made).collect();
        assert_eq!(
            numbers, expected,
            "seed {seed}: every frame, once, in order"
        );
        let worst = frames
            .iter()
            .skip(FRAMES_PER_GROUP as usize) // the cached group is late by design
            .map(|(at, _, n)| sim.latency(*n, *at))
            .max()
            .unwrap();
        assert!(
            worst < Duration::from_millis(400),
            "seed {seed}: worst latency {worst:?}"
        );
    }
}

/// 1.4 Mbit/s of video over a 1 Mbit/s link: queueing every group would make the edge fall
/// further behind every second.
fn slow_link_run(budget: Duration) -> (Sim, Vec<(Instant, u64, u64)>) {
    let link = wan(5, 0.01, 125);
    let mut sim = Sim::new(7, wan(5, 0.0, 2_500), link, budget);
    sim.edge.session.subscribe("show", "video");
    sim.run(Duration::from_secs(20), true);
    let frames = sim.frames();
    (sim, frames)
}

/// How far the newest frame the edge has is behind the newest frame made, at the end.
fn behind(sim: &Sim, frames: &[(Instant, u64, u64)]) -> Duration {
    let newest = frames.last().map_or(0, |f| f.2 + 1);
    FRAME_INTERVAL * (sim.app.frames_made - newest) as u32
}

#[test]
fn a_subscriber_behind_a_slow_link_skips_to_the_newest_group_instead_of_queueing() {
    let (sim, frames) = slow_link_run(Duration::from_millis(500));
    assert!(sim.edge.closed.is_none() && sim.origin.closed.is_none());
    assert_in_order_and_decodable(&frames);
    let late_drops = sim
        .origin
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::GroupDropped { late: true, .. }))
        .count();
    assert!(late_drops > 0, "the origin dropped late groups");
    // Latency stays bounded in the last 5 s instead of growing.
    let recent_worst = frames
        .iter()
        .filter(|(at, _, _)| *at > sim.start + Duration::from_secs(15))
        .map(|(at, _, n)| sim.latency(*n, *at))
        .max()
        .expect("frames keep arriving");
    assert!(
        recent_worst < Duration::from_millis(2_500),
        "{recent_worst:?}"
    );

    assert!(behind(&sim, &frames) < Duration::from_millis(2_500));

    // The same link without dropping: every group waits for the one before, which starves
    // behind the newer groups' priority, and the edge falls ever further behind.
    let (queued, frames) = slow_link_run(Duration::from_secs(3_600));
    let queued_behind = behind(&queued, &frames);
    assert!(
        queued_behind > Duration::from_secs(4),
        "without dropping the edge falls behind: {queued_behind:?}"
    );
}

#[test]
fn setup_picks_the_highest_common_version_and_refuses_when_there_is_none() {
    let mut sim = Sim::new(
        1,
        LinkConfig::instant(),
        LinkConfig::instant(),
        Duration::from_secs(1),
    );
    sim.run(Duration::from_millis(2), false);
    assert_eq!(sim.edge.session.version(), Some(1));
    assert!(
        sim.origin
            .events
            .iter()
            .any(|(_, e)| *e == Event::Ready { version: 1 })
    );

    let mut server = Session::new(Role::Server, SessionConfig::default());
    let mut client = Session::new(
        Role::Client,
        SessionConfig {
            versions: vec![7, 8],
            ..SessionConfig::default()
        },
    );
    let Some(Output::Control(setup)) = client.poll_output() else {
        panic!("the client speaks first");
    };
    server.handle_control(&setup);
    match server.poll_output() {
        Some(Output::Close { code, reason }) => {
            assert_eq!(code, close_code::VERSION_MISMATCH);
            assert!(
                reason.contains("[1]") && reason.contains("[7, 8]"),
                "{reason}"
            );
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(server.is_closed());
}

#[test]
fn messages_before_setup_or_garbage_close_the_session_with_a_protocol_violation() {
    let mut server = Session::new(Role::Server, SessionConfig::default());
    let mut other = Session::new(Role::Server, SessionConfig::default());
    other.announce("x"); // held until SETUP: nothing is written
    assert_eq!(other.poll_output(), None);
    let mut subscribe = bytes::BytesMut::new();
    cascade_protocol::relay::wire::ControlMessage::SubscribeOk { id: 1 }.encode(&mut subscribe);
    server.handle_control(&subscribe);
    match server.poll_output() {
        Some(Output::Close { code, reason }) => {
            assert_eq!(code, close_code::PROTOCOL_VIOLATION);
            assert_eq!(reason, "SUBSCRIBE_OK before SETUP completed");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let mut client = Session::new(Role::Client, SessionConfig::default());
    while client.poll_output().is_some() {}
    client.handle_group_data(RemoteStream(3), &[0x10, 0x05, 0x00], Instant::now());
    match client.poll_output() {
        Some(Output::Close { code, reason }) => {
            assert_eq!(code, close_code::PROTOCOL_VIOLATION);
            assert!(reason.contains("never made"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn a_subscription_to_an_unknown_broadcast_fails_with_not_found_and_a_reason() {
    let mut sim = Sim::new(
        2,
        LinkConfig::instant(),
        LinkConfig::instant(),
        Duration::from_secs(1),
    );
    let id = sim.edge.session.subscribe("nobody", "video");
    sim.run(Duration::from_millis(5), true);
    let failure = sim.edge.events.iter().find_map(|(_, e)| match e {
        Event::SubscribeFailed {
            id: failed,
            code,
            reason,
        } if *failed == id => Some((*code, reason.clone())),
        _ => None,
    });
    assert_eq!(
        failure,
        Some((
            SubscribeCode::NotFound,
            "no broadcast \"nobody\" here".into()
        ))
    );
    // Its id is gone: a keyframe request for it sends nothing.
    sim.edge.session.request_keyframe(id);
    assert_eq!(sim.edge.session.poll_output(), None);
}

#[test]
fn keyframe_requests_and_bitrate_hints_reach_the_publisher() {
    let mut sim = Sim::new(
        3,
        wan(2, 0.0, 2_500),
        wan(2, 0.0, 2_500),
        Duration::from_secs(1),
    );
    let id = sim.edge.session.subscribe("show", "video");
    sim.run(Duration::from_millis(100), true);
    sim.edge.session.request_keyframe(id);
    sim.edge.session.hint_bitrate(id, 800_000);
    sim.run(Duration::from_millis(100), true);
    let seen: Vec<&Event> = sim
        .origin
        .events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| {
            matches!(
                e,
                Event::KeyframeRequested { .. } | Event::BitrateHinted { .. }
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            &Event::KeyframeRequested { id },
            &Event::BitrateHinted {
                id,
                bits_per_second: 800_000
            }
        ]
    );
}

#[test]
fn unsubscribing_stops_the_groups_in_flight_and_no_frame_follows() {
    let mut sim = Sim::new(
        4,
        wan(5, 0.0, 2_500),
        wan(5, 0.0, 2_500),
        Duration::from_secs(1),
    );
    let id = sim.edge.session.subscribe("show", "video");
    sim.run(Duration::from_millis(1_500), true);
    let before = sim.frames().len();
    assert!(before > 30);
    sim.edge.session.unsubscribe(id);
    sim.pump();
    let stopped = sim.edge.events.len();
    sim.run(Duration::from_secs(2), true);
    assert!(
        sim.origin
            .events
            .iter()
            .any(|(_, e)| *e == Event::Unsubscribed { id })
    );
    assert!(sim.app.subscribers.is_empty());
    let after: Vec<&Event> = sim.edge.events[stopped..].iter().map(|(_, e)| e).collect();
    assert!(
        !after.iter().any(|e| matches!(e, Event::Frame { .. })),
        "no frame after UNSUBSCRIBE: {after:?}"
    );
    assert!(sim.edge.closed.is_none() && sim.origin.closed.is_none());
}
