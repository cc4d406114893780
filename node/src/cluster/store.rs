//! Raft's durable storage in the node's data dir (`raft.redb`): the log, the vote, and the
//! state machine with its last snapshot.
//!
//! The state machine is small (nodes, placements, the CA), so it is written whole after
//! every applied batch; a restarted node resumes from it without replaying the log.

// openraft's traits fix the error type (`StorageError`, ~224 bytes); our helpers return it
// unboxed so that `?` works inside the trait methods.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::TypeConfig;
use super::state::{ClusterState, Outcome, apply};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// Opens (or creates) the store in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), redb::Error> {
    let db = Arc::new(Database::create(dir.join("raft.redb"))?);
    {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
    }
    let data: MachineData = read_meta(&db, "machine")
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?
        .unwrap_or_default();
    let (state, _) = watch::channel(Arc::new(data.state.clone()));
    Ok((
        LogStore { db: db.clone() },
        StateMachine {
            db,
            data,
            state,
            snapshot_seq: 0,
        },
    ))
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> StorageResult<Option<T>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(bytes) => serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

fn write_meta<T: serde::Serialize>(db: &Database, key: &str, value: &T) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    let txn = db.begin_write().map_err(write_err)?;
    {
        let mut table = txn.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, value) = item.map_err(read_err)?;
            entries.push(serde_json::from_slice(value.value()).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = read_meta(&self.db, "last_purged")?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> =
                    serde_json::from_slice(value.value()).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        write_meta(&self.db, "vote", vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_meta(&self.db, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        write_meta(&self.db, "committed", &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.db, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        // redb's commit is durable (fsync) before it returns.
        txn.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index..)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        write_meta(&self.db, "last_purged", &Some(log_id))?;
        self.remove_range(..=log_id.index)
    }
}

impl LogStore {
    fn remove_range(&self, range: impl RangeBounds<u64>) -> StorageResult<()> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table.retain_in(range, |_, _| false).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }
}

/// What the state machine persists.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct MachineData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ClusterState,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine: applies [`Command`](super::state::Command)s and publishes the
/// resulting state to the rest of the node.
pub struct StateMachine {
    db: Arc<Database>,
    data: MachineData,
    state: watch::Sender<Arc<ClusterState>>,
    snapshot_seq: u64,
}

impl StateMachine {
    /// Follows the applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    fn persist(&self) -> StorageResult<()> {
        write_meta(&self.db, "machine", &self.data)?;
        self.state.send_replace(Arc::new(self.data.state.clone()));
        Ok(())
    }

    fn snapshot_of(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = serde_json::to_vec(&self.data).map_err(read_err)?;
        self.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.data.last_applied.map_or(0, |l| l.index),
                self.snapshot_seq
            ),
        };
        write_meta(
            &self.db,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Builds snapshots from a copy of the state taken when asked.
pub struct SnapshotBuilder {
    machine: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        self.machine.snapshot_of()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.data.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(command) => apply(&mut self.data.state, command),
                EntryPayload::Membership(membership) => {
                    self.data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Done
                }
            };
            outcomes.push(outcome);
        }
        self.persist()?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            machine: StateMachine {
                db: self.db.clone(),
                data: self.data.clone(),
                state: self.state.clone(),
                snapshot_seq: self.snapshot_seq + 1000,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let data: MachineData = serde_json::from_slice(&bytes).map_err(read_err)?;
        self.data = MachineData {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state: data.state,
        };
        write_meta(
            &self.db,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data: bytes,
            },
        )?;
        self.persist()
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, "snapshot")?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
