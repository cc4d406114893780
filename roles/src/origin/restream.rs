//! Restreaming: a stream pushed out to RTMP destinations (YouTube, Twitch, a recorder).
//!
//! Each target is a [`RestreamActor`], a child of its stream's actor (it ends with the
//! stream). The actor supervises one attempt at a time: an attempt connects, publishes with
//! our sans-IO [`RtmpClient`] and sends the stream's source tracks as FLV tags until it
//! fails; the actor records why and starts the next attempt after a backoff (1 s doubling to
//! 30 s, reset after a minute of success). A target that refuses us, stalls or disappears
//! costs only its own attempts: its frames come from its own bounded subscription, which skips
//! to the next keyframe when the target is slow.
//!
//! What goes out: H.264 video (the sequence header rebuilt from the SPS and PPS in front of
//! each keyframe) and AAC audio (from the catalog's AudioSpecificConfig): the source's, or
//! the transcoder's `audio/aac` made from a WHIP publisher's Opus. Without either (Opus
//! and no transcoder) the audio is left out; the status says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_protocol::flv::{self, AvcConfig};
use cascade_protocol::media::{Codec, Frame, MediaKind, TrackInfo};
use cascade_protocol::rtmp::client::{ClientEvent, RtmpClient, RtmpTarget};
use cascade_protocol::timeline::rescale;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::broadcast::{Broadcast, QueueSink, Subscriptions, Track};

/// How long connecting and publishing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued towards a target before it counts as slow (and skips to a keyframe): more
/// than the whole cached group an attempt starts with.
const QUEUE: usize = crate::broadcast::GROUP_CACHE_MAX_FRAMES + 256;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An attempt that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// A restream as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestreamInfo {
    /// Its id within the stream.
    pub id: u64,
    /// Where it goes, without the stream key.
    pub target: String,
    /// `connecting`, `live`, `retrying` (after a failure, until the next attempt).
    pub state: &'static str,
    /// Bytes sent to the target, all attempts together.
    pub bytes_sent: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Why the last attempt failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What of the stream it cannot carry (Opus audio).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// The status a restream's attempts update and the API reads.
pub type RestreamStatus = Arc<Mutex<RestreamInfo>>;

fn lock(status: &RestreamStatus) -> std::sync::MutexGuard<'_, RestreamInfo> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// Messages to a restream actor.
pub enum RestreamMsg {
    /// Start an attempt now.
    Attempt,
    /// The attempt ended with this error after lasting this long.
    AttemptEnded {
        /// Why.
        error: String,
        /// How long it ran.
        lasted: Duration,
    },
}

/// The actor type.
pub struct RestreamActor;

/// Arguments when spawning a restream actor.
pub struct RestreamArgs {
    /// Where to.
    pub target: RtmpTarget,
    /// What.
    pub broadcast: Arc<Broadcast>,
    /// Shared with the API.
    pub status: RestreamStatus,
}

/// The actor's state.
pub struct RestreamState {
    args: RestreamArgs,
    attempt: Option<tokio::task::JoinHandle<()>>,
    backoff: Duration,
}

impl Actor for RestreamActor {
    type Msg = RestreamMsg;
    type State = RestreamState;
    type Arguments = RestreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RestreamArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(RestreamMsg::Attempt);
        metrics::gauge!("cascade_restreams").increment(1.0);
        Ok(RestreamState {
            args,
            attempt: None,
            backoff: BACKOFF_FIRST,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: RestreamMsg,
        state: &mut RestreamState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RestreamMsg::Attempt => {
                {
                    let mut status = lock(&state.args.status);
                    status.state = "connecting";
                    status.attempts += 1;
                }
                let attempt = Attempt {
                    target: state.args.target.clone(),
                    broadcast: state.args.broadcast.clone(),
                    status: state.args.status.clone(),
                };
                let actor = myself.clone();
                state.attempt = Some(tokio::spawn(async move {
                    let started = Instant::now();
                    let error = attempt.run().await;
                    let _ = actor.cast(RestreamMsg::AttemptEnded {
                        error,
                        lasted: started.elapsed(),
                    });
                }));
            }
            RestreamMsg::AttemptEnded { error, lasted } => {
                state.attempt = None;
                if lasted >= HEALTHY_AFTER {
                    state.backoff = BACKOFF_FIRST;
                }
                let stream = state.args.broadcast.id().to_string();
                metrics::counter!("cascade_restream_failures_total", "stream" => stream.clone())
                    .increment(1);
                tracing::warn!(%stream, target = %state.args.target.redacted(), %error, retry_in_secs = state.backoff.as_secs_f64(), "restream attempt failed");
                {
                    let mut status = lock(&state.args.status);
                    status.state = "retrying";
                    status.last_error = Some(error);
                }
                myself.send_after(state.backoff, || RestreamMsg::Attempt);
                state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut RestreamState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(attempt) = state.attempt.take() {
            attempt.abort();
        }
        metrics::gauge!("cascade_restreams").decrement(1.0);
        tracing::info!(stream = %state.args.broadcast.id(), target = %state.args.target.redacted(), "restream stopped");
        Ok(())
    }
}

/// How long an attempt waits for the transcoder's AAC track of a stream with other audio.
const AAC_WAIT: Duration = Duration::from_secs(3);

/// The broadcast's AAC track: the source's, or the transcoder's `audio/aac` made from the
/// source's Opus (waited for a moment: it appears shortly after the stream does).
async fn aac_track(broadcast: &Broadcast) -> Option<Arc<Track>> {
    let deadline = Instant::now() + AAC_WAIT;
    loop {
        let aac = broadcast.tracks().into_iter().find(|t| {
            t.kind() == MediaKind::Audio && t.info().is_some_and(|i| i.codec == Codec::Aac)
        });
        let other_audio = broadcast.source(MediaKind::Audio).info().is_some();
        if aac.is_some() || !other_audio || Instant::now() >= deadline {
            return aac;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Attempt {
    target: RtmpTarget,
    broadcast: Arc<Broadcast>,
    status: RestreamStatus,
}

impl Attempt {
    /// One connection, until it fails; returns why.
    async fn run(self) -> String {
        let address = format!("{}:{}", self.target.host, self.target.port);
        let socket = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await
        {
            Err(_) => {
                return format!(
                    "no TCP connection to {address} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                );
            }
            Ok(Err(e)) => return format!("cannot connect to {address}: {e}"),
            Ok(Ok(socket)) => socket,
        };
        let _ = socket.set_nodelay(true);
        let published = if self.target.tls {
            match self.tls(socket).await {
                Ok(tls) => self.publish(tls).await,
                Err(e) => Err(e),
            }
        } else {
            self.publish(socket).await
        };
        match published {
            Ok(()) => "the target closed the connection".into(),
            Err(e) => e,
        }
    }

    /// The TLS session of an `rtmps://` target, its certificate checked against the
    /// system's trusted roots for the target's host name.
    async fn tls(
        &self,
        socket: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let config = crate::system_tls::client_config()?;
        let name = rustls::pki_types::ServerName::try_from(self.target.host.clone())
            .map_err(|e| format!("{:?} is not a name TLS can check: {e}", self.target.host))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, socket))
            .await
            .map_err(|_| "no TLS session with the target in time".to_owned())?
            .map_err(|e| format!("TLS with the target failed: {e}"))
    }

    async fn publish<S>(&self, mut socket: S) -> Result<(), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut client = RtmpClient::new(self.target.clone());
        let mut buffer = vec![0u8; 16 * 1024];
        // Handshake, connect, publish.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while !client.is_publishing() {
            self.flush(&mut socket, &mut client).await?;
            let read = tokio::time::timeout_at(deadline, socket.read(&mut buffer))
                .await
                .map_err(|_| "the target did not accept the publication in time".to_owned())?
                .map_err(|e| format!("read failed: {e}"))?;
            if read == 0 {
                return Err("the target closed the connection while connecting".into());
            }
            client
                .handle_input(&buffer[..read])
                .map_err(|e| e.to_string())?;
            while let Some(event) = client.poll_event() {
                if let ClientEvent::Refused(why) = event {
                    return Err(format!("refused: {why}"));
                }
            }
        }
        tracing::info!(stream = %self.broadcast.id(), target = %self.target.redacted(), "restream live");
        lock(&self.status).state = "live";

        let (tx, mut frames) = mpsc::channel(QUEUE);
        let video = self.broadcast.source(MediaKind::Video);
        let audio = aac_track(&self.broadcast).await;
        let audio_info = audio.as_ref().and_then(|t| t.info());
        let source_audio = self.broadcast.source(MediaKind::Audio).info();
        lock(&self.status).left_out = match (&audio, source_audio) {
            (None, Some(info)) => vec![format!(
                "{} audio: RTMP carries AAC, and no transcoder makes it for this stream",
                info.codec.name()
            )],
            _ => Vec::new(),
        };
        let mut subscriptions = Subscriptions::default();
        subscriptions.from_current_group(&video, QueueSink::new(MediaKind::Video, tx.clone()));
        if let Some(audio) = &audio {
            subscriptions.add(audio, QueueSink::new(MediaKind::Audio, tx));
        }
        let mut muxer = FlvMuxer::new(video.info(), audio_info);
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some((kind, frame)) = frame else {
                        return Err("the stream stopped feeding the restream".into());
                    };
                    for (is_video, timestamp, tag) in muxer.frame(kind, &frame) {
                        if is_video {
                            client.send_video(timestamp, tag);
                        } else {
                            client.send_audio(timestamp, tag);
                        }
                    }
                    self.flush(&mut socket, &mut client).await?;
                }
                read = socket.read(&mut buffer) => {
                    let read = read.map_err(|e| format!("read failed: {e}"))?;
                    if read == 0 {
                        return Ok(());
                    }
                    client.handle_input(&buffer[..read]).map_err(|e| e.to_string())?;
                    while let Some(event) = client.poll_event() {
                        if let ClientEvent::Refused(why) = event {
                            return Err(format!("refused: {why}"));
                        }
                    }
                }
            }
        }
    }

    async fn flush<S>(&self, socket: &mut S, client: &mut RtmpClient) -> Result<(), String>
    where
        S: tokio::io::AsyncWrite + Unpin,
    {
        let out = client.take_outbound();
        if out.is_empty() {
            return Ok(());
        }
        // A target that stops reading stalls only this attempt; the bounded queue behind it
        // makes the stream skip this target ahead to the next keyframe.
        tokio::time::timeout(CONNECT_TIMEOUT, socket.write_all(&out))
            .await
            .map_err(|_| "the target stopped reading".to_owned())?
            .map_err(|e| format!("write failed: {e}"))?;
        lock(&self.status).bytes_sent += out.len() as u64;
        metrics::counter!("cascade_restream_bytes_total", "stream" => self.broadcast.id().to_string())
            .increment(out.len() as u64);
        Ok(())
    }
}

/// Frames into FLV tags with millisecond timestamps from the first frame sent.
pub struct FlvMuxer {
    video: Option<TrackInfo>,
    audio: Option<TrackInfo>,
    avc: Option<AvcConfig>,
    audio_header_sent: bool,
    origin_ms: Option<u64>,
}

impl FlvMuxer {
    /// For a video track and an AAC audio track (either may be missing).
    pub fn new(video: Option<TrackInfo>, audio: Option<TrackInfo>) -> Self {
        Self {
            video,
            audio,
            avc: None,
            audio_header_sent: false,
            origin_ms: None,
        }
    }

    /// The tags for one frame: `(is_video, timestamp_ms, tag)`, sequence headers first when
    /// the configuration is new. Nothing is sent before the first video keyframe (a
    /// receiver could not decode it) unless there is no video at all.
    pub fn frame(&mut self, kind: MediaKind, frame: &Frame) -> Vec<(bool, u32, Vec<u8>)> {
        let mut tags = Vec::new();
        let info = match kind {
            MediaKind::Video => self.video.as_ref(),
            MediaKind::Audio => self.audio.as_ref(),
        };
        let Some(timescale) = info.map(|i| i.timescale) else {
            return tags;
        };
        let ms = rescale(frame.timestamp, timescale, 1000);
        // FLV stamps tags with decode time and carries presentation as an offset from it.
        let decode_ms = rescale(
            frame
                .timestamp
                .saturating_sub(u64::from(frame.composition_offset)),
            timescale,
            1000,
        );
        match kind {
            MediaKind::Video => {
                if self.video.as_ref().is_none_or(|i| i.codec != Codec::H264) {
                    return tags;
                }
                if frame.keyframe
                    && let Some(config) = AvcConfig::from_annex_b(&frame.payload)
                    && self.avc.as_ref() != Some(&config)
                {
                    let origin = *self.origin_ms.get_or_insert(decode_ms);
                    tags.push((
                        true,
                        stamp(decode_ms, origin),
                        flv::avc_sequence_header_tag(&config),
                    ));
                    self.avc = Some(config);
                }
                if self.avc.is_none() {
                    return tags;
                }
                let origin = *self.origin_ms.get_or_insert(decode_ms);
                tags.push((
                    true,
                    stamp(decode_ms, origin),
                    flv::avc_frame_tag(
                        &frame.payload,
                        frame.keyframe,
                        u32::try_from(ms - decode_ms).unwrap_or(u32::MAX),
                    ),
                ));
            }
            MediaKind::Audio => {
                let waiting_for_video = self.video.is_some() && self.avc.is_none();
                if waiting_for_video {
                    return tags;
                }
                let origin = *self.origin_ms.get_or_insert(ms);
                if !self.audio_header_sent {
                    let Some(config) = self
                        .audio
                        .as_ref()
                        .and_then(|i| i.config.as_deref())
                        .and_then(flv::from_hex)
                    else {
                        return tags;
                    };
                    tags.push((
                        false,
                        stamp(ms, origin),
                        flv::aac_sequence_header_tag(&config),
                    ));
                    self.audio_header_sent = true;
                }
                tags.push((false, stamp(ms, origin), flv::aac_frame_tag(&frame.payload)));
            }
        }
        tags
    }
}

fn stamp(ms: u64, origin: u64) -> u32 {
    (ms.saturating_sub(origin) & 0xffff_ffff) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_protocol::flv::VideoTag;

    /// SPS, PPS and an IDR slice of a 16x16 baseline stream (Annex B).
    fn keyframe() -> Vec<u8> {
        let mut au = Vec::new();
        for nal in [
            &[0x67, 0x42, 0xc0, 0x0a, 0xd9, 0x1e, 0x84, 0x00][..],
            &[0x68, 0xcb, 0x83, 0xcb, 0x20][..],
            &[0x65, 0x88, 0x84, 0x00][..],
        ] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        au
    }

    fn frame(seq: u64, timestamp: u64, composition_offset: u32, payload: Vec<u8>) -> Frame {
        Frame {
            seq,
            timestamp,
            composition_offset,
            keyframe: seq == 0,
            payload: Arc::from(payload),
        }
    }

    #[test]
    fn reordered_frames_are_stamped_with_decode_time_and_carry_their_composition_offset() {
        let mut info = TrackInfo::new("video/source", Codec::H264);
        info.timescale = 90_000;
        let mut muxer = FlvMuxer::new(Some(info), None);
        // Decode order I P B, decoded at 0, 33 and 100 ms, presented at 67, 200 and 133 ms.
        let p_slice = vec![0, 0, 0, 1, 0x41, 0x9a, 0x00];
        let frames = [
            frame(0, 6_000, 6_000, keyframe()),
            frame(1, 18_000, 15_000, p_slice.clone()),
            frame(2, 12_000, 3_000, p_slice),
        ];
        let mut stamps = Vec::new();
        for f in &frames {
            for (is_video, ms, tag) in muxer.frame(MediaKind::Video, f) {
                assert!(is_video);
                if let Ok(VideoTag::Frame {
                    composition_offset_ms,
                    ..
                }) = flv::parse_video(&tag)
                {
                    stamps.push((ms, composition_offset_ms));
                }
            }
        }
        // Tags at decode time; presentation = decode + offset (to the millisecond).
        assert_eq!(stamps, vec![(0, 66), (33, 167), (100, 33)]);
    }
}
