//! The Raft log and vote, durable in redb.
//!
//! Owns `raft.redb` under the CHN's data directory: log entries keyed by
//! index, the vote and the last purged log id. It must never report a
//! write as done before redb's commit (fsync) has returned: openraft
//! counts on it to never lose an acknowledged entry.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::{Entry, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";

/// Log storage handle; cheap to clone (readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    postcard::to_allocvec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError<NodeId>> {
    postcard::from_bytes(b).map_err(read_err)
}

impl LogStore {
    /// Opens (or creates) `raft.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(dir.join("raft.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Runs a redb job off the async runtime: commits block on fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Database) -> Result<T, StorageError<NodeId>> + Send + 'static,
    ) -> Result<T, StorageError<NodeId>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || job(&db)).await.map_err(io_err)?
    }

    fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        let tx = db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(value)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
        tx.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for item in t.range::<u64>((start, end)).map_err(read_err)? {
                let (_, v) = item.map_err(read_err)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.blocking(|db| {
            let last_purged: Option<LogId<NodeId>> = Self::get_meta(db, PURGED_KEY)?;
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(LOG).map_err(read_err)?;
            let last = match t.last().map_err(read_err)? {
                Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(move |db| Self::put_meta(db, VOTE_KEY, &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(|db| Self::get_meta(db, VOTE_KEY)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let bytes = encode(&committed)?;
            let mut tx = db.begin_write().map_err(io_err)?;
            // Only a hint that lets a restarted CHN re-apply committed
            // entries at once; the next append's fsync persists it.
            tx.set_durability(Durability::None).map_err(io_err)?;
            tx.open_table(META).map_err(io_err)?.insert(COMMITTED_KEY, bytes.as_slice()).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.blocking(|db| Ok(Self::get_meta::<Option<LogId<NodeId>>>(db, COMMITTED_KEY)?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode(&e)?)))
            .collect::<Result<Vec<_>, StorageError<NodeId>>>()?;
        let result = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(io_err)?;
                {
                    let mut t = tx.open_table(LOG).map_err(io_err)?;
                    for (index, bytes) in &rows {
                        t.insert(*index, bytes.as_slice()).map_err(io_err)?;
                    }
                }
                tx.commit().map_err(io_err)
            })
            .await;
        // Only now, with the commit durable, may openraft count the entries.
        callback.log_io_completed(result.clone().map_err(|e| std::io::Error::other(e.to_string())));
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(io_err)?;
            tx.open_table(LOG).map_err(io_err)?.retain_in(log_id.index.., |_, _| false).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let bytes = encode(&log_id)?;
            let tx = db.begin_write().map_err(io_err)?;
            tx.open_table(META).map_err(io_err)?.insert(PURGED_KEY, bytes.as_slice()).map_err(io_err)?;
            tx.open_table(LOG).map_err(io_err)?.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
            tx.commit().map_err(io_err)
        })
        .await
    }
}
