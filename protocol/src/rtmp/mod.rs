//! The server side of one RTMP publishing connection, sans-IO: bytes in, bytes out and
//! events, no socket and no clock.
//!
//! Our own pieces throughout: the handshake (the original one; clients such as FFmpeg and
//! OBS take it and skip the Flash digest checks), the chunk stream ([`chunk`]), AMF0
//! ([`amf0`]) and the commands a publisher sends (`connect` to the configured application,
//! `releaseStream`, `FCPublish`, `createStream`, `publish` once the caller has decided,
//! `FCUnpublish`/`deleteStream`). Media comes out as FLV tag bodies with their 32-bit
//! millisecond timestamps; what a tag means is [`crate::flv`]'s business.
//!
//! Driving it: feed every received chunk to [`RtmpServer::handle_input`], then write
//! everything [`RtmpServer::take_outbound`] returns and handle every
//! [`RtmpServer::poll_event`] until it returns `None`. Any input gets events or an
//! [`RtmpError`]; nothing panics.

pub mod amf0;
pub mod chunk;
pub mod client;

use std::collections::VecDeque;

use amf0::Amf0;
use chunk::{ChunkReader, Message};

/// What went wrong on a connection; it is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtmpError {
    /// The bytes were not an RTMP handshake.
    #[error("bad RTMP handshake: {0}")]
    Handshake(String),
    /// The chunk stream or a command did not parse.
    #[error("malformed RTMP: {0}")]
    Malformed(String),
    /// The client asked for an application this server does not have.
    #[error("unknown RTMP application {0:?} (publish to rtmp://host:port/live/<stream>)")]
    UnknownApp(String),
    /// The client did something out of order (media before `publish`, a second `publish`).
    #[error("RTMP protocol violation: {0}")]
    Violation(&'static str),
}

/// What the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtmpEvent {
    /// The client asks to publish `stream_key` (as sent, query included): answer with
    /// [`RtmpServer::accept_publish`] or [`RtmpServer::reject_publish`].
    PublishRequested {
        /// The application (`live`).
        app: String,
        /// The stream key exactly as the client sent it, e.g. `show?key=secret`.
        stream_key: String,
    },
    /// A video message: an FLV video tag body.
    Video {
        /// Decode time, milliseconds on the publisher's 32-bit clock.
        timestamp_ms: u32,
        /// The tag body.
        tag: bytes::Bytes,
    },
    /// An audio message: an FLV audio tag body.
    Audio {
        /// Milliseconds on the publisher's 32-bit clock.
        timestamp_ms: u32,
        /// The tag body.
        tag: bytes::Bytes,
    },
    /// The client ended its publication (`FCUnpublish`/`deleteStream`/`closeStream`).
    PublishFinished,
}

pub(crate) const HANDSHAKE_SIZE: usize = 1536;
/// The chunk size we send with.
const OUT_CHUNK_SIZE: usize = 4096;
/// The acknowledgement window we ask the client for, and our bandwidth hint.
const WINDOW: u32 = 5_000_000;
/// The message stream a publisher gets from `createStream`.
const PUBLISH_STREAM: u32 = 1;

// Message types.
const SET_CHUNK_SIZE: u8 = 1;
const ABORT: u8 = 2;
const ACKNOWLEDGEMENT: u8 = 3;
const USER_CONTROL: u8 = 4;
const WINDOW_ACK_SIZE: u8 = 5;
const SET_PEER_BANDWIDTH: u8 = 6;
const AUDIO: u8 = 8;
const VIDEO: u8 = 9;
const AMF3_COMMAND: u8 = 17;
const AMF0_COMMAND: u8 = 20;

enum Phase {
    /// Waiting for C0 + C1.
    Hello,
    /// S0-S2 sent; waiting for C2.
    Echo,
    /// Chunks.
    Session,
}

/// One publishing connection.
pub struct RtmpServer {
    app: String,
    phase: Phase,
    handshake: Vec<u8>,
    reader: ChunkReader,
    outbound: Vec<u8>,
    /// The chunk size the client reads ours with (128 until we say otherwise).
    out_chunk_size: usize,
    events: VecDeque<RtmpEvent>,
    connected_app: Option<String>,
    /// The transaction and key of a `publish` awaiting the caller's decision.
    pending_publish: Option<String>,
    publishing: bool,
    /// Acknowledgements the client asked for: its window, bytes since the last one, total.
    peer_window: Option<u32>,
    unacknowledged: u64,
    received: u64,
}

impl std::fmt::Debug for RtmpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpServer")
            .field("app", &self.app)
            .field("publishing", &self.publishing)
            .finish_non_exhaustive()
    }
}

impl RtmpServer {
    /// A connection that accepts publishers on application `app` (`live`).
    pub fn new(app: &str) -> Self {
        Self {
            app: app.to_owned(),
            phase: Phase::Hello,
            handshake: Vec::new(),
            reader: ChunkReader::new(),
            outbound: Vec::new(),
            out_chunk_size: 128,
            events: VecDeque::new(),
            connected_app: None,
            pending_publish: None,
            publishing: false,
            peer_window: None,
            unacknowledged: 0,
            received: 0,
        }
    }

    /// Whether `publish` was accepted.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Takes in bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        match self.phase {
            Phase::Hello | Phase::Echo => {
                self.handshake.extend_from_slice(bytes);
                self.advance_handshake()
            }
            Phase::Session => self.chunks(bytes),
        }
    }

    fn advance_handshake(&mut self) -> Result<(), RtmpError> {
        if let Phase::Hello = self.phase {
            if let Some(&version) = self.handshake.first()
                && version != 3
            {
                return Err(RtmpError::Handshake(format!(
                    "version {version} (RTMP is 3; is this RTMPS or HTTP on the RTMP port?)"
                )));
            }
            if self.handshake.len() < 1 + HANDSHAKE_SIZE {
                return Ok(());
            }
            // S0, S1 (time 0, zero version: the original handshake), S2 = C1 echoed.
            self.outbound.push(3);
            self.outbound.extend_from_slice(&[0; 8]);
            self.outbound
                .extend((0..HANDSHAKE_SIZE - 8).map(|i| (i * 31 + 7) as u8));
            self.outbound
                .extend_from_slice(&self.handshake[1..1 + HANDSHAKE_SIZE]);
            self.handshake.drain(..1 + HANDSHAKE_SIZE);
            self.phase = Phase::Echo;
        }
        if self.handshake.len() < HANDSHAKE_SIZE {
            return Ok(());
        }
        let rest = self.handshake.split_off(HANDSHAKE_SIZE);
        self.handshake = Vec::new();
        self.phase = Phase::Session;
        self.chunks(&rest)
    }

    fn chunks(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        self.received += bytes.len() as u64;
        self.unacknowledged += bytes.len() as u64;
        if let Some(window) = self.peer_window
            && self.unacknowledged >= u64::from(window)
        {
            self.unacknowledged = 0;
            let total = (self.received & 0xffff_ffff) as u32;
            self.send(2, ACKNOWLEDGEMENT, 0, total.to_be_bytes().to_vec());
        }
        self.reader.push(bytes);
        while let Some(message) = self
            .reader
            .next_message()
            .map_err(|e| RtmpError::Malformed(e.to_string()))?
        {
            self.message(message)?;
        }
        Ok(())
    }

    fn message(&mut self, message: Message) -> Result<(), RtmpError> {
        let u32_payload = |p: &[u8]| {
            p.get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| RtmpError::Malformed("control message too short".into()))
        };
        match message.type_id {
            SET_CHUNK_SIZE => {
                let size = u32_payload(&message.payload)?;
                self.reader
                    .set_chunk_size(size)
                    .map_err(|e| RtmpError::Malformed(e.to_string()))?;
            }
            ABORT => self.reader.abort(u32_payload(&message.payload)?),
            WINDOW_ACK_SIZE => {
                let window = u32_payload(&message.payload)?;
                self.peer_window = (window > 0).then_some(window);
            }
            ACKNOWLEDGEMENT | USER_CONTROL | SET_PEER_BANDWIDTH => {}
            AUDIO | VIDEO => {
                if !self.publishing {
                    return Err(RtmpError::Violation("media before an accepted publish"));
                }
                let tag = bytes::Bytes::from(message.payload);
                self.events.push_back(if message.type_id == VIDEO {
                    RtmpEvent::Video {
                        timestamp_ms: message.timestamp,
                        tag,
                    }
                } else {
                    RtmpEvent::Audio {
                        timestamp_ms: message.timestamp,
                        tag,
                    }
                });
            }
            AMF0_COMMAND => self.command(&message.payload, message.stream_id)?,
            // AMF3 commands are AMF0 behind one format byte.
            AMF3_COMMAND => self.command(
                message.payload.get(1..).unwrap_or_default(),
                message.stream_id,
            )?,
            // Data messages (`@setDataFrame`/`onMetaData`), shared objects, aggregates: the
            // tags themselves say what we need.
            _ => {}
        }
        Ok(())
    }

    fn command(&mut self, payload: &[u8], stream_id: u32) -> Result<(), RtmpError> {
        let values = amf0::decode_all(payload).map_err(|e| RtmpError::Malformed(e.to_string()))?;
        let mut values = values.into_iter();
        let name = match values.next() {
            Some(Amf0::String(name)) => name,
            _ => return Err(RtmpError::Malformed("a command without a name".into())),
        };
        let transaction = values.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        let command_object = values.next().unwrap_or(Amf0::Null);
        let args: Vec<Amf0> = values.collect();
        match name.as_str() {
            "connect" => self.connect(transaction, &command_object),
            "releaseStream" | "FCPublish" | "getStreamLength" => {
                self.result(transaction, 0, vec![Amf0::Null, Amf0::Undefined]);
                Ok(())
            }
            "createStream" => {
                self.result(
                    transaction,
                    0,
                    vec![Amf0::Null, Amf0::Number(f64::from(PUBLISH_STREAM))],
                );
                Ok(())
            }
            "publish" => {
                let Some(app) = self.connected_app.clone() else {
                    return Err(RtmpError::Violation("publish before connect"));
                };
                if self.publishing || self.pending_publish.is_some() {
                    return Err(RtmpError::Violation("a second publish on one connection"));
                }
                let key = args
                    .first()
                    .and_then(Amf0::as_str)
                    .ok_or_else(|| RtmpError::Malformed("publish without a stream key".into()))?
                    .to_owned();
                self.pending_publish = Some(key.clone());
                self.events.push_back(RtmpEvent::PublishRequested {
                    app,
                    stream_key: key,
                });
                Ok(())
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                if self.publishing {
                    self.events.push_back(RtmpEvent::PublishFinished);
                }
                Ok(())
            }
            "play" | "play2" => {
                self.status(
                    stream_id,
                    "error",
                    "NetStream.Play.Failed",
                    "this server takes publishers over RTMP; watch over WHEP or HLS",
                );
                Ok(())
            }
            _ => Ok(()), // `_checkbw`, `ping` and the like need nothing
        }
    }

    fn connect(&mut self, transaction: f64, command_object: &Amf0) -> Result<(), RtmpError> {
        let app = command_object
            .get("app")
            .and_then(Amf0::as_str)
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        // `live?token=...` style apps are the same application.
        let bare = app.split('?').next().unwrap_or_default();
        if bare != self.app {
            self.command_reply(
                "_error",
                transaction,
                0,
                vec![
                    Amf0::Null,
                    status_object(
                        "error",
                        "NetConnection.Connect.Rejected",
                        "unknown application",
                    ),
                ],
            );
            return Err(RtmpError::UnknownApp(app));
        }
        self.send(2, WINDOW_ACK_SIZE, 0, WINDOW.to_be_bytes().to_vec());
        let mut bandwidth = WINDOW.to_be_bytes().to_vec();
        bandwidth.push(2); // dynamic
        self.send(2, SET_PEER_BANDWIDTH, 0, bandwidth);
        self.send(
            2,
            SET_CHUNK_SIZE,
            0,
            (OUT_CHUNK_SIZE as u32).to_be_bytes().to_vec(),
        );
        self.result(
            transaction,
            0,
            vec![
                amf0::object(&[
                    ("fmsVer", Amf0::String("FMS/3,0,1,123".into())),
                    ("capabilities", Amf0::Number(31.0)),
                ]),
                amf0::object(&[
                    ("level", Amf0::String("status".into())),
                    ("code", Amf0::String("NetConnection.Connect.Success".into())),
                    ("description", Amf0::String("Connection succeeded.".into())),
                    ("objectEncoding", Amf0::Number(0.0)),
                ]),
            ],
        );
        self.connected_app = Some(bare.to_owned());
        Ok(())
    }

    /// Bytes to write to the connection, in order.
    pub fn take_outbound(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbound)
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<RtmpEvent> {
        self.events.pop_front()
    }

    /// Accepts the pending `publish`: media flows from now on.
    pub fn accept_publish(&mut self) -> Result<(), RtmpError> {
        let key = self
            .pending_publish
            .take()
            .ok_or(RtmpError::Violation("no publish request to accept"))?;
        // User control: Stream Begin on the publishing stream.
        let mut begin = vec![0, 0];
        begin.extend_from_slice(&PUBLISH_STREAM.to_be_bytes());
        self.send(2, USER_CONTROL, 0, begin);
        self.status(
            PUBLISH_STREAM,
            "status",
            "NetStream.Publish.Start",
            &format!("{key} is now published"),
        );
        self.publishing = true;
        Ok(())
    }

    /// Refuses the pending `publish` with `description` (the client shows it, e.g. FFmpeg's
    /// "Server error: ..."); the caller closes the connection after writing the outbound bytes.
    pub fn reject_publish(&mut self, description: &str) -> Result<(), RtmpError> {
        self.pending_publish
            .take()
            .ok_or(RtmpError::Violation("no publish request to reject"))?;
        self.status(
            PUBLISH_STREAM,
            "error",
            "NetStream.Publish.BadName",
            description,
        );
        Ok(())
    }

    fn status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.command_reply(
            "onStatus",
            0.0,
            stream_id,
            vec![Amf0::Null, status_object(level, code, description)],
        );
    }

    fn result(&mut self, transaction: f64, stream_id: u32, values: Vec<Amf0>) {
        self.command_reply("_result", transaction, stream_id, values);
    }

    fn command_reply(&mut self, name: &str, transaction: f64, stream_id: u32, values: Vec<Amf0>) {
        self.send(
            3,
            AMF0_COMMAND,
            stream_id,
            amf0::command(name, transaction, &values),
        );
    }

    fn send(&mut self, chunk_stream: u8, type_id: u8, stream_id: u32, payload: Vec<u8>) {
        chunk::write_message(
            &mut self.outbound,
            chunk_stream,
            self.out_chunk_size,
            &Message {
                type_id,
                stream_id,
                timestamp: 0,
                payload,
            },
        );
        if type_id == SET_CHUNK_SIZE {
            // Everything after it is read in chunks of the new size.
            self.out_chunk_size = OUT_CHUNK_SIZE;
        }
    }
}

fn status_object(level: &str, code: &str, description: &str) -> Amf0 {
    amf0::object(&[
        ("level", Amf0::String(level.to_owned())),
        ("code", Amf0::String(code.to_owned())),
        ("description", Amf0::String(description.to_owned())),
    ])
}

/// The fuzz target's body (`protocol/fuzz`, target `rtmp_connection`): any bytes as a whole
/// connection, after a valid handshake and with every publish accepted. Never a panic.
pub fn fuzz_connection(data: &[u8]) {
    let mut server = RtmpServer::new("live");
    let mut hello = vec![3u8];
    hello.extend(std::iter::repeat_n(0u8, HANDSHAKE_SIZE * 2));
    if server.handle_input(&hello).is_err() {
        return;
    }
    for chunk in data.chunks(97) {
        if server.handle_input(chunk).is_err() {
            return;
        }
        while let Some(event) = server.poll_event() {
            match event {
                RtmpEvent::PublishRequested { .. } => {
                    let _ = server.accept_publish();
                }
                RtmpEvent::Video { tag, .. } => {
                    if let Ok(crate::flv::VideoTag::SequenceStart { config, .. }) =
                        crate::flv::parse_video(&tag)
                        && let Ok(avc) = crate::flv::AvcConfig::parse(config)
                    {
                        let _ = avc.to_annex_b(config, true);
                    }
                }
                RtmpEvent::Audio { tag, .. } => {
                    if let Ok(crate::flv::AudioTag::SequenceStart { config, .. }) =
                        crate::flv::parse_audio(&tag)
                    {
                        let _ = crate::flv::AudioSpecificConfig::parse(config);
                    }
                }
                RtmpEvent::PublishFinished => {}
            }
        }
        let _ = server.take_outbound();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;

    /// rml_rtmp's client (an independent RTMP implementation) and our server talking through
    /// memory until neither has anything to say.
    struct Pair {
        server: RtmpServer,
        client: ClientSession,
        client_events: Vec<ClientSessionEvent>,
        server_events: Vec<RtmpEvent>,
    }

    impl Pair {
        fn connect() -> Self {
            let mut client_handshake = Handshake::new(PeerType::Client);
            let mut server = RtmpServer::new("live");
            let mut to_server = client_handshake.generate_outbound_p0_and_p1().unwrap();
            let mut leftover_for_client = Vec::new();
            loop {
                server.handle_input(&to_server).unwrap();
                let to_client = server.take_outbound();
                if matches!(server.phase, Phase::Session) && to_client.is_empty() {
                    break;
                }
                match client_handshake.process_bytes(&to_client).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        to_server = response_bytes
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        to_server = response_bytes;
                        leftover_for_client = remaining_bytes;
                        server.handle_input(&to_server).unwrap();
                        break;
                    }
                }
            }
            let (client, results) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut pair = Self {
                server,
                client,
                client_events: Vec::new(),
                server_events: Vec::new(),
            };
            let mut to_client = leftover_for_client;
            to_client.extend(pair.server.take_outbound());
            pair.client_results(results);
            pair.deliver_to_client(&to_client);
            pair
        }

        fn client_results(&mut self, results: Vec<ClientSessionResult>) {
            for result in results {
                match result {
                    ClientSessionResult::OutboundResponse(packet) => {
                        self.server.handle_input(&packet.bytes).unwrap();
                        while let Some(event) = self.server.poll_event() {
                            self.server_events.push(event);
                        }
                        let back = self.server.take_outbound();
                        self.deliver_to_client(&back);
                    }
                    ClientSessionResult::RaisedEvent(event) => self.client_events.push(event),
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }

        fn deliver_to_client(&mut self, bytes: &[u8]) {
            if bytes.is_empty() {
                return;
            }
            let results = self.client.handle_input(bytes).unwrap();
            self.client_results(results);
        }
    }

    #[test]
    fn a_publisher_connects_publishes_once_accepted_and_its_media_comes_out_as_tags() {
        let mut pair = Pair::connect();
        let results = pair.client.request_connection("live".into()).unwrap();
        pair.client_results(vec![results]);
        assert!(
            pair.client_events
                .iter()
                .any(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
        );
        let results = pair
            .client
            .request_publishing("show?key=abc".into(), PublishRequestType::Live)
            .unwrap();
        pair.client_results(vec![results]);
        assert_eq!(
            pair.server_events,
            vec![RtmpEvent::PublishRequested {
                app: "live".into(),
                stream_key: "show?key=abc".into()
            }]
        );
        pair.server.accept_publish().unwrap();
        let back = pair.server.take_outbound();
        pair.deliver_to_client(&back);
        assert!(
            pair.client_events
                .iter()
                .any(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
        );
        let tag = bytes::Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        let packet = pair
            .client
            .publish_video_data(tag.clone(), RtmpTimestamp::new(4_000_000_000), false)
            .unwrap();
        pair.client_results(vec![packet]);
        assert_eq!(
            pair.server_events.last(),
            Some(&RtmpEvent::Video {
                timestamp_ms: 4_000_000_000,
                tag
            }),
            "extended timestamps come through whole"
        );
    }

    #[test]
    fn an_unknown_application_is_refused_with_its_name() {
        let mut pair = Pair::connect();
        let packet = pair.client.request_connection("vod".into()).unwrap();
        let ClientSessionResult::OutboundResponse(packet) = packet else {
            panic!("no packet");
        };
        assert_eq!(
            pair.server.handle_input(&packet.bytes),
            Err(RtmpError::UnknownApp("vod".into()))
        );
    }

    #[test]
    fn the_input_that_made_rml_rtmp_panic_is_a_value_or_an_error() {
        // docs/fuzzing.md: an AMF0 command with fewer than three values.
        let crashed_rml_rtmp = [
            0x0a, 0x01, 0, 0, 0, 0, 0, 0x11, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x3b, 0x0a, 0x0a,
        ];
        fuzz_connection(&crashed_rml_rtmp);
        let mut server = RtmpServer::new("live");
        let mut hello = vec![3u8];
        hello.extend(std::iter::repeat_n(0u8, HANDSHAKE_SIZE * 2));
        server.handle_input(&hello).unwrap();
        // A complete AMF0 command message holding only its name.
        let mut payload = Vec::new();
        amf0::encode(&Amf0::String("connect".into()), &mut payload);
        let mut wire = Vec::new();
        chunk::write_message(
            &mut wire,
            3,
            128,
            &Message {
                type_id: AMF0_COMMAND,
                stream_id: 0,
                timestamp: 0,
                payload,
            },
        );
        assert_eq!(
            server.handle_input(&wire),
            Err(RtmpError::UnknownApp(String::new())),
            "a connect without its command object names no application"
        );
    }

    #[test]
    fn garbage_instead_of_a_handshake_is_an_error() {
        let mut server = RtmpServer::new("live");
        assert!(matches!(
            server.handle_input(b"GET / HTTP/1.1\r\n"),
            Err(RtmpError::Handshake(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_after_a_handshake_never_panic() {
        let mut seed = 1u64;
        for len in [0usize, 1, 12, 300, 5000] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            fuzz_connection(&data);
        }
    }
}
