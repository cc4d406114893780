//! Webhooks: the node tells an integrator's receivers what happened (`stream.started`,
//! `stream.ended` with its audience), each event a signed JSON POST ([`signature`]) that is
//! written to disk first ([`outbox`]) and retried with backoff until the receiver answers
//! 2xx ([`delivery`]), in order per receiver. Emitting never waits: the stream actors hand
//! the event to a writer thread, and each receiver has its own delivery task, so a slow or
//! dead receiver delays neither media nor the other receivers.
//!
//! ```text
//!  emit ─try_send─▶ writer thread ─push (fsync)─▶ webhooks.redb ◀─first/remove─ delivery task
//!                                   └──wake──────────────────────────────────▶  per receiver ─POST─▶ URL
//! ```

pub mod delivery;
pub mod on_publish;
pub mod outbox;
pub mod signature;

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Events waiting to be written beyond this are dropped (and counted): the writer is far
/// behind the disk.
const WRITE_QUEUE: usize = 4096;

/// The webhook settings of a node.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// Receivers (`--webhook-url`, repeatable).
    pub urls: Vec<String>,
    /// HMAC key of the `Cascade-Signature` header (`--webhook-secret`).
    pub secret: Option<String>,
}

/// What the API shows of one receiver.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReceiverStatus {
    /// Its number, the `receiver` label of its metrics.
    pub receiver: u32,
    /// Its URL.
    pub url: String,
    /// Events waiting for it.
    pub pending: u64,
    /// How its deliveries went.
    #[serde(flatten)]
    pub deliveries: Deliveries,
}

/// How a receiver's deliveries went, kept by its delivery task.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Deliveries {
    /// Events it took since the node started.
    pub delivered: u64,
    /// Failed attempts in a row (0 while it answers).
    pub failing_attempts: u32,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// When an event last reached it, seconds since the epoch.
    pub last_delivered_unix: Option<f64>,
}

struct Receiver {
    index: u32,
    url: String,
    wake: Notify,
    /// Events in its queue: counted at start, then kept by the writer and the delivery task.
    pending: std::sync::atomic::AtomicU64,
    deliveries: Mutex<Deliveries>,
}

impl Receiver {
    fn deliveries(&self) -> std::sync::MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `added` events to the count (negative: taken or dropped) and shows it.
    fn count_pending(&self, added: i64) -> u64 {
        use std::sync::atomic::Ordering;
        let before = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(added))
            })
            .unwrap_or(0);
        let now = before.saturating_add_signed(added);
        metrics::gauge!("cascade_webhook_backlog", "receiver" => self.index.to_string())
            .set(now as f64);
        now
    }
}

struct Inner {
    node: String,
    secret: Option<Vec<u8>>,
    receivers: Vec<Arc<Receiver>>,
    writes: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
}

/// The node's webhooks. Cheap to clone; without receivers every call does nothing.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl Webhooks {
    /// Opens the outbox in `data_dir` and starts the writer and one delivery task per
    /// receiver (events left from before a restart go out first).
    pub fn start(
        config: &WebhookConfig,
        data_dir: &Path,
        node: String,
    ) -> Result<Webhooks, crate::NodeError> {
        let receivers: Vec<Arc<Receiver>> = config
            .urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Arc::new(Receiver {
                    index: i as u32,
                    url: url.clone(),
                    wake: Notify::new(),
                    pending: std::sync::atomic::AtomicU64::new(0),
                    deliveries: Mutex::default(),
                })
            })
            .collect();
        let mut inner = Inner {
            node,
            secret: config.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            receivers,
            writes: None,
        };
        if !inner.receivers.is_empty() {
            let outbox = outbox::Outbox::open(data_dir, outbox::MAX_QUEUED).map_err(|e| {
                crate::NodeError::Config {
                    key: "webhook-url",
                    message: format!(
                        "cannot open the webhook outbox in {}: {e}",
                        data_dir.display()
                    ),
                }
            })?;
            for receiver in &inner.receivers {
                let left = outbox.len(receiver.index).unwrap_or(0);
                receiver.count_pending(left as i64);
                if left > 0 {
                    tracing::info!(
                        receiver = receiver.index,
                        pending = left,
                        "webhook events left from before the restart go out first"
                    );
                }
            }
            let (writes, queued) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
            inner.writes = Some(writes);
            let receivers = inner.receivers.clone();
            let writer_outbox = outbox.clone();
            std::thread::Builder::new()
                .name("webhook-writer".into())
                .spawn(move || write_events(writer_outbox, queued, receivers))
                .map_err(|e| crate::NodeError::Config {
                    key: "webhook-url",
                    message: format!("cannot start the webhook writer: {e}"),
                })?;
            let client = delivery::client();
            for receiver in &inner.receivers {
                tokio::spawn(delivery::deliver(
                    receiver.clone(),
                    outbox.clone(),
                    client.clone(),
                    inner.secret.clone(),
                ));
            }
        }
        Ok(Webhooks {
            inner: Arc::new(inner),
        })
    }

    /// Queues event `kind` with `data` for every receiver; never waits.
    pub fn emit(&self, kind: &'static str, data: serde_json::Value) {
        let Some(writes) = &self.inner.writes else {
            return;
        };
        let body = serde_json::json!({
            "id": format!("{:032x}", rand::random::<u128>()),
            "type": kind,
            "at": cascade_protocol::clock::unix_seconds(),
            "node": self.inner.node,
            "data": data,
        });
        let Ok(body) = serde_json::to_vec(&body) else {
            return;
        };
        if writes.try_send(body).is_err() {
            metrics::counter!("cascade_webhook_dropped_total", "reason" => "write_queue_full")
                .increment(1);
            tracing::warn!(
                event = kind,
                "webhook event dropped: the outbox writer is behind"
            );
        }
    }

    /// Every receiver's delivery state.
    pub fn status(&self) -> Vec<ReceiverStatus> {
        self.inner
            .receivers
            .iter()
            .map(|r| ReceiverStatus {
                receiver: r.index,
                url: r.url.clone(),
                pending: r.pending.load(std::sync::atomic::Ordering::Relaxed),
                deliveries: r.deliveries().clone(),
            })
            .collect()
    }

    /// Whether the node has receivers.
    pub fn is_enabled(&self) -> bool {
        !self.inner.receivers.is_empty()
    }
}

/// The writer thread: each event to disk for every receiver, then a wake-up for each.
fn write_events(
    outbox: outbox::Outbox,
    queued: std::sync::mpsc::Receiver<Vec<u8>>,
    receivers: Vec<Arc<Receiver>>,
) {
    while let Ok(body) = queued.recv() {
        match outbox.push(receivers.len() as u32, &body) {
            Ok(dropped) => {
                for (receiver, dropped) in receivers.iter().zip(dropped) {
                    receiver.count_pending(1 - dropped as i64);
                    if dropped > 0 {
                        metrics::counter!("cascade_webhook_dropped_total", "reason" => "outbox_full")
                            .increment(dropped);
                        tracing::warn!(
                            receiver = receiver.index,
                            dropped,
                            "webhook outbox full: the oldest events of this receiver were dropped"
                        );
                    }
                    receiver.wake.notify_one();
                }
            }
            Err(e) => {
                metrics::counter!("cascade_webhook_dropped_total", "reason" => "outbox_error")
                    .increment(1);
                tracing::error!(error = %e, "webhook event not written to the outbox");
            }
        }
    }
}
