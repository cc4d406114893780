//! RTSP pull: the origin of a pulled stream connects to the camera (retina), and its frames
//! feed the stream's source tracks like any publisher's.
//!
//! ```text
//!  spawn ─▶ connecting ──DESCRIBE/SETUP/PLAY, first frame──▶ live
//!              ▲                                              │ camera drops, stalls 5 s,
//!              └──── reconnecting (backoff 0.5 s … 10 s) ◀────┘ refuses us
//!  on demand: idle ⇄ connecting … live, while something consumes the stream (+ 10 s)
//! ```
//!
//! The stream's publisher session lasts as long as the pull on this node: viewers wait on
//! the stream through camera outages and on-demand idling. "Something consumes" is any
//! subscription to its tracks (a viewer's engine, a relay to another node, a restream) or an
//! edge asking for the catalog of a stream that has no tracks yet.
//!
//! Which node pulls is the cluster's decision (a placement replicated through Raft); this
//! module only runs one pull until told to stop. A stop ends the publisher session, so
//! viewers wait for the stream to come back wherever the cluster moves the pull.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::flv::{self, AudioSpecificConfig};
use cascade_protocol::media::{Codec, MediaKind, TrackInfo, source_track};
use cascade_protocol::pull::{
    ON_DEMAND_LINGER, PullSpec, PullState, PullStatus, PullTransport, RtspSource, reconnect_delay,
    redact, should_pull,
};
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions,
    Transport, UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParameterSetInsertion, ParametersRef};
use tokio::sync::{Notify, watch};

use super::StreamRegistry;
use super::ingest::{AdmittedPublisher, PublishGate, SourceTracks, admit_publisher};

/// A camera that sends nothing for this long is dropped and pulled again.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(5);
/// DESCRIBE, each SETUP and PLAY must answer within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One running pull. Dropping it stops it without waiting; [`Pull::stop`] waits.
pub struct Pull {
    status: watch::Receiver<PullStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    spec: PullSpec,
}

impl Pull {
    /// Starts pulling `spec` into `stream` on this node; `gate` admits each session with
    /// the camera as the stream's publisher.
    pub fn spawn(
        registry: StreamRegistry,
        gate: Arc<dyn PublishGate>,
        stream: StreamId,
        spec: PullSpec,
    ) -> Self {
        let (status_tx, status) = watch::channel(PullStatus {
            stream: stream.to_string(),
            state: PullState::Connecting,
            last_error: None,
            failures: 0,
        });
        let (stop, stopped) = watch::channel(false);
        let puller = Puller {
            registry,
            gate,
            stream,
            spec: spec.clone(),
            status: status_tx,
            stopped,
            last_wanted: Instant::now(),
        };
        let task = match RtspSource::parse(&spec.source) {
            Ok(source) => tokio::spawn(puller.run(source)),
            Err(e) => {
                // The API validates sources; one that fails here never will.
                puller.set(PullState::Reconnecting, Some(e.to_string()), 1);
                tokio::spawn(async {})
            }
        };
        Self {
            status,
            stop,
            task,
            spec,
        }
    }

    /// What it asks for.
    pub fn spec(&self) -> &PullSpec {
        &self.spec
    }

    /// Where it is now.
    pub fn status(&self) -> PullStatus {
        self.status.borrow().clone()
    }

    /// Its status as it changes.
    pub fn watch_status(&self) -> watch::Receiver<PullStatus> {
        self.status.clone()
    }

    /// Stops it: the camera session is torn down and the publisher session ends.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Why one session with the camera ended, and at which step (the metric label).
#[derive(Debug)]
struct Failure {
    step: &'static str,
    message: String,
}

impl Failure {
    fn at(step: &'static str) -> impl FnOnce(String) -> Self {
        move |message| Self { step, message }
    }
}

/// How a session with the camera ended when it did not fail.
enum Ended {
    /// The pull was told to stop.
    Stopped,
    /// On demand, and nothing has consumed the stream for [`ON_DEMAND_LINGER`].
    Unwanted,
}

/// The stream's publisher session, kept while the pull runs: viewers wait on the stream
/// through camera reconnects and on-demand idling, however long.
struct Publisher {
    tracks: SourceTracks,
    actor: ractor::ActorRef<crate::session::SessionMsg>,
    liveness: crate::session::Liveness,
    /// Notified when the stream ends the session (an operator, a shutdown).
    closer: Arc<Notify>,
}

impl Publisher {
    fn end(self, reason: String) {
        self.tracks.end();
        let _ = self
            .actor
            .cast(crate::session::SessionMsg::TransportClosed(reason));
    }
}

/// A consumer that asked for the stream this recently (an edge waiting for its tracks)
/// counts as one.
const ASKED_WITHIN: Duration = Duration::from_secs(1);

struct Puller {
    registry: StreamRegistry,
    gate: Arc<dyn PublishGate>,
    stream: StreamId,
    spec: PullSpec,
    status: watch::Sender<PullStatus>,
    stopped: watch::Receiver<bool>,
    /// When something last consumed the stream (on demand).
    last_wanted: Instant,
}

impl Puller {
    async fn run(mut self, source: RtspSource) {
        let shown = redact(&self.spec.source);
        let mut failures = 0u32;
        let mut publisher: Option<Publisher> = None;
        // On demand, a pull starts idle: nothing consumes a stream nobody has seen yet.
        self.last_wanted = Instant::now() - ON_DEMAND_LINGER;
        loop {
            if *self.stopped.borrow() {
                break;
            }
            // The stream exists (and viewers can wait on it) before the camera is pulled.
            if let Err(failure) = self.publisher(&source, &mut publisher).await {
                failures += 1;
                let delay = reconnect_delay(failures, rand::random::<f64>());
                tracing::warn!(stream = %self.stream, step = failure.step, error = %failure.message, "pull cannot start; trying again");
                self.set(PullState::Reconnecting, Some(failure.message), failures);
                if self.wait(delay).await {
                    break;
                }
                continue;
            }
            if !self.wanted() {
                self.set(PullState::Idle, None, 0);
                if self.wait(Duration::from_millis(200)).await {
                    break;
                }
                continue;
            }
            let state = if failures == 0 {
                PullState::Connecting
            } else {
                PullState::Reconnecting
            };
            let last_error = self.status.borrow().last_error.clone();
            self.set(state, last_error, failures);
            tracing::info!(stream = %self.stream, source = %shown, transport = ?self.spec.transport, on_demand = self.spec.on_demand, "pulling");
            let outcome = self.session(&source, &mut publisher, &mut failures).await;
            match outcome {
                Ok(Ended::Stopped) => break,
                Ok(Ended::Unwanted) => {
                    tracing::info!(stream = %self.stream, "on-demand pull idle: nothing has consumed the stream for a while");
                    failures = 0;
                }
                Err(failure) => {
                    failures += 1;
                    metrics::counter!("cascade_pull_failures_total", "step" => failure.step)
                        .increment(1);
                    let delay = reconnect_delay(failures, rand::random::<f64>());
                    tracing::warn!(stream = %self.stream, source = %shown, step = failure.step, error = %failure.message, failures, retry_in_ms = delay.as_millis() as u64, "pull failed; trying again");
                    self.set(PullState::Reconnecting, Some(failure.message), failures);
                    if self.wait(delay).await {
                        break;
                    }
                }
            }
        }
        if let Some(publisher) = publisher {
            publisher.end("pull stopped".into());
        }
    }

    fn set(&self, state: PullState, last_error: Option<String>, failures: u32) {
        self.status.send_if_modified(|s| {
            let changed = s.state != state || s.last_error != last_error || s.failures != failures;
            s.state = state;
            s.last_error = last_error;
            s.failures = failures;
            changed
        });
    }

    /// Sleeps `delay`; true when told to stop meanwhile.
    async fn wait(&mut self, delay: Duration) -> bool {
        tokio::time::timeout(delay, self.stopped.wait_for(|s| *s))
            .await
            .is_ok()
    }

    /// Whether the pull should run now: always, or, on demand, while something consumes
    /// the stream and for [`ON_DEMAND_LINGER`] after.
    fn wanted(&mut self) -> bool {
        if !self.spec.on_demand {
            return true;
        }
        let now = Instant::now();
        let consumers = self.registry.broadcast(&self.stream).map_or(0, |b| {
            b.consumers() + usize::from(b.asked_ago(now).is_some_and(|a| a < ASKED_WITHIN))
        });
        if consumers > 0 {
            self.last_wanted = now;
        }
        should_pull(
            true,
            consumers,
            now.saturating_duration_since(self.last_wanted),
        )
    }

    /// The stream's publisher session: the one kept from before, or a new one.
    async fn publisher(
        &self,
        source: &RtspSource,
        kept: &mut Option<Publisher>,
    ) -> Result<(), Failure> {
        if kept
            .as_ref()
            .is_some_and(|p| p.actor.get_status() == ractor::ActorStatus::Running)
        {
            return Ok(());
        }
        if let Some(gone) = kept.take() {
            gone.end("the stream ended the session".into());
        }
        let peer = camera_address(&source.url)
            .await
            .map_err(Failure::at("resolve"))?;
        let closer = Arc::new(Notify::new());
        let admitted = admit_publisher(
            &self.registry,
            self.gate.as_ref(),
            self.stream.clone(),
            None,
            "rtsp",
            peer,
            closer.clone(),
        )
        .await
        .map_err(|e| Failure::at("admit")(e.to_string()))?;
        admitted.liveness.set_connected();
        let AdmittedPublisher {
            actor,
            liveness,
            tracks,
            ..
        } = admitted;
        *kept = Some(Publisher {
            tracks,
            actor,
            liveness,
            closer,
        });
        Ok(())
    }

    /// One session with the camera, from DESCRIBE to its end.
    async fn session(
        &mut self,
        source: &RtspSource,
        kept: &mut Option<Publisher>,
        failures: &mut u32,
    ) -> Result<Ended, Failure> {
        let options = SessionOptions::default()
            .creds(
                source
                    .credentials
                    .clone()
                    .map(|(username, password)| Credentials { username, password }),
            )
            .user_agent(format!("Cascade/{}", env!("CARGO_PKG_VERSION")));
        let mut session = timed(Session::describe(source.url.clone(), options))
            .await
            .map_err(Failure::at("describe"))?;
        let chosen = choose_streams(session.streams()).map_err(Failure::at("describe"))?;
        for &(index, _) in &chosen {
            let setup = SetupOptions::default()
                .transport(match self.spec.transport {
                    PullTransport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
                    PullTransport::Udp => Transport::Udp(UdpTransportOptions::default()),
                })
                .frame_format(FrameFormat {
                    h26x_framing: retina::codec::h26x::Framing::AnnexB,
                    parameter_set_insertion: ParameterSetInsertion::EachKeyFrame,
                    aac_framing: retina::codec::aac::Framing::Raw,
                });
            timed(session.setup(index, setup))
                .await
                .map_err(Failure::at("setup"))?;
        }
        let playing = timed(session.play(PlayOptions::default()))
            .await
            .map_err(Failure::at("play"))?;
        let mut demuxed = playing
            .demuxed()
            .map_err(|e| Failure::at("play")(e.to_string()))?;
        self.publisher(source, kept).await?;
        let Some(publisher) = kept.as_mut() else {
            return Err(Failure::at("admit")("no publisher session".into()));
        };
        let closer = publisher.closer.clone();
        let mut feed = Feed {
            chosen,
            live: false,
        };
        let mut checked_at = Instant::now();
        loop {
            let item = tokio::select! {
                item = tokio::time::timeout(MEDIA_TIMEOUT, demuxed.next()) => item,
                _ = self.stopped.wait_for(|s| *s) => return Ok(Ended::Stopped),
                _ = closer.notified() => return Err(Failure::at("media")("the stream ended the session".into())),
            };
            let item = match item {
                Err(_) => {
                    return Err(Failure::at("media")(format!(
                        "no media from the camera for {} s",
                        MEDIA_TIMEOUT.as_secs()
                    )));
                }
                Ok(None) => {
                    return Err(Failure::at("media")("the camera closed the session".into()));
                }
                Ok(Some(Err(e))) => return Err(Failure::at("media")(e.to_string())),
                Ok(Some(Ok(item))) => item,
            };
            let now = Instant::now();
            let Some(publisher) = kept.as_mut() else {
                return Err(Failure::at("admit")("no publisher session".into()));
            };
            publisher.liveness.heard(now);
            if feed.take(&mut publisher.tracks, demuxed.streams(), item, now) && !feed.live {
                feed.live = true;
                *failures = 0;
                self.set(PullState::Live, None, 0);
                tracing::info!(stream = %self.stream, "pull is live");
            }
            if now.duration_since(checked_at) >= Duration::from_secs(1) {
                checked_at = now;
                if !self.wanted() {
                    return Ok(Ended::Unwanted);
                }
            }
        }
    }
}

/// A request to the camera, bounded in time.
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the camera did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

async fn camera_address(url: &url::Url) -> Result<SocketAddr, String> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port().unwrap_or(554);
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// The camera's streams we take: the first H.264/H.265 video and the first AAC/Opus audio,
/// with the codec each is.
fn choose_streams(streams: &[retina::client::Stream]) -> Result<Vec<(usize, Codec)>, String> {
    let codec_of = |s: &retina::client::Stream| match (s.media(), s.encoding_name()) {
        ("video", "h264") => Some(Codec::H264),
        ("video", "h265") => Some(Codec::H265),
        ("audio", "mpeg4-generic") => Some(Codec::Aac),
        ("audio", "opus") => Some(Codec::Opus),
        _ => None,
    };
    let mut chosen: Vec<(usize, Codec)> = Vec::new();
    for (index, stream) in streams.iter().enumerate() {
        if let Some(codec) = codec_of(stream)
            && !chosen.iter().any(|(_, c)| c.kind() == codec.kind())
        {
            chosen.push((index, codec));
        }
    }
    if chosen.is_empty() {
        let offered: Vec<String> = streams
            .iter()
            .map(|s| format!("{} {}", s.media(), s.encoding_name()))
            .collect();
        return Err(format!(
            "the camera offers nothing Cascade takes (H.264 or H.265 video, AAC or Opus audio); it offers: {}",
            offered.join(", ")
        ));
    }
    Ok(chosen)
}

/// The camera's frames into the broadcast's source tracks.
struct Feed {
    chosen: Vec<(usize, Codec)>,
    live: bool,
}

impl Feed {
    /// One item off the camera; true when it was a frame published.
    fn take(
        &mut self,
        tracks: &mut SourceTracks,
        streams: &[retina::client::Stream],
        item: CodecItem,
        now: Instant,
    ) -> bool {
        let (kind, timestamp, keyframe, payload): (_, _, _, cascade_protocol::media::Payload) =
            match item {
                CodecItem::VideoFrame(frame) => {
                    let Some(codec) = self.codec_of(frame.stream_id()) else {
                        return false;
                    };
                    if frame.has_new_parameters() || tracks.described(MediaKind::Video).is_none() {
                        let parameters =
                            streams.get(frame.stream_id()).and_then(|s| s.parameters());
                        if let Some(ParametersRef::Video(video)) = parameters {
                            let mut info = TrackInfo::new(source_track(MediaKind::Video), codec);
                            info.timescale = frame.timestamp().clock_rate().get();
                            let (width, height) = video.pixel_dimensions();
                            info.width = Some(width);
                            info.height = Some(height);
                            info.codec_string = Some(video.rfc6381_codec().to_owned());
                            // Asked for Annex B, retina gives the parameter sets as Annex B; the
                            // catalog carries H.264's as the record every container takes.
                            info.config = Some(match codec {
                                Codec::H264 => flv::AvcConfig::from_annex_b(video.extra_data())
                                    .map_or_else(
                                        || flv::hex(video.extra_data()),
                                        |c| flv::hex(&c.to_record()),
                                    ),
                                _ => flv::hex(video.extra_data()),
                            });
                            tracks.describe(info);
                        }
                    }
                    (
                        MediaKind::Video,
                        frame.timestamp(),
                        frame.is_random_access_point(),
                        Arc::from(frame.into_data()),
                    )
                }
                CodecItem::AudioFrame(frame) => {
                    let Some(codec) = self.codec_of(frame.stream_id()) else {
                        return false;
                    };
                    if tracks.described(MediaKind::Audio).is_none() {
                        let parameters =
                            streams.get(frame.stream_id()).and_then(|s| s.parameters());
                        if let Some(ParametersRef::Audio(audio)) = parameters {
                            let mut info = TrackInfo::new(source_track(MediaKind::Audio), codec);
                            info.timescale = audio.clock_rate();
                            info.sample_rate = Some(audio.clock_rate());
                            info.channels = u8::try_from(audio.channels().get()).ok();
                            info.codec_string = audio.rfc6381_codec().map(str::to_owned);
                            if codec == Codec::Aac {
                                info.config = Some(flv::hex(audio.extra_data()));
                                if let Ok(asc) = AudioSpecificConfig::parse(audio.extra_data()) {
                                    info.sample_rate = Some(asc.sample_rate);
                                    info.channels = Some(asc.channels);
                                }
                            }
                            tracks.describe(info);
                        }
                    }
                    (
                        MediaKind::Audio,
                        frame.timestamp(),
                        true,
                        Arc::from(frame.data()),
                    )
                }
                _ => return false,
            };
        // Cameras send frames in presentation order: no composition offset.
        let ticks = timestamp.elapsed().max(0) as u64;
        tracks.publish(kind, ticks, 0, keyframe, payload, now);
        true
    }

    fn codec_of(&self, stream: usize) -> Option<Codec> {
        self.chosen
            .iter()
            .find(|(index, _)| *index == stream)
            .map(|(_, codec)| *codec)
    }
}
