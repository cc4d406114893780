//! WHIP publishers and WHEP viewers built on the `webrtc` crate (webrtc-rs): an independent
//! WebRTC implementation, so these tests prove that Cascade speaks the standard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCPeerConnectionState, RTCSessionDescription, Registry,
    register_default_interceptors,
};

use super::media::{
    H264Depacketizer, Vp8Depacketizer, fingerprint, is_idr, vp8_fingerprint, vp8_is_keyframe,
};

/// The video codecs the tests' webrtc-rs peers send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
}

impl VideoCodec {
    fn parameters(self) -> RTCRtpCodecParameters {
        match self {
            VideoCodec::H264 => h264(),
            VideoCodec::Vp8 => vp8(),
        }
    }
}

fn vp8() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/VP8".to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: 96,
    }
}

fn h264() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/H264".to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                .to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 102,
    }
}

fn opus() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "audio/opus".to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

/// Forwards connection state and remote tracks to the test.
#[derive(Clone)]
struct Events {
    state: mpsc::UnboundedSender<RTCPeerConnectionState>,
    tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(tracks) = &self.tracks {
            let _ = tracks.send(track);
        }
    }
}

/// webrtc-rs logs through `log`; with `CASCADE_TEST_LOG` set its warnings go to stderr too
/// (that is how "SRTP packet before the DTLS handshake finished" drops were found).
struct PeerLog;

impl log::Log for PeerLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("webrtc-rs {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

fn init_peer_log() {
    if std::env::var_os("CASCADE_TEST_LOG").is_some() && log::set_logger(&PeerLog).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// Which H.264 parameter sets a viewer has seen. An IDR that reaches a decoder before them
/// cannot be decoded (for example when the packet carrying them was lost), so the viewer
/// keeps asking for a keyframe, as a browser does.
#[derive(Default)]
struct ParameterSets {
    sps: bool,
    pps: bool,
}

impl ParameterSets {
    fn see(&mut self, nals: &[&[u8]]) {
        for nal in nals {
            match nal[0] & 0x1f {
                7 => self.sps = true,
                8 => self.pps = true,
                _ => {}
            }
        }
    }

    fn complete(&self) -> bool {
        self.sps && self.pps
    }
}

/// DELETE on a session's URL, then the connection closed: how a WHIP or WHEP client leaves.
async fn end_session(session_url: &str, pc: &Arc<dyn PeerConnection>) -> u16 {
    let status = reqwest::Client::new()
        .delete(session_url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let _ = pc.close().await;
    status
}

/// How often an undecodable viewer repeats its keyframe request, as browsers do.
const PLI_INTERVAL: Duration = Duration::from_millis(300);

async fn peer(
    ip: &str,
    tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
    video_codecs: &[VideoCodec],
) -> (
    Arc<dyn PeerConnection>,
    mpsc::UnboundedReceiver<RTCPeerConnectionState>,
) {
    let mut media_engine = MediaEngine::default();
    for codec in video_codecs {
        media_engine
            .register_codec(codec.parameters(), RtpCodecKind::Video)
            .unwrap();
    }
    media_engine
        .register_codec(opus(), RtpCodecKind::Audio)
        .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media_engine).unwrap();
    let (state_tx, state_rx) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Events {
            state: state_tx,
            tracks,
        }))
        // Loopback only: the test network is 127.0.0.0/8.
        .with_udp_addrs(vec![format!("{ip}:0")])
        .build()
        .await
        .unwrap();
    (Arc::new(pc) as Arc<dyn PeerConnection>, state_rx)
}

/// POSTs the local offer; returns the HTTP status, and on 201 the session URL.
async fn signal(
    pc: &Arc<dyn PeerConnection>,
    url: &str,
    token: Option<&str>,
    link: Option<&crate::support::link::ShapedLink>,
) -> Result<String, (u16, String)> {
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer.clone()).await.unwrap();
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(offer.sdp.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    if status != 201 {
        return Err((status, body));
    }
    let body = match link {
        Some(link) => link.rewrite_answer(&body),
        None => body,
    };
    pc.set_remote_description(RTCSessionDescription::answer(body).unwrap())
        .await
        .unwrap();
    let base = url.split("/wh").next().unwrap();
    Ok(format!(
        "{base}{}",
        location.expect("201 carries a Location")
    ))
}

async fn wait_connected(states: &mut mpsc::UnboundedReceiver<RTCPeerConnectionState>) {
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        while let Some(state) = states.recv().await {
            match state {
                RTCPeerConnectionState::Connected => return,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    panic!("peer connection {state}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("peer connection connected within 10 s");
}

/// POSTs a publisher's offer and disappears without applying the answer: a client that
/// never completes ICE. Returns the session's `Location`.
pub async fn offer_and_vanish(ip: &str, url: &str) -> String {
    let (pc, _states) = peer(ip, None, &[VideoCodec::H264]).await;
    let video = local_track(RtpCodecKind::Video, h264().rtp_codec, rand_u32());
    pc.add_track(video as Arc<dyn TrackLocal>).await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    let response = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(offer.sdp)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "the offer is answered");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let _ = pc.close().await;
    location
}

/// A WHIP publisher sending H.264 (or VP8) and Opus samples.
pub struct Publisher {
    pub pc: Arc<dyn PeerConnection>,
    pub session_url: String,
    video: Arc<TrackLocalStaticSample>,
    video_pt: u8,
    audio: Arc<TrackLocalStaticSample>,
    video_ssrc: u32,
    audio_ssrc: u32,
}

fn local_track(kind: RtpCodecKind, codec: RTCRtpCodec, ssrc: u32) -> Arc<TrackLocalStaticSample> {
    Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "cascade-test".into(),
                format!("cascade-test-{kind}"),
                format!("cascade-test-{kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            ),
        )
        .unwrap(),
    )
}

impl Publisher {
    /// Connects to a WHIP URL; returns the HTTP refusal as `Err((status, body))`.
    pub async fn connect(
        ip: &str,
        url: &str,
        token: Option<&str>,
    ) -> Result<Publisher, (u16, String)> {
        Self::connect_with(ip, url, token, VideoCodec::H264).await
    }

    /// Like [`Publisher::connect`], sending `codec` video.
    pub async fn connect_with(
        ip: &str,
        url: &str,
        token: Option<&str>,
        codec: VideoCodec,
    ) -> Result<Publisher, (u16, String)> {
        let (pc, mut states) = peer(ip, None, &[codec]).await;
        let (video_ssrc, audio_ssrc) = (rand_u32(), rand_u32());
        let parameters = codec.parameters();
        let video_pt = parameters.payload_type;
        let video = local_track(RtpCodecKind::Video, parameters.rtp_codec, video_ssrc);
        let audio = local_track(RtpCodecKind::Audio, opus().rtp_codec, audio_ssrc);
        pc.add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        pc.add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        let session_url = signal(&pc, url, token, None).await?;
        wait_connected(&mut states).await;
        Ok(Publisher {
            pc,
            session_url,
            video,
            video_pt,
            audio,
            video_ssrc,
            audio_ssrc,
        })
    }

    pub async fn send_video(&self, access_unit: &[u8]) {
        let sample = Sample {
            data: access_unit.to_vec().into(),
            duration: Duration::from_millis(33),
            ..Sample::new(Instant::now())
        };
        self.video
            .sample_writer(self.video_ssrc, self.video_pt)
            .write_sample(&sample)
            .await
            .unwrap();
    }

    pub async fn send_audio(&self, packet: &[u8]) {
        let sample = Sample {
            data: packet.to_vec().into(),
            duration: Duration::from_millis(20),
            ..Sample::new(Instant::now())
        };
        self.audio
            .sample_writer(self.audio_ssrc, 111)
            .write_sample(&sample)
            .await
            .unwrap();
    }

    /// Sends video access units at 30 fps and audio packets at 50 per second, interleaved.
    pub async fn stream(&self, video: &[Vec<u8>], audio: &[Vec<u8>]) {
        let start = tokio::time::Instant::now();
        let (mut v, mut a) = (0, 0);
        while v < video.len() {
            let video_due = start + Duration::from_micros(33_333 * v as u64);
            let audio_due = start + Duration::from_millis(20 * a as u64);
            if a < audio.len() && audio_due < video_due {
                tokio::time::sleep_until(audio_due).await;
                self.send_audio(&audio[a]).await;
                a += 1;
            } else {
                tokio::time::sleep_until(video_due).await;
                self.send_video(&video[v]).await;
                v += 1;
            }
        }
    }

    /// Ends the session the WHIP way: DELETE on its URL, then closes the connection.
    pub async fn delete(self) -> u16 {
        end_session(&self.session_url, &self.pc).await
    }
}

/// What a viewer received.
#[derive(Debug, Clone)]
pub struct ReceivedUnit {
    pub fingerprint: [u8; 32],
    pub keyframe: bool,
    pub at: Instant,
    /// Its RTP timestamp (90 kHz).
    pub rtp_timestamp: u32,
    /// The access unit: Annex B for H.264, the frame for VP8.
    pub data: Vec<u8>,
}

/// A WHEP viewer that reassembles every H.264 access unit it receives.
pub struct Viewer {
    /// Held so that the connection lives as long as the viewer.
    #[allow(dead_code)]
    pub pc: Arc<dyn PeerConnection>,
    /// The WHEP session resource (for tests that DELETE it).
    #[allow(dead_code)]
    pub session_url: String,
    pub requested_at: Instant,
    pub video: mpsc::UnboundedReceiver<ReceivedUnit>,
    pub audio_packets: Arc<AtomicU64>,
    pub states: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
}

impl Viewer {
    pub async fn connect(
        ip: &str,
        url: &str,
        token: Option<&str>,
    ) -> Result<Viewer, (u16, String)> {
        Self::connect_through(ip, url, token, None).await
    }

    /// A viewer whose media comes through `link` (a bottleneck between it and the node).
    pub async fn connect_through(
        ip: &str,
        url: &str,
        token: Option<&str>,
        link: Option<&crate::support::link::ShapedLink>,
    ) -> Result<Viewer, (u16, String)> {
        Self::connect_with(ip, url, token, link, None).await
    }

    /// [`Viewer::connect_through`], with video put back in sequence order by a jitter
    /// buffer that waits up to `jitter_buffer` for a gap to fill (a retransmission).
    pub async fn connect_with(
        ip: &str,
        url: &str,
        token: Option<&str>,
        link: Option<&crate::support::link::ShapedLink>,
        jitter_buffer: Option<Duration>,
    ) -> Result<Viewer, (u16, String)> {
        init_peer_log();
        let (tracks_tx, mut tracks_rx) = mpsc::unbounded_channel::<Arc<dyn TrackRemote>>();
        let (pc, mut states) =
            peer(ip, Some(tracks_tx), &[VideoCodec::H264, VideoCodec::Vp8]).await;
        let recvonly = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            })
        };
        pc.add_transceiver_from_kind(RtpCodecKind::Video, recvonly())
            .await
            .unwrap();
        pc.add_transceiver_from_kind(RtpCodecKind::Audio, recvonly())
            .await
            .unwrap();
        let requested_at = Instant::now();
        let session_url = signal(&pc, url, token, link).await?;
        let (video_tx, video) = mpsc::unbounded_channel();
        let audio_packets = Arc::new(AtomicU64::new(0));
        let audio_counter = audio_packets.clone();
        tokio::spawn(async move {
            while let Some(track) = tracks_rx.recv().await {
                let kind = track.kind().await;
                let video_tx = video_tx.clone();
                let audio_counter = audio_counter.clone();
                tokio::spawn(async move {
                    let mut depacketizer = H264Depacketizer::default();
                    let vp8_pt = vp8().payload_type;
                    let mut vp8_frames = Vp8Depacketizer::default();
                    let (mut decoding, mut last_pli) = (false, None);
                    // A decoder needs SPS and PPS before its first IDR: they come in-band.
                    let mut parameter_sets = ParameterSets::default();
                    let mut reorder = jitter_buffer.map(crate::support::media::Reorder::new);
                    let mut in_order = Vec::new();
                    while let Some(event) = track.poll().await {
                        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                            continue;
                        };
                        if kind == RtpCodecKind::Audio {
                            audio_counter.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        match reorder.as_mut() {
                            Some(reorder) => reorder.push(
                                packet.header.sequence_number,
                                Instant::now(),
                                packet,
                                &mut in_order,
                            ),
                            None => in_order.push(packet),
                        }
                        for packet in in_order.drain(..) {
                            let (identity, keyframe, data) = if packet.header.payload_type == vp8_pt
                            {
                                let Some(frame) = vp8_frames.push(
                                    packet.header.sequence_number,
                                    packet.header.marker,
                                    &packet.payload,
                                ) else {
                                    continue;
                                };
                                (vp8_fingerprint(&frame), vp8_is_keyframe(&frame), frame)
                            } else {
                                let Some(nals) = depacketizer.push(
                                    packet.header.sequence_number,
                                    packet.header.timestamp,
                                    packet.header.marker,
                                    &packet.payload,
                                ) else {
                                    continue;
                                };
                                let refs: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
                                let annex_b: Vec<u8> = refs
                                    .iter()
                                    .flat_map(|nal| [&[0u8, 0, 0, 1][..], nal].concat())
                                    .collect();
                                parameter_sets.see(&refs);
                                (fingerprint(&refs), is_idr(&refs), annex_b)
                            };
                            let decodable = keyframe
                                && (packet.header.payload_type == vp8_pt
                                    || parameter_sets.complete());
                            // Like a decoder: nothing is usable before the first keyframe, and the
                            // player keeps asking for one (PLI) until it gets it.
                            if !decoding && !decodable {
                                if last_pli.is_none_or(|at: Instant| at.elapsed() >= PLI_INTERVAL) {
                                    last_pli = Some(Instant::now());
                                    let pli = PictureLossIndication {
                                        sender_ssrc: 0,
                                        media_ssrc: packet.header.ssrc,
                                    };
                                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                                }
                                continue;
                            }
                            decoding = true;
                            let unit = ReceivedUnit {
                                fingerprint: identity,
                                keyframe,
                                at: Instant::now(),
                                rtp_timestamp: packet.header.timestamp,
                                data,
                            };
                            if video_tx.send(unit).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        wait_connected(&mut states).await;
        Ok(Viewer {
            pc,
            session_url,
            requested_at,
            video,
            audio_packets,
            states,
        })
    }

    /// Collects access units until `expected` arrived or `idle` passed without any.
    /// Ends the session the WHEP way: DELETE on its URL, then closes the connection.
    pub async fn delete(self) -> u16 {
        end_session(&self.session_url, &self.pc).await
    }

    pub async fn collect(&mut self, expected: usize, idle: Duration) -> Vec<ReceivedUnit> {
        let mut units = Vec::new();
        while units.len() < expected {
            match tokio::time::timeout(idle, self.video.recv()).await {
                Ok(Some(unit)) => units.push(unit),
                _ => break,
            }
        }
        units
    }

    /// Asserts that exactly the frames fingerprinted in `sent` arrive, whole and in order.
    pub async fn assert_received_exactly(&mut self, sent: &[[u8; 32]], who: &str) {
        let received = self.collect(sent.len(), Duration::from_secs(3)).await;
        let got: Vec<[u8; 32]> = received.iter().map(|u| u.fingerprint).collect();
        let missing: Vec<usize> = (0..sent.len())
            .filter(|&i| !got.contains(&sent[i]))
            .collect();
        assert_eq!(
            got.len(),
            sent.len(),
            "{who} received {} of {} frames; missing (by index): {missing:?}",
            got.len(),
            sent.len()
        );
        assert!(
            got == sent,
            "{who}: frames differ from what was sent (corrupted or out of order)"
        );
    }

    /// Asserts that at least `at_least` whole frames (`what`) arrive, the first a keyframe.
    pub async fn assert_decodable(&mut self, at_least: usize, what: &str) {
        let received = self.collect(at_least, Duration::from_secs(3)).await;
        assert!(
            received.len() >= at_least,
            "the webrtc crate received {} {what}",
            received.len()
        );
        assert!(received[0].keyframe, "it starts at a keyframe");
    }

    /// Waits until the server ends the session (connection closed or failed), up to `limit`.
    pub async fn wait_ended(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            while let Some(state) = self.states.recv().await {
                if matches!(
                    state,
                    RTCPeerConnectionState::Closed
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Disconnected
                ) {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}
