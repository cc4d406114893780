//! The thin async driver of one relay connection: it feeds QUIC events into the sans-IO
//! [`Session`] and carries out what the session asks for.
//!
//! One task owns the session. Small helper tasks own the QUIC streams and talk to it
//! through one channel: a reader for the control stream, an acceptor for group streams and
//! one reader per incoming group, one writer per outgoing group. Work per task is per group
//! or per connection, never per frame per viewer.
//!
//! As publisher, the driver answers subscriptions from a [`RelaySource`] (the node's
//! streams): frames reach it through a [`FrameSink`] on the served track, bounded per
//! subscription, so a slow connection skips to the next keyframe like any other consumer.
//! As subscriber, it writes the frames it receives straight into a local [`Track`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cascade_protocol::media::{Frame, TrackInfo};
use cascade_protocol::relay::{
    Event, LocalStream, Output, RelayFrame, RemoteStream, Role, Session, SessionConfig,
    SubscribeCode,
};
use tokio::sync::{mpsc, oneshot};

use super::group::{CATALOG_TRACK, GroupCounter};
use crate::broadcast::{Broadcast, Delivery, FrameSink, Track};

/// Frames queued towards one subscriber before it counts as behind.
const SERVED_QUEUE_FRAMES: usize = 1024;
/// Largest chunk read from a QUIC stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// The broadcasts this node can serve to other nodes.
pub trait RelaySource: Send + Sync + 'static {
    /// The live broadcast named `name`, if this node has it.
    fn find(&self, name: &str) -> Option<Arc<Broadcast>>;
}

/// What a subscription made through [`RelayConnection::subscribe`] reports.
#[derive(Debug)]
pub enum PullEvent {
    /// The publisher accepted the subscription.
    Subscribed,
    /// The catalog (tracks and codecs) of the broadcast, each time it changes.
    Catalog(Vec<TrackInfo>),
    /// The subscription is over: refused, ended by the publisher, or the connection died.
    Ended {
        /// Why, for logs.
        reason: String,
        /// Whether trying again later may help (the broadcast may come back).
        retry: bool,
    },
}

/// Where a subscription's frames go.
pub enum PullTarget {
    /// Into a local track.
    Track(Arc<Track>),
    /// The catalog track: decoded and reported as [`PullEvent::Catalog`].
    Catalog,
    /// Into a local track that another upstream also feeds (an active and a standby
    /// transcoder), as upstream number `from`.
    Merged(Arc<super::renditions::MergedTrack>, u64),
}

enum Command {
    Subscribe {
        broadcast: String,
        track: String,
        target: PullTarget,
        events: mpsc::UnboundedSender<PullEvent>,
        reply: oneshot::Sender<u64>,
    },
    Unsubscribe(u64),
    RequestKeyframe(u64),
}

enum Input {
    Command(Command),
    Control(Bytes),
    ControlEnd,
    NewRemote(RemoteStream, oneshot::Sender<u32>),
    GroupData(RemoteStream, Bytes),
    GroupEnd(RemoteStream),
    GroupReset(RemoteStream, u32),
    GroupWritten(LocalStream),
    GroupStopped(LocalStream),
    Served { id: u64, frame: Frame },
}

/// A handle on a relay connection's driver. Cheap to clone; the connection closes when the
/// driver ends (peer gone, protocol error) or every handle is dropped.
#[derive(Clone)]
pub struct RelayConnection {
    inputs: mpsc::UnboundedSender<Input>,
    connection: quinn::Connection,
}

impl RelayConnection {
    /// Drives an established connection. `role` is `Client` for the side that dialled.
    pub fn start(
        connection: quinn::Connection,
        role: Role,
        source: Option<Arc<dyn RelaySource>>,
    ) -> Self {
        let (inputs, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            session: Session::new(role, SessionConfig::default()),
            connection: connection.clone(),
            inputs: inputs.clone(),
            source,
            control: None,
            writers: HashMap::new(),
            resets: HashMap::new(),
            stops: HashMap::new(),
            served: HashMap::new(),
            pulls: HashMap::new(),
        };
        tokio::spawn(driver.run(rx, role));
        Self { inputs, connection }
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none() && !self.inputs.is_closed()
    }

    /// Subscribes to `track` of `broadcast` at the peer, from its newest group.
    pub async fn subscribe(
        &self,
        broadcast: &str,
        track: &str,
        target: PullTarget,
        events: mpsc::UnboundedSender<PullEvent>,
    ) -> Option<u64> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Command(Command::Subscribe {
                broadcast: broadcast.to_owned(),
                track: track.to_owned(),
                target,
                events,
                reply,
            }))
            .ok()?;
        answer.await.ok()
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, id: u64) {
        let _ = self.inputs.send(Input::Command(Command::Unsubscribe(id)));
    }

    /// Asks the publisher of subscription `id` for a keyframe.
    pub fn request_keyframe(&self, id: u64) {
        let _ = self
            .inputs
            .send(Input::Command(Command::RequestKeyframe(id)));
    }
}

struct Served {
    track: Arc<Track>,
    sink: Option<u64>,
    groups: GroupCounter,
    /// Frames handed over by the sink and not yet sent.
    queued: Arc<AtomicUsize>,
}

struct Pull {
    target: PullTarget,
    events: mpsc::UnboundedSender<PullEvent>,
}

struct Driver {
    session: Session,
    connection: quinn::Connection,
    inputs: mpsc::UnboundedSender<Input>,
    source: Option<Arc<dyn RelaySource>>,
    control: Option<mpsc::UnboundedSender<Bytes>>,
    writers: HashMap<LocalStream, mpsc::UnboundedSender<GroupWrite>>,
    resets: HashMap<LocalStream, oneshot::Sender<u32>>,
    stops: HashMap<RemoteStream, oneshot::Sender<u32>>,
    served: HashMap<u64, Served>,
    pulls: HashMap<u64, Pull>,
}

enum GroupWrite {
    Data(Bytes),
    Finish,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>, role: Role) {
        let remote = self.connection.remote_address();
        metrics::gauge!("cascade_relay_connections").increment(1.0);
        if let Err(e) = self.open_control(role).await {
            tracing::warn!(%remote, error = %e, "relay connection failed before its control stream opened");
            self.finish("no control stream");
            return;
        }
        tokio::spawn(accept_groups(self.connection.clone(), self.inputs.clone()));
        self.flush();
        let closed = self.connection.clone();
        loop {
            let deadline = self.session.poll_timeout();
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => input,
                    None => break,
                },
                reason = closed.closed() => {
                    tracing::info!(%remote, %reason, "relay connection closed");
                    break;
                }
                () = sleep_until(deadline) => {
                    self.session.handle_timeout(Instant::now());
                    self.flush();
                    continue;
                }
            };
            self.handle(input);
            self.flush();
            if self.session.is_closed() {
                break;
            }
        }
        self.finish("relay connection closed");
        metrics::gauge!("cascade_relay_connections").decrement(1.0);
    }

    async fn open_control(&mut self, role: Role) -> Result<(), quinn::ConnectionError> {
        let (send, recv) = match role {
            Role::Client => self.connection.open_bi().await?,
            Role::Server => self.connection.accept_bi().await?,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.control = Some(tx);
        tokio::spawn(write_control(send, rx));
        tokio::spawn(read_control(recv, self.inputs.clone()));
        Ok(())
    }

    /// Every subscription in either direction is over.
    fn finish(&mut self, reason: &str) {
        for (_, served) in self.served.drain() {
            if let Some(sink) = served.sink {
                served.track.unsubscribe(sink);
            }
        }
        for (_, pull) in self.pulls.drain() {
            let _ = pull.events.send(PullEvent::Ended {
                reason: reason.to_owned(),
                retry: true,
            });
        }
        metrics::gauge!("cascade_relay_subscriptions", "side" => "served").set(0.0);
        self.connection.close(0u32.into(), reason.as_bytes());
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Command(command) => self.command(command),
            Input::Control(bytes) => self.session.handle_control(&bytes),
            Input::ControlEnd => self.session.handle_control_end(),
            Input::NewRemote(stream, stop) => {
                self.stops.insert(stream, stop);
            }
            Input::GroupData(stream, bytes) => {
                metrics::counter!("cascade_relay_bytes_total", "direction" => "in")
                    .increment(bytes.len() as u64);
                self.session.handle_group_data(stream, &bytes, now);
            }
            Input::GroupEnd(stream) => {
                self.stops.remove(&stream);
                self.session.handle_group_end(stream);
            }
            Input::GroupReset(stream, code) => {
                self.stops.remove(&stream);
                self.session.handle_group_reset(stream, code);
            }
            Input::GroupWritten(stream) => {
                self.writers.remove(&stream);
                self.resets.remove(&stream);
                self.session.group_written(stream);
            }
            Input::GroupStopped(stream) => {
                self.writers.remove(&stream);
                self.resets.remove(&stream);
                self.session.group_stopped(stream);
            }
            Input::Served { id, frame } => self.send_served(id, &frame, now),
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                broadcast,
                track,
                target,
                events,
                reply,
            } => {
                let id = self.session.subscribe(&broadcast, &track);
                self.pulls.insert(id, Pull { target, events });
                metrics::gauge!("cascade_relay_subscriptions", "side" => "pulled").increment(1.0);
                let _ = reply.send(id);
            }
            Command::Unsubscribe(id) => {
                if self.pulls.remove(&id).is_some() {
                    metrics::gauge!("cascade_relay_subscriptions", "side" => "pulled")
                        .decrement(1.0);
                }
                self.session.unsubscribe(id);
            }
            Command::RequestKeyframe(id) => self.session.request_keyframe(id),
        }
    }

    fn send_served(&mut self, id: u64, frame: &Frame, now: Instant) {
        let Some(served) = self.served.get_mut(&id) else {
            return;
        };
        served.queued.fetch_sub(1, Ordering::Relaxed);
        let group = served.groups.group_of(frame);
        let relay = RelayFrame {
            timestamp: frame.timestamp,
            composition_offset: frame.composition_offset,
            keyframe: frame.keyframe,
            payload: Bytes::from_owner(frame.payload.clone()),
        };
        self.session.send_frame(id, group, &relay, now);
    }

    /// Carries out everything the session asked for.
    fn flush(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Control(bytes) => {
                    if let Some(control) = &self.control {
                        let _ = control.send(bytes);
                    }
                }
                Output::OpenGroup {
                    stream,
                    priority,
                    header,
                } => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.writers.insert(stream, tx);
                    let (reset_tx, reset_rx) = oneshot::channel();
                    tokio::spawn(write_group(
                        self.connection.clone(),
                        stream,
                        priority,
                        header,
                        rx,
                        reset_rx,
                        self.inputs.clone(),
                    ));
                    self.resets.insert(stream, reset_tx);
                }
                Output::GroupData { stream, bytes } => {
                    metrics::counter!("cascade_relay_bytes_total", "direction" => "out")
                        .increment(bytes.len() as u64);
                    if let Some(writer) = self.writers.get(&stream) {
                        let _ = writer.send(GroupWrite::Data(bytes));
                    }
                }
                Output::FinishGroup { stream } => {
                    if let Some(writer) = self.writers.get(&stream) {
                        let _ = writer.send(GroupWrite::Finish);
                    }
                }
                Output::ResetGroup { stream, code } => {
                    self.writers.remove(&stream);
                    if let Some(reset) = self.resets.remove(&stream) {
                        let _ = reset.send(code);
                    }
                }
                Output::StopGroup { stream, code } => {
                    if let Some(stop) = self.stops.remove(&stream) {
                        let _ = stop.send(code);
                    }
                }
                Output::Close { code, reason } => {
                    tracing::warn!(remote = %self.connection.remote_address(), code, %reason, "closing relay connection");
                    self.connection.close(code.into(), reason.as_bytes());
                }
                Output::Event(event) => self.event(event),
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Ready { version } => {
                tracing::debug!(remote = %self.connection.remote_address(), version, "relay session ready");
            }
            Event::Announced { .. } | Event::Unannounced { .. } | Event::BitrateHinted { .. } => {}
            Event::SubscribeRequested {
                id,
                broadcast,
                track,
            } => self.serve(id, &broadcast, &track),
            Event::Unsubscribed { id } => {
                if let Some(served) = self.served.remove(&id) {
                    if let Some(sink) = served.sink {
                        served.track.unsubscribe(sink);
                    }
                    metrics::gauge!("cascade_relay_subscriptions", "side" => "served")
                        .decrement(1.0);
                }
            }
            Event::KeyframeRequested { id } => {
                if let Some(served) = self.served.get(&id) {
                    served.track.request_keyframe(Instant::now());
                }
            }
            Event::Subscribed { id } => {
                if let Some(pull) = self.pulls.get(&id) {
                    let _ = pull.events.send(PullEvent::Subscribed);
                }
            }
            Event::SubscribeFailed { id, code, reason }
            | Event::SubscriptionDone { id, code, reason } => {
                if let Some(pull) = self.pulls.remove(&id) {
                    metrics::gauge!("cascade_relay_subscriptions", "side" => "pulled")
                        .decrement(1.0);
                    let _ = pull.events.send(PullEvent::Ended {
                        reason: format!("{code:?}: {reason}"),
                        retry: true,
                    });
                }
            }
            Event::Frame { id, frame, .. } => self.receive(id, frame),
            Event::GroupDropped { late, .. } => {
                metrics::counter!("cascade_relay_group_drops_total", "cause" => if late { "late" } else { "superseded" })
                    .increment(1);
            }
        }
    }

    fn receive(&mut self, id: u64, frame: RelayFrame) {
        let Some(pull) = self.pulls.get(&id) else {
            return;
        };
        match &pull.target {
            PullTarget::Track(track) => track.publish_reordered(
                frame.timestamp,
                frame.composition_offset,
                Instant::now(),
                frame.keyframe,
                Arc::from(&frame.payload[..]),
            ),
            PullTarget::Merged(merged, from) => merged.offer(*from, &frame),
            PullTarget::Catalog => match serde_json::from_slice::<Vec<TrackInfo>>(&frame.payload) {
                Ok(catalog) => {
                    let _ = pull.events.send(PullEvent::Catalog(catalog));
                }
                Err(e) => {
                    tracing::warn!(remote = %self.connection.remote_address(), error = %e, "ignoring a malformed relay catalog");
                }
            },
        }
    }

    /// The peer subscribes to one of our tracks.
    fn serve(&mut self, id: u64, broadcast: &str, track_name: &str) {
        let found = self.source.as_ref().and_then(|s| s.find(broadcast));
        let Some(broadcast) = found else {
            metrics::counter!("cascade_relay_subscribe_refusals_total", "reason" => "not_found")
                .increment(1);
            self.session.reject(
                id,
                SubscribeCode::NotFound,
                "no such live broadcast on this node",
            );
            return;
        };
        if track_name == CATALOG_TRACK {
            self.session.accept(id);
            let catalog: Vec<TrackInfo> = broadcast.catalog();
            if catalog.is_empty() {
                // An edge waits for tracks: an on-demand source learns it is wanted.
                broadcast.note_asked(Instant::now());
            }
            let payload = serde_json::to_vec(&catalog).unwrap_or_default();
            let frame = RelayFrame {
                timestamp: 0,
                composition_offset: 0,
                keyframe: true,
                payload: Bytes::from(payload),
            };
            self.session.send_frame(id, 0, &frame, Instant::now());
            // The catalog is sent once and the subscriber unsubscribes when it has it. Ending
            // it from here would race: SUBSCRIBE_DONE on the control stream can overtake
            // the catalog's group stream.
            return;
        }
        let Some(track) = broadcast.track(track_name) else {
            self.session.reject(
                id,
                SubscribeCode::NotFound,
                "no such track in the broadcast's catalog",
            );
            return;
        };
        let kind = track.kind();
        self.session.accept(id);
        let sink = ServedSink {
            id,
            inputs: self.inputs.clone(),
            queued: Arc::new(AtomicUsize::new(0)),
        };
        let queued = sink.queued.clone();
        let sink_id = track.subscribe_from_current_group(Box::new(sink));
        self.served.insert(
            id,
            Served {
                track,
                sink: sink_id,
                groups: GroupCounter::new(kind),
                queued,
            },
        );
        metrics::gauge!("cascade_relay_subscriptions", "side" => "served").increment(1.0);
    }
}

/// Hands a served track's frames to the driver, refusing more than a bounded backlog.
struct ServedSink {
    id: u64,
    inputs: mpsc::UnboundedSender<Input>,
    queued: Arc<AtomicUsize>,
}

impl FrameSink for ServedSink {
    fn deliver(&mut self, frame: &Frame) -> Delivery {
        if self.queued.load(Ordering::Relaxed) >= SERVED_QUEUE_FRAMES {
            return Delivery::Full;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.inputs.send(Input::Served {
            id: self.id,
            frame: frame.clone(),
        }) {
            Ok(()) => Delivery::Accepted,
            Err(_) => Delivery::Closed,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_control(mut recv: quinn::RecvStream, inputs: mpsc::UnboundedSender<Input>) {
    loop {
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                if inputs.send(Input::Control(chunk.bytes)).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = inputs.send(Input::ControlEnd);
                return;
            }
        }
    }
}

async fn accept_groups(connection: quinn::Connection, inputs: mpsc::UnboundedSender<Input>) {
    while let Ok(recv) = connection.accept_uni().await {
        let stream = RemoteStream(recv.id().index());
        let (stop_tx, stop_rx) = oneshot::channel();
        if inputs.send(Input::NewRemote(stream, stop_tx)).is_err() {
            return;
        }
        tokio::spawn(read_group(recv, stream, stop_rx, inputs.clone()));
    }
}

async fn read_group(
    mut recv: quinn::RecvStream,
    stream: RemoteStream,
    mut stop: oneshot::Receiver<u32>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    loop {
        let read = tokio::select! {
            read = recv.read_chunk(READ_CHUNK, true) => read,
            code = &mut stop => {
                if let Ok(code) = code {
                    let _ = recv.stop(code.into());
                }
                return;
            }
        };
        let input = match read {
            Ok(Some(chunk)) => Input::GroupData(stream, chunk.bytes),
            Ok(None) => Input::GroupEnd(stream),
            Err(quinn::ReadError::Reset(code)) => {
                Input::GroupReset(stream, u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
            }
            Err(_) => Input::GroupReset(stream, u32::MAX),
        };
        let last = !matches!(input, Input::GroupData(..));
        if inputs.send(input).is_err() || last {
            return;
        }
    }
}

async fn write_group(
    connection: quinn::Connection,
    stream: LocalStream,
    priority: i32,
    header: Bytes,
    mut writes: mpsc::UnboundedReceiver<GroupWrite>,
    mut reset: oneshot::Receiver<u32>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let Ok(mut send) = connection.open_uni().await else {
        return;
    };
    let _ = send.set_priority(priority);
    let mut next = Some(GroupWrite::Data(header));
    loop {
        let write = match next.take() {
            Some(write) => write,
            None => tokio::select! {
                write = writes.recv() => match write {
                    Some(write) => write,
                    None => return, // the driver is gone; the connection closes with it
                },
                code = &mut reset => {
                    let _ = send.reset(code.unwrap_or(0).into());
                    return;
                }
            },
        };
        match write {
            GroupWrite::Data(bytes) => {
                let result = tokio::select! {
                    // `write_chunk` hands quinn the `Bytes` itself: no copy of the payload.
                    result = send.write_chunk(bytes) => result,
                    code = &mut reset => {
                        let _ = send.reset(code.unwrap_or(0).into());
                        return;
                    }
                };
                if let Err(error) = result {
                    if matches!(error, quinn::WriteError::Stopped(_)) {
                        let _ = inputs.send(Input::GroupStopped(stream));
                    }
                    return;
                }
            }
            GroupWrite::Finish => {
                let _ = send.finish();
                let _ = inputs.send(Input::GroupWritten(stream));
                return;
            }
        }
    }
}
