//! `cascade-loadtest hls`: N LL-HLS players, each doing what hls.js does at the live edge:
//! the multivariant playlist, the first variant's media playlist and init segment, then a
//! blocking playlist reload for the part after the newest it has (`_HLS_msn`, `_HLS_part`)
//! and a fetch of every part the answer lists after it.
//!
//! Figures (the WebRTC mode's report and gates): join time (start to the first part's
//! bytes), latency from the capture-time marker of each part's newest frame to the part's
//! arrival (glass to player, for parts at the live edge: not those fetched to catch up; the
//! publisher must stamp markers, as `cascade-loadtest publish` does; a player shows a frame
//! about PART-HOLD-BACK after that), latency from the program date time of the part's end
//! to its arrival (the packager's and network's share, measured for any source), stalls (a wait between
//! two parts longer than `--stall-after`), parts missed in the numbering, requests and
//! their rate, and failed requests by status.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::figures::{FailureReason, Totals};
use crate::marker;

/// One part a media playlist lists.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedPart {
    pub msn: u64,
    pub index: u64,
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Wall clock of its first frame (Unix ms), from the segment's program date time and the
    /// parts before it.
    pub start_ms: Option<f64>,
}

/// What a player needs of a media playlist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LivePlaylist {
    pub map_uri: Option<String>,
    pub parts: Vec<ListedPart>,
    /// The newest part that starts with a keyframe: where a player joins.
    pub join_at: Option<(u64, u64)>,
}

/// Reads a media playlist: its parts in order, numbered from `EXT-X-MEDIA-SEQUENCE`.
pub fn parse_media(text: &str) -> LivePlaylist {
    let mut playlist = LivePlaylist::default();
    let mut msn = 0;
    let mut index = 0;
    let mut segment_start: Option<f64> = None;
    let mut offset = 0.0;
    let mut last_segment_end: Option<f64> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            playlist.map_uri = attribute(v, "URI");
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            segment_start = parse_date_time_ms(v.trim());
            offset = 0.0;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let duration: f64 = attribute(v, "DURATION")
                .and_then(|d| d.parse().ok())
                .unwrap_or(0.0);
            let start = segment_start.or(last_segment_end);
            if let Some(uri) = attribute(v, "URI") {
                if v.contains("INDEPENDENT=YES") {
                    playlist.join_at = Some((msn, index));
                }
                playlist.parts.push(ListedPart {
                    msn,
                    index,
                    uri,
                    duration,
                    start_ms: start.map(|s| s + offset * 1000.0),
                });
            }
            offset += duration;
            index += 1;
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            let duration: f64 = v
                .trim_end_matches(',')
                .split(',')
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or(0.0);
            last_segment_end = segment_start.map(|s| s + duration * 1000.0);
            segment_start = None;
            offset = 0.0;
            msn += 1;
            index = 0;
        }
    }
    playlist
}

/// The first variant of a multivariant playlist (`None` for a media playlist).
pub fn first_variant(text: &str) -> Option<String> {
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#EXT-X-STREAM-INF") {
            return lines
                .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(str::to_owned);
        }
    }
    None
}

fn attribute(list: &str, name: &str) -> Option<String> {
    let start = list.find(&format!("{name}="))? + name.len() + 1;
    let rest = &list[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().map(str::to_owned),
        None => rest.split(',').next().map(str::to_owned),
    }
}

/// `2026-12-01T14:24:10.181Z` as Unix milliseconds.
fn parse_date_time_ms(text: &str) -> Option<f64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hour, minute) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let second: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3600 + minute * 60) as f64 + second) * 1000.0)
}

/// Resolves `uri` against the URL of the playlist that named it.
pub fn resolve(base: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.to_owned();
    }
    let dir = base.split('?').next().unwrap_or(base);
    let dir = dir.rsplit_once('/').map_or(dir, |(d, _)| d);
    format!("{dir}/{uri}")
}

/// How a player behaves.
#[derive(Debug, Clone)]
pub struct PlayerSettings {
    pub url: String,
    pub token: Option<String>,
    pub length: Duration,
    pub stall_after: Duration,
}

/// What one player counted, merged into the run's totals.
#[derive(Debug, Default)]
pub struct PlayerFigures {
    pub requests: u64,
    pub pdt_latency_us: Vec<u64>,
}

/// Plays `settings.url` for its length; counts into `totals`.
pub async fn play(settings: &PlayerSettings, totals: &mut Totals, figures: &mut PlayerFigures) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
    let started = Instant::now();
    let deadline = started + settings.length;
    totals.sessions_started += 1;
    let get = |url: String| {
        let client = client.clone();
        let token = settings.token.clone();
        async move {
            let mut request = client.get(&url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    r.bytes().await.map_err(|_| FailureReason::SessionLost)
                }
                Ok(r) => Err(FailureReason::Http(r.status().as_u16())),
                Err(e) if e.is_timeout() => Err(FailureReason::HttpTimeout),
                Err(_) => Err(FailureReason::Unreachable),
            }
        }
    };
    macro_rules! fetch {
        ($url:expr) => {{
            figures.requests += 1;
            match get($url).await {
                Ok(bytes) => bytes,
                Err(reason) => {
                    totals.fail(reason);
                    return;
                }
            }
        }};
    }
    let first = fetch!(settings.url.clone());
    let text = String::from_utf8_lossy(&first).into_owned();
    let (media_url, text) = match first_variant(&text) {
        Some(variant) => {
            let url = resolve(&settings.url, &variant);
            let body = fetch!(url.clone());
            (url, String::from_utf8_lossy(&body).into_owned())
        }
        None => (settings.url.clone(), text),
    };
    let playlist = parse_media(&text);
    if let Some(map) = &playlist.map_uri {
        let _init: Bytes = fetch!(resolve(&media_url, map));
    }
    let Some(mut next) = playlist.join_at else {
        totals.fail(FailureReason::NoMedia);
        return;
    };
    let mut joined = false;
    let mut last_arrival: Option<Instant> = None;
    let mut last_part: Option<(u64, u64)> = None;
    while Instant::now() < deadline {
        let blocking = format!(
            "{media_url}{}_HLS_msn={}&_HLS_part={}",
            if media_url.contains('?') { '&' } else { '?' },
            next.0,
            next.1
        );
        figures.requests += 1;
        let text = match get(blocking).await {
            Ok(body) => String::from_utf8_lossy(&body).into_owned(),
            Err(reason) => {
                totals.fail(reason);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let listed = parse_media(&text).parts;
        let newest = listed.last().map(|p| (p.msn, p.index));
        for part in listed {
            if (part.msn, part.index) < next {
                continue;
            }
            // Latency is measured at the live edge: parts fetched to catch up (after joining,
            // or after a stall) are older by construction.
            let at_live_edge = newest == Some((part.msn, part.index));
            figures.requests += 1;
            let bytes = match get(resolve(&media_url, &part.uri)).await {
                Ok(bytes) => bytes,
                Err(reason) => {
                    totals.fail(reason);
                    break;
                }
            };
            let now = Instant::now();
            let now_unix_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            if !joined {
                joined = true;
                totals.sessions_joined += 1;
                Totals::record(
                    &mut totals.join_us,
                    now.duration_since(started).as_micros() as u64,
                );
            }
            if at_live_edge
                && let Some(newest) = marker::read_all(&bytes).into_iter().max_by_key(|m| m.frame)
            {
                Totals::record(
                    &mut totals.latency_us,
                    now_unix_us.saturating_sub(newest.captured_unix_us),
                );
            }
            if at_live_edge && let Some(start_ms) = part.start_ms {
                let end_us = ((start_ms + part.duration * 1000.0) * 1000.0) as u64;
                figures
                    .pdt_latency_us
                    .push(now_unix_us.saturating_sub(end_us));
            }
            // Parts are numbered within their segment: the next is the following index, or
            // the next segment's first.
            let expected = match last_part {
                Some((m, i)) if part.msn == m => part.index.saturating_sub(i),
                Some((m, _)) if part.msn > m => 1 + part.index,
                _ => 1,
            };
            totals.frames_expected += expected.max(1);
            totals.frames_received += 1;
            totals.bytes += bytes.len() as u64;
            if let Some(previous) = last_arrival {
                let gap = now.duration_since(previous);
                if gap > settings.stall_after {
                    totals.freezes += 1;
                    totals.freeze_total += gap;
                }
            }
            last_arrival = Some(now);
            last_part = Some((part.msn, part.index));
            next = (part.msn, part.index + 1);
        }
    }
    if joined {
        totals.viewer_time += deadline.saturating_duration_since(started);
    } else {
        totals.fail(FailureReason::NoMedia);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAYLIST: &str = "#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=1.000
#EXT-X-PART-INF:PART-TARGET=0.33333
#EXT-X-MEDIA-SEQUENCE:7
#EXT-X-MAP:URI=\"init-0a1b2c3d.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-12-01T14:24:10.000Z
#EXT-X-PART:DURATION=1.00000,URI=\"part7.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=1.00000,URI=\"part7.1.m4s\"
#EXTINF:2.00000,
seg7.m4s
#EXT-X-PART:DURATION=0.33333,URI=\"part8.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.33333,URI=\"part8.1.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part8.2.m4s\"
";

    #[test]
    fn parts_are_numbered_and_timed_from_the_program_date_time() {
        let p = parse_media(PLAYLIST);
        assert_eq!(p.map_uri.as_deref(), Some("init-0a1b2c3d.mp4"));
        let numbers: Vec<(u64, u64)> = p.parts.iter().map(|x| (x.msn, x.index)).collect();
        assert_eq!(numbers, vec![(7, 0), (7, 1), (8, 0), (8, 1)]);
        assert_eq!(p.join_at, Some((8, 0)));
        let t0 = parse_date_time_ms("2026-12-01T14:24:10.000Z").unwrap();
        assert_eq!(p.parts[1].start_ms, Some(t0 + 1000.0));
        assert_eq!(
            p.parts[2].start_ms,
            Some(t0 + 2000.0),
            "the open segment follows the last"
        );
        assert!((p.parts[3].start_ms.unwrap() - (t0 + 2333.33)).abs() < 0.01);
    }

    #[test]
    fn dates_and_uris_are_read_as_players_read_them() {
        assert_eq!(parse_date_time_ms("1970-01-01T00:00:01.500Z"), Some(1500.0));
        assert_eq!(
            parse_date_time_ms("2026-12-01T00:00:00.000Z"),
            Some(1_796_083_200_000.0)
        );
        assert_eq!(
            resolve("http://a/hls/s/index.m3u8?token=x", "source/index.m3u8"),
            "http://a/hls/s/source/index.m3u8"
        );
        assert_eq!(
            first_variant("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nsource/index.m3u8\n").as_deref(),
            Some("source/index.m3u8")
        );
        assert_eq!(first_variant(PLAYLIST), None);
    }
}
