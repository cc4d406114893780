//! What happened on this node, kept after it ended: stream runs (from their origin: protocol,
//! times, peak viewers, viewer-minutes, bytes) and session summaries (publishers and viewers,
//! every protocol: how long, how it ended, from where), in `{data dir}/history.redb`, newest
//! first through `GET /api/v1/history/streams` and `/sessions` with filters and paging.
//!
//! Records are JSON objects, the same shape as the webhook's `stream.ended` data. Writes are
//! handed to a writer thread (a bounded queue: never a wait on the media path, a full queue
//! drops and counts); each table keeps its newest [`KEPT`] records.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Key: when the record ended, in microseconds since the epoch (made unique by the writer).
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_runs");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");

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
}

impl Table {
    fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Table::Streams => RUNS,
            Table::Sessions => SESSIONS,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Table::Streams => "streams",
            Table::Sessions => "sessions",
        }
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
}

impl History {
    /// Opens (or creates) the history in `dir` and starts its writer.
    pub fn open(dir: &Path) -> Result<History, crate::NodeError> {
        let fail = |e: String| crate::NodeError::DataDir {
            path: dir.join("history.redb"),
            source: std::io::Error::other(e),
        };
        let db = Database::create(dir.join("history.redb")).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        for table in [RUNS, SESSIONS] {
            txn.open_table(table).map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        let db = Arc::new(db);
        // Both series exist from the start: a dashboard shows 0, not "no data".
        for table in [Table::Streams, Table::Sessions] {
            metrics::counter!("cascade_history_records_total", "table" => table.label())
                .increment(0);
            metrics::counter!("cascade_history_dropped_total", "table" => table.label())
                .increment(0);
        }
        let (writes, queued) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let writer = db.clone();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || write_records(&writer, queued))
            .map_err(|e| fail(e.to_string()))?;
        Ok(History { db, writes })
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

/// The writer thread: each record under a key unique in its table, the table trimmed to
/// [`KEPT`].
fn write_records(
    db: &Database,
    queued: std::sync::mpsc::Receiver<(Table, f64, serde_json::Value)>,
) {
    while let Ok((table, ended_unix, record)) = queued.recv() {
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut records = txn.open_table(table.definition())?;
                let newest = records.last()?.map(|(k, _)| k.value());
                let key = micros(ended_unix).max(newest.map_or(0, |n| n + 1));
                let bytes = serde_json::to_vec(&record).unwrap_or_default();
                records.insert(key, bytes.as_slice())?;
                if records.len()? > KEPT {
                    let oldest = records.first()?.map(|(k, _)| k.value());
                    if let Some(oldest) = oldest {
                        records.remove(oldest)?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => metrics::counter!("cascade_history_records_total", "table" => table.label())
                .increment(1),
            Err(e) => {
                metrics::counter!("cascade_history_dropped_total", "table" => table.label())
                    .increment(1);
                tracing::warn!(error = %e, table = table.label(), "history record not written");
            }
        }
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
        let history = History::open(&dir).unwrap();
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
}
