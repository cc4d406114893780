//! An LL-HLS player as hls.js plays a live rendition, reduced to what tests assert on: it
//! asks for the playlist with a blocking reload for the part after the newest it has, fetches
//! every part the answer lists after that, and keeps each part with when it arrived.

use std::time::{Duration, Instant};

use bytes::Bytes;

/// One part a player got.
pub struct PlayedPart {
    /// Media sequence number and index within its segment.
    pub msn: u64,
    pub index: u64,
    /// When its bytes had arrived.
    pub at: Instant,
    pub bytes: Bytes,
}

/// What a player saw.
pub struct Played {
    pub init: Bytes,
    pub parts: Vec<PlayedPart>,
    /// Answers other than `200`, with what was asked.
    pub errors: Vec<String>,
}

impl Played {
    /// The longest wait between two parts arriving.
    pub fn longest_gap(&self) -> Duration {
        self.parts
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// The init segment and every part, as one fragmented MP4 a decoder reads.
    pub fn file(&self) -> Vec<u8> {
        let mut file = self.init.to_vec();
        for part in &self.parts {
            file.extend_from_slice(&part.bytes);
        }
        file
    }
}

/// Every part a media playlist lists, in order: (msn, index, uri).
pub fn listed_parts(playlist: &str) -> Vec<(u64, u64, String)> {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .filter_map(|uri| {
            let (msn, index) = uri
                .strip_prefix("part")?
                .strip_suffix(".m4s")?
                .split_once('.')?;
            Some((msn.parse().ok()?, index.parse().ok()?, uri.to_owned()))
        })
        .collect()
}

/// The URI of a media playlist's initialisation segment.
pub fn map_uri(playlist: &str) -> Option<String> {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|l| l.split('"').next())
        .map(str::to_owned)
}

/// Plays the media playlist at `url` (`…/{rendition}/index.m3u8`) for `length`.
pub async fn play(url: &str, length: Duration) -> Played {
    let client = reqwest::Client::new();
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b).to_owned();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(&path).send().await.ok()?;
            let status = response.status();
            let bytes = response.bytes().await.ok()?;
            Some((status.as_u16(), bytes))
        }
    };
    let mut played = Played {
        init: Bytes::new(),
        parts: Vec::new(),
        errors: Vec::new(),
    };
    let first = get(url.to_owned()).await.expect("the playlist answers");
    assert_eq!(first.0, 200, "{}", String::from_utf8_lossy(&first.1));
    let text = String::from_utf8_lossy(&first.1).into_owned();
    let init = map_uri(&text).expect("an EXT-X-MAP");
    played.init = get(format!("{base}/{init}")).await.expect("init").1;
    // Start at the newest independent part, as a player joining live does.
    let mut next = listed_parts(&text)
        .into_iter()
        .zip(text.lines().filter(|l| l.starts_with("#EXT-X-PART:")))
        .filter(|(_, line)| line.contains("INDEPENDENT=YES"))
        .map(|((m, i, _), _)| (m, i))
        .last()
        .expect("an independent part");
    let deadline = Instant::now() + length;
    while Instant::now() < deadline {
        let blocking = format!("{url}?_HLS_msn={}&_HLS_part={}", next.0, next.1);
        let Some((status, body)) = get(blocking.clone()).await else {
            played.errors.push(format!("{blocking}: no answer"));
            continue;
        };
        if status != 200 {
            played.errors.push(format!("{blocking}: {status}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        for (m, i, uri) in listed_parts(&text) {
            if (m, i) < next {
                continue;
            }
            match get(format!("{base}/{uri}")).await {
                Some((200, bytes)) => {
                    played.parts.push(PlayedPart {
                        msn: m,
                        index: i,
                        at: Instant::now(),
                        bytes,
                    });
                    next = (m, i + 1);
                }
                other => {
                    played
                        .errors
                        .push(format!("{uri}: {:?}", other.map(|(s, _)| s)));
                    break;
                }
            }
        }
    }
    played
}
