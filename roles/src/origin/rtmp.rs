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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::flv::{self, AudioSpecificConfig, AudioTag, AvcConfig, VideoTag};
use cascade_protocol::media::{Codec, MediaKind, TrackInfo, source_track};
use cascade_protocol::rtmp::{RtmpError, RtmpEvent, RtmpServer};
use cascade_protocol::timeline::{WrappingClock, millis_to_ticks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::StreamRegistry;
use super::ingest::{AdmittedPublisher, PublishGate, SourceTracks, admit_publisher, refusal_label};
use crate::RoleError;

/// The RTMP application publishers use.
pub const RTMP_APP: &str = "live";
/// A connection that sends nothing this long is closed (encoders send media continuously;
/// a connection that never gets to `publish` is not kept either).
const SILENCE_LIMIT: Duration = Duration::from_secs(10);
/// Largest read at once.
const READ_CHUNK: usize = 64 * 1024;

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
    let (name, token) = cascade_protocol::stream_id::split_key(key);
    let stream =
        StreamId::parse(name).map_err(|e| RoleError::BadIngest(format!("stream key: {e}")))?;
    Ok((stream, token))
}

struct Connection {
    registry: StreamRegistry,
    gate: Arc<dyn PublishGate>,
    peer: SocketAddr,
}

/// A publisher admitted on a stream and the reading of its tags.
struct Publishing {
    publisher: AdmittedPublisher,
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
                let publisher = p.publisher;
                tracing::info!(stream = %publisher.stream, session = %publisher.session, peer = %self.peer, %reason, "RTMP publisher gone");
                publisher.end(reason);
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
                p.publisher.liveness.heard(now);
            }
            if let Err(e) = server.handle_input(&buffer[..n]) {
                let _ = socket.write_all(&server.take_outbound()).await;
                return count_error(rtmp_error_label(&e), e.to_string());
            }
            while let Some(event) = server.poll_event() {
                match event {
                    RtmpEvent::PublishRequested { stream_key, .. } => {
                        match self.admit(&stream_key, closer).await {
                            Ok(publisher) => {
                                if let Err(e) = server.accept_publish() {
                                    publisher.end(e.to_string());
                                    return count_error("protocol", e.to_string());
                                }
                                publisher.liveness.set_connected();
                                *publishing = Some(Publishing {
                                    publisher,
                                    ingest: FlvIngest::new(),
                                });
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
                            && let Err(e) =
                                p.ingest
                                    .video(&mut p.publisher.tracks, timestamp_ms, &tag, now)
                        {
                            return count_error("bad_video", e.to_string());
                        }
                    }
                    RtmpEvent::Audio { timestamp_ms, tag } => {
                        if let Some(p) = publishing.as_mut()
                            && let Err(e) =
                                p.ingest
                                    .audio(&mut p.publisher.tracks, timestamp_ms, &tag, now)
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

    async fn admit(
        &self,
        stream_key: &str,
        closer: &Arc<Notify>,
    ) -> Result<AdmittedPublisher, RoleError> {
        let (stream, token) = parse_stream_key(stream_key)?;
        admit_publisher(
            &self.registry,
            self.gate.as_ref(),
            stream,
            token.as_deref(),
            "rtmp",
            self.peer,
            closer.clone(),
        )
        .await
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

/// A sequence header that does not parse is skipped, not fatal: FFmpeg, for one, sends an
/// empty AAC header first when it remuxes ADTS audio and the real one with the first frame.
/// The track's frames are dropped until a header that parses arrives.
fn ignored_sequence_header(tracks: &SourceTracks, kind: &'static str, error: &flv::FlvError) {
    metrics::counter!("cascade_ingest_errors_total", "protocol" => "rtmp", "reason" => "bad_config")
        .increment(1);
    tracing::info!(stream = %tracks.stream(), kind, %error, "ignoring an RTMP sequence header that does not parse");
}

/// FLV tags of one publisher into its [`SourceTracks`]: sequence headers describe the tracks,
/// frames become Annex B access units on the publisher's clock rebased to each track's
/// timescale (one [`WrappingClock`] for both, so audio and video stay together).
pub struct FlvIngest {
    clock: WrappingClock,
    avc: Option<AvcConfig>,
    /// NAL unit length size of H.265 frames (from the HEVC record).
    hevc_length_size: usize,
}

impl Default for FlvIngest {
    fn default() -> Self {
        Self::new()
    }
}

impl FlvIngest {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self {
            clock: WrappingClock::millis(),
            avc: None,
            hevc_length_size: 4,
        }
    }

    /// One video tag.
    pub fn video(
        &mut self,
        tracks: &mut SourceTracks,
        timestamp_ms: u32,
        tag: &[u8],
        now: Instant,
    ) -> Result<(), flv::FlvError> {
        match flv::parse_video(tag)? {
            VideoTag::SequenceStart { codec, config } => {
                if let Err(e) = self.begin_video(tracks, codec, config) {
                    ignored_sequence_header(tracks, "video", &e);
                }
                Ok(())
            }
            VideoTag::Frame {
                codec,
                keyframe,
                composition_offset_ms,
                data,
            } => {
                let decode_ms = self.clock.unwrap(u64::from(timestamp_ms));
                let Some(info) = tracks
                    .described(MediaKind::Video)
                    .filter(|i| i.codec == codec)
                else {
                    // Frames before their sequence header cannot be decoded: skip them.
                    return Ok(());
                };
                let timescale = info.timescale;
                if composition_offset_ms != 0 {
                    tracks.mark_b_frames();
                }
                let payload = match (codec, &self.avc) {
                    (Codec::H264, Some(avc)) => avc.to_annex_b(data, keyframe)?,
                    (Codec::H265, _) => {
                        flv::annex_b(flv::split_length_prefixed(data, self.hevc_length_size)?)
                    }
                    _ => data.to_vec(),
                };
                // FLV's composition time may be negative in theory; a frame is never shown
                // before it is decoded, so such an offset counts as none.
                let offset_ms = u64::try_from(composition_offset_ms).unwrap_or(0);
                let decode = millis_to_ticks(decode_ms, timescale);
                let presentation = millis_to_ticks(decode_ms + offset_ms, timescale);
                tracks.publish(
                    MediaKind::Video,
                    presentation,
                    u32::try_from(presentation - decode).unwrap_or(u32::MAX),
                    keyframe,
                    Arc::from(payload),
                    now,
                );
                Ok(())
            }
            VideoTag::Nothing => Ok(()),
        }
    }

    fn begin_video(
        &mut self,
        tracks: &mut SourceTracks,
        codec: Codec,
        config: &[u8],
    ) -> Result<(), flv::FlvError> {
        let mut info = TrackInfo::new(source_track(MediaKind::Video), codec);
        info.config = Some(flv::hex(config));
        match codec {
            Codec::H264 => {
                let parsed = AvcConfig::parse(config)?;
                info.codec_string = Some(parsed.codec_string());
                self.avc = Some(parsed);
            }
            Codec::H265 => {
                // HEVCDecoderConfigurationRecord: lengthSizeMinusOne in the low bits of byte 21.
                let byte = config
                    .get(21)
                    .ok_or(flv::FlvError::BadConfig("HEVC record truncated"))?;
                self.hevc_length_size = usize::from(byte & 0x03) + 1;
            }
            _ => {}
        }
        // The B-frame flag is learnt from frames: a repeated header keeps it.
        info.bframes = tracks
            .described(MediaKind::Video)
            .is_some_and(|i| i.codec == codec && i.bframes);
        tracks.describe(info);
        Ok(())
    }

    /// One audio tag.
    pub fn audio(
        &mut self,
        tracks: &mut SourceTracks,
        timestamp_ms: u32,
        tag: &[u8],
        now: Instant,
    ) -> Result<(), flv::FlvError> {
        match flv::parse_audio(tag)? {
            AudioTag::SequenceStart { codec, config } => {
                let mut info = TrackInfo::new(source_track(MediaKind::Audio), codec);
                info.config = Some(flv::hex(config));
                if codec == Codec::Aac {
                    let asc = match AudioSpecificConfig::parse(config) {
                        Ok(asc) => asc,
                        Err(e) => {
                            ignored_sequence_header(tracks, "audio", &e);
                            return Ok(());
                        }
                    };
                    info.timescale = asc.sample_rate;
                    info.sample_rate = Some(asc.sample_rate);
                    info.channels = Some(asc.channels);
                    info.codec_string = Some(asc.codec_string());
                }
                tracks.describe(info);
                Ok(())
            }
            AudioTag::Frame { codec, data } => {
                let ms = self.clock.unwrap(u64::from(timestamp_ms));
                if let Some(info) = tracks
                    .described(MediaKind::Audio)
                    .filter(|i| i.codec == codec)
                {
                    let ticks = millis_to_ticks(ms, info.timescale);
                    tracks.publish(MediaKind::Audio, ticks, 0, true, Arc::from(data), now);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_aac_header_is_skipped_and_the_real_one_that_follows_is_taken() {
        let broadcast = crate::broadcast::Broadcast::new(StreamId::parse("s").unwrap());
        let mut tracks = SourceTracks::new(broadcast.clone());
        let mut ingest = FlvIngest::new();
        let now = Instant::now();
        ingest
            .audio(&mut tracks, 0, &[0xaf, 0], now)
            .expect("an empty header is not fatal");
        assert!(tracks.described(MediaKind::Audio).is_none());
        ingest
            .audio(&mut tracks, 0, &[0xaf, 0, 0x12, 0x10], now)
            .unwrap();
        assert_eq!(
            tracks
                .described(MediaKind::Audio)
                .and_then(|i| i.sample_rate),
            Some(44_100)
        );
    }

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
