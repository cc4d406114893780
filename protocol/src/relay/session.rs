//! One relay connection's state machine, sans IO: the driver (quinn in `roles`) feeds it the
//! control stream's bytes, group streams' bytes, ends and resets, and the time; it returns
//! [`Output`]s — bytes to write, streams to open, finish, reset or stop, and [`Event`]s for
//! the application. Both ends run the same machine; the side that connects is the
//! [`Role::Client`] and speaks first (SETUP).
//!
//! A session is publisher and subscriber at once: an edge subscribes to tracks its origin
//! announced, and the origin serves them. Publishing follows the group model: every group of
//! a subscription goes on its own unidirectional stream, newer groups at higher priority.
//! When a newer group has started and an older one is still not fully written a latency
//! budget later, the older one is reset ([`stream_code::DROPPED_LATE`]) instead of queued:
//! a slow subscriber skips to the newest group rather than falling further behind. The
//! subscriber side delivers each subscription's frames in order and never goes back to an
//! older group once a newer one has begun.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::wire::{
    ControlDecoder, ControlMessage, GroupDecoder, GroupHeader, GroupItem, RelayFrame,
    SUPPORTED_VERSIONS, SubscribeCode, close_code, stream_code,
};

/// Which side of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the connection (and the control stream); sends SETUP.
    Client,
    /// Accepted it; answers SETUP.
    Server,
}

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Versions offered (client) or accepted (server), best first.
    pub versions: Vec<u64>,
    /// How long an older group may stay unwritten after a newer one started.
    pub latency_budget: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            versions: SUPPORTED_VERSIONS.to_vec(),
            latency_budget: Duration::from_millis(500),
        }
    }
}

/// A group stream this side opened; the driver maps it to a QUIC send stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalStream(pub u64);

/// A group stream the peer opened; the driver names it (e.g. by its QUIC stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteStream(pub u64);

/// What the driver must do, or what the application learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the control stream.
    Control(Bytes),
    /// Open a unidirectional stream at `priority` (higher first) and write `header`.
    OpenGroup {
        stream: LocalStream,
        priority: i32,
        header: Bytes,
    },
    /// Write these bytes to a group stream opened earlier.
    GroupData {
        stream: LocalStream,
        bytes: Bytes,
    },
    /// Finish (FIN) a group stream once its bytes are written; then report
    /// [`Session::group_written`].
    FinishGroup {
        stream: LocalStream,
    },
    /// Reset a group stream, dropping what is unsent.
    ResetGroup {
        stream: LocalStream,
        code: u32,
    },
    /// Ask the peer to stop sending a group stream (STOP_SENDING) and ignore its rest.
    StopGroup {
        stream: RemoteStream,
        code: u32,
    },
    /// Close the connection.
    Close {
        code: u32,
        reason: String,
    },
    Event(Event),
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// SETUP is done; this version is spoken.
    Ready {
        version: u64,
    },
    Announced {
        broadcast: String,
    },
    Unannounced {
        broadcast: String,
    },
    /// The peer subscribes to one of our tracks: answer with [`Session::accept`] or
    /// [`Session::reject`], then [`Session::send_frame`].
    SubscribeRequested {
        id: u64,
        broadcast: String,
        track: String,
    },
    /// The peer ended a subscription it had with us.
    Unsubscribed {
        id: u64,
    },
    /// Our subscription was accepted.
    Subscribed {
        id: u64,
    },
    /// Our subscription was refused; it is gone.
    SubscribeFailed {
        id: u64,
        code: SubscribeCode,
        reason: String,
    },
    /// The publisher ended our subscription; it is gone.
    SubscriptionDone {
        id: u64,
        code: SubscribeCode,
        reason: String,
    },
    /// A frame of one of our subscriptions, in order.
    Frame {
        id: u64,
        group: u64,
        frame: RelayFrame,
    },
    /// A group was given up: by us as publisher (`late`: the subscriber fell behind), or
    /// by the publisher or by us as subscriber (a newer group had begun).
    GroupDropped {
        id: u64,
        group: u64,
        late: bool,
    },
    KeyframeRequested {
        id: u64,
    },
    BitrateHinted {
        id: u64,
        bits_per_second: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    Waiting,
    Ready(u64),
    Closed,
}

/// A subscription we made.
#[derive(Debug, Default)]
struct Subscription {
    /// The group whose frames are being delivered.
    current: Option<Current>,
    /// Newer groups arriving meanwhile, held back so that frames stay in order.
    waiting: BTreeMap<u64, Waiting>,
}

impl Subscription {
    /// When the delivered group will have kept newer ones waiting too long.
    fn stall_deadline(&self, budget: Duration) -> Option<Instant> {
        if self.current.is_some_and(|c| c.ended) {
            return None;
        }
        let (_, oldest) = self.waiting.first_key_value()?;
        Some(oldest.since + budget)
    }
}

#[derive(Debug, Clone, Copy)]
struct Current {
    group: u64,
    stream: RemoteStream,
    /// Its stream ended (FIN or reset): the next group may be delivered.
    ended: bool,
}

#[derive(Debug)]
struct Waiting {
    stream: RemoteStream,
    frames: VecDeque<RelayFrame>,
    ended: bool,
    /// When its header arrived.
    since: Instant,
}

/// A group stream the peer opened.
#[derive(Debug, Default)]
struct Incoming {
    decoder: GroupDecoder,
    header: Option<GroupHeader>,
    /// We asked the peer to stop it; what still arrives is ignored until its end or reset.
    stopped: bool,
}

/// A subscription the peer made to us.
#[derive(Debug, Default)]
struct Served {
    accepted: bool,
    /// The group being written: its number and stream.
    current: Option<(u64, LocalStream)>,
    /// Earlier groups, finished but not yet fully written.
    superseded: VecDeque<SupersededGroup>,
    /// The subscriber stopped the current group: the rest of it is not sent.
    current_stopped: bool,
}

/// An older group still being written after a newer one started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupersededGroup {
    pub group: u64,
    pub stream: LocalStream,
    /// When the next group started.
    pub since: Instant,
}

/// The decision behind skip-to-newest: the superseded groups that are later than `budget`
/// and are to be reset.
pub fn late_groups(
    superseded: &[SupersededGroup],
    now: Instant,
    budget: Duration,
) -> Vec<SupersededGroup> {
    superseded
        .iter()
        .filter(|g| now.saturating_duration_since(g.since) > budget)
        .copied()
        .collect()
}

/// The version both sides speak: the highest of ours the peer offered.
pub fn choose_version(ours: &[u64], offered: &[u64]) -> Option<u64> {
    ours.iter().copied().filter(|v| offered.contains(v)).max()
}

/// The priority of a group's stream: newer groups first.
fn group_priority(group: u64) -> i32 {
    (group & 0x7fff_ffff) as i32
}

/// One relay connection.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: SessionConfig,
    handshake: Handshake,
    control: ControlDecoder,
    /// Control messages asked for before SETUP completed.
    held: Vec<ControlMessage>,
    outputs: VecDeque<Output>,
    next_subscription: u64,
    subscriptions: HashMap<u64, Subscription>,
    incoming: HashMap<RemoteStream, Incoming>,
    served: HashMap<u64, Served>,
    /// Written-but-not-acknowledged streams, to find their subscription.
    stream_owner: HashMap<LocalStream, u64>,
    next_stream: u64,
}

impl Session {
    pub fn new(role: Role, config: SessionConfig) -> Session {
        let mut session = Session {
            role,
            config,
            handshake: Handshake::Waiting,
            control: ControlDecoder::default(),
            held: Vec::new(),
            outputs: VecDeque::new(),
            next_subscription: 0,
            subscriptions: HashMap::new(),
            incoming: HashMap::new(),
            served: HashMap::new(),
            stream_owner: HashMap::new(),
            next_stream: 0,
        };
        if role == Role::Client {
            let versions = session.config.versions.clone();
            session.write_control(&ControlMessage::Setup { versions });
        }
        session
    }

    /// The version agreed, once SETUP is done.
    pub fn version(&self) -> Option<u64> {
        match self.handshake {
            Handshake::Ready(version) => Some(version),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.handshake == Handshake::Closed
    }

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Session::handle_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let budget = self.config.latency_budget;
        let publishing = self
            .served
            .values()
            .flat_map(|s| s.superseded.iter())
            .map(|g| g.since + budget);
        let subscribing = self
            .subscriptions
            .values()
            .filter_map(|s| s.stall_deadline(budget));
        publishing.chain(subscribing).min()
    }

    /// Gives up groups that have waited longer than the latency budget: as publisher,
    /// resets older groups not yet written; as subscriber, stops a group that holds back
    /// newer ones and skips to the newest.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.skip_stalled_groups(now);
        self.reset_late_groups(now);
    }

    fn reset_late_groups(&mut self, now: Instant) {
        let budget = self.config.latency_budget;
        let mut dropped = Vec::new();
        for (&id, served) in &mut self.served {
            let late = late_groups(served.superseded.make_contiguous(), now, budget);
            served
                .superseded
                .retain(|g| !late.iter().any(|l| l.stream == g.stream));
            dropped.extend(late.into_iter().map(|g| (id, g)));
        }
        dropped.sort_by_key(|(id, g)| (*id, g.group));
        for (id, group) in dropped {
            self.stream_owner.remove(&group.stream);
            self.outputs.push_back(Output::ResetGroup {
                stream: group.stream,
                code: stream_code::DROPPED_LATE,
            });
            self.outputs.push_back(Output::Event(Event::GroupDropped {
                id,
                group: group.group,
                late: true,
            }));
        }
    }

    /// Bytes arrived on the control stream.
    pub fn handle_control(&mut self, bytes: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.control.push(bytes);
        loop {
            match self.control.next_message() {
                Ok(Some(message)) => self.on_control(message),
                Ok(None) => return,
                Err(e) => return self.violation(&format!("control stream: {e}")),
            }
            if self.is_closed() {
                return;
            }
        }
    }

    /// The peer ended the control stream: the session is over.
    pub fn handle_control_end(&mut self) {
        if !self.is_closed() {
            self.close(close_code::NO_ERROR, "control stream ended");
        }
    }

    // --- publishing -----------------------------------------------------------------------

    /// Tells the peer we publish `broadcast`.
    pub fn announce(&mut self, broadcast: &str) {
        self.send_or_hold(ControlMessage::Announce {
            broadcast: broadcast.to_owned(),
        });
    }

    pub fn unannounce(&mut self, broadcast: &str) {
        self.send_or_hold(ControlMessage::Unannounce {
            broadcast: broadcast.to_owned(),
        });
    }

    /// Accepts a subscription the peer asked for.
    pub fn accept(&mut self, id: u64) {
        if let Some(served) = self.served.get_mut(&id)
            && !served.accepted
        {
            served.accepted = true;
            self.write_control(&ControlMessage::SubscribeOk { id });
        }
    }

    /// Refuses a subscription the peer asked for.
    pub fn reject(&mut self, id: u64, code: SubscribeCode, reason: &str) {
        if self.served.remove(&id).is_some() {
            self.write_control(&ControlMessage::SubscribeError {
                id,
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// Sends a frame of `group` to subscription `id`; a new group number starts a new
    /// stream and supersedes the previous group. Frames of an accepted subscription only.
    pub fn send_frame(&mut self, id: u64, group: u64, frame: &RelayFrame, now: Instant) {
        let Some(served) = self.served.get_mut(&id) else {
            return;
        };
        if !served.accepted {
            return;
        }
        let stream = match served.current {
            Some((current, _)) if current == group && served.current_stopped => return,
            Some((current, stream)) if current == group => stream,
            Some((current, _)) if group < current => return, // an older group: never go back
            current => {
                if let Some((old_group, old_stream)) = current {
                    self.outputs
                        .push_back(Output::FinishGroup { stream: old_stream });
                    served.superseded.push_back(SupersededGroup {
                        group: old_group,
                        stream: old_stream,
                        since: now,
                    });
                }
                let stream = LocalStream(self.next_stream);
                self.next_stream += 1;
                served.current = Some((group, stream));
                served.current_stopped = false;
                self.stream_owner.insert(stream, id);
                let mut header = BytesMut::new();
                GroupHeader {
                    subscription: id,
                    group,
                }
                .encode(&mut header);
                self.outputs.push_back(Output::OpenGroup {
                    stream,
                    priority: group_priority(group),
                    header: header.freeze(),
                });
                stream
            }
        };
        // The frame header and the payload go out as two pieces: the payload is shared with
        // the track, never copied here.
        let mut header = BytesMut::with_capacity(20);
        frame.encode_header(&mut header);
        self.outputs.push_back(Output::GroupData {
            stream,
            bytes: header.freeze(),
        });
        self.outputs.push_back(Output::GroupData {
            stream,
            bytes: frame.payload.clone(),
        });
        self.reset_late_groups(now);
    }

    /// The driver wrote all of a finished group stream's bytes: it no longer counts as
    /// behind.
    pub fn group_written(&mut self, stream: LocalStream) {
        if let Some(id) = self.stream_owner.remove(&stream)
            && let Some(served) = self.served.get_mut(&id)
        {
            served.superseded.retain(|g| g.stream != stream);
        }
    }

    /// The subscriber stopped a group stream (STOP_SENDING): nothing more goes on it.
    pub fn group_stopped(&mut self, stream: LocalStream) {
        if let Some(id) = self.stream_owner.remove(&stream)
            && let Some(served) = self.served.get_mut(&id)
        {
            served.superseded.retain(|g| g.stream != stream);
            if served.current.is_some_and(|(_, current)| current == stream) {
                served.current_stopped = true;
            }
        }
    }

    /// Ends a subscription the peer has with us (track ended, going away).
    pub fn end(&mut self, id: u64, code: SubscribeCode, reason: &str) {
        if let Some(served) = self.served.remove(&id) {
            self.finish_served(&served);
            self.write_control(&ControlMessage::SubscribeDone {
                id,
                code,
                reason: reason.to_owned(),
            });
        }
    }

    // --- subscribing ----------------------------------------------------------------------

    /// Subscribes to a track of a broadcast the peer publishes, from its newest group.
    /// Returns the subscription id that its events carry.
    pub fn subscribe(&mut self, broadcast: &str, track: &str) -> u64 {
        let id = self.next_subscription;
        self.next_subscription += 1;
        self.subscriptions.insert(id, Subscription::default());
        self.send_or_hold(ControlMessage::Subscribe {
            id,
            broadcast: broadcast.to_owned(),
            track: track.to_owned(),
        });
        id
    }

    /// Ends one of our subscriptions; its streams in flight are stopped.
    pub fn unsubscribe(&mut self, id: u64) {
        if self.subscriptions.remove(&id).is_none() {
            return;
        }
        self.stop_incoming_of(id);
        self.send_or_hold(ControlMessage::Unsubscribe { id });
    }

    /// Asks the publisher of subscription `id` for a keyframe.
    pub fn request_keyframe(&mut self, id: u64) {
        if self.subscriptions.contains_key(&id) {
            self.send_or_hold(ControlMessage::KeyframeRequest { id });
        }
    }

    /// Tells the publisher of subscription `id` what its viewers can take.
    pub fn hint_bitrate(&mut self, id: u64, bits_per_second: u64) {
        if self.subscriptions.contains_key(&id) {
            self.send_or_hold(ControlMessage::BitrateHint {
                id,
                bits_per_second,
            });
        }
    }

    /// Bytes arrived on a group stream the peer opened.
    pub fn handle_group_data(&mut self, stream: RemoteStream, bytes: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        let incoming = self.incoming.entry(stream).or_default();
        if incoming.stopped {
            return; // we stopped it; the peer's remaining bytes are ignored
        }
        incoming.decoder.push(bytes);
        loop {
            let Some(incoming) = self.incoming.get_mut(&stream).filter(|i| !i.stopped) else {
                return;
            };
            match incoming.decoder.next_item() {
                Ok(None) => return,
                Ok(Some(GroupItem::Header(header))) => {
                    incoming.header = Some(header);
                    self.on_group_header(stream, header, now);
                }
                Ok(Some(GroupItem::Frame(frame))) => self.on_group_frame(stream, frame),
                Err(e) => return self.violation(&format!("group stream: {e}")),
            }
            if self.is_closed() {
                return;
            }
        }
    }

    /// The peer finished a group stream.
    pub fn handle_group_end(&mut self, stream: RemoteStream) {
        let Some(incoming) = self.incoming.remove(&stream) else {
            return;
        };
        if incoming.stopped {
            return;
        }
        if let Err(e) = incoming.decoder.finish() {
            return self.violation(&format!("group stream: {e}"));
        }
        let Some(header) = incoming.header else {
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&header.subscription) else {
            return;
        };
        if let Some(current) = subscription.current.as_mut().filter(|c| c.stream == stream) {
            current.ended = true;
        } else if let Some(waiting) = subscription.waiting.get_mut(&header.group) {
            waiting.ended = true;
        }
        self.advance(header.subscription);
    }

    /// The peer reset a group stream.
    pub fn handle_group_reset(&mut self, stream: RemoteStream, code: u32) {
        let Some(incoming) = self.incoming.remove(&stream) else {
            return;
        };
        let (false, Some(header)) = (incoming.stopped, incoming.header) else {
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&header.subscription) else {
            return;
        };
        if let Some(current) = subscription.current.as_mut().filter(|c| c.stream == stream) {
            current.ended = true;
        } else {
            subscription.waiting.remove(&header.group);
        }
        self.emit(Event::GroupDropped {
            id: header.subscription,
            group: header.group,
            late: code == stream_code::DROPPED_LATE,
        });
        self.advance(header.subscription);
    }

    // --- internals ------------------------------------------------------------------------

    fn on_group_header(&mut self, stream: RemoteStream, header: GroupHeader, now: Instant) {
        let id = header.subscription;
        if id >= self.next_subscription {
            return self.violation(&format!(
                "group stream for subscription {id}, which was never made"
            ));
        }
        let Some(subscription) = self.subscriptions.get_mut(&id) else {
            // Unsubscribed while this group was on its way.
            return self.stop_incoming(stream, stream_code::CANCELLED);
        };
        match subscription.current {
            None => {
                subscription.current = Some(Current {
                    group: header.group,
                    stream,
                    ended: false,
                });
            }
            Some(current) if header.group <= current.group => {
                // Older than what is being delivered: never go back.
                self.stop_incoming(stream, stream_code::SUPERSEDED);
                self.emit(Event::GroupDropped {
                    id,
                    group: header.group,
                    late: false,
                });
            }
            Some(current) if current.ended && subscription.waiting.is_empty() => {
                subscription.current = Some(Current {
                    group: header.group,
                    stream,
                    ended: false,
                });
            }
            Some(_) => {
                subscription.waiting.insert(
                    header.group,
                    Waiting {
                        stream,
                        frames: VecDeque::new(),
                        ended: false,
                        since: now,
                    },
                );
            }
        }
    }

    fn on_group_frame(&mut self, stream: RemoteStream, frame: RelayFrame) {
        let Some(header) = self.incoming.get(&stream).and_then(|i| i.header) else {
            return;
        };
        let Some(subscription) = self.subscriptions.get_mut(&header.subscription) else {
            return;
        };
        if subscription.current.is_some_and(|c| c.stream == stream) {
            self.emit(Event::Frame {
                id: header.subscription,
                group: header.group,
                frame,
            });
        } else if let Some(waiting) = subscription.waiting.get_mut(&header.group) {
            waiting.frames.push_back(frame);
        }
    }

    /// Once the delivered group has ended, moves on to the oldest waiting group and
    /// delivers what it holds (repeatedly, while groups are complete).
    fn advance(&mut self, id: u64) {
        loop {
            let Some(subscription) = self.subscriptions.get_mut(&id) else {
                return;
            };
            if !subscription.current.is_some_and(|c| c.ended) {
                return;
            }
            let Some((group, waiting)) = subscription.waiting.pop_first() else {
                return;
            };
            subscription.current = Some(Current {
                group,
                stream: waiting.stream,
                ended: waiting.ended,
            });
            for frame in waiting.frames {
                self.emit(Event::Frame { id, group, frame });
            }
        }
    }

    /// A subscription whose delivered group has kept newer ones waiting longer than the
    /// budget gives that group up and skips to the newest waiting group.
    fn skip_stalled_groups(&mut self, now: Instant) {
        let budget = self.config.latency_budget;
        let mut stalled: Vec<u64> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.stall_deadline(budget).is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        stalled.sort_unstable();
        for id in stalled {
            let Some(subscription) = self.subscriptions.get_mut(&id) else {
                continue;
            };
            let newest = subscription
                .waiting
                .pop_last()
                .expect("a stalled subscription has a waiting group");
            let mut given_up: Vec<(u64, RemoteStream)> = std::mem::take(&mut subscription.waiting)
                .into_iter()
                .map(|(group, w)| (group, w.stream))
                .collect();
            if let Some(current) = subscription.current.filter(|c| !c.ended) {
                given_up.insert(0, (current.group, current.stream));
            }
            subscription.current = Some(Current {
                group: newest.0,
                stream: newest.1.stream,
                ended: newest.1.ended,
            });
            for (group, stream) in given_up {
                self.stop_incoming(stream, stream_code::SUPERSEDED);
                self.emit(Event::GroupDropped {
                    id,
                    group,
                    late: true,
                });
            }
            for frame in newest.1.frames {
                self.emit(Event::Frame {
                    id,
                    group: newest.0,
                    frame,
                });
            }
            self.advance(id);
        }
    }

    fn stop_incoming(&mut self, stream: RemoteStream, code: u32) {
        let incoming = self.incoming.entry(stream).or_default();
        if !incoming.stopped {
            incoming.stopped = true;
            self.outputs.push_back(Output::StopGroup { stream, code });
        }
    }

    fn stop_incoming_of(&mut self, id: u64) {
        let mut streams: Vec<RemoteStream> = self
            .incoming
            .iter()
            .filter(|(_, i)| !i.stopped && i.header.is_some_and(|h| h.subscription == id))
            .map(|(s, _)| *s)
            .collect();
        streams.sort();
        for stream in streams {
            self.stop_incoming(stream, stream_code::CANCELLED);
        }
    }

    /// A subscription we served ended normally: its current group is finished; older
    /// groups still being written may complete.
    fn finish_served(&mut self, served: &Served) {
        for group in &served.superseded {
            self.stream_owner.remove(&group.stream);
        }
        if let Some((_, stream)) = served.current {
            self.stream_owner.remove(&stream);
            self.outputs.push_back(Output::FinishGroup { stream });
        }
    }

    /// A subscription we served was cancelled: every group still in flight is reset.
    fn reset_served(&mut self, served: &Served, code: u32) {
        let streams = served.superseded.iter().map(|g| g.stream);
        for stream in streams.chain(served.current.map(|(_, s)| s)) {
            self.stream_owner.remove(&stream);
            self.outputs.push_back(Output::ResetGroup { stream, code });
        }
    }

    fn on_control(&mut self, message: ControlMessage) {
        let ready = matches!(self.handshake, Handshake::Ready(_));
        match message {
            ControlMessage::Setup { versions } if self.role == Role::Server && !ready => {
                match choose_version(&self.config.versions, &versions) {
                    Some(version) => {
                        self.write_control(&ControlMessage::SetupOk { version });
                        self.become_ready(version);
                    }
                    None => self.close(
                        close_code::VERSION_MISMATCH,
                        &format!(
                            "no common relay version: we speak {:?}, the peer offered {versions:?}",
                            self.config.versions
                        ),
                    ),
                }
            }
            ControlMessage::SetupOk { version } if self.role == Role::Client && !ready => {
                if self.config.versions.contains(&version) {
                    self.become_ready(version);
                } else {
                    self.close(
                        close_code::VERSION_MISMATCH,
                        &format!("the peer chose version {version}, which was not offered"),
                    );
                }
            }
            message if !ready => {
                self.violation(&format!("{} before SETUP completed", message.name()));
            }
            ControlMessage::Setup { .. } | ControlMessage::SetupOk { .. } => {
                self.violation("SETUP sent twice or by the wrong side");
            }
            ControlMessage::Announce { broadcast } => self.emit(Event::Announced { broadcast }),
            ControlMessage::Unannounce { broadcast } => {
                self.emit(Event::Unannounced { broadcast });
            }
            ControlMessage::Subscribe {
                id,
                broadcast,
                track,
            } => {
                if let std::collections::hash_map::Entry::Vacant(entry) = self.served.entry(id) {
                    entry.insert(Served::default());
                    self.emit(Event::SubscribeRequested {
                        id,
                        broadcast,
                        track,
                    });
                } else {
                    self.write_control(&ControlMessage::SubscribeError {
                        id,
                        code: SubscribeCode::DuplicateId,
                        reason: format!("subscription id {id} is already in use"),
                    });
                }
            }
            ControlMessage::Unsubscribe { id } => {
                if let Some(served) = self.served.remove(&id) {
                    self.reset_served(&served, stream_code::CANCELLED);
                    self.emit(Event::Unsubscribed { id });
                }
            }
            ControlMessage::KeyframeRequest { id } => {
                if self.served.contains_key(&id) {
                    self.emit(Event::KeyframeRequested { id });
                }
            }
            ControlMessage::BitrateHint {
                id,
                bits_per_second,
            } => {
                if self.served.contains_key(&id) {
                    self.emit(Event::BitrateHinted {
                        id,
                        bits_per_second,
                    });
                }
            }
            ControlMessage::SubscribeOk { id } => {
                if self.subscriptions.contains_key(&id) {
                    self.emit(Event::Subscribed { id });
                }
            }
            ControlMessage::SubscribeError { id, code, reason } => {
                if self.subscriptions.remove(&id).is_some() {
                    self.stop_incoming_of(id);
                    self.emit(Event::SubscribeFailed { id, code, reason });
                }
            }
            ControlMessage::SubscribeDone { id, code, reason } => {
                if self.subscriptions.remove(&id).is_some() {
                    self.stop_incoming_of(id);
                    self.emit(Event::SubscriptionDone { id, code, reason });
                }
            }
            ControlMessage::Unknown { .. } => {}
        }
    }

    fn become_ready(&mut self, version: u64) {
        self.handshake = Handshake::Ready(version);
        self.emit(Event::Ready { version });
        for message in std::mem::take(&mut self.held) {
            self.write_control(&message);
        }
    }

    fn send_or_hold(&mut self, message: ControlMessage) {
        match self.handshake {
            // A client's messages follow its SETUP on the same stream, so they may go now.
            Handshake::Waiting if self.role == Role::Server => self.held.push(message),
            Handshake::Closed => {}
            _ => self.write_control(&message),
        }
    }

    fn write_control(&mut self, message: &ControlMessage) {
        let mut bytes = BytesMut::new();
        message.encode(&mut bytes);
        self.outputs.push_back(Output::Control(bytes.freeze()));
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn violation(&mut self, reason: &str) {
        self.close(close_code::PROTOCOL_VIOLATION, reason);
    }

    fn close(&mut self, code: u32, reason: &str) {
        self.handshake = Handshake::Closed;
        self.outputs.push_back(Output::Close {
            code,
            reason: reason.to_owned(),
        });
    }
}
