//! The RTMP publisher: the same looped source and capture-time markers as the WHIP publisher
//! ([`crate::publish`]), sent over RTMP with Cascade's sans-IO client, so that viewers'
//! glass-to-glass figures compare the two ingest paths on equal terms. Video only: Opus has
//! no place in classic FLV.

use std::time::{Duration, Instant};

use cascade_protocol::flv::{self, AvcConfig};
use cascade_protocol::rtmp::client::{ClientEvent, RtmpClient, RtmpTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::LoadtestError;
use crate::figures::FailureReason;
use crate::marker::{self, Marker};
use crate::publish::{PublishOutcome, PublishSettings, unix_micros};
use crate::source::{FPS, Media};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `media` to the `rtmp://` URL(s) until the duration ends (or, without
/// `reconnect`, the connection fails).
pub async fn run(
    settings: &PublishSettings,
    media: &Media,
) -> Result<PublishOutcome, LoadtestError> {
    let deadline = Instant::now() + settings.duration;
    let mut outcome = PublishOutcome::default();
    let mut frame_number = 0u64;
    let mut attempts = 0u32;
    while Instant::now() < deadline {
        attempts += 1;
        outcome.sessions += 1;
        let url = settings.urls.for_attempt(attempts);
        let target = RtmpTarget::parse(url).map_err(|e| LoadtestError::Config(e.to_string()))?;
        match publish_once(&target, media, deadline, &mut frame_number).await {
            Ok(()) => break,
            Err(why) => {
                tracing::warn!(%why, %url, "RTMP publish failed");
                outcome.failures.push(FailureReason::BadAnswer);
                if !settings.reconnect {
                    break;
                }
                attempts = attempts.min(10);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts))).await;
            }
        }
    }
    outcome.frames_sent = frame_number;
    Ok(outcome)
}

async fn write(socket: &mut TcpStream, client: &mut RtmpClient) -> Result<(), String> {
    let out = client.take_outbound();
    if out.is_empty() {
        return Ok(());
    }
    socket
        .write_all(&out)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

async fn publish_once(
    target: &RtmpTarget,
    media: &Media,
    deadline: Instant,
    frame_number: &mut u64,
) -> Result<(), String> {
    let address = format!("{}:{}", target.host, target.port);
    let mut socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = socket.set_nodelay(true);
    let mut client = RtmpClient::new(target.clone());
    let mut buffer = vec![0u8; 16 * 1024];
    while !client.is_publishing() {
        write(&mut socket, &mut client).await?;
        let n = tokio::time::timeout(CONNECT_TIMEOUT, socket.read(&mut buffer))
            .await
            .map_err(|_| "the server did not accept the publication in time".to_owned())?
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        client
            .handle_input(&buffer[..n])
            .map_err(|e| e.to_string())?;
        if let Some(ClientEvent::Refused(why)) = client.poll_event() {
            return Err(format!("refused: {why}"));
        }
    }
    let interval = Duration::from_micros(1_000_000 / u64::from(FPS));
    let start = Instant::now();
    let first = *frame_number;
    let mut config: Option<AvcConfig> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let due = first + (now - start).as_micros() as u64 / interval.as_micros() as u64 + 1;
        while *frame_number < due {
            let index = ((*frame_number - first) % media.video.len() as u64) as usize;
            let frame = &media.video[index];
            let stamped = marker::stamp(
                &frame.data,
                Marker {
                    captured_unix_us: unix_micros(),
                    frame: *frame_number,
                },
            );
            let ms = ((*frame_number - first) * 1000 / u64::from(FPS)) as u32;
            if frame.keyframe
                && let Some(found) = AvcConfig::from_annex_b(&stamped)
                && config.as_ref() != Some(&found)
            {
                client.send_video(ms, flv::avc_sequence_header_tag(&found));
                config = Some(found);
            }
            client.send_video(ms, flv::avc_frame_tag(&stamped, frame.keyframe, 0));
            *frame_number += 1;
        }
        write(&mut socket, &mut client).await?;
        let next = start + interval * (*frame_number - first) as u32;
        // Keep reading what the server says (acknowledgements, a refusal).
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            read = socket.read(&mut buffer) => {
                let n = read.map_err(|e| format!("read failed: {e}"))?;
                if n == 0 {
                    return Err("the server closed the connection".into());
                }
                client.handle_input(&buffer[..n]).map_err(|e| e.to_string())?;
                if let Some(ClientEvent::Refused(why)) = client.poll_event() {
                    return Err(format!("refused: {why}"));
                }
            }
        }
    }
}
