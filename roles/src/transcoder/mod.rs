//! The transcoder role: renditions of a stream made in a supervised child process.
//!
//! A [`Transcoder`] runs one [`TranscodeJob`] for one broadcast. It starts
//! `cascade transcode` (the [`pipeline`], GStreamer) as a child process, subscribes to the
//! source tracks and writes their frames to the child's stdin, and publishes what the child
//! writes to its stdout into the rendition tracks of the same broadcast (`video/360p`,
//! `audio/opus`, ...), where viewers, relays and restreams find them like any track.
//!
//! A codec that crashes, hangs or misbehaves costs only the child: the node's media path
//! never runs GStreamer code. When the child exits, the supervisor starts another after a
//! backoff (0.5 s doubling to 5 s, reset after 30 s of health); the rendition tracks stay in
//! the catalog meanwhile, so their viewers wait for the next keyframe instead of ending.
//! Feeding is bounded: a child that falls behind makes its subscription skip to the next
//! source group (counted by the broadcast), never slows the source.

pub mod pipeline;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cascade_protocol::StreamId;
use cascade_protocol::media::{AUDIO_SOURCE, Frame, MediaKind, VIDEO_SOURCE};
use cascade_protocol::transcode::{
    INPUT_AUDIO, INPUT_GATES, INPUT_VIDEO, Output, PipeDecoder, PipeFrame, Rung, TranscodeJob,
    plan_job,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::broadcast::{Broadcast, KeyframeUpstream, QueueSink, Subscriptions, Track};
use crate::origin::StreamRegistry;
use crate::relay::{PullHold, Relay};
use cascade_protocol::relay::RelayFrame;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child that lived this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How often the supervisor looks which rungs are consumed.
const GATE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Source video frames remembered to measure the transcoder's latency (two seconds at 30 fps).
const LATENCY_WINDOW: usize = 64;
/// Source frames queued towards the child: the whole cached group it starts with, and room
/// for audio and a moment of slowness beyond.
const QUEUE: usize = crate::broadcast::GROUP_CACHE_MAX_FRAMES + 256;

/// How to start a transcoder process: the node's own binary with `transcode`.
#[derive(Debug, Clone)]
pub struct TranscoderCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the job (`["transcode"]`).
    pub args: Vec<OsString>,
}

/// A transcoder as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TranscoderInfo {
    /// The rendition tracks it makes.
    pub outputs: Vec<String>,
    /// `starting`, `running`, or `restarting` after its process ended.
    pub state: &'static str,
    /// The video rungs being encoded now: those something consumes (just in time).
    pub encoding: Vec<String>,
    /// The child process, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Processes started after the first.
    pub restarts: u64,
    /// Why the last process ended, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One running transcoder; dropping it stops the child and ends its rendition tracks.
pub struct Transcoder {
    job: TranscodeJob,
    broadcast: Arc<Broadcast>,
    status: Arc<Mutex<TranscoderInfo>>,
    outputs: Vec<Arc<Track>>,
    task: tokio::task::JoinHandle<()>,
}

impl Transcoder {
    /// Starts making `job`'s renditions of `broadcast`.
    pub fn start(broadcast: Arc<Broadcast>, job: TranscodeJob, command: TranscoderCommand) -> Self {
        let source_video = broadcast.source(MediaKind::Video);
        // A viewer of a rendition that lost a keyframe asks the source for one: every
        // rendition follows the source's keyframes.
        let upstream: KeyframeUpstream = {
            let source = source_video.clone();
            Arc::new(move || {
                source.request_keyframe(Instant::now());
            })
        };
        let outputs: Vec<Arc<Track>> = job
            .outputs
            .iter()
            .map(|output| {
                let info = output.track_info();
                let track = broadcast.track_or_add(output.track(), info.kind);
                track.mark_made_here();
                track.begin_derived(info, Some(upstream.clone()));
                track
            })
            .collect();
        let status = Arc::new(Mutex::new(TranscoderInfo {
            outputs: job.outputs.iter().map(|o| o.track().to_owned()).collect(),
            state: "starting",
            encoding: Vec::new(),
            pid: None,
            restarts: 0,
            last_error: None,
        }));
        metrics::gauge!("cascade_transcoders").increment(1.0);
        tracing::info!(stream = %broadcast.id(), outputs = ?lock(&status).outputs, "transcoder starting");
        let kept = Arc::clone(&broadcast);
        let task = tokio::spawn(supervise(
            broadcast,
            job.clone(),
            command,
            outputs.clone(),
            status.clone(),
        ));
        Transcoder {
            job,
            broadcast: kept,
            status,
            outputs,
            task,
        }
    }

    /// The broadcast it works on (a stream transcoded here but published elsewhere: the
    /// local copy its pull feeds).
    pub fn broadcast(&self) -> &Arc<Broadcast> {
        &self.broadcast
    }

    /// What it makes.
    pub fn job(&self) -> &TranscodeJob {
        &self.job
    }

    /// Its state now.
    pub fn info(&self) -> TranscoderInfo {
        lock(&self.status).clone()
    }
}

impl Drop for Transcoder {
    fn drop(&mut self) {
        // Aborting drops the child handle, which kills the process (kill_on_drop).
        self.task.abort();
        for track in &self.outputs {
            track.end_source();
        }
        metrics::gauge!("cascade_transcoders").decrement(1.0);
    }
}

fn lock<T>(status: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs child after child until the transcoder is dropped.
async fn supervise(
    broadcast: Arc<Broadcast>,
    job: TranscodeJob,
    command: TranscoderCommand,
    outputs: Vec<Arc<Track>>,
    status: Arc<Mutex<TranscoderInfo>>,
) {
    let job_json = serde_json::to_string(&job).unwrap_or_default();
    let mut backoff = BACKOFF_FIRST;
    let mut first = true;
    loop {
        if !first {
            lock(&status).restarts += 1;
            metrics::counter!("cascade_transcoder_restarts_total").increment(1);
        }
        first = false;
        let started = Instant::now();
        let error = run_child(&broadcast, &job, &job_json, &command, &outputs, &status).await;
        let lasted = started.elapsed();
        tracing::warn!(stream = %broadcast.id(), %error, ?lasted, "transcoder process ended; restarting");
        {
            let mut info = lock(&status);
            info.state = "restarting";
            info.pid = None;
            info.last_error = Some(error);
        }
        if lasted >= HEALTHY_AFTER {
            backoff = BACKOFF_FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Per output, 1 when it is to be encoded: audio always (cheap, and its consumers join
/// without waiting), a video rung while something subscribes to its track.
fn wanted_outputs(job: &TranscodeJob, outputs: &[Arc<Track>]) -> Vec<u8> {
    job.outputs
        .iter()
        .zip(outputs)
        .map(|(output, track)| match output {
            Output::Audio { .. } => 1,
            Output::Video { .. } => u8::from(track.subscribers() > 0),
        })
        .collect()
}

/// Shows which rungs are encoded, in the API and the metrics.
fn note_encoding(
    broadcast: &Broadcast,
    job: &TranscodeJob,
    wanted: &[u8],
    status: &Mutex<TranscoderInfo>,
) {
    let encoding: Vec<String> = job
        .video_outputs()
        .filter(|(index, _)| wanted.get(*index) == Some(&1))
        .map(|(_, output)| output.track().to_owned())
        .collect();
    metrics::gauge!("cascade_transcoder_rungs_encoding", "stream" => broadcast.id().to_string())
        .set(encoding.len() as f64);
    tracing::debug!(stream = %broadcast.id(), ?encoding, "transcoder rungs consumed");
    lock(status).encoding = encoding;
}

/// Writes one frame to the child's stdin; the error says why it could not.
async fn write_frame(
    stdin: &mut tokio::process::ChildStdin,
    encoded: &mut BytesMut,
    index: u64,
    frame: RelayFrame,
) -> Result<(), String> {
    encoded.clear();
    PipeFrame { index, frame }.encode(encoded);
    stdin
        .write_all(encoded)
        .await
        .map_err(|e| format!("writing to the transcoder: {e}"))
}

/// One child process, from start to exit; returns why it ended.
async fn run_child(
    broadcast: &Broadcast,
    job: &TranscodeJob,
    job_json: &str,
    command: &TranscoderCommand,
    outputs: &[Arc<Track>],
    status: &Mutex<TranscoderInfo>,
) -> String {
    let mut child = match tokio::process::Command::new(&command.program)
        .args(&command.args)
        .arg(job_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return format!("cannot start {}: {e}", command.program.display()),
    };
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return "the transcoder process has no pipes".into();
    };
    {
        let mut info = lock(status);
        info.state = "running";
        info.pid = child.id();
    }
    let (tx, mut frames) = mpsc::channel::<(u64, Frame)>(QUEUE);
    let mut subscriptions = Subscriptions::default();
    if job.video_source.is_some() {
        let video = broadcast.source(MediaKind::Video);
        subscriptions.from_current_group(&video, QueueSink::new(INPUT_VIDEO, tx.clone()));
    }
    if job.audio_source.is_some() {
        let audio = broadcast.source(MediaKind::Audio);
        subscriptions.add(&audio, QueueSink::new(INPUT_AUDIO, tx.clone()));
    }
    drop(tx);

    // When each recent source video frame went to the child, to measure what the
    // transcoder adds (rendition video keeps the source's timestamps).
    let fed_at: Mutex<VecDeque<(u64, Instant)>> = Mutex::new(VecDeque::new());
    let feed = async {
        let mut encoded = BytesMut::new();
        let mut gates: Option<Vec<u8>> = None;
        let mut look = tokio::time::interval(GATE_CHECK_EVERY);
        loop {
            let (index, frame) = tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
                _ = look.tick() => {
                    let wanted = wanted_outputs(job, outputs);
                    if gates.as_ref() != Some(&wanted) {
                        note_encoding(broadcast, job, &wanted, status);
                        let gate = RelayFrame {
                            timestamp: 0,
                            composition_offset: 0,
                            keyframe: false,
                            payload: bytes::Bytes::from(wanted.clone()),
                        };
                        if let Err(e) = write_frame(&mut stdin, &mut encoded, INPUT_GATES, gate).await {
                            return e;
                        }
                        gates = Some(wanted);
                    }
                    continue;
                }
            };
            if index == INPUT_VIDEO {
                let mut fed = fed_at.lock().unwrap_or_else(|p| p.into_inner());
                if fed.len() == LATENCY_WINDOW {
                    fed.pop_front();
                }
                fed.push_back((frame.timestamp, Instant::now()));
            }
            let source = RelayFrame {
                timestamp: frame.timestamp,
                composition_offset: frame.composition_offset,
                keyframe: frame.keyframe,
                // The frame's own buffer: it is copied once, into the pipe's write buffer.
                payload: bytes::Bytes::from_owner(frame.payload),
            };
            if let Err(e) = write_frame(&mut stdin, &mut encoded, index, source).await {
                return e;
            }
        }
        "the stream stopped feeding the transcoder".to_owned()
    };
    // Resolved once: nothing is looked up or allocated per rendition frame.
    let frames_out: Vec<metrics::Counter> = outputs
        .iter()
        .map(|t| metrics::counter!("cascade_transcoder_frames_out_total", "track" => t.name().to_owned()))
        .collect();
    let latency: Vec<metrics::Histogram> = outputs
        .iter()
        .map(|t| metrics::histogram!("cascade_transcoder_latency_seconds", "track" => t.name().to_owned()))
        .collect();
    let publish = async {
        let mut decoder = PipeDecoder::default();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = match stdout.read(&mut chunk).await {
                Ok(0) => return "the transcoder closed its output".to_owned(),
                Ok(n) => n,
                Err(e) => return format!("reading from the transcoder: {e}"),
            };
            decoder.push(&chunk[..read]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(PipeFrame { index, frame })) => {
                        let Some(i) = usize::try_from(index).ok().filter(|i| *i < outputs.len())
                        else {
                            return format!(
                                "the transcoder wrote to output {index}, which it does not have"
                            );
                        };
                        let track = &outputs[i];
                        frames_out[i].increment(1);
                        if track.kind() == MediaKind::Video {
                            let fed = fed_at.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some((_, at)) = fed.iter().find(|(ts, _)| *ts == frame.timestamp)
                            {
                                latency[i].record(at.elapsed().as_secs_f64());
                            }
                        }
                        track.publish_at(
                            frame.timestamp,
                            Instant::now(),
                            frame.keyframe,
                            Arc::from(&frame.payload[..]),
                        );
                    }
                    Ok(None) => break,
                    Err(e) => return format!("the transcoder's output is malformed: {e}"),
                }
            }
        }
    };
    let reason = tokio::select! {
        reason = feed => reason,
        reason = publish => reason,
        exit = child.wait() => match exit {
            Ok(status) => format!("the transcoder process exited ({status})"),
            Err(e) => format!("waiting for the transcoder process: {e}"),
        },
    };
    drop(subscriptions);
    // A crash shows first as a closed pipe; the exit status says more.
    let exited = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match exited {
        Ok(Ok(status)) if !status.success() => {
            format!("the transcoder process exited ({status}): {reason}")
        }
        _ => reason,
    }
}

/// How often the node looks for streams whose renditions changed.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// Where the cluster has streams transcoded (the node's Raft state, in a node).
pub trait TranscoderPlacement: Send + Sync + 'static {
    /// The streams published on this node that need renditions now (said by
    /// [`crate::origin::renditions::OriginRenditions`], on every node).
    fn wanted(&self, streams: Vec<String>);
    /// The streams this node is to transcode, as the active or the standby transcoder.
    fn assigned_here(&self) -> HashSet<StreamId>;
    /// The relay addresses of the nodes other than this one that transcode `stream`
    /// (active first): where its origin pulls the renditions from.
    fn transcoders_elsewhere(&self, stream: &StreamId) -> Vec<std::net::SocketAddr>;
}

/// Which renditions streams get: the node's ladder (`--ladder`), and streams' own
/// (`[streams.NAME] ladder`).
#[derive(Debug, Clone, Default)]
pub struct Ladders {
    /// The node's ladder.
    pub ladder: Vec<Rung>,
    /// Streams with a ladder of their own.
    pub streams: HashMap<String, Vec<Rung>>,
}

impl Ladders {
    /// The job for `broadcast`'s sources now ([`plan_job`] with its ladder), if it needs one.
    pub fn job_for(&self, broadcast: &Broadcast) -> Option<TranscodeJob> {
        let sources: Vec<_> = broadcast
            .catalog()
            .into_iter()
            .filter(|t| t.name == VIDEO_SOURCE || t.name == AUDIO_SOURCE)
            .collect();
        let ladder = self
            .streams
            .get(broadcast.id().as_str())
            .unwrap_or(&self.ladder);
        plan_job(&sources, ladder)
    }
}

/// Runs `reconcile` every `period` (each run finishes before the next tick), until the node
/// stops.
pub(crate) fn every<F, Fut>(period: Duration, mut reconcile: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            reconcile().await;
        }
    });
}

/// The transcoders of the streams this node is assigned. Cheap to clone.
#[derive(Clone)]
pub struct Transcoders {
    inner: Arc<TranscodersInner>,
}

struct TranscodersInner {
    registry: StreamRegistry,
    /// Pulls the source of a stream transcoded here but published elsewhere.
    relay: Relay,
    holds: Mutex<HashMap<StreamId, PullHold>>,
    ladders: Ladders,
    command: TranscoderCommand,
    placement: Arc<dyn TranscoderPlacement>,
    running: Mutex<HashMap<StreamId, Transcoder>>,
}

impl Transcoders {
    /// Transcoders for `registry`'s streams with `ladders`, started with `command` where
    /// `placement` says.
    pub fn new(
        registry: StreamRegistry,
        relay: Relay,
        ladders: Ladders,
        command: TranscoderCommand,
        placement: Arc<dyn TranscoderPlacement>,
    ) -> Self {
        Transcoders {
            inner: Arc::new(TranscodersInner {
                registry,
                relay,
                holds: Mutex::new(HashMap::new()),
                ladders,
                command,
                placement,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Keeps every live stream published on this node that the cluster assigns here
    /// transcoded as [`plan_job`] says, until the node stops.
    pub fn run(&self) {
        let this = self.clone();
        every(RECONCILE_EVERY, move || {
            let this = this.clone();
            async move { this.reconcile().await }
        });
    }

    /// The transcoder of `stream`, if this node runs one.
    pub fn info(&self, stream: &StreamId) -> Option<TranscoderInfo> {
        self.running().get(stream).map(Transcoder::info)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Transcoder>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts, replaces and stops transcoders to match the streams now.
    async fn reconcile(&self) {
        let streams = self.inner.registry.list().await;
        let assigned = self.inner.placement.assigned_here();
        let mut wanted: HashMap<StreamId, (Arc<Broadcast>, TranscodeJob)> = HashMap::new();
        let mut present = HashSet::new();
        let mut published_here = HashSet::new();
        for stream in streams {
            present.insert(stream.id.clone());
            // A stream relayed from its origin is transcoded here only when assigned
            // (below); its origin says whether it needs renditions.
            if stream
                .publisher
                .as_ref()
                .is_none_or(|p| p.protocol == "relay")
            {
                continue;
            }
            published_here.insert(stream.id.clone());
            let Some(broadcast) = self.inner.registry.broadcast(&stream.id) else {
                continue;
            };
            if let Some(job) = self.inner.ladders.job_for(&broadcast) {
                wanted.insert(stream.id, (broadcast, job));
            }
        }
        // Streams published elsewhere and transcoded here: their source comes over the
        // relay, held for as long as the assignment lasts.
        let remote: Vec<StreamId> = assigned
            .iter()
            .filter(|id| !published_here.contains(*id))
            .cloned()
            .collect();
        lock(&self.inner.holds).retain(|id, _| remote.contains(id));
        for id in remote {
            let held = lock(&self.inner.holds)
                .get(&id)
                .map(|h| Arc::clone(h.broadcast()));
            let broadcast = match held {
                Some(broadcast) => broadcast,
                None => match self.inner.relay.hold(&id).await {
                    Ok(hold) => {
                        tracing::info!(stream = %id, "transcoding a stream published on another node: pulling its source");
                        let broadcast = Arc::clone(hold.broadcast());
                        lock(&self.inner.holds).insert(id.clone(), hold);
                        broadcast
                    }
                    Err(e) => {
                        tracing::debug!(stream = %id, error = %e, "cannot pull the source to transcode yet");
                        continue;
                    }
                },
            };
            present.insert(id.clone());
            if let Some(job) = self.inner.ladders.job_for(&broadcast) {
                wanted.insert(id, (broadcast, job));
            }
        }
        let mut running = self.running();
        wanted.retain(|id, _| assigned.contains(id));
        running.retain(|id, transcoder| match wanted.get(id) {
            Some((broadcast, job)) => {
                job == transcoder.job() && Arc::ptr_eq(broadcast, transcoder.broadcast())
            }
            None => present.contains(id) && assigned.contains(id),
        });
        for (id, (broadcast, job)) in wanted {
            running
                .entry(id)
                .or_insert_with(|| Transcoder::start(broadcast, job, self.inner.command.clone()));
        }
    }
}
