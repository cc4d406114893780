//! Events waiting for delivery, per receiver, in `{data dir}/webhooks.redb`: an event is
//! written (and synced) before anyone tries to deliver it and removed only once its receiver
//! answered 2xx, so a restart loses none. Each receiver's queue is bounded; past the bound
//! the oldest event is dropped and counted.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// (receiver, sequence) → the event's JSON body. Receivers are numbered in the order of the
/// node's `--webhook-url`s.
const EVENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("webhook_events");

/// The most events kept for one receiver by default.
pub const MAX_QUEUED: u64 = 10_000;

/// The persistent queues. Cheap to clone; calls block on disk (run them off the runtime's
/// worker threads).
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    max_queued: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, keeping at most `max_queued` events per
    /// receiver.
    pub fn open(dir: &Path, max_queued: u64) -> Result<Outbox, redb::Error> {
        let db = Database::create(dir.join("webhooks.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(EVENTS)?;
        txn.commit()?;
        Ok(Outbox {
            db: Arc::new(db),
            max_queued: max_queued.max(1),
        })
    }

    /// Appends `body` to each of `receivers`' queues in one transaction; returns how many
    /// old events were dropped to stay within the bound, per receiver.
    pub fn push(&self, receivers: u32, body: &[u8]) -> Result<Vec<u64>, redb::Error> {
        let txn = self.db.begin_write()?;
        let mut dropped = Vec::with_capacity(receivers as usize);
        {
            let mut table = txn.open_table(EVENTS)?;
            for receiver in 0..receivers {
                let (first, next) = {
                    let mut range = table.range((receiver, 0)..=(receiver, u64::MAX))?;
                    let first = range.next().transpose()?.map(|(k, _)| k.value().1);
                    let last = range.next_back().transpose()?.map(|(k, _)| k.value().1);
                    (first, last.or(first).map_or(0, |l| l + 1))
                };
                table.insert((receiver, next), body)?;
                let mut removed = 0;
                if let Some(first) = first {
                    let mut oldest = first;
                    while next + 1 - oldest > self.max_queued {
                        table.remove((receiver, oldest))?;
                        oldest += 1;
                        removed += 1;
                    }
                }
                dropped.push(removed);
            }
        }
        txn.commit()?;
        Ok(dropped)
    }

    /// The oldest event waiting for `receiver`: its sequence number and body.
    pub fn first(&self, receiver: u32) -> Result<Option<(u64, Vec<u8>)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut range = table.range((receiver, 0)..=(receiver, u64::MAX))?;
        Ok(range
            .next()
            .transpose()?
            .map(|(k, v)| (k.value().1, v.value().to_vec())))
    }

    /// Removes a delivered event.
    pub fn remove(&self, receiver: u32, seq: u64) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(EVENTS)?.remove((receiver, seq))?;
        txn.commit()?;
        Ok(())
    }

    /// How many events wait for `receiver`.
    pub fn len(&self, receiver: u32) -> Result<u64, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut count = 0;
        for entry in table.range((receiver, 0)..=(receiver, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cascade-outbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn events_come_out_in_order_per_receiver_and_survive_reopening() {
        let dir = scratch("order");
        {
            let outbox = Outbox::open(&dir, MAX_QUEUED).unwrap();
            outbox.push(2, b"one").unwrap();
            outbox.push(2, b"two").unwrap();
            let (seq, body) = outbox.first(0).unwrap().unwrap();
            assert_eq!(body, b"one");
            outbox.remove(0, seq).unwrap();
        }
        let outbox = Outbox::open(&dir, MAX_QUEUED).unwrap();
        assert_eq!(outbox.first(0).unwrap().unwrap().1, b"two");
        assert_eq!(outbox.len(0).unwrap(), 1);
        assert_eq!(
            outbox.first(1).unwrap().unwrap().1,
            b"one",
            "receiver 1 has not taken anything yet"
        );
        assert_eq!(outbox.len(1).unwrap(), 2);
        outbox.push(2, b"three").unwrap();
        let (seq, _) = outbox.first(0).unwrap().unwrap();
        outbox.remove(0, seq).unwrap();
        assert_eq!(outbox.first(0).unwrap().unwrap().1, b"three");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_event() {
        let dir = scratch("bound");
        let outbox = Outbox::open(&dir, 3).unwrap();
        let mut dropped = 0;
        for i in 0..5 {
            dropped += outbox.push(1, i.to_string().as_bytes()).unwrap()[0];
        }
        assert_eq!(dropped, 2);
        assert_eq!(outbox.len(0).unwrap(), 3);
        assert_eq!(outbox.first(0).unwrap().unwrap().1, b"2");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
