//! What every pushed ingest (RTMP, SRT) shares once its protocol has named a stream: the
//! decision to admit the publisher ([`admit_publisher`]: the node's [`PublishGate`], the
//! node's capacity, the stream actor) and the broadcast's source tracks fed from one
//! publisher clock ([`SourceTracks`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::media::{MediaKind, Payload, TrackInfo, source_track};
use ractor::ActorRef;
use tokio::sync::Notify;

use super::StreamRegistry;
use super::stream::PUBLISHER_GONE_AFTER;
use crate::RoleError;
use crate::broadcast::{Broadcast, Track};
use crate::session::{Admission, Client, Liveness, SessionId, SessionKind, SessionMsg, Transport};

/// A publisher asking to publish: what a [`PublishGate`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct PublishAttempt<'a> {
    /// The stream.
    pub stream: &'a StreamId,
    /// The token it presented (stream key, streamid field), if any.
    pub token: Option<&'a str>,
    /// How it arrived: `rtmp`, `srt`, `rtsp`.
    pub protocol: &'static str,
    /// Where from.
    pub peer: SocketAddr,
}

/// Decides whether a publisher may publish a stream on this node, and makes this node the
/// stream's origin if so. Implemented by the node (access rules and the cluster).
pub trait PublishGate: Send + Sync + 'static {
    /// `Ok` when the attempt may publish its stream here.
    fn authorize<'a>(
        &'a self,
        attempt: PublishAttempt<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send + 'a>>;
}

/// A publisher admitted on a stream by [`admit_publisher`].
pub struct AdmittedPublisher {
    /// The stream.
    pub stream: StreamId,
    /// Its session.
    pub session: SessionId,
    /// Its session actor.
    pub actor: ActorRef<SessionMsg>,
    /// Signs of life the connection keeps up to date.
    pub liveness: Liveness,
    /// The broadcast's source tracks, fed by this publisher.
    pub tracks: SourceTracks,
}

impl AdmittedPublisher {
    /// The connection is over: its tracks stop (unless a new publisher took them over) and
    /// its session ends with `reason`.
    pub fn end(self, reason: String) {
        self.tracks.end();
        let _ = self.actor.cast(SessionMsg::TransportClosed(reason));
    }
}

/// How often an arriving publisher looks again whether the live one has gone silent.
const RETURN_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Admits a publisher of `stream` arriving by `protocol` from `peer` with `token`: the gate
/// (access and placement), the node's capacity, then the stream actor (which refuses a
/// second live publisher). `closer` is notified when the stream ends the session.
pub async fn admit_publisher(
    registry: &StreamRegistry,
    gate: &dyn PublishGate,
    stream: StreamId,
    token: Option<&str>,
    protocol: &'static str,
    peer: SocketAddr,
    closer: Arc<Notify>,
) -> Result<AdmittedPublisher, RoleError> {
    gate.authorize(PublishAttempt {
        stream: &stream,
        token,
        protocol,
        peer,
    })
    .await?;
    registry.check_capacity(SessionKind::Publisher)?;
    let session = SessionId::random();
    let liveness = Liveness::new(Instant::now());
    let arrived = Instant::now();
    let admitted = loop {
        let admission = Admission {
            kind: SessionKind::Publisher,
            session,
            protocol,
            client: Client::new(Some(peer), token),
            liveness: Some(liveness.clone()),
            transport: Transport::Connection(closer.clone()),
        };
        match registry.admit(&stream, admission).await {
            // An encoder that crashed and reconnects at once finds its old connection
            // still open (SRT has no close to notice; a dead TCP peer looks alive for a
            // while) and not yet silent long enough to be taken for gone: when that one has
            // gone quiet, the newcomer waits for it to count as gone instead of being
            // refused. A publisher that is sending refuses the newcomer at once.
            Err(RoleError::PublisherAlreadyLive(_))
                if arrived.elapsed() < PUBLISHER_GONE_AFTER + RETURN_CHECK_EVERY
                    && live_publisher_went_quiet(registry, &stream).await =>
            {
                tokio::time::sleep(RETURN_CHECK_EVERY).await;
            }
            other => break other?,
        }
    };
    tracing::info!(%stream, %session, %peer, protocol, "publisher admitted");
    Ok(AdmittedPublisher {
        stream,
        session,
        actor: admitted.actor,
        liveness,
        tracks: SourceTracks::new(admitted.broadcast),
    })
}

/// Whether the live publisher of `stream` has sent nothing for a while (longer than any
/// live encoder pauses between packets).
async fn live_publisher_went_quiet(registry: &StreamRegistry, stream: &StreamId) -> bool {
    registry.info(stream).await.is_ok_and(|info| {
        info.publisher
            .is_some_and(|p| p.silent_secs >= RETURN_CHECK_EVERY.as_secs_f64())
    })
}

/// The metric label of a refused publisher.
pub fn refusal_label(error: &RoleError) -> &'static str {
    match error {
        RoleError::BadIngest(_) => "bad_stream_id",
        RoleError::NotAuthorized { .. } => "unauthorized",
        RoleError::PublisherAlreadyLive(_) | RoleError::LiveElsewhere { .. } => "already_live",
        RoleError::Overloaded(_) => "overloaded",
        _ => "unavailable",
    }
}

struct Source {
    track: Arc<Track>,
    generation: u64,
    info: TrackInfo,
}

/// A broadcast's two source tracks as one publisher feeds them: each begins when the
/// publisher describes it (again only when the description changes) and ends with the
/// publisher, unless another publisher has begun it since.
pub struct SourceTracks {
    broadcast: Arc<Broadcast>,
    video: Option<Source>,
    audio: Option<Source>,
}

impl SourceTracks {
    /// Nothing described yet.
    pub fn new(broadcast: Arc<Broadcast>) -> Self {
        Self {
            broadcast,
            video: None,
            audio: None,
        }
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        self.broadcast.id()
    }

    fn slot(&mut self, kind: MediaKind) -> &mut Option<Source> {
        match kind {
            MediaKind::Video => &mut self.video,
            MediaKind::Audio => &mut self.audio,
        }
    }

    /// The publisher describes its `kind` track (a sequence header, a PMT): the track begins
    /// with it unless it already has exactly this description. Returns whether it began.
    pub fn describe(&mut self, mut info: TrackInfo) -> bool {
        let kind = info.kind;
        info.name = source_track(kind).to_owned();
        if let Some(current) = self.slot(kind)
            && current.info == info
        {
            return false;
        }
        let track = self.broadcast.source(kind);
        tracing::info!(stream = %self.broadcast.id(), track = %info.name, codec = info.codec.name(), codec_string = ?info.codec_string, "source track described");
        let generation = track.begin_source(info.clone(), None);
        *self.slot(kind) = Some(Source {
            track,
            generation,
            info,
        });
        true
    }

    /// What the publisher said about its `kind` track, if it did.
    pub fn described(&self, kind: MediaKind) -> Option<&TrackInfo> {
        match kind {
            MediaKind::Video => self.video.as_ref(),
            MediaKind::Audio => self.audio.as_ref(),
        }
        .map(|s| &s.info)
    }

    /// The video source reorders its frames (B-frames): said once, in the catalog.
    pub fn mark_b_frames(&mut self) {
        let stream = self.broadcast.id().clone();
        if let Some(video) = self.video.as_mut()
            && !video.info.bframes
        {
            video.info.bframes = true;
            video.track.update_info(|info| info.bframes = true);
            tracing::info!(%stream, "the source has B-frames (frames are reordered); WebRTC viewers are refused until a transcoder serves it");
        }
    }

    /// One access unit of the `kind` track presented at `timestamp` (in its timescale),
    /// `composition_offset` after its decode time (B-frames; 0 otherwise); dropped when the
    /// track was never described.
    pub fn publish(
        &self,
        kind: MediaKind,
        timestamp: u64,
        composition_offset: u32,
        keyframe: bool,
        payload: Payload,
        now: Instant,
    ) {
        let source = match kind {
            MediaKind::Video => self.video.as_ref(),
            MediaKind::Audio => self.audio.as_ref(),
        };
        if let Some(source) = source {
            source
                .track
                .publish_reordered(timestamp, composition_offset, now, keyframe, payload);
        }
    }

    /// The publisher is gone.
    pub fn end(&self) {
        for source in [&self.video, &self.audio].into_iter().flatten() {
            source.track.end_source_of(source.generation);
        }
    }
}
