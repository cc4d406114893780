//! The server side of one RTMP publishing connection, sans-IO: bytes in, bytes out and
//! events, no socket and no clock of ours.
//!
//! The handshake, the chunk stream and AMF0 commands are `rml_rtmp`'s; this wrapper keeps that
//! crate (last released 2023) behind one small type, answers what a publisher needs (`connect`
//! to the configured application, `createStream`, `publish` once the caller has decided) and
//! hands out FLV tag bodies with their 32-bit millisecond timestamps. What a tag means is
//! [`crate::flv`]'s business; what the stream does with it is the caller's.
//!
//! Driving it: feed every received chunk to [`RtmpServer::handle_input`], then write
//! everything [`RtmpServer::take_outbound`] returns and handle every
//! [`RtmpServer::poll_event`] until it returns `None`.

use std::collections::VecDeque;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

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

enum Phase {
    Handshake(Box<Handshake>),
    Session(Box<ServerSession>),
}

/// One publishing connection.
pub struct RtmpServer {
    app: String,
    phase: Phase,
    outbound: Vec<u8>,
    events: VecDeque<RtmpEvent>,
    pending_publish: Option<u32>,
    publishing: bool,
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
            phase: Phase::Handshake(Box::new(Handshake::new(PeerType::Server))),
            outbound: Vec::new(),
            events: VecDeque::new(),
            pending_publish: None,
            publishing: false,
        }
    }

    /// Whether `publish` was accepted.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Takes in bytes read from the connection.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        let rest = match &mut self.phase {
            Phase::Handshake(handshake) => match handshake
                .process_bytes(bytes)
                .map_err(|e| RtmpError::Handshake(e.to_string()))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    return Ok(());
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.outbound.extend_from_slice(&response_bytes);
                    let mut config = ServerSessionConfig::new();
                    config.chunk_size = 4096;
                    let (session, results) = ServerSession::new(config)
                        .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                    self.phase = Phase::Session(Box::new(session));
                    self.apply(results)?;
                    remaining_bytes
                }
            },
            Phase::Session(session) => {
                let results = session
                    .handle_input(bytes)
                    .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                return self.apply(results);
            }
        };
        if rest.is_empty() {
            return Ok(());
        }
        self.handle_input(&rest)
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
        let (Some(request), Phase::Session(session)) =
            (self.pending_publish.take(), &mut self.phase)
        else {
            return Err(RtmpError::Violation("no publish request to accept"));
        };
        let results = session
            .accept_request(request)
            .map_err(|e| RtmpError::Malformed(e.to_string()))?;
        self.publishing = true;
        self.apply(results)
    }

    /// Refuses the pending `publish` with `description` (the client shows it, e.g. FFmpeg's
    /// log); the caller closes the connection after writing the outbound bytes.
    pub fn reject_publish(&mut self, description: &str) -> Result<(), RtmpError> {
        let (Some(request), Phase::Session(session)) =
            (self.pending_publish.take(), &mut self.phase)
        else {
            return Err(RtmpError::Violation("no publish request to reject"));
        };
        let results = session
            .reject_request(request, "NetStream.Publish.BadName", description)
            .map_err(|e| RtmpError::Malformed(e.to_string()))?;
        self.apply(results)
    }

    fn apply(&mut self, results: Vec<ServerSessionResult>) -> Result<(), RtmpError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.outbound.extend_from_slice(&packet.bytes);
                }
                ServerSessionResult::RaisedEvent(event) => self.on_event(event)?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: ServerSessionEvent) -> Result<(), RtmpError> {
        let Phase::Session(session) = &mut self.phase else {
            return Ok(());
        };
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.trim_end_matches('/') != self.app {
                    let results = session
                        .reject_request(
                            request_id,
                            "NetConnection.Connect.Rejected",
                            "unknown application",
                        )
                        .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                    self.apply(results)?;
                    return Err(RtmpError::UnknownApp(app_name));
                }
                let results = session
                    .accept_request(request_id)
                    .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                self.apply(results)?;
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                if self.publishing || self.pending_publish.is_some() {
                    return Err(RtmpError::Violation("a second publish on one connection"));
                }
                self.pending_publish = Some(request_id);
                self.events.push_back(RtmpEvent::PublishRequested {
                    app: app_name,
                    stream_key,
                });
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.events.push_back(RtmpEvent::PublishFinished);
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if !self.publishing {
                    return Err(RtmpError::Violation("video before an accepted publish"));
                }
                self.events.push_back(RtmpEvent::Video {
                    timestamp_ms: timestamp.value,
                    tag: data,
                });
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if !self.publishing {
                    return Err(RtmpError::Violation("audio before an accepted publish"));
                }
                self.events.push_back(RtmpEvent::Audio {
                    timestamp_ms: timestamp.value,
                    tag: data,
                });
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                let results = session
                    .reject_request(
                        request_id,
                        "NetStream.Play.Failed",
                        "this server takes publishers over RTMP; watch over WHEP or HLS",
                    )
                    .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                self.apply(results)?;
            }
            // Chunk sizes, acknowledgements, metadata (`@setDataFrame`), `releaseStream` and
            // `FCPublish` need nothing from us.
            _ => {}
        }
        Ok(())
    }
}

/// The fuzz target's body (`protocol/fuzz`, target `rtmp_ingest`): any bytes as a whole
/// connection, after a valid handshake and with every publish accepted. Never a panic.
pub fn fuzz_connection(data: &[u8]) {
    let mut server = RtmpServer::new("live");
    // C0 + C1 of the original (non-digest) handshake, then C2.
    let mut hello = vec![3u8];
    hello.extend(std::iter::repeat_n(0u8, 1536 * 2));
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
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;

    /// A client and our server talking through memory until neither has anything to say.
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
                if matches!(server.phase, Phase::Session(_)) && to_client.is_empty() {
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
