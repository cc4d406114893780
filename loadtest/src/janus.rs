//! Janus's HTTP API as a viewer's signalling, to measure Janus's streaming plugin with the
//! same viewers as Cascade (`scripts/bench-janus.sh`, `docs/benchmarks.md`). There the
//! server offers and the viewer answers: create a session, attach the streaming plugin, ask
//! to `watch` a mountpoint, take the offer from the session's long poll, answer with
//! `start`. The session is kept alive while the viewer runs (Janus ends idle sessions after
//! 60 s).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::crypto::dtls::DtlsCert;
use str0m::media::Mid;

use crate::figures::FailureReason;
use crate::peer::Peer;

/// Janus's default session timeout is 60 s: a keepalive well inside it.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);

/// A viewer's Janus session, negotiated.
pub struct Joined {
    pub peer: Peer,
    pub video_mid: Option<Mid>,
    /// Ends the keepalive (and with it the Janus session) when dropped.
    pub keepalive: tokio::task::JoinHandle<()>,
}

/// Watches `mountpoint` through the Janus API at `base` (e.g. `http://127.0.0.1:8088/janus`).
pub async fn join(
    http: &reqwest::Client,
    base: &str,
    mountpoint: u64,
    local_ip: std::net::IpAddr,
    cert: &DtlsCert,
    deadline: Instant,
) -> Result<Joined, FailureReason> {
    let base = base.trim_end_matches('/');
    let session = post(http, base, json!({"janus": "create"})).await?;
    let session_url = format!("{base}/{}", id_of(&session)?);
    let attached = post(
        http,
        &session_url,
        json!({"janus": "attach", "plugin": "janus.plugin.streaming"}),
    )
    .await?;
    let handle_url = format!("{session_url}/{}", id_of(&attached)?);
    post(
        http,
        &handle_url,
        json!({"janus": "message", "body": {"request": "watch", "id": mountpoint}}),
    )
    .await?;
    let offer = loop {
        if Instant::now() >= deadline {
            return Err(FailureReason::HttpTimeout);
        }
        let event = long_poll(http, &session_url).await?;
        if let Some(sdp) = event["jsep"]["sdp"].as_str() {
            break sdp.to_owned();
        }
        if let Some(error) = event["plugindata"]["data"]["error"].as_str() {
            tracing::warn!(%error, "Janus refused to watch the mountpoint");
            return Err(FailureReason::BadAnswer);
        }
    };
    tracing::debug!(%offer, "Janus offered");
    let (peer, answer) = Peer::answering(local_ip, cert, &offer, true).await?;
    tracing::debug!(%answer, "answering Janus");
    post(
        http,
        &handle_url,
        json!({
            "janus": "message",
            "body": {"request": "start"},
            "jsep": {"type": "answer", "sdp": answer},
        }),
    )
    .await?;
    // Our candidates are all in the answer: no trickle to wait for.
    post(
        http,
        &handle_url,
        json!({"janus": "trickle", "candidate": {"completed": true}}),
    )
    .await?;
    let keepalive = tokio::spawn(keep_alive(http.clone(), session_url));
    Ok(Joined {
        peer,
        video_mid: video_mid(&offer),
        keepalive,
    })
}

/// The `a=mid` of the offer's video section.
pub fn video_mid(sdp: &str) -> Option<Mid> {
    let mut in_video = false;
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            in_video = media.starts_with("video");
        } else if in_video && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(Mid::from(mid.trim()));
        }
    }
    None
}

async fn keep_alive(http: reqwest::Client, session_url: String) {
    loop {
        tokio::time::sleep(KEEPALIVE_EVERY).await;
        if post(&http, &session_url, json!({"janus": "keepalive"}))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// POSTs one API request (with a fresh transaction id); Janus's answer, unless it is an
/// error.
async fn post(http: &reqwest::Client, url: &str, mut body: Value) -> Result<Value, FailureReason> {
    static TRANSACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let transaction = TRANSACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    body["transaction"] = json!(transaction.to_string());
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| crate::signaling::failure_of(url, &e))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let answer: Value = serde_json::from_str(&text).map_err(|_| FailureReason::Http(status))?;
    if answer["janus"] == "error" {
        tracing::debug!(%url, answer = %text, "Janus answered an error");
        return Err(FailureReason::Http(status.max(500)));
    }
    Ok(answer)
}

/// One event of the session (Janus answers a long poll after at most 30 s, with a
/// keepalive when nothing happened).
async fn long_poll(http: &reqwest::Client, session_url: &str) -> Result<Value, FailureReason> {
    let response = http
        .get(format!("{session_url}?maxev=1"))
        .send()
        .await
        .map_err(|e| crate::signaling::failure_of(session_url, &e))?;
    let text = response.text().await.unwrap_or_default();
    let event: Value = serde_json::from_str(&text).map_err(|_| FailureReason::BadAnswer)?;
    // `maxev=1` may still answer with an array of one.
    Ok(match event {
        Value::Array(mut events) if !events.is_empty() => events.swap_remove(0),
        event => event,
    })
}

fn id_of(answer: &Value) -> Result<u64, FailureReason> {
    answer["data"]["id"]
        .as_u64()
        .ok_or(FailureReason::BadAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_video_mid_is_read_from_the_offers_video_section() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=mid:v\r\n";
        assert_eq!(video_mid(offer), Some(Mid::from("v")));
        assert_eq!(video_mid("v=0\r\nm=audio 9 X 111\r\na=mid:a\r\n"), None);
    }
}
