//! RTMP ingest: encoders and OBS publish to `rtmp://<node>:1935/live/<stream>`.
//!
//! One task per connection drives the sans-IO [`RtmpServer`]. A `publish` is decided like a
//! WHIP offer: the stream key names the stream (`show`, `show?key=TOKEN` as OBS and FFmpeg
//! send a key with a query), the node's [`PublishGate`] checks the token and makes this node
//! the stream's origin through the cluster, and the stream actor admits the publisher (or
//! refuses it: another one is live). From then on the connection's FLV tags become frames of
//! the broadcast's source tracks ([`FlvIngest`]) and the session is a publisher like any other:
//! it can be replaced by a returning publisher, ended by an operator, and counted.
//!
//! Bad input closes only its own connection, with the reason in the log and in
//! `cascade_ingest_errors_total{protocol="rtmp",reason}`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::flv::{self, AudioSpecificConfig, AudioTag, AvcConfig, VideoTag};
use cascade_protocol::media::{Codec, MediaKind, TrackInfo, source_track};
use cascade_protocol::rtmp::{RtmpError, RtmpEvent, RtmpServer};
use cascade_protocol::timeline::{MillisClock, millis_to_ticks};
use ractor::ActorRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::StreamRegistry;
use crate::RoleError;
use crate::broadcast::{Broadcast, Track};
use crate::session::{Admission, Client, Liveness, SessionId, SessionKind, SessionMsg, Transport};

/// The RTMP application publishers use.
pub const RTMP_APP: &str = "live";
/// A connection that sends nothing this long is closed (encoders send media continuously;
/// a connection that never gets to `publish` is not kept either).
const SILENCE_LIMIT: Duration = Duration::from_secs(10);
/// Largest read at once.
const READ_CHUNK: usize = 64 * 1024;

/// Decides whether a publisher may publish a stream on this node, and makes this node the
/// stream's origin if so. Implemented by the node (access rules and the cluster).
pub trait PublishGate: Send + Sync + 'static {
    /// `Ok` when `stream` may be published here by a client that presented `token`.
    fn authorize<'a>(
        &'a self,
        stream: &'a StreamId,
        token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send + 'a>>;
}

/// Starts accepting RTMP publishers on `bind`; returns the bound address.
pub async fn listen(
    bind: SocketAddr,
    registry: StreamRegistry,
    gate: Arc<dyn PublishGate>,
) -> Result<SocketAddr, RoleError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| RoleError::Bind { addr: bind, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| RoleError::Bind { addr: bind, source })?;
    tracing::info!(%local, "RTMP ingest listening (rtmp://{local}/{RTMP_APP}/<stream>)");
    tokio::spawn(async move {
        loop {
            let (stream, peer) = crate::listen::accept(&listener, "an RTMP connection").await;
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                registry: registry.clone(),
                gate: gate.clone(),
                peer,
            };
            tokio::spawn(connection.run(stream));
        }
    });
    Ok(local)
}

/// The stream a key names and the token it carries: `show`, `show?key=T`, `show?token=T`.
pub fn parse_stream_key(key: &str) -> Result<(StreamId, Option<String>), RoleError> {
    let (name, query) = key.split_once('?').unwrap_or((key, ""));
    let stream =
        StreamId::parse(name).map_err(|e| RoleError::BadIngest(format!("stream key: {e}")))?;
    let token = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "key" || *k == "token")
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty());
    Ok((stream, token))
}

struct Connection {
    registry: StreamRegistry,
    gate: Arc<dyn PublishGate>,
    peer: SocketAddr,
}

/// A publisher admitted on a stream.
struct Publishing {
    stream: StreamId,
    session: SessionId,
    actor: ActorRef<SessionMsg>,
    liveness: Liveness,
    ingest: FlvIngest,
}

impl Connection {
    async fn run(self, mut socket: TcpStream) {
        metrics::gauge!("cascade_ingest_connections", "protocol" => "rtmp").increment(1.0);
        let closer = Arc::new(Notify::new());
        let mut publishing = None;
        let reason = self.serve(&mut socket, &closer, &mut publishing).await;
        metrics::gauge!("cascade_ingest_connections", "protocol" => "rtmp").decrement(1.0);
        let _ = socket.shutdown().await;
        match publishing {
            Some(p) => {
                p.ingest.end();
                tracing::info!(stream = %p.stream, session = %p.session, peer = %self.peer, %reason, "RTMP publisher gone");
                let _ = p.actor.cast(SessionMsg::TransportClosed(reason));
            }
            None => tracing::info!(peer = %self.peer, %reason, "RTMP connection closed"),
        }
    }

    /// Serves the connection until it ends; returns why it ended.
    async fn serve(
        &self,
        socket: &mut TcpStream,
        closer: &Arc<Notify>,
        publishing: &mut Option<Publishing>,
    ) -> String {
        let mut server = RtmpServer::new(RTMP_APP);
        let mut buffer = vec![0u8; READ_CHUNK];
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout(SILENCE_LIMIT, socket.read(&mut buffer)) => read,
                () = closer.notified() => return "ended by the stream (replaced, deleted or stream ended)".into(),
            };
            let n = match read {
                Err(_) => {
                    return count_error(
                        "silent",
                        format!("nothing received for {} s", SILENCE_LIMIT.as_secs()),
                    );
                }
                Ok(Err(e)) => return format!("read failed: {e}"),
                Ok(Ok(0)) => return "the publisher closed the connection".into(),
                Ok(Ok(n)) => n,
            };
            let now = Instant::now();
            metrics::counter!("cascade_ingest_bytes_total", "protocol" => "rtmp")
                .increment(n as u64);
            if let Some(p) = publishing.as_ref() {
                p.liveness.heard(now);
            }
            if let Err(e) = server.handle_input(&buffer[..n]) {
                let _ = socket.write_all(&server.take_outbound()).await;
                return count_error(rtmp_error_label(&e), e.to_string());
            }
            while let Some(event) = server.poll_event() {
                match event {
                    RtmpEvent::PublishRequested { stream_key, .. } => {
                        match self.admit(&stream_key, closer).await {
                            Ok(admitted) => {
                                if let Err(e) = server.accept_publish() {
                                    return count_error("protocol", e.to_string());
                                }
                                admitted.liveness.set_connected();
                                *publishing = Some(admitted);
                            }
                            Err(refusal) => {
                                let label = refusal_label(&refusal);
                                metrics::counter!("cascade_ingest_refusals_total", "protocol" => "rtmp", "reason" => label)
                                    .increment(1);
                                let _ = server.reject_publish(&refusal.to_string());
                                let _ = socket.write_all(&server.take_outbound()).await;
                                return format!("publish refused: {refusal}");
                            }
                        }
                    }
                    RtmpEvent::Video { timestamp_ms, tag } => {
                        if let Some(p) = publishing.as_mut()
                            && let Err(e) = p.ingest.video(timestamp_ms, &tag, now)
                        {
                            return count_error("bad_video", e.to_string());
                        }
                    }
                    RtmpEvent::Audio { timestamp_ms, tag } => {
                        if let Some(p) = publishing.as_mut()
                            && let Err(e) = p.ingest.audio(timestamp_ms, &tag, now)
                        {
                            return count_error("bad_audio", e.to_string());
                        }
                    }
                    RtmpEvent::PublishFinished => return "the publisher unpublished".into(),
                }
            }
            let outbound = server.take_outbound();
            if !outbound.is_empty()
                && let Err(e) = socket.write_all(&outbound).await
            {
                return format!("write failed: {e}");
            }
        }
    }

    async fn admit(&self, stream_key: &str, closer: &Arc<Notify>) -> Result<Publishing, RoleError> {
        let (stream, token) = parse_stream_key(stream_key)?;
        self.gate.authorize(&stream, token.as_deref()).await?;
        self.registry.check_capacity(SessionKind::Publisher)?;
        let session = SessionId::random();
        let liveness = Liveness::new(Instant::now());
        let admitted = self
            .registry
            .admit(
                &stream,
                Admission {
                    kind: SessionKind::Publisher,
                    session,
                    protocol: "rtmp",
                    client: Client::new(Some(self.peer), token.as_deref()),
                    liveness: Some(liveness.clone()),
                    transport: Transport::Connection(closer.clone()),
                },
            )
            .await?;
        tracing::info!(%stream, %session, peer = %self.peer, "RTMP publisher admitted");
        Ok(Publishing {
            stream,
            session,
            actor: admitted.actor,
            liveness,
            ingest: FlvIngest::new(admitted.broadcast),
        })
    }
}

fn count_error(label: &'static str, reason: String) -> String {
    metrics::counter!("cascade_ingest_errors_total", "protocol" => "rtmp", "reason" => label)
        .increment(1);
    tracing::warn!(reason = %reason, label, "closing an RTMP connection");
    reason
}

fn rtmp_error_label(error: &RtmpError) -> &'static str {
    match error {
        RtmpError::Handshake(_) => "handshake",
        RtmpError::Malformed(_) => "malformed",
        RtmpError::UnknownApp(_) => "unknown_app",
        RtmpError::Violation(_) => "protocol",
    }
}

fn refusal_label(error: &RoleError) -> &'static str {
    match error {
        RoleError::BadIngest(_) => "bad_stream_key",
        RoleError::NotAuthorized { .. } => "unauthorized",
        RoleError::PublisherAlreadyLive(_) | RoleError::LiveElsewhere { .. } => "already_live",
        RoleError::Overloaded(_) => "overloaded",
        _ => "unavailable",
    }
}

/// FLV tags of one publisher into the broadcast's source tracks: sequence headers become the
/// catalog, frames become Annex B access units on the publisher's clock rebased to each
/// track's timescale (one [`MillisClock`] for both, so audio and video stay together).
pub struct FlvIngest {
    broadcast: Arc<Broadcast>,
    clock: MillisClock,
    video: Option<VideoSource>,
    audio: Option<AudioSource>,
}

struct VideoSource {
    track: Arc<Track>,
    generation: u64,
    codec: Codec,
    timescale: u32,
    avc: Option<AvcConfig>,
    /// NAL unit length size of H.265 frames (from the HEVC record).
    hevc_length_size: usize,
    bframes: bool,
}

struct AudioSource {
    track: Arc<Track>,
    generation: u64,
    codec: Codec,
    timescale: u32,
}

impl FlvIngest {
    /// Ingest into `broadcast`'s source tracks.
    pub fn new(broadcast: Arc<Broadcast>) -> Self {
        Self {
            broadcast,
            clock: MillisClock::new(),
            video: None,
            audio: None,
        }
    }

    /// One video tag.
    pub fn video(
        &mut self,
        timestamp_ms: u32,
        tag: &[u8],
        now: Instant,
    ) -> Result<(), flv::FlvError> {
        match flv::parse_video(tag)? {
            VideoTag::SequenceStart { codec, config } => self.begin_video(codec, config),
            VideoTag::Frame {
                codec,
                keyframe,
                composition_offset_ms,
                data,
            } => {
                let decode_ms = self.clock.unwrap(timestamp_ms);
                let Some(video) = self.video.as_mut().filter(|v| v.codec == codec) else {
                    // Frames before their sequence header cannot be decoded: skip them.
                    return Ok(());
                };
                if composition_offset_ms != 0 && !video.bframes {
                    video.bframes = true;
                    video.track.update_info(|info| info.bframes = true);
                    tracing::info!(stream = %self.broadcast.id(), "the RTMP source has B-frames (frames are reordered); WebRTC viewers are refused until a transcoder serves it");
                }
                let payload = match (codec, &video.avc) {
                    (Codec::H264, Some(avc)) => avc.to_annex_b(data, keyframe)?,
                    (Codec::H265, _) => {
                        let nals = flv::split_length_prefixed(data, video.hevc_length_size)?;
                        let mut out = Vec::with_capacity(data.len() + 16);
                        for nal in nals {
                            out.extend_from_slice(&[0, 0, 0, 1]);
                            out.extend_from_slice(nal);
                        }
                        out
                    }
                    _ => data.to_vec(),
                };
                let presentation_ms =
                    decode_ms.saturating_add_signed(i64::from(composition_offset_ms));
                video.track.publish_at(
                    millis_to_ticks(presentation_ms, video.timescale),
                    now,
                    keyframe,
                    Arc::from(payload),
                );
                Ok(())
            }
            VideoTag::Nothing => Ok(()),
        }
    }

    fn begin_video(&mut self, codec: Codec, config: &[u8]) -> Result<(), flv::FlvError> {
        let mut info = TrackInfo::new(source_track(MediaKind::Video), codec);
        info.config = Some(flv::hex(config));
        let mut avc = None;
        let mut hevc_length_size = 4;
        match codec {
            Codec::H264 => {
                let parsed = AvcConfig::parse(config)?;
                info.codec_string = Some(parsed.codec_string());
                avc = Some(parsed);
            }
            Codec::H265 => {
                // HEVCDecoderConfigurationRecord: lengthSizeMinusOne in the low bits of byte 21.
                let byte = config
                    .get(21)
                    .ok_or(flv::FlvError::BadConfig("HEVC record truncated"))?;
                hevc_length_size = usize::from(byte & 0x03) + 1;
            }
            _ => {}
        }
        // A repeated identical header (some encoders send one per keyframe) changes nothing.
        if let Some(video) = &self.video
            && video.codec == codec
            && video.track.info().and_then(|i| i.config) == info.config
        {
            return Ok(());
        }
        let track = self.broadcast.source(MediaKind::Video);
        let timescale = info.timescale;
        tracing::info!(stream = %self.broadcast.id(), codec = codec.name(), codec_string = ?info.codec_string, "RTMP video track");
        let generation = track.begin_source(info, None);
        self.video = Some(VideoSource {
            track,
            generation,
            codec,
            timescale,
            avc,
            hevc_length_size,
            bframes: false,
        });
        Ok(())
    }

    /// One audio tag.
    pub fn audio(
        &mut self,
        timestamp_ms: u32,
        tag: &[u8],
        now: Instant,
    ) -> Result<(), flv::FlvError> {
        match flv::parse_audio(tag)? {
            AudioTag::SequenceStart { codec, config } => {
                let mut info = TrackInfo::new(source_track(MediaKind::Audio), codec);
                info.config = Some(flv::hex(config));
                if codec == Codec::Aac {
                    let asc = AudioSpecificConfig::parse(config)?;
                    info.timescale = asc.sample_rate;
                    info.sample_rate = Some(asc.sample_rate);
                    info.channels = Some(asc.channels);
                    info.codec_string = Some(asc.codec_string());
                }
                if let Some(audio) = &self.audio
                    && audio.codec == codec
                    && audio.track.info().and_then(|i| i.config) == info.config
                {
                    return Ok(());
                }
                let track = self.broadcast.source(MediaKind::Audio);
                let timescale = info.timescale;
                let generation = track.begin_source(info, None);
                self.audio = Some(AudioSource {
                    track,
                    generation,
                    codec,
                    timescale,
                });
                Ok(())
            }
            AudioTag::Frame { codec, data } => {
                let ms = self.clock.unwrap(timestamp_ms);
                if let Some(audio) = self.audio.as_ref().filter(|a| a.codec == codec) {
                    audio.track.publish_at(
                        millis_to_ticks(ms, audio.timescale),
                        now,
                        true,
                        Arc::from(data),
                    );
                }
                Ok(())
            }
        }
    }

    /// The publisher is gone: its tracks stop (unless another publisher took them over).
    pub fn end(&self) {
        if let Some(video) = &self.video {
            video.track.end_source_of(video.generation);
        }
        if let Some(audio) = &self.audio {
            audio.track.end_source_of(audio.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_name_the_stream_and_may_carry_a_token() {
        let (stream, token) = parse_stream_key("show").unwrap();
        assert_eq!((stream.as_str(), token), ("show", None));
        let (stream, token) = parse_stream_key("show?key=s3cret").unwrap();
        assert_eq!(
            (stream.as_str(), token.as_deref()),
            ("show", Some("s3cret"))
        );
        let (_, token) = parse_stream_key("show?x=1&token=t").unwrap();
        assert_eq!(token.as_deref(), Some("t"));
        assert!(matches!(
            parse_stream_key("../etc"),
            Err(RoleError::BadIngest(_))
        ));
        assert!(matches!(parse_stream_key(""), Err(RoleError::BadIngest(_))));
    }
}
