//! SRT ingest: contribution encoders publish MPEG-TS to `srt://<node>:9710` with
//! `streamid=publish:<stream>` (or `#!::r=<stream>,m=publish`), encrypted with the stream's
//! passphrase when the operator set one.
//!
//! The SRT transport is `srt-tokio` (one UDP socket for every caller). Each caller is decided
//! before it is accepted, like an RTMP `publish`: its streamid, the stream's passphrase (a
//! caller without it, or with another, is refused and counted), the node's [`PublishGate`],
//! the stream actor. Accepted, its datagrams go through our MPEG-TS demuxer
//! ([`TsIngest`]) into the broadcast's source tracks.
//!
//! Known hazard, not ours to fix without copying the crate: `srt-protocol` 0.4.4 panics in
//! its listener task on a few handshakes (an encrypting caller on a stream without a
//! passphrase). The panic ends only that task; [`listen`] binds a fresh listener at once and
//! counts it in `cascade_srt_listener_restarts_total`, but the callers of the old one are cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_protocol::StreamId;
use cascade_protocol::h264;
use cascade_protocol::media::{Codec, MediaKind, TrackInfo, source_track};
use cascade_protocol::mpegts::{EsUnit, TsDemuxer};
use cascade_protocol::srt_stream_id;
use cascade_protocol::timeline::{WrappingClock, rescale};
use futures::StreamExt;
use srt_protocol::settings::KeySettings;
use srt_tokio::SrtListener;
use srt_tokio::access::{RejectReason, ServerRejectReason};
use srt_tokio::options::{KeySize, Passphrase};
use tokio::sync::Notify;

use super::StreamRegistry;
use super::ingest::{AdmittedPublisher, PublishGate, SourceTracks, admit_publisher, refusal_label};
use crate::RoleError;

/// How the SRT listener is set up.
#[derive(Debug, Clone)]
pub struct SrtSettings {
    /// UDP address callers connect to.
    pub bind: SocketAddr,
    /// Receiver latency (the SRT buffer that absorbs retransmissions).
    pub latency: Duration,
}

/// The passphrase of each stream, from the node's configuration.
pub trait SrtPassphrases: Send + Sync + 'static {
    /// The passphrase callers of `stream` must encrypt with, if the operator set one.
    fn passphrase(&self, stream: &StreamId) -> Option<String>;
}

/// Starts accepting SRT callers on `settings.bind`.
pub async fn listen(
    settings: SrtSettings,
    registry: StreamRegistry,
    gate: Arc<dyn PublishGate>,
    passphrases: Arc<dyn SrtPassphrases>,
) -> Result<(), RoleError> {
    let bind = settings.bind;
    let (listener, incoming) = bind_listener(&settings).await?;
    tracing::info!(%bind, "SRT ingest listening (srt://{bind}?streamid=publish:<stream>)");
    tokio::spawn(async move {
        let (mut listener, mut incoming) = (listener, incoming);
        loop {
            while let Some(request) = incoming.incoming().next().await {
                let registry = registry.clone();
                let gate = gate.clone();
                let passphrases = passphrases.clone();
                tokio::spawn(async move {
                    serve_caller(request, registry, gate.as_ref(), passphrases.as_ref()).await;
                });
            }
            // The listener task ended: it panicked on a handshake (see the module header).
            metrics::counter!("cascade_srt_listener_restarts_total").increment(1);
            tracing::error!(%bind, "the SRT listener stopped (a handshake it could not handle); listening again");
            // Not `close()`: it unwraps the dead task's panic. The socket died with the task.
            drop(listener);
            loop {
                match bind_listener(&settings).await {
                    Ok(fresh) => {
                        (listener, incoming) = fresh;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(%bind, error = %e, "cannot listen for SRT again; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    Ok(())
}

async fn bind_listener(
    settings: &SrtSettings,
) -> Result<(SrtListener, srt_tokio::SrtIncoming), RoleError> {
    SrtListener::builder()
        .latency(settings.latency)
        .bind(settings.bind)
        .await
        .map_err(|source| RoleError::Bind {
            addr: settings.bind,
            source,
        })
}

fn count_refusal(label: &'static str) {
    metrics::counter!("cascade_ingest_refusals_total", "protocol" => "srt", "reason" => label)
        .increment(1);
}

/// Why a caller is refused before anything is admitted.
struct Refusal {
    label: &'static str,
    why: String,
    code: ServerRejectReason,
}

/// What a caller's handshake asks for, decided before the stream is touched: the stream, the
/// token it carries and the key settings to accept it with.
fn decide_caller(
    stream_id: Option<&str>,
    key_size: KeySize,
    passphrases: &dyn SrtPassphrases,
) -> Result<(StreamId, Option<String>, Option<KeySettings>), Refusal> {
    let refusal = |label, why: String, code| Refusal { label, why, code };
    let asked = srt_stream_id::parse(stream_id).map_err(|e| {
        refusal(
            "bad_stream_id",
            e.to_string(),
            ServerRejectReason::BadRequest,
        )
    })?;
    if !asked.publish {
        return Err(refusal(
            "bad_mode",
            "only publishing is taken over SRT; watch over WHEP".into(),
            ServerRejectReason::BadMode,
        ));
    }
    let stream = StreamId::parse(&asked.resource).map_err(|e| {
        refusal(
            "bad_stream_id",
            e.to_string(),
            ServerRejectReason::BadRequest,
        )
    })?;
    let key_settings = match passphrases.passphrase(&stream) {
        Some(passphrase) => {
            let passphrase = Passphrase::try_from(passphrase).map_err(|e| {
                refusal(
                    "unavailable",
                    format!("the configured passphrase of {stream} is unusable: {e}"),
                    ServerRejectReason::InternalServerError,
                )
            })?;
            // The caller's own key length: srt-protocol panics on a mismatch, and an
            // unspecified one means the default AES-128 on both sides.
            Some(KeySettings {
                key_size,
                passphrase,
            })
        }
        None if key_size != KeySize::Unspecified => {
            return Err(refusal(
                "bad_passphrase",
                format!("the caller encrypts but stream {stream} has no passphrase"),
                ServerRejectReason::Unauthorized,
            ));
        }
        None => None,
    };
    Ok((stream, asked.token, key_settings))
}

async fn serve_caller(
    request: srt_tokio::ConnectionRequest,
    registry: StreamRegistry,
    gate: &dyn PublishGate,
    passphrases: &dyn SrtPassphrases,
) {
    let peer = request.remote();
    let refuse = |refusal: Refusal| {
        count_refusal(refusal.label);
        tracing::info!(%peer, reason = %refusal.why, "SRT caller refused");
        RejectReason::Server(refusal.code)
    };
    let (stream, token, key_settings) = match decide_caller(
        request.stream_id().map(|s| s.as_str()),
        request.key_size(),
        passphrases,
    ) {
        Ok(decided) => decided,
        Err(refusal) => {
            let _ = request.reject(refuse(refusal)).await;
            return;
        }
    };
    let closer = Arc::new(Notify::new());
    let publisher = match admit_publisher(
        &registry,
        gate,
        stream.clone(),
        token.as_deref(),
        "srt",
        peer,
        closer.clone(),
    )
    .await
    {
        Ok(publisher) => publisher,
        Err(refusal) => {
            let code = match &refusal {
                RoleError::NotAuthorized { .. } => ServerRejectReason::Unauthorized,
                RoleError::PublisherAlreadyLive(_) | RoleError::LiveElsewhere { .. } => {
                    ServerRejectReason::Conflict
                }
                RoleError::Overloaded(_) => ServerRejectReason::Overload,
                _ => ServerRejectReason::Down,
            };
            let reason = refuse(Refusal {
                label: refusal_label(&refusal),
                why: refusal.to_string(),
                code,
            });
            let _ = request.reject(reason).await;
            return;
        }
    };
    let socket = match request.accept(key_settings).await {
        Ok(socket) => socket,
        Err(e) => {
            // A wrong passphrase ends here: the handshake fails to unwrap the caller's key.
            count_refusal("bad_passphrase");
            tracing::info!(%peer, %stream, error = %e, "SRT handshake failed (wrong passphrase?)");
            publisher.end(format!("SRT handshake failed: {e}"));
            return;
        }
    };
    metrics::gauge!("cascade_ingest_connections", "protocol" => "srt").increment(1.0);
    publisher.liveness.set_connected();
    let mut publisher = publisher;
    let reason = receive(socket, &mut publisher, &closer).await;
    metrics::gauge!("cascade_ingest_connections", "protocol" => "srt").decrement(1.0);
    tracing::info!(%stream, session = %publisher.session, %peer, %reason, "SRT publisher gone");
    publisher.end(reason);
}

async fn receive(
    mut socket: srt_tokio::SrtSocket,
    publisher: &mut AdmittedPublisher,
    closer: &Notify,
) -> String {
    let mut ingest = TsIngest::new();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_secs(10), socket.next()) => next,
            () = closer.notified() => return "ended by the stream (replaced, deleted or stream ended)".into(),
        };
        match next {
            Err(_) => {
                metrics::counter!("cascade_ingest_errors_total", "protocol" => "srt", "reason" => "silent").increment(1);
                return "nothing received for 10 s".into();
            }
            Ok(None) => return "the caller closed the connection".into(),
            Ok(Some(Err(e))) => return format!("receive failed: {e}"),
            Ok(Some(Ok((_, datagram)))) => {
                let now = Instant::now();
                publisher.liveness.heard(now);
                metrics::counter!("cascade_ingest_bytes_total", "protocol" => "srt")
                    .increment(datagram.len() as u64);
                ingest.push(&mut publisher.tracks, &datagram, now);
            }
        }
    }
}

/// MPEG-TS of one publisher into its [`SourceTracks`]: the PMT and the first units describe
/// the tracks; PES times (33-bit 90 kHz, one [`WrappingClock`] for all streams, so audio and
/// video stay together) are rebased to each track's timescale.
pub struct TsIngest {
    demuxer: TsDemuxer,
    clock: WrappingClock,
    errors_counted: u64,
}

impl Default for TsIngest {
    fn default() -> Self {
        Self::new()
    }
}

impl TsIngest {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self {
            demuxer: TsDemuxer::new(),
            clock: WrappingClock::mpeg(),
            errors_counted: 0,
        }
    }

    /// Takes one chunk of the transport stream.
    pub fn push(&mut self, tracks: &mut SourceTracks, data: &[u8], now: Instant) {
        for unit in self.demuxer.push(data) {
            self.unit(tracks, unit, now);
        }
        let errors = self.demuxer.errors();
        if errors > self.errors_counted {
            metrics::counter!("cascade_ingest_errors_total", "protocol" => "srt", "reason" => "bad_ts")
                .increment(errors - self.errors_counted);
            self.errors_counted = errors;
        }
    }

    fn unit(&mut self, tracks: &mut SourceTracks, unit: EsUnit, now: Instant) {
        let pts = self.clock.unwrap(unit.pts);
        let kind = unit.codec.kind();
        let described = tracks.described(kind).filter(|i| i.codec == unit.codec);
        let mut info = match described {
            Some(info) => info.clone(),
            None => TrackInfo::new(source_track(kind), unit.codec),
        };
        let mut changed = described.is_none();
        match unit.codec {
            Codec::H264 => {
                if let Some(codec_string) = h264::codec_string_of_access_unit(&unit.data)
                    && info.codec_string.as_deref() != Some(&codec_string)
                {
                    info.codec_string = Some(codec_string);
                    changed = true;
                }
            }
            Codec::Aac => {
                if let Some(config) = unit.audio_config {
                    let asc = cascade_protocol::flv::hex(&config.audio_specific_config());
                    if info.config.as_deref() != Some(&asc) {
                        info.config = Some(asc);
                        info.timescale = config.sample_rate;
                        info.sample_rate = Some(config.sample_rate);
                        info.channels = Some(config.channels);
                        info.codec_string = Some(format!("mp4a.40.{}", config.object_type));
                        changed = true;
                    }
                }
            }
            _ => {}
        }
        if changed {
            tracks.describe(info.clone());
        }
        let keyframe = match unit.codec {
            Codec::H264 => h264::is_keyframe(&unit.data),
            // IRAP pictures: NAL unit types 16 to 21.
            Codec::H265 => h264::nal_units(&unit.data)
                .filter_map(|n| n.first())
                .any(|b| (16..=21).contains(&((b >> 1) & 0x3f))),
            _ => true,
        };
        if kind == MediaKind::Video && unit.pts != unit.dts {
            tracks.mark_b_frames();
        }
        let timestamp = rescale(pts, 90_000, info.timescale);
        let offset = rescale(unit.pts.saturating_sub(unit.dts), 90_000, info.timescale);
        tracks.publish(
            kind,
            timestamp,
            u32::try_from(offset).unwrap_or(u32::MAX),
            keyframe,
            Arc::from(unit.data),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OnePassphrase;

    impl SrtPassphrases for OnePassphrase {
        fn passphrase(&self, stream: &StreamId) -> Option<String> {
            (stream.as_str() == "locked").then(|| "a-good-passphrase".to_owned())
        }
    }

    #[test]
    fn callers_are_decided_from_their_streamid_and_key_length_before_anything_is_admitted() {
        let decide = |id: &str, key: KeySize| decide_caller(Some(id), key, &OnePassphrase);
        let (stream, token, keys) = decide("publish:open?key=t", KeySize::Unspecified)
            .ok()
            .unwrap();
        assert_eq!(
            (stream.as_str(), token.as_deref(), keys.is_none()),
            ("open", Some("t"), true)
        );
        let (_, _, keys) = decide("#!::r=locked,m=publish", KeySize::AES256)
            .ok()
            .unwrap();
        assert_eq!(
            keys.map(|k| k.key_size),
            Some(KeySize::AES256),
            "the caller's key length"
        );
        for (id, key, label) in [
            ("read:open", KeySize::Unspecified, "bad_mode"),
            ("publish:../x", KeySize::Unspecified, "bad_stream_id"),
            ("nonsense", KeySize::Unspecified, "bad_stream_id"),
            ("publish:open", KeySize::AES128, "bad_passphrase"),
        ] {
            assert_eq!(decide(id, key).err().map(|r| r.label), Some(label), "{id}");
        }
    }
}
