//! The publishing side of RTMP, sans-IO: what a restream sends to YouTube, Twitch or any
//! RTMP server. Handshake, `connect`, `releaseStream`/`FCPublish`/`createStream`, `publish`,
//! then FLV tags as audio and video messages.
//!
//! Driving it: write [`RtmpClient::take_outbound`] after every call, feed everything read to
//! [`RtmpClient::handle_input`], and act on [`RtmpClient::poll_event`].

use std::collections::VecDeque;

use super::amf0::{self, Amf0};
use super::chunk::{self, ChunkReader, Message};
use super::{HANDSHAKE_SIZE, RtmpError};

/// Where a restream goes, read from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpTarget {
    /// `true` for `rtmps://` (TLS).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (1935 for RTMP, 443 for RTMPS unless given).
    pub port: u16,
    /// The application: the path before the stream key (`live2`).
    pub app: String,
    /// The stream key: the last path segment (with its query, if any).
    pub key: String,
}

impl RtmpTarget {
    /// Reads `rtmp://host[:port]/app[/more]/key` or `rtmps://...`.
    pub fn parse(url: &str) -> Result<Self, RtmpError> {
        let bad = |why: &str| RtmpError::Malformed(format!("restream URL {url:?}: {why}"));
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rtmp://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rtmps://") {
            (true, rest)
        } else {
            return Err(bad("must start with rtmp:// or rtmps://"));
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no application"))?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, if tls { 443 } else { 1935 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let (app, key) = path.rsplit_once('/').ok_or_else(|| bad("no stream key"))?;
        if app.is_empty() || key.is_empty() {
            return Err(bad("needs /<application>/<stream key>"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The URL without its stream key, safe to show and log.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        format!("{scheme}://{}:{}/{}/<key>", self.host, self.port, self.app)
    }

    fn tc_url(&self) -> String {
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        format!("{scheme}://{}:{}/{}", self.host, self.port, self.app)
    }
}

/// What the caller learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server accepted the publication: send media.
    Publishing,
    /// The server refused something; the connection is over.
    Refused(String),
}

enum Phase {
    Handshake,
    /// `connect` sent, waiting for its result.
    Connecting,
    /// Connected: stream creation and publishing.
    Session,
}

const TXN_CONNECT: f64 = 1.0;
const TXN_CREATE_STREAM: f64 = 4.0;
const OUT_CHUNK_SIZE: usize = 4096;

/// One publishing connection to an RTMP server.
pub struct RtmpClient {
    target: RtmpTarget,
    phase: Phase,
    handshake: Vec<u8>,
    reader: ChunkReader,
    outbound: Vec<u8>,
    events: VecDeque<ClientEvent>,
    stream_id: Option<u32>,
    publishing: bool,
    out_chunk_size: usize,
}

impl std::fmt::Debug for RtmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpClient")
            .field("target", &self.target.redacted())
            .field("publishing", &self.publishing)
            .finish_non_exhaustive()
    }
}

impl RtmpClient {
    /// A client that will publish to `target`; C0 and C1 are ready to send.
    pub fn new(target: RtmpTarget) -> Self {
        let mut outbound = vec![3u8];
        outbound.extend_from_slice(&[0; 8]);
        outbound.extend((0..HANDSHAKE_SIZE - 8).map(|i| (i * 17 + 3) as u8));
        Self {
            target,
            phase: Phase::Handshake,
            handshake: Vec::new(),
            reader: ChunkReader::new(),
            outbound,
            events: VecDeque::new(),
            stream_id: None,
            publishing: false,
            out_chunk_size: 128,
        }
    }

    /// Whether the server accepted the publication.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Bytes to write, in order.
    pub fn take_outbound(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbound)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Takes bytes read from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        if let Phase::Handshake = self.phase {
            self.handshake.extend_from_slice(bytes);
            if let Some(&version) = self.handshake.first()
                && version != 3
            {
                return Err(RtmpError::Handshake(format!("server version {version}")));
            }
            if self.handshake.len() < 1 + 2 * HANDSHAKE_SIZE {
                return Ok(());
            }
            // C2 echoes S1.
            let s1 = self.handshake[1..1 + HANDSHAKE_SIZE].to_vec();
            self.outbound.extend_from_slice(&s1);
            let rest = self.handshake.split_off(1 + 2 * HANDSHAKE_SIZE);
            self.handshake = Vec::new();
            self.phase = Phase::Connecting;
            self.send(2, 1, 0, (OUT_CHUNK_SIZE as u32).to_be_bytes().to_vec());
            self.out_chunk_size = OUT_CHUNK_SIZE;
            self.command(
                "connect",
                TXN_CONNECT,
                0,
                vec![amf0::object(&[
                    ("app", Amf0::String(self.target.app.clone())),
                    ("type", Amf0::String("nonprivate".into())),
                    (
                        "flashVer",
                        Amf0::String("FMLE/3.0 (compatible; Cascade)".into()),
                    ),
                    ("tcUrl", Amf0::String(self.target.tc_url())),
                ])],
            );
            return self.messages(&rest);
        }
        self.messages(bytes)
    }

    fn messages(&mut self, bytes: &[u8]) -> Result<(), RtmpError> {
        self.reader.push(bytes);
        while let Some(message) = self
            .reader
            .next_message()
            .map_err(|e| RtmpError::Malformed(e.to_string()))?
        {
            match message.type_id {
                1 => {
                    let size = message
                        .payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| RtmpError::Malformed("short Set Chunk Size".into()))?;
                    self.reader
                        .set_chunk_size(size)
                        .map_err(|e| RtmpError::Malformed(e.to_string()))?;
                }
                20 => self.on_command(&message.payload)?,
                _ => {} // acknowledgements, bandwidth, user control
            }
        }
        Ok(())
    }

    fn on_command(&mut self, payload: &[u8]) -> Result<(), RtmpError> {
        let values = amf0::decode_all(payload).map_err(|e| RtmpError::Malformed(e.to_string()))?;
        let name = values.first().and_then(Amf0::as_str).unwrap_or_default();
        let transaction = values.get(1).and_then(Amf0::as_number).unwrap_or(0.0);
        let info = values.get(3);
        let describe = |info: Option<&Amf0>| {
            let field = |k| info.and_then(|i| i.get(k)).and_then(Amf0::as_str);
            match (field("code"), field("description")) {
                (Some(code), Some(text)) => format!("{code}: {text}"),
                (Some(code), None) => code.to_owned(),
                (None, Some(text)) => text.to_owned(),
                (None, None) => "refused without a reason".to_owned(),
            }
        };
        match name {
            "_result" if transaction == TXN_CONNECT => {
                self.phase = Phase::Session;
                let key = Amf0::String(self.target.key.clone());
                self.command("releaseStream", 2.0, 0, vec![Amf0::Null, key.clone()]);
                self.command("FCPublish", 3.0, 0, vec![Amf0::Null, key]);
                self.command("createStream", TXN_CREATE_STREAM, 0, vec![Amf0::Null]);
            }
            "_result" if transaction == TXN_CREATE_STREAM => {
                let id = info.and_then(Amf0::as_number).unwrap_or(1.0);
                let stream_id = if (0.0..1e9).contains(&id) {
                    id as u32
                } else {
                    1
                };
                self.stream_id = Some(stream_id);
                self.command(
                    "publish",
                    5.0,
                    stream_id,
                    vec![
                        Amf0::Null,
                        Amf0::String(self.target.key.clone()),
                        Amf0::String("live".into()),
                    ],
                );
            }
            "_error" => self.events.push_back(ClientEvent::Refused(describe(info))),
            "onStatus" => {
                let level = info
                    .and_then(|i| i.get("level"))
                    .and_then(Amf0::as_str)
                    .unwrap_or_default();
                let code = info
                    .and_then(|i| i.get("code"))
                    .and_then(Amf0::as_str)
                    .unwrap_or_default();
                if code == "NetStream.Publish.Start" {
                    self.publishing = true;
                    self.events.push_back(ClientEvent::Publishing);
                } else if level == "error" {
                    self.events.push_back(ClientEvent::Refused(describe(info)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends a video tag body at `timestamp_ms` (once publishing).
    pub fn send_video(&mut self, timestamp_ms: u32, tag: Vec<u8>) {
        if let Some(stream_id) = self.stream_id.filter(|_| self.publishing) {
            self.send_timed(6, 9, stream_id, timestamp_ms, tag);
        }
    }

    /// Sends an audio tag body at `timestamp_ms` (once publishing).
    pub fn send_audio(&mut self, timestamp_ms: u32, tag: Vec<u8>) {
        if let Some(stream_id) = self.stream_id.filter(|_| self.publishing) {
            self.send_timed(4, 8, stream_id, timestamp_ms, tag);
        }
    }

    fn command(&mut self, name: &str, transaction: f64, stream_id: u32, values: Vec<Amf0>) {
        self.send(3, 20, stream_id, amf0::command(name, transaction, &values));
    }

    fn send(&mut self, chunk_stream: u8, type_id: u8, stream_id: u32, payload: Vec<u8>) {
        self.send_timed(chunk_stream, type_id, stream_id, 0, payload);
    }

    fn send_timed(
        &mut self,
        chunk_stream: u8,
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        payload: Vec<u8>,
    ) {
        chunk::write_message(
            &mut self.outbound,
            chunk_stream,
            self.out_chunk_size,
            &Message {
                type_id,
                stream_id,
                timestamp,
                payload,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RtmpEvent, RtmpServer};
    use super::*;

    #[test]
    fn restream_urls_split_into_host_app_and_key() {
        let t = RtmpTarget::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh").unwrap();
        assert_eq!(
            (
                t.tls,
                t.host.as_str(),
                t.port,
                t.app.as_str(),
                t.key.as_str()
            ),
            (false, "a.rtmp.youtube.com", 1935, "live2", "abcd-efgh")
        );
        assert_eq!(t.redacted(), "rtmp://a.rtmp.youtube.com:1935/live2/<key>");
        let t = RtmpTarget::parse("rtmps://live-api-s.facebook.com:443/rtmp/FB-1?s=x").unwrap();
        assert_eq!(
            (t.tls, t.port, t.app.as_str(), t.key.as_str()),
            (true, 443, "rtmp", "FB-1?s=x")
        );
        let t = RtmpTarget::parse("rtmp://127.0.0.1:19350/app/sub/key").unwrap();
        assert_eq!((t.port, t.app.as_str()), (19350, "app/sub"));
        for bad in [
            "http://x/a/b",
            "rtmp://host",
            "rtmp://host/app",
            "rtmp://:1935/a/b",
            "rtmp://h:x/a/b",
        ] {
            assert!(RtmpTarget::parse(bad).is_err(), "{bad}");
        }
    }

    /// Our client and our server through memory: a publish is requested, accepted, and
    /// media arrives as sent.
    #[test]
    fn our_client_publishes_to_our_server() {
        let mut client = RtmpClient::new(RtmpTarget::parse("rtmp://h/live/show?key=k").unwrap());
        let mut server = RtmpServer::new("live");
        let mut server_events = Vec::new();
        for _ in 0..10 {
            server.handle_input(&client.take_outbound()).unwrap();
            while let Some(event) = server.poll_event() {
                if matches!(event, RtmpEvent::PublishRequested { .. }) {
                    server.accept_publish().unwrap();
                }
                server_events.push(event);
            }
            client.handle_input(&server.take_outbound()).unwrap();
        }
        assert_eq!(client.poll_event(), Some(ClientEvent::Publishing));
        assert!(matches!(
            &server_events[0],
            RtmpEvent::PublishRequested { stream_key, .. } if stream_key == "show?key=k"
        ));
        client.send_video(40, vec![0x17, 1, 0, 0, 0, 9, 9]);
        server.handle_input(&client.take_outbound()).unwrap();
        assert_eq!(
            server.poll_event(),
            Some(RtmpEvent::Video {
                timestamp_ms: 40,
                tag: bytes::Bytes::from_static(&[0x17, 1, 0, 0, 0, 9, 9])
            })
        );
    }

    #[test]
    fn a_refusal_comes_back_with_its_reason() {
        let mut client = RtmpClient::new(RtmpTarget::parse("rtmp://h/live/show").unwrap());
        let mut server = RtmpServer::new("live");
        for _ in 0..10 {
            server.handle_input(&client.take_outbound()).unwrap();
            while let Some(event) = server.poll_event() {
                if matches!(event, RtmpEvent::PublishRequested { .. }) {
                    server.reject_publish("stream key not recognised").unwrap();
                }
            }
            client.handle_input(&server.take_outbound()).unwrap();
        }
        assert_eq!(
            client.poll_event(),
            Some(ClientEvent::Refused(
                "NetStream.Publish.BadName: stream key not recognised".into()
            ))
        );
    }
}
