//! Recordings: a stream's LL-HLS renditions written to disk as they are packaged, playable as
//! VOD (`EXT-X-ENDLIST`) once stopped.
//!
//! A recording lives in `{data dir}/recordings/{id}/`: `recording.json` (its manifest: the
//! stream, its state, each rendition's segments), `index.m3u8` (multivariant), and per
//! rendition `{name}/index.m3u8`, its init segment and its segments, the very bytes players
//! got live. It begins with the segment being written when it starts, and a stop waits for
//! the segment being written then (up to [`STOP_WAIT`]) so that it ends where it was asked
//! to. A node that dies mid-recording finds it at its next start and closes it as
//! `interrupted`: every segment written is whole, so it plays up to the crash.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::hls::playlist::{MediaPlaylist, Segment, render_media, render_multivariant};
use tokio::sync::{oneshot, watch};

use super::{Packagers, lock, now_ms};
use crate::RoleError;

/// How often a recording looks for new segments (a segment stays listed for a minute).
const POLL: Duration = Duration::from_millis(250);
/// The longest a stop waits for the segment being written to close.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// A recording whose stream has not been live here this long ends by itself.
const GONE_AFTER: Duration = Duration::from_secs(10);
const MANIFEST: &str = "recording.json";

/// Where a recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written.
    Recording,
    /// Stopped through the API, or its stream ended.
    Finished,
    /// Its node stopped while writing it; it plays up to the last whole segment.
    Interrupted,
}

/// One segment of a recorded rendition.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedSegment {
    /// Its number in the live playlist (its file is `seg{msn}.m4s`).
    pub msn: u64,
    /// Seconds.
    pub duration: f64,
    /// Wall clock of its first frame, Unix milliseconds.
    pub program_date_time_ms: u64,
    /// A discontinuity precedes it.
    pub discontinuity: bool,
    /// Its size.
    pub bytes: u64,
    /// Its initialisation segment, when not the rendition's first (the publisher came back
    /// with other parameter sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

/// One recorded rendition.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRendition {
    /// Its init segment's file name, once written.
    pub init: Option<String>,
    /// Live segments before this one were there before the recording began.
    pub first_msn: u64,
    /// Segments written, in order.
    pub segments: Vec<RecordedSegment>,
}

/// What names a recording and where it is in its life, in its manifest and in the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordingHeader {
    /// `{stream}-{start, Unix ms}`.
    pub id: String,
    /// The stream recorded.
    pub stream: String,
    /// Where it is in its life.
    pub state: RecordingState,
    /// Who started it: `api` or `config` (`--record`).
    pub started_by: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Unix milliseconds, once over.
    pub stopped_at_ms: Option<u64>,
}

/// A recording as `recording.json` keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub header: RecordingHeader,
    /// Part target of the live playlists it came from, seconds.
    pub part_target: f64,
    /// By directory name.
    pub renditions: BTreeMap<String, RecordedRendition>,
}

/// What the API shows of a recording.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordingInfo {
    #[serde(flatten)]
    pub header: RecordingHeader,
    /// Seconds of its longest rendition.
    pub duration_seconds: f64,
    /// Bytes on disk, every rendition's segments.
    pub bytes: u64,
    /// Rendition directories.
    pub renditions: Vec<String>,
    /// Its multivariant playlist, on the node that wrote it.
    pub playlist: String,
}

impl Manifest {
    fn info(&self) -> RecordingInfo {
        let seconds = |r: &RecordedRendition| r.segments.iter().map(|s| s.duration).sum::<f64>();
        RecordingInfo {
            header: self.header.clone(),
            duration_seconds: self.renditions.values().map(seconds).fold(0.0, f64::max),
            bytes: self
                .renditions
                .values()
                .flat_map(|r| &r.segments)
                .map(|s| s.bytes)
                .sum(),
            renditions: self.renditions.keys().cloned().collect(),
            playlist: format!("/recordings/{}/index.m3u8", self.header.id),
        }
    }

    /// A rendition's playlist: VOD once the recording is over.
    pub fn playlist(&self, rendition: &str) -> Option<String> {
        let recorded = self.renditions.get(rendition)?;
        let playlist = MediaPlaylist::of_segments(
            self.part_target,
            0,
            recorded.init.clone()?,
            recorded
                .segments
                .iter()
                .map(|s| Segment {
                    map_uri: s.init.clone(),
                    ..Segment::whole(s.msn, s.duration, s.program_date_time_ms, s.discontinuity)
                })
                .collect(),
            self.header.state != RecordingState::Recording,
        );
        Some(render_media(&playlist, false))
    }
}

struct Running {
    stop: watch::Sender<bool>,
    done: Option<oneshot::Receiver<Manifest>>,
    started_by: String,
}

/// What learns of each finished recording.
type ReadyHook = Box<dyn Fn(&RecordingInfo) + Send + Sync>;

/// This node's recordings. Cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    packagers: Packagers,
    /// Stream names, or prefixes ending in `*`, recorded whenever they are live here.
    automatic: Vec<String>,
    running: Mutex<HashMap<StreamId, Running>>,
    /// Streams whose automatic recording was stopped through the API: not started again
    /// until they have been off this node.
    held_off: Mutex<std::collections::HashSet<StreamId>>,
    /// Told of each recording that finished (the node's `recording.ready` webhook).
    on_ready: std::sync::OnceLock<ReadyHook>,
}

impl Recordings {
    /// The recordings under `dir`; one its node was writing when it stopped is closed as
    /// [`RecordingState::Interrupted`].
    pub fn open(
        dir: PathBuf,
        packagers: Packagers,
        automatic: Vec<String>,
    ) -> Result<Self, RoleError> {
        std::fs::create_dir_all(&dir).map_err(|e| storage(&dir, &e))?;
        metrics::gauge!("cascade_recordings_active").set(0.0);
        metrics::counter!("cascade_recording_write_errors_total").increment(0);
        let recordings = Recordings {
            inner: Arc::new(Inner {
                dir,
                packagers,
                automatic,
                running: Mutex::default(),
                held_off: Mutex::default(),
                on_ready: std::sync::OnceLock::new(),
            }),
        };
        for mut manifest in recordings.manifests() {
            if manifest.header.state == RecordingState::Recording {
                manifest.header.state = RecordingState::Interrupted;
                manifest.header.stopped_at_ms = manifest
                    .renditions
                    .values()
                    .filter_map(|r| r.segments.last())
                    .map(|s| s.program_date_time_ms + (s.duration * 1000.0) as u64)
                    .max();
                tracing::warn!(recording = %manifest.header.id, "closing a recording its node stopped writing (interrupted)");
                if let Err(e) = recordings.write_playlists(&manifest, None) {
                    tracing::warn!(recording = %manifest.header.id, error = %e, "could not close a recording");
                }
            }
        }
        Ok(recordings)
    }

    /// Every recording on this node, newest first.
    pub fn list(&self) -> Vec<RecordingInfo> {
        let mut all: Vec<RecordingInfo> = self.manifests().iter().map(Manifest::info).collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.header.started_at_ms));
        all
    }

    /// One recording's manifest.
    pub fn manifest(&self, id: &str) -> Option<Manifest> {
        if !safe_name(id) {
            return None;
        }
        read_manifest(&self.inner.dir.join(id))
    }

    /// A file of a recording (`index.m3u8`, or a rendition's playlist, init segment or
    /// segment), by names that cannot leave the recording's directory.
    pub fn file(&self, id: &str, rendition: Option<&str>, file: &str) -> Option<PathBuf> {
        let mut path = self.inner.dir.join(id);
        if !safe_name(id) || !safe_name(file) {
            return None;
        }
        if let Some(rendition) = rendition {
            if !safe_name(rendition) {
                return None;
            }
            path.push(rendition);
        }
        Some(path.join(file))
    }

    /// Starts recording `stream`, packaged here; refused when it is recorded already.
    pub async fn start(
        &self,
        stream: &StreamId,
        started_by: &str,
    ) -> Result<RecordingInfo, RoleError> {
        if self.inner.packagers.stream(stream).await.is_none() {
            return Err(RoleError::StreamNotFound(stream.clone()));
        }
        let mut running = lock(&self.inner.running);
        if running.contains_key(stream) {
            return Err(RoleError::RecordingConflict(format!(
                "stream {stream} is already being recorded; stop it first"
            )));
        }
        let started_at_ms = now_ms();
        let manifest = Manifest {
            header: RecordingHeader {
                id: format!("{stream}-{started_at_ms}"),
                stream: stream.to_string(),
                state: RecordingState::Recording,
                started_by: started_by.to_owned(),
                started_at_ms,
                stopped_at_ms: None,
            },
            part_target: self.inner.packagers.inner.config.part_target,
            renditions: BTreeMap::new(),
        };
        let dir = self.inner.dir.join(&manifest.header.id);
        std::fs::create_dir_all(&dir).map_err(|e| storage(&dir, &e))?;
        write_manifest(&dir, &manifest)?;
        let info = manifest.info();
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        running.insert(
            stream.clone(),
            Running {
                stop,
                done: Some(done),
                started_by: started_by.to_owned(),
            },
        );
        tracing::info!(%stream, recording = %manifest.header.id, started_by, "recording started");
        metrics::gauge!("cascade_recordings_active").increment(1.0);
        tokio::spawn(
            self.clone()
                .record(stream.clone(), manifest, stop_rx, done_tx),
        );
        Ok(info)
    }

    /// Stops the recording of `stream`; returns it once closed.
    pub async fn stop(&self, stream: &StreamId) -> Result<RecordingInfo, RoleError> {
        let done = {
            let mut running = lock(&self.inner.running);
            let Some(run) = running.get_mut(stream) else {
                return Err(RoleError::RecordingConflict(format!(
                    "stream {stream} is not being recorded on this node"
                )));
            };
            let _ = run.stop.send(true);
            lock(&self.inner.held_off).insert(stream.clone());
            run.done.take()
        };
        let Some(done) = done else {
            return Err(RoleError::RecordingConflict(format!(
                "the recording of {stream} is already stopping"
            )));
        };
        done.await
            .map(|m| m.info())
            .map_err(|_| RoleError::RecordingStorage("the recording task ended abruptly".into()))
    }

    /// Starts recording the streams `--record` names among `packaged_here`.
    pub async fn record_automatic(&self, packaged_here: &[StreamId]) {
        lock(&self.inner.held_off).retain(|s| packaged_here.contains(s));
        for stream in packaged_here {
            if lock(&self.inner.held_off).contains(stream) {
                continue;
            }
            let wanted =
                self.inner
                    .automatic
                    .iter()
                    .any(|pattern| match pattern.strip_suffix('*') {
                        Some(prefix) => stream.as_str().starts_with(prefix),
                        None => stream.as_str() == pattern,
                    });
            if wanted
                && !lock(&self.inner.running).contains_key(stream)
                && let Err(e) = self.start(stream, "config").await
            {
                tracing::debug!(%stream, error = %e, "automatic recording not started");
            }
        }
    }

    fn manifests(&self) -> Vec<Manifest> {
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| read_manifest(&e.path()))
            .collect()
    }

    /// Writes new segments of `stream`'s renditions until stopped or the stream is gone.
    async fn record(
        self,
        stream: StreamId,
        mut manifest: Manifest,
        mut stop: watch::Receiver<bool>,
        done: oneshot::Sender<Manifest>,
    ) {
        let dir = self.inner.dir.join(&manifest.header.id);
        let mut tick = tokio::time::interval(POLL);
        let mut gone_since: Option<Instant> = None;
        // Once a stop is asked: each rendition's segment number that must be written, and
        // until when to wait for it.
        let mut stopping: Option<(BTreeMap<String, u64>, Instant)> = None;
        let mut multivariant = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        stopping.get_or_insert_with(|| (BTreeMap::new(), Instant::now() + STOP_WAIT));
                    }
                }
            }
            let Some(packager) = self.inner.packagers.stream(&stream).await else {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GONE_AFTER || stopping.is_some() {
                    tracing::info!(%stream, recording = %manifest.header.id, "the stream ended: recording closed");
                    break;
                }
                continue;
            };
            gone_since = None;
            let mut changed = false;
            for rendition in packager.renditions() {
                let recorded = manifest
                    .renditions
                    .entry(rendition.name.clone())
                    .or_insert_with(|| RecordedRendition {
                        first_msn: rendition.playlist().next_msn(),
                        ..RecordedRendition::default()
                    });
                if let Some((ends, _)) = stopping.as_mut() {
                    ends.entry(rendition.name.clone())
                        .or_insert_with(|| rendition.playlist().next_msn());
                }
                match write_rendition(&dir, &rendition, recorded) {
                    Ok(wrote) => changed |= wrote,
                    Err(e) => {
                        metrics::counter!("cascade_recording_write_errors_total").increment(1);
                        tracing::warn!(recording = %manifest.header.id, rendition = %rendition.name, error = %e, "could not write a recorded segment");
                    }
                }
            }
            if changed {
                multivariant = Some(render_multivariant(&packager.multivariant()));
                if let Err(e) = self.write_playlists(&manifest, multivariant.as_deref()) {
                    tracing::warn!(recording = %manifest.header.id, error = %e, "could not write a recording's playlists");
                }
            }
            if let Some((ends, deadline)) = &stopping {
                let all_written = ends.iter().all(|(name, end)| {
                    manifest
                        .renditions
                        .get(name)
                        .and_then(|r| r.segments.last())
                        .is_some_and(|s| s.msn >= *end)
                });
                if all_written || Instant::now() >= *deadline {
                    break;
                }
            }
        }
        manifest.header.state = RecordingState::Finished;
        manifest.header.stopped_at_ms = Some(now_ms());
        // Renditions that never got a segment (a rung nobody asked for) are left out.
        manifest
            .renditions
            .retain(|_, r| r.init.is_some() && !r.segments.is_empty());
        if let Err(e) = self.write_playlists(&manifest, multivariant.as_deref()) {
            tracing::warn!(recording = %manifest.header.id, error = %e, "could not close a recording");
        }
        lock(&self.inner.running).remove(&stream);
        metrics::gauge!("cascade_recordings_active").decrement(1.0);
        let info = manifest.info();
        tracing::info!(%stream, recording = %info.header.id, seconds = info.duration_seconds, bytes = info.bytes, "recording finished");
        if let Some(ready) = self.inner.on_ready.get() {
            ready(&info);
        }
        let _ = done.send(manifest);
    }

    /// Calls `ready` with each recording that finishes from now on (once; later calls are
    /// ignored). It runs on the recording's task: it must not block.
    pub fn on_ready(&self, ready: impl Fn(&RecordingInfo) + Send + Sync + 'static) {
        let _ = self.inner.on_ready.set(Box::new(ready));
    }

    /// Writes the manifest and every playlist of `manifest` (and the multivariant playlist
    /// when given).
    fn write_playlists(
        &self,
        manifest: &Manifest,
        multivariant: Option<&str>,
    ) -> Result<(), RoleError> {
        let dir = self.inner.dir.join(&manifest.header.id);
        for name in manifest.renditions.keys() {
            if let Some(text) = manifest.playlist(name) {
                write_file(&dir.join(name).join("index.m3u8"), text.as_bytes())?;
            }
        }
        if let Some(text) = multivariant {
            // Only renditions with something recorded.
            let kept: String = filter_variants(text, manifest);
            write_file(&dir.join("index.m3u8"), kept.as_bytes())?;
        }
        write_manifest(&dir, manifest)
    }

    /// Who started the recording of `stream` running here, if one is.
    pub fn running(&self, stream: &StreamId) -> Option<String> {
        lock(&self.inner.running)
            .get(stream)
            .map(|r| r.started_by.clone())
    }
}

/// Writes the segments of `rendition` not written yet; whether anything was.
fn write_rendition(
    dir: &Path,
    rendition: &super::Rendition,
    recorded: &mut RecordedRendition,
) -> Result<bool, RoleError> {
    let Some(init) = rendition.init() else {
        return Ok(false);
    };
    let rendition_dir = dir.join(&rendition.name);
    let mut wrote = false;
    if recorded.init.is_none() {
        let name = rendition.init_name();
        write_file(&rendition_dir.join(&name), &init)?;
        recorded.init = Some(name);
        wrote = true;
    }
    let next = recorded
        .segments
        .last()
        .map_or(recorded.first_msn, |s| s.msn + 1);
    let playlist = rendition.playlist();
    for segment in playlist.segments.iter().filter(|s| s.msn >= next) {
        let Some(bytes) = rendition.segment(segment.msn) else {
            continue;
        };
        // The init segment it needs, written beside the first when it is another one.
        let needed = segment
            .map_uri
            .clone()
            .unwrap_or_else(|| playlist.map_uri.clone());
        let init = if Some(&needed) == recorded.init.as_ref() {
            None
        } else {
            let path = rendition_dir.join(&needed);
            if !path.exists()
                && let Some(init_bytes) = rendition.init_named(&needed)
            {
                write_file(&path, &init_bytes)?;
            }
            Some(needed)
        };
        write_file(
            &rendition_dir.join(format!("seg{}.m4s", segment.msn)),
            &bytes,
        )?;
        recorded.segments.push(RecordedSegment {
            msn: segment.msn,
            duration: segment.duration,
            program_date_time_ms: segment.program_date_time_ms,
            // A gap in numbering (the packager restarted) is a discontinuity too.
            discontinuity: segment.discontinuity
                || recorded
                    .segments
                    .last()
                    .is_some_and(|s| s.msn + 1 != segment.msn),
            bytes: bytes.len() as u64,
            init,
        });
        wrote = true;
    }
    Ok(wrote)
}

/// The multivariant playlist without the variants (and audio) nothing was recorded of.
fn filter_variants(text: &str, manifest: &Manifest) -> String {
    let recorded = |uri: &str| {
        uri.split('/')
            .next()
            .is_some_and(|name| manifest.renditions.contains_key(name))
    };
    let mut out = String::new();
    let mut pending: Option<&str> = None;
    for line in text.lines() {
        if let Some(stream_inf) = pending.take() {
            if recorded(line) {
                out.push_str(stream_inf);
                out.push('\n');
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if line.starts_with("#EXT-X-STREAM-INF") {
            pending = Some(line);
        } else if line.starts_with("#EXT-X-MEDIA")
            && let Some(uri) = line
                .split("URI=\"")
                .nth(1)
                .and_then(|u| u.split('"').next())
            && !recorded(uri)
        {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read(dir.join(MANIFEST)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), RoleError> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| RoleError::RecordingStorage(e.to_string()))?;
    write_file(&dir.join(MANIFEST), &json)
}

/// Writes `bytes` to `path` through a temporary file and a rename: a crash leaves the old
/// file or the new one, never half of one.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RoleError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| storage(parent, &e))?;
    }
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes).map_err(|e| storage(&temporary, &e))?;
    std::fs::rename(&temporary, path).map_err(|e| storage(path, &e))
}

fn storage(path: &Path, error: &std::io::Error) -> RoleError {
    RoleError::RecordingStorage(format!("{}: {error}", path.display()))
}

/// A name that stays inside its directory: letters, digits, `-`, `_` and inner dots.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(state: RecordingState) -> Manifest {
        let segment = |msn| RecordedSegment {
            msn,
            duration: 2.0,
            program_date_time_ms: 1_796_125_000_000 + msn * 2000,
            discontinuity: false,
            bytes: 1000,
            init: None,
        };
        Manifest {
            header: RecordingHeader {
                id: "show-1".into(),
                stream: "show".into(),
                state,
                started_by: "api".into(),
                started_at_ms: 1_796_125_000_000,
                stopped_at_ms: None,
            },
            part_target: 1.0 / 3.0,
            renditions: [(
                "source".to_owned(),
                RecordedRendition {
                    init: Some("init-0000abcd.mp4".into()),
                    first_msn: 7,
                    segments: vec![segment(7), segment(8)],
                },
            )]
            .into(),
        }
    }

    #[test]
    fn a_finished_recording_is_a_vod_playlist_of_its_segments() {
        let text = manifest(RecordingState::Finished)
            .playlist("source")
            .unwrap();
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:7"));
        assert!(text.contains("#EXT-X-MAP:URI=\"init-0000abcd.mp4\""));
        assert!(text.contains("seg7.m4s") && text.contains("seg8.m4s"));
        assert!(text.trim_end().ends_with("#EXT-X-ENDLIST"));
        let live = manifest(RecordingState::Recording)
            .playlist("source")
            .unwrap();
        assert!(!live.contains("#EXT-X-ENDLIST"), "still growing");
        let info = manifest(RecordingState::Finished).info();
        assert_eq!((info.duration_seconds, info.bytes), (4.0, 2000));
    }

    #[test]
    fn names_that_could_leave_the_recording_directory_are_refused() {
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\\b", "seg 1.m4s"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        for good in [
            "show-1796125000000",
            "seg12.m4s",
            "init-0a1b2c3d.mp4",
            "index.m3u8",
        ] {
            assert!(safe_name(good), "{good:?}");
        }
    }

    #[test]
    fn the_recorded_multivariant_playlist_lists_only_what_was_recorded() {
        let text = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"main\",URI=\"aac/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\nsource/index.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=2\n360p/index.m3u8\n";
        let kept = filter_variants(text, &manifest(RecordingState::Finished));
        assert!(kept.contains("source/index.m3u8"));
        assert!(
            !kept.contains("360p") && !kept.contains("aac/index.m3u8"),
            "{kept}"
        );
    }
}
