//! What happened on this node, kept after it ended: stream runs (from their origin: protocol,
//! times, tracks, peak and total viewers, viewer-minutes, bytes), session summaries
//! (publishers and viewers, every protocol: how long, how it ended, from where) and finished
//! recordings, in `{data dir}/history.redb`, newest first through
//! `GET /api/v1/history/{streams,sessions,recordings}` with filters and paging.
//!
//! Records are JSON objects, the same shape as the webhook's `stream.ended` data, each with a
//! `record_id` unique in the cluster (`{node}:{key}`). Writes are handed to a writer thread (a
//! bounded queue: never a wait on the media path, a full queue drops and counts); each table
//! keeps its newest [`KEPT`] records. With `--mongodb-uri` the writer also queues each record,
//! in the same transaction, for [`mongodb`] to copy out: the queue is on disk, so MongoDB
//! being away (or the node restarting) loses nothing up to the queue's limit.

pub mod mongodb;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Key: when the record ended, in microseconds since the epoch (made unique by the writer).
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_runs");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const RECORDINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("recordings");
/// Records waiting for MongoDB, oldest first: key a sequence number, value the table's
/// [`Table::tag`] byte and then the record's JSON.
const MONGODB_PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("mongodb_pending");

/// Records kept per table; older ones are removed as new ones come.
pub const KEPT: u64 = 100_000;
/// Records waiting for the writer beyond this are dropped.
const WRITE_QUEUE: usize = 4096;
/// The most records one query returns.
pub const MAX_LIMIT: usize = 1000;

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Stream runs.
    Streams,
    /// Session summaries.
    Sessions,
    /// Finished recordings.
    Recordings,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::Streams, Table::Sessions, Table::Recordings];

    fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Table::Streams => RUNS,
            Table::Sessions => SESSIONS,
            Table::Recordings => RECORDINGS,
        }
    }

    /// Its name in the API's path and in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Table::Streams => "streams",
            Table::Sessions => "sessions",
            Table::Recordings => "recordings",
        }
    }

    /// Its MongoDB collection.
    pub fn collection(self) -> &'static str {
        match self {
            Table::Streams => "stream_runs",
            Table::Sessions => "sessions",
            Table::Recordings => "recordings",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Table::Streams => 0,
            Table::Sessions => 1,
            Table::Recordings => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.tag() == tag)
    }

    /// The table a path segment names.
    pub fn from_label(label: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.label() == label)
    }
}

/// A query: every field narrows it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Query {
    /// Exactly this stream.
    pub stream: Option<String>,
    /// `publisher` or `viewer` (sessions).
    pub kind: Option<String>,
    /// Ended at or after, seconds since the epoch.
    pub since: Option<f64>,
    /// Ended before, seconds since the epoch.
    pub until: Option<f64>,
    /// At most this many (default 100, at most [`MAX_LIMIT`]).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<u64>,
}

/// One page, newest first.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page {
    /// The records.
    pub items: Vec<serde_json::Value>,
    /// Pass as `before` for the next (older) page; `None` on the last.
    pub next: Option<u64>,
}

/// The node's history. Cheap to clone.
#[derive(Clone)]
pub struct History {
    db: Arc<Database>,
    writes: std::sync::mpsc::SyncSender<(Table, f64, serde_json::Value)>,
    /// Woken when a record is queued for MongoDB.
    queued_for_mongodb: Arc<tokio::sync::Notify>,
}

/// A record waiting for MongoDB.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its place in the queue.
    pub seq: u64,
    /// Its table.
    pub table: Table,
    /// The record.
    pub record: serde_json::Value,
}

impl History {
    /// Opens (or creates) the history in `dir` and starts its writer; `node` is this node's
    /// id (in every `record_id`). With `mongodb_queue`, every record is also queued for
    /// MongoDB, the oldest dropped beyond that many.
    pub fn open(
        dir: &Path,
        node: &str,
        mongodb_queue: Option<u64>,
    ) -> Result<History, crate::NodeError> {
        let fail = |e: String| crate::NodeError::DataDir {
            path: dir.join("history.redb"),
            source: std::io::Error::other(e),
        };
        let db = Database::create(dir.join("history.redb")).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        for table in [RUNS, SESSIONS, RECORDINGS, MONGODB_PENDING] {
            txn.open_table(table).map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        let db = Arc::new(db);
        // Every series exists from the start: a dashboard shows 0, not "no data".
        for table in Table::ALL {
            metrics::counter!("cascade_history_records_total", "table" => table.label())
                .increment(0);
            metrics::counter!("cascade_history_dropped_total", "table" => table.label())
                .increment(0);
        }
        let (writes, queued) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let history = History {
            db,
            writes,
            queued_for_mongodb: Arc::default(),
        };
        let waiting = history.pending_count().map_err(|e| fail(e.to_string()))?;
        mongodb::register_metrics();
        match mongodb_queue {
            Some(_) => mongodb::count_queued(waiting),
            None if waiting > 0 => tracing::warn!(
                records = waiting,
                "history records wait for MongoDB, but --mongodb-uri is not set: they stay queued until it is"
            ),
            None => {}
        }
        let writer = Writer {
            db: history.db.clone(),
            node: node.to_owned(),
            mongodb_queue,
            wake: history.queued_for_mongodb.clone(),
        };
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || writer.run(queued))
            .map_err(|e| fail(e.to_string()))?;
        Ok(history)
    }

    /// How many records wait for MongoDB.
    pub fn pending_count(&self) -> Result<u64, redb::Error> {
        Ok(self.db.begin_read()?.open_table(MONGODB_PENDING)?.len()?)
    }

    /// The oldest `most` records waiting for MongoDB. A record that cannot be read back is
    /// returned as JSON `null` (the exporter skips it).
    pub fn pending(&self, most: usize) -> Result<Vec<Pending>, redb::Error> {
        let txn = self.db.begin_read()?;
        let queue = txn.open_table(MONGODB_PENDING)?;
        let mut batch = Vec::new();
        for entry in queue.iter()?.take(most) {
            let (seq, value) = entry?;
            let bytes = value.value();
            let table = bytes.first().copied().and_then(Table::from_tag);
            let record = bytes
                .get(1..)
                .and_then(|json| serde_json::from_slice(json).ok());
            batch.push(Pending {
                seq: seq.value(),
                table: table.unwrap_or(Table::Streams),
                record: record
                    .filter(|_| table.is_some())
                    .unwrap_or(serde_json::Value::Null),
            });
        }
        Ok(batch)
    }

    /// Takes records MongoDB has off the queue; returns how many wait still.
    pub fn forget_pending(&self, seqs: &[u64]) -> Result<u64, redb::Error> {
        let txn = self.db.begin_write()?;
        let waiting = {
            let mut queue = txn.open_table(MONGODB_PENDING)?;
            for seq in seqs {
                queue.remove(seq)?;
            }
            queue.len()?
        };
        txn.commit()?;
        Ok(waiting)
    }

    /// Returns once a record may have been queued for MongoDB since the last call.
    pub async fn queued_for_mongodb(&self) {
        self.queued_for_mongodb.notified().await;
    }

    /// Records `record`, which ended at `ended_unix`; never waits.
    pub fn record(&self, table: Table, ended_unix: f64, record: serde_json::Value) {
        if self.writes.try_send((table, ended_unix, record)).is_err() {
            metrics::counter!("cascade_history_dropped_total", "table" => table.label())
                .increment(1);
        }
    }

    /// A page of `table`, newest first.
    pub fn query(&self, table: Table, query: &Query) -> Result<Page, redb::Error> {
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
        let txn = self.db.begin_read()?;
        let records = txn.open_table(table.definition())?;
        let upper = query
            .before
            .unwrap_or(u64::MAX)
            .min(query.until.map_or(u64::MAX, micros));
        let lower = query.since.map_or(0, micros);
        let mut items = Vec::new();
        let mut next = None;
        for entry in records.range(lower..upper)?.rev() {
            let (key, value) = entry?;
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(value.value()) else {
                continue;
            };
            if query
                .stream
                .as_deref()
                .is_some_and(|s| record["stream"] != s)
                || query.kind.as_deref().is_some_and(|k| record["kind"] != k)
            {
                continue;
            }
            if items.len() == limit {
                next = Some(key.value() + 1);
                break;
            }
            items.push(record);
        }
        Ok(Page { items, next })
    }
}

fn micros(unix: f64) -> u64 {
    (unix.max(0.0) * 1e6) as u64
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    node: String,
    mongodb_queue: Option<u64>,
    wake: Arc<tokio::sync::Notify>,
}

impl Writer {
    fn run(self, queued: std::sync::mpsc::Receiver<(Table, f64, serde_json::Value)>) {
        // Said once when the queue for MongoDB fills, not for every record it then drops.
        let mut dropping = false;
        while let Ok((table, ended_unix, record)) = queued.recv() {
            match self.write(table, ended_unix, record) {
                Ok(queue) => {
                    metrics::counter!("cascade_history_records_total", "table" => table.label())
                        .increment(1);
                    if let Some((waiting, dropped)) = queue {
                        mongodb::count_queued(waiting);
                        mongodb::count_dropped(dropped);
                        if dropped > 0 && !dropping {
                            tracing::warn!(
                                waiting,
                                "the queue for MongoDB is full (--mongodb-queue-limit): its oldest history records are dropped until MongoDB takes them again"
                            );
                        }
                        dropping = dropped > 0;
                        self.wake.notify_one();
                    }
                }
                Err(e) => {
                    metrics::counter!("cascade_history_dropped_total", "table" => table.label())
                        .increment(1);
                    tracing::warn!(error = %e, table = table.label(), "history record not written");
                }
            }
        }
    }

    /// Writes one record under a key unique in its table (the table trimmed to [`KEPT`]) and,
    /// with MongoDB, queues it in the same transaction; returns the queue's length and how
    /// many of its oldest records were dropped to keep it within its limit.
    fn write(
        &self,
        table: Table,
        ended_unix: f64,
        mut record: serde_json::Value,
    ) -> Result<Option<(u64, u64)>, redb::Error> {
        let txn = self.db.begin_write()?;
        let queue = {
            let mut records = txn.open_table(table.definition())?;
            let newest = records.last()?.map(|(k, _)| k.value());
            let key = micros(ended_unix).max(newest.map_or(0, |n| n + 1));
            if let Some(fields) = record.as_object_mut() {
                fields.insert("record_id".into(), format!("{}:{key}", self.node).into());
            }
            let bytes = serde_json::to_vec(&record).unwrap_or_default();
            records.insert(key, bytes.as_slice())?;
            if records.len()? > KEPT {
                let oldest = records.first()?.map(|(k, _)| k.value());
                if let Some(oldest) = oldest {
                    records.remove(oldest)?;
                }
            }
            match self.mongodb_queue {
                None => None,
                Some(limit) => {
                    let mut queue = txn.open_table(MONGODB_PENDING)?;
                    let seq = queue.last()?.map_or(0, |(k, _)| k.value() + 1);
                    let mut entry = Vec::with_capacity(bytes.len() + 1);
                    entry.push(table.tag());
                    entry.extend_from_slice(&bytes);
                    queue.insert(seq, entry.as_slice())?;
                    let mut dropped = 0;
                    while queue.len()? > limit.max(1) {
                        let oldest = queue.first()?.map(|(k, _)| k.value());
                        let Some(oldest) = oldest else { break };
                        queue.remove(oldest)?;
                        dropped += 1;
                    }
                    Some((queue.len()?, dropped))
                }
            }
        };
        txn.commit()?;
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_newest_first_filtered_and_in_pages() {
        let dir = std::env::temp_dir().join(format!("cascade-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let history = History::open(&dir, "n1", None).unwrap();
        for (i, stream) in ["a", "b", "a", "a"].iter().enumerate() {
            history.record(
                Table::Sessions,
                1_000.0 + i as f64,
                serde_json::json!({"stream": stream, "kind": "viewer", "n": i}),
            );
        }
        // The writer is a thread: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while history
            .query(Table::Sessions, &Query::default())
            .unwrap()
            .items
            .len()
            < 4
        {
            assert!(std::time::Instant::now() < deadline, "records written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let first = history
            .query(
                Table::Sessions,
                &Query {
                    stream: Some("a".into()),
                    limit: Some(2),
                    ..Query::default()
                },
            )
            .unwrap();
        let n: Vec<_> = first
            .items
            .iter()
            .map(|r| r["n"].as_u64().unwrap())
            .collect();
        assert_eq!(n, [3, 2], "newest first, only stream a");
        let second = history
            .query(
                Table::Sessions,
                &Query {
                    stream: Some("a".into()),
                    limit: Some(2),
                    before: first.next,
                    ..Query::default()
                },
            )
            .unwrap();
        let n: Vec<_> = second
            .items
            .iter()
            .map(|r| r["n"].as_u64().unwrap())
            .collect();
        assert_eq!(n, [0]);
        assert_eq!(second.next, None, "the last page");
        let since = history
            .query(
                Table::Sessions,
                &Query {
                    since: Some(1_001.0),
                    until: Some(1_003.0),
                    ..Query::default()
                },
            )
            .unwrap();
        assert_eq!(since.items.len(), 2, "ended in [1001, 1003)");
        assert!(
            history
                .query(Table::Streams, &Query::default())
                .unwrap()
                .items
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_queue_for_mongodb_keeps_the_newest_records_up_to_its_limit_in_order() {
        let dir = std::env::temp_dir().join(format!("cascade-history-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let history = History::open(&dir, "n1", Some(3)).unwrap();
        for i in 0..5u64 {
            let table = if i % 2 == 0 {
                Table::Streams
            } else {
                Table::Sessions
            };
            history.record(table, 1_000.0 + i as f64, serde_json::json!({"n": i}));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while history
            .query(Table::Streams, &Query::default())
            .unwrap()
            .items
            .len()
            < 3
        {
            assert!(std::time::Instant::now() < deadline, "records written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            history.pending_count().unwrap(),
            3,
            "the two oldest dropped"
        );
        let pending = history.pending(10).unwrap();
        let queued: Vec<(u64, Table)> = pending
            .iter()
            .map(|p| (p.record["n"].as_u64().unwrap(), p.table))
            .collect();
        assert_eq!(
            queued,
            [
                (2, Table::Streams),
                (3, Table::Sessions),
                (4, Table::Streams)
            ]
        );
        assert_eq!(pending[0].record["record_id"], "n1:1002000000");
        let first: Vec<u64> = pending.iter().take(2).map(|p| p.seq).collect();
        assert_eq!(history.forget_pending(&first).unwrap(), 1);
        assert_eq!(history.pending(10).unwrap()[0].record["n"], 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
