//! An edge's HLS cache: what players ask this node for, fetched once from the stream's
//! packager over the cluster's QUIC and shared.
//!
//! **Collapsing.** Identical requests (same path, same `_HLS_msn`, `_HLS_part`, `_HLS_skip`)
//! share one entry: the first runs the fetch, the others wait on it, and all are answered
//! together, so a thousand players blocked on the next part cost the packager one request.
//! An answer is kept as long as its `Cache-Control` says (at most [`KEEP_MAX`]).
//!
//! **Failover.** Upstreams are tried in order (the active packager, then its standby). A
//! connection that has received nothing for [`SILENT_LIMIT`] (keep-alives come every
//! 500 ms) counts as dead: the request moves to the next upstream at once rather than
//! waiting out QUIC's idle timeout, and the dead one is tried last for a while.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cascade_protocol::hls::fetch::{MAX_BODY, ResponseHead, cache_seconds, encode_request};
use cascade_roles::quic::{ALPN_HLS, NodeEndpoint};
use tokio::sync::OnceCell;

/// The longest an edge keeps an answer, whatever its `Cache-Control` says.
const KEEP_MAX: Duration = Duration::from_secs(60);
/// A connection that has received nothing this long is taken for dead.
const SILENT_LIMIT: Duration = Duration::from_millis(1200);
/// How long an upstream found dead is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);
/// Longest wait for an answer (a blocking reload is held up to 6 s upstream).
const FETCH_LIMIT: Duration = Duration::from_secs(8);
/// How often a standby packager is asked for a stream, to keep it packaging.
const WARM_EVERY: Duration = Duration::from_secs(5);

/// One answer, as the packager gave it.
#[derive(Debug)]
pub struct Fetched {
    /// Status, content type, cache control.
    pub head: ResponseHead,
    /// The head's `Content-Type` and `Cache-Control`, ready to send (made once, not per
    /// request).
    pub content_type: Option<axum::http::HeaderValue>,
    pub cache_control: Option<axum::http::HeaderValue>,
    /// The body.
    pub body: Bytes,
    /// Until when it may be served from here.
    expires: Instant,
}

impl Fetched {
    fn new(head: ResponseHead, body: Bytes, keep: Duration) -> Fetched {
        let value = |text: &str| axum::http::HeaderValue::from_str(text).ok();
        Fetched {
            content_type: value(&head.content_type),
            cache_control: value(&head.cache_control),
            head,
            body,
            expires: Instant::now() + keep,
        }
    }
}

#[derive(Default)]
struct Entry {
    answer: OnceCell<Arc<Fetched>>,
}

impl Entry {
    fn usable(&self, now: Instant) -> bool {
        self.answer.get().is_none_or(|a| a.expires > now)
    }
}

/// How a request was answered, for `cascade_hls_edge_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache.
    Hit = 0,
    /// By waiting for another request's fetch.
    Collapsed = 1,
    /// By its own fetch upstream.
    Fetched = 2,
}

impl Served {
    fn label(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Collapsed => "collapsed",
            Served::Fetched => "fetched",
        }
    }
}

/// This node's HLS edge cache and its connections to packagers. Cheap to share.
pub struct HlsEdge {
    endpoint: NodeEndpoint,
    connections: tokio::sync::Mutex<HashMap<SocketAddr, quinn::Connection>>,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
    /// When each (stream, standby) was last warmed, by a hash of the pair: looked up on
    /// every request, so without building a key.
    warmed: Mutex<HashMap<u64, Instant>>,
    /// `cascade_hls_edge_requests_total` by [`Served`], registered once: every answer counts.
    served: [metrics::Counter; 3],
}

impl HlsEdge {
    /// An edge fetching through `endpoint`; sweeps expired answers in the background.
    pub fn new(endpoint: NodeEndpoint) -> Arc<Self> {
        let served = [Served::Hit, Served::Collapsed, Served::Fetched].map(|served| {
            metrics::counter!("cascade_hls_edge_requests_total", "result" => served.label())
        });
        let edge = Arc::new(HlsEdge {
            endpoint,
            connections: tokio::sync::Mutex::default(),
            cache: Mutex::default(),
            suspects: Mutex::default(),
            warmed: Mutex::default(),
            served,
        });
        // Listed from the start (at zero), so that dashboards and alerts find them.
        for counter in &edge.served {
            counter.increment(0);
        }
        metrics::counter!("cascade_hls_edge_upstream_fetches_total").increment(0);
        metrics::counter!("cascade_hls_edge_upstream_failures_total").increment(0);
        metrics::counter!("cascade_hls_upstream_requests_total", "status" => "200").increment(0);
        let weak = Arc::downgrade(&edge);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(edge) = weak.upgrade() else { return };
                let now = Instant::now();
                lock(&edge.cache).retain(|_, e| e.usable(now));
                lock(&edge.suspects).retain(|_, since| now.duration_since(*since) < SUSPECT_FOR);
                lock(&edge.warmed).retain(|_, at| now.duration_since(*at) < WARM_EVERY * 2);
            }
        });
        edge
    }

    /// The answer to `key` (a path and its HLS query), from the cache, from a fetch
    /// already under way, or fetched from `upstreams` in order.
    pub async fn get(&self, key: &str, upstreams: &[SocketAddr]) -> (Arc<Fetched>, Served) {
        let now = Instant::now();
        let entry = {
            let mut cache = lock(&self.cache);
            match cache.get(key).filter(|e| e.usable(now)) {
                Some(entry) => Arc::clone(entry),
                None => {
                    let entry = Arc::new(Entry::default());
                    cache.insert(key.to_owned(), Arc::clone(&entry));
                    entry
                }
            }
        };
        if let Some(answer) = entry.answer.get() {
            return self.count(Arc::clone(answer), Served::Hit);
        }
        let mut ran = false;
        let answer = entry
            .answer
            .get_or_init(|| {
                ran = true;
                self.fetch_any(key, upstreams)
            })
            .await;
        let served = if ran {
            Served::Fetched
        } else {
            Served::Collapsed
        };
        self.count(Arc::clone(answer), served)
    }

    fn count(&self, answer: Arc<Fetched>, served: Served) -> (Arc<Fetched>, Served) {
        self.served[served as usize].increment(1);
        (answer, served)
    }

    /// Asks a standby packager for `stream` now and then, so that it packages what the
    /// active one does and can take over without a cold start.
    pub fn warm(self: &Arc<Self>, stream: &str, standby: SocketAddr) {
        let key = {
            use std::hash::{BuildHasher, Hash, Hasher};
            static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
                std::sync::OnceLock::new();
            let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
            stream.hash(&mut hasher);
            standby.hash(&mut hasher);
            hasher.finish()
        };
        {
            let mut warmed = lock(&self.warmed);
            if warmed.get(&key).is_some_and(|at| at.elapsed() < WARM_EVERY) {
                return;
            }
            warmed.insert(key, Instant::now());
        }
        let this = Arc::clone(self);
        let path = format!("/hls/{stream}/index.m3u8");
        tokio::spawn(async move {
            if let Err(e) = this.fetch_from(standby, &path).await {
                tracing::debug!(%standby, error = %e, "the standby packager did not answer a warm-up");
            }
        });
    }

    /// Fetches `key` from the first upstream that answers; a `502` when none does.
    async fn fetch_any(&self, key: &str, upstreams: &[SocketAddr]) -> Arc<Fetched> {
        let mut order: Vec<SocketAddr> = upstreams.to_vec();
        {
            let suspects = lock(&self.suspects);
            order.sort_by_key(|a| suspects.contains_key(a));
        }
        let mut last_error = String::from("no packager to ask");
        for upstream in order {
            metrics::counter!("cascade_hls_edge_upstream_fetches_total").increment(1);
            match self.fetch_from(upstream, key).await {
                Ok(fetched) => return Arc::new(fetched),
                Err(e) => {
                    metrics::counter!("cascade_hls_edge_upstream_failures_total").increment(1);
                    tracing::warn!(%upstream, key, error = %e, "packager fetch failed; trying the next one");
                    lock(&self.suspects).insert(upstream, Instant::now());
                    last_error = e;
                }
            }
        }
        let message = serde_json::json!({
            "error": "upstream",
            "message": format!("no packager answered: {last_error}"),
        });
        Arc::new(Fetched::new(
            ResponseHead {
                status: 502,
                content_type: "application/json".into(),
                cache_control: "max-age=1".into(),
            },
            Bytes::from(message.to_string()),
            Duration::from_secs(1),
        ))
    }

    /// One fetch from one packager, abandoned when its connection goes silent.
    pub async fn fetch_from(&self, upstream: SocketAddr, key: &str) -> Result<Fetched, String> {
        let request = encode_request(key).ok_or("request too long")?;
        let connection = self.connection(upstream).await?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&request).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(MAX_BODY + 1024)
                .await
                .map_err(|e| e.to_string())
        };
        let bytes = tokio::select! {
            result = tokio::time::timeout(FETCH_LIMIT, exchange) => {
                result.map_err(|_| format!("no answer within {FETCH_LIMIT:?}"))??
            }
            () = silent(&connection) => {
                connection.close(0u32.into(), b"silent");
                return Err(format!("the connection was silent for {SILENT_LIMIT:?}"));
            }
        };
        let (head, body) = ResponseHead::decode(&bytes).map_err(|e| e.to_string())?;
        let keep =
            Duration::from_secs(cache_seconds(head.status, &head.cache_control)).min(KEEP_MAX);
        Ok(Fetched::new(head, Bytes::copy_from_slice(body), keep))
    }

    async fn connection(&self, upstream: SocketAddr) -> Result<quinn::Connection, String> {
        let mut connections = self.connections.lock().await;
        if let Some(c) = connections.get(&upstream)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connection =
            tokio::time::timeout(SILENT_LIMIT * 2, self.endpoint.dial(upstream, ALPN_HLS))
                .await
                .map_err(|_| "no QUIC handshake".to_owned())?
                .map_err(|e| e.to_string())?;
        connections.insert(upstream, connection.clone());
        Ok(connection)
    }
}

/// Aligns a standby packager on this node to the stream's active packager, asked over
/// QUIC for where each rendition is.
pub struct StandbyAligner {
    /// Who packages what.
    pub cluster: crate::cluster::Cluster,
    /// Fetches from the active packager.
    pub edge: Arc<HlsEdge>,
}

impl cascade_roles::packager::Aligner for StandbyAligner {
    fn alignment(
        &self,
        stream: &cascade_protocol::StreamId,
        rendition: &str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Option<cascade_protocol::hls::packager::Alignment>>
                + Send,
        >,
    > {
        let active = self.cluster.active_packager_for_standby(stream);
        let edge = Arc::clone(&self.edge);
        let path = format!("/hls/{stream}/{rendition}/alignment");
        Box::pin(async move {
            // The active packager may have just started this rendition: ask a few times.
            for _ in 0..8 {
                let fetched = edge.fetch_from(active?, &path).await.ok()?;
                if fetched.head.status == 200 {
                    let text = std::str::from_utf8(&fetched.body).ok()?;
                    let (msn, start) = text.split_once(' ')?;
                    return Some(cascade_protocol::hls::packager::Alignment {
                        msn: msn.parse().ok()?,
                        segment_start: start.parse().ok()?,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        })
    }
}

/// Resolves once `connection` has received no datagram for [`SILENT_LIMIT`].
async fn silent(connection: &quinn::Connection) {
    let mut last = connection.stats().udp_rx.datagrams;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = connection.stats().udp_rx.datagrams;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= SILENT_LIMIT {
            return;
        }
    }
}

/// The cache key of a request: its path and the query parameters that change the answer.
pub fn cache_key(path: &str, msn: Option<u64>, part: Option<u64>, skip: Option<&str>) -> String {
    let mut key = path.to_owned();
    let mut sep = '?';
    let mut add = |name: &str, value: String| {
        key.push(sep);
        key.push_str(name);
        key.push('=');
        key.push_str(&value);
        sep = '&';
    };
    if let Some(msn) = msn {
        add("_HLS_msn", msn.to_string());
    }
    if let Some(part) = part {
        add("_HLS_part", part.to_string());
    }
    if let Some(skip) = skip {
        add("_HLS_skip", skip.to_owned());
    }
    key
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_keeps_only_what_changes_the_answer_in_one_order() {
        assert_eq!(
            cache_key("/hls/s/a/index.m3u8", None, None, None),
            "/hls/s/a/index.m3u8"
        );
        assert_eq!(
            cache_key("/hls/s/a/index.m3u8", Some(12), Some(2), Some("YES")),
            "/hls/s/a/index.m3u8?_HLS_msn=12&_HLS_part=2&_HLS_skip=YES"
        );
        assert_eq!(
            cache_key("/hls/s/a/index.m3u8", None, None, Some("v2")),
            "/hls/s/a/index.m3u8?_HLS_skip=v2"
        );
    }
}
