//! Copies history records to MongoDB (`--mongodb-uri`): one task drains the node's on-disk
//! queue ([`super::History::pending`]) in order, in batches, and takes off the queue only what
//! MongoDB acknowledged. While MongoDB is away the records wait (across restarts), retried
//! with the webhooks' backoff; it is said once when it goes away and once when it is back.
//!
//! Collections ([`super::Table::collection`]): `stream_runs`, `sessions`, `recordings`, each
//! document the API's record field for field (with MongoDB's own ObjectId `_id`), and indexes
//! created at start (or when MongoDB is first reached): `record_id` (unique), `{stream: 1,
//! ended_at: -1}`, `{ended_at: -1}` and, on sessions, `{kind: 1, ended_at: -1}`.
//!
//! A batch is resent whole after a failure MongoDB may have half applied, so each insert
//! first asks which `record_id`s are already stored and writes only the others: every record
//! is stored once even on MongoDB-wire servers that do not enforce unique indexes.

use std::collections::HashSet;
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

use super::{History, Pending, Table};
use crate::NodeError;

/// Records written to MongoDB in one round trip at most.
const BATCH: usize = 500;
/// How long the driver looks for a server before an operation fails (its default is 30 s).
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The database when the URI names none.
pub const DEFAULT_DATABASE: &str = "cascade";
/// Records kept waiting for MongoDB by default; beyond it the oldest are dropped.
pub const DEFAULT_QUEUE_LIMIT: u64 = 100_000;

/// Where records go.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// The connection string (`mongodb://` or `mongodb+srv://`); its path names the database
    /// ([`DEFAULT_DATABASE`] without one).
    pub uri: String,
    /// Records waiting for MongoDB at most; the oldest are dropped beyond it.
    pub queue_limit: u64,
}

/// Connects (lazily: MongoDB may be away at start) and starts copying `history`'s queue.
/// Fails only on a connection string the driver refuses.
pub async fn start(history: &History, config: &MongoConfig) -> Result<(), NodeError> {
    let refused = |e: mongodb::error::Error| NodeError::Config {
        key: "mongodb-uri",
        message: e.to_string(),
    };
    let mut options = ClientOptions::parse(&config.uri).await.map_err(refused)?;
    options.app_name.get_or_insert_with(|| "cascade".into());
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options
        .connect_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    let name = options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
    let client = Client::with_options(options).map_err(refused)?;
    tracing::info!(hosts = ?hosts, database = %name, "history records are copied to MongoDB");
    tokio::spawn(export(history.clone(), client.database(&name)));
    Ok(())
}

/// Every MongoDB series exists from the start, at 0 on a node without MongoDB: dashboards and
/// alerts read the same names everywhere.
pub(super) fn register_metrics() {
    count_queued(0);
    for name in [
        "cascade_history_mongodb_written_total",
        "cascade_history_mongodb_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// Sets the gauge of records waiting for MongoDB.
pub(super) fn count_queued(waiting: u64) {
    metrics::gauge!("cascade_history_mongodb_queued").set(waiting as f64);
}

/// Counts records dropped from a full queue, or that cannot be BSON.
pub(super) fn count_dropped(dropped: u64) {
    if dropped > 0 {
        metrics::counter!("cascade_history_mongodb_dropped_total").increment(dropped);
    }
}

/// The export loop: never returns.
async fn export(history: History, db: Database) {
    let mut indexed = false;
    let mut failures = 0u32;
    loop {
        let reader = history.clone();
        let batch = match tokio::task::spawn_blocking(move || reader.pending(BATCH)).await {
            Ok(Ok(batch)) => batch,
            other => {
                tracing::warn!(error = ?other.err(), "history queue for MongoDB not readable");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() && indexed {
            // A record queued between the read and here has woken the notifier already.
            let _ =
                tokio::time::timeout(Duration::from_secs(30), history.queued_for_mongodb()).await;
            continue;
        }
        let attempt = async {
            if !indexed {
                create_indexes(&db).await?;
                indexed = true;
            }
            write(&db, &batch).await
        };
        match attempt.await {
            Ok(written) => {
                if failures > 0 {
                    tracing::info!("MongoDB is back: queued history records are being written");
                }
                failures = 0;
                metrics::counter!("cascade_history_mongodb_written_total").increment(written);
                let seqs: Vec<u64> = batch.iter().map(|p| p.seq).collect();
                let forgetter = history.clone();
                match tokio::task::spawn_blocking(move || forgetter.forget_pending(&seqs)).await {
                    Ok(Ok(waiting)) => count_queued(waiting),
                    other => {
                        tracing::warn!(error = ?other.err(), "history queue for MongoDB not updated")
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        error = %e,
                        "MongoDB unreachable: history records queue on disk until it is back"
                    );
                } else {
                    tracing::debug!(error = %e, failures, "MongoDB still unreachable");
                }
                tokio::time::sleep(crate::webhooks::delivery::retry_delay(failures)).await;
            }
        }
    }
}

/// The indexes integrators' queries need, and the one that keeps a record unique.
async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    for table in Table::ALL {
        let mut indexes = vec![
            IndexModel::builder()
                .keys(doc! {"record_id": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! {"stream": 1, "ended_at": -1})
                .build(),
            IndexModel::builder().keys(doc! {"ended_at": -1}).build(),
        ];
        if table == Table::Sessions {
            indexes.push(
                IndexModel::builder()
                    .keys(doc! {"kind": 1, "ended_at": -1})
                    .build(),
            );
        }
        db.collection::<Document>(table.collection())
            .create_indexes(indexes)
            .await?;
    }
    Ok(())
}

/// Writes `batch` (in order, each table's records in one insert), skipping records already
/// stored; returns how many were inserted.
async fn write(db: &Database, batch: &[Pending]) -> mongodb::error::Result<u64> {
    let mut written = 0;
    for table in Table::ALL {
        let documents: Vec<(String, Document)> = batch
            .iter()
            .filter(|p| p.table == table)
            .filter_map(document)
            .collect();
        if documents.is_empty() {
            continue;
        }
        let collection = db.collection::<Document>(table.collection());
        let ids: Vec<Bson> = documents
            .iter()
            .map(|(id, _)| Bson::String(id.clone()))
            .collect();
        let mut stored = HashSet::new();
        let mut cursor = collection
            .find(doc! {"record_id": {"$in": ids}})
            .projection(doc! {"record_id": 1, "_id": 0})
            .await?;
        while cursor.advance().await? {
            if let Ok(id) = cursor.current().get_str("record_id") {
                stored.insert(id.to_owned());
            }
        }
        let fresh: Vec<&Document> = documents
            .iter()
            .filter(|(id, _)| !stored.contains(id))
            .map(|(_, d)| d)
            .collect();
        if !fresh.is_empty() {
            collection.insert_many(fresh.iter().copied()).await?;
            written += fresh.len() as u64;
        }
    }
    Ok(written)
}

/// A record as a document with its `record_id`; `None` (said and counted as dropped) for one
/// that cannot be: resending it would never succeed.
fn document(pending: &Pending) -> Option<(String, Document)> {
    let id = pending.record["record_id"].as_str().map(str::to_owned);
    let converted = mongodb::bson::serialize_to_document(&pending.record);
    match (id, converted) {
        (Some(id), Ok(document)) => Some((id, document)),
        (id, converted) => {
            tracing::warn!(
                record = ?id,
                error = ?converted.err(),
                "history record skipped: it cannot be a MongoDB document"
            );
            metrics::counter!("cascade_history_mongodb_dropped_total").increment(1);
            None
        }
    }
}
