//! The Raft log and vote, durable in redb.
//!
//! Owns `raft.redb` under the CHN's data directory (log entries keyed by
//! index, the vote, the last purged and the committed log id), one writer
//! thread that group-commits every write, and an in-memory tail of recent
//! entries. It must never report an append as flushed before redb's commit
//! (fsync) has returned, must keep writes in the order openraft issued
//! them, and must never serve an entry that a truncate removed.
//!
//! Why a writer thread: openraft 0.9 appends each proposal on its own and
//! waits for nothing but the `LogFlushed` callback, so handing appends to a
//! thread that commits whatever has queued up turns many fsyncs into one,
//! and lets the leader replicate while its own fsync is still running.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use super::{Entry, NodeId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";

/// Recent entries kept in memory for replication reads.
const TAIL_MAX: usize = 4096;
/// Most queued writes committed together.
const GROUP_MAX: usize = 512;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// One write for the writer thread.
enum Write {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<()>>,
    },
    Purge {
        upto: u64,
        purged: Vec<u8>,
        done: oneshot::Sender<Result<()>>,
    },
    /// A metadata value that may be lost in a crash (the committed index).
    Hint { key: &'static str, value: Vec<u8> },
}

/// Log storage handle; cheap to clone (readers share everything).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// A contiguous suffix of the log: everything appended since start-up,
    /// less what was trimmed (durable), purged or truncated.
    tail: Arc<RwLock<BTreeMap<u64, Entry>>>,
    /// Highest index whose current entry is durable in redb (0: none).
    durable_upto: Arc<AtomicU64>,
    writes: mpsc::Sender<Write>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    postcard::from_bytes(b).map_err(read_err)
}

impl LogStore {
    /// Opens (or creates) `raft.redb` in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> std::result::Result<Self, redb::Error> {
        let db = Database::create(dir.join("raft.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        let db = Arc::new(db);
        let durable_upto = Arc::new(AtomicU64::new(0));
        let (writes, queue) = mpsc::channel();
        let (wdb, wdurable) = (db.clone(), durable_upto.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(&wdb, &queue, &wdurable))
            .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        Ok(LogStore {
            db,
            tail: Default::default(),
            durable_upto,
            writes,
        })
    }

    fn tail_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.tail.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write and waits until it is committed.
    async fn write_and_wait(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Write) -> Result<()> {
        let (done, committed) = oneshot::channel();
        self.writes
            .send(make(done))
            .map_err(|_| io_err("the log writer thread stopped"))?;
        committed.await.map_err(|_| io_err("the log writer thread stopped"))?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || job(&db)).await.map_err(read_err)?
    }

    fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
        let tx = db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }
}

/// The writer thread: commits whatever has queued up in one transaction,
/// in queue order, then reports each write.
fn writer(db: &Database, queue: &mpsc::Receiver<Write>, durable_upto: &AtomicU64) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let mut written = durable_upto.load(Ordering::Acquire);
        let result = commit_group(db, &group, &mut written);
        if result.is_ok() {
            durable_upto.store(written, Ordering::Release);
        }
        for w in group {
            match w {
                Write::Append { done, .. } => {
                    done.log_io_completed(result.clone().map_err(|e| std::io::Error::other(e.to_string())))
                }
                Write::Meta { done, .. } | Write::Truncate { done, .. } | Write::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Write::Hint { .. } => {}
            }
        }
    }
}

fn commit_group(db: &Database, group: &[Write], written: &mut u64) -> Result<()> {
    let mut tx = db.begin_write().map_err(io_err)?;
    if group.iter().all(|w| matches!(w, Write::Hint { .. })) {
        // Hints alone are not worth an fsync; the next real write
        // persists them.
        tx.set_durability(Durability::None).map_err(io_err)?;
    }
    {
        let mut log = tx.open_table(LOG).map_err(io_err)?;
        let mut meta = tx.open_table(META).map_err(io_err)?;
        for w in group {
            match w {
                Write::Append { rows, .. } => {
                    for (index, bytes) in rows {
                        log.insert(*index, bytes.as_slice()).map_err(io_err)?;
                        *written = (*written).max(*index);
                    }
                }
                Write::Meta { key, value, .. } | Write::Hint { key, value } => {
                    meta.insert(*key, value.as_slice()).map_err(io_err)?;
                }
                Write::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(io_err)?;
                    *written = (*written).min(from.saturating_sub(1));
                }
                Write::Purge { upto, purged, .. } => {
                    meta.insert(PURGED_KEY, purged.as_slice()).map_err(io_err)?;
                    log.retain_in(..=*upto, |_, _| false).map_err(io_err)?;
                }
            }
        }
    }
    tx.commit().map_err(io_err)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let (first_cached, cached) = {
            let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
            let first = tail.keys().next().copied().unwrap_or(u64::MAX);
            let cached: Vec<Entry> = tail
                .range(start.max(first)..end.max(start.max(first)))
                .map(|(_, e)| e.clone())
                .collect();
            (first, cached)
        };
        let mut out = Vec::new();
        if start < first_cached.min(end) {
            let disk_end = first_cached.min(end);
            out = self
                .blocking(move |db| {
                    let tx = db.begin_read().map_err(read_err)?;
                    let t = tx.open_table(LOG).map_err(read_err)?;
                    let mut out = Vec::new();
                    for item in t.range(start..disk_end).map_err(read_err)? {
                        let (_, v) = item.map_err(read_err)?;
                        out.push(decode(v.value())?);
                    }
                    Ok(out)
                })
                .await?;
        }
        out.extend(cached);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let newest_cached = self
            .tail
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .next_back()
            .map(|e| e.log_id);
        self.blocking(move |db| {
            let last_purged: Option<LogId<NodeId>> = Self::get_meta(db, PURGED_KEY)?;
            let last = match newest_cached {
                Some(id) => Some(id),
                None => {
                    let tx = db.begin_read().map_err(read_err)?;
                    let t = tx.open_table(LOG).map_err(read_err)?;
                    let newest = match t.last().map_err(read_err)? {
                        Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
                        None => last_purged,
                    };
                    newest
                }
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let value = encode(vote)?;
        self.write_and_wait(|done| Write::Meta {
            key: VOTE_KEY,
            value,
            done,
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.blocking(|db| Self::get_meta(db, VOTE_KEY)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        // A hint that lets a restarted CHN re-apply committed entries at
        // once; it rides along with the next group commit.
        let value = encode(&committed)?;
        self.writes
            .send(Write::Hint {
                key: COMMITTED_KEY,
                value,
            })
            .map_err(|_| io_err("the log writer thread stopped"))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.blocking(|db| Ok(Self::get_meta::<Option<LogId<NodeId>>>(db, COMMITTED_KEY)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index, encode(e)?)))
            .collect::<Result<Vec<_>>>()?;
        {
            let mut tail = self.tail_mut();
            for e in entries {
                tail.insert(e.log_id.index, e);
            }
            // Trim only entries that are already durable, so a reader
            // always finds an entry either here or in redb.
            let durable = self.durable_upto.load(Ordering::Acquire);
            while tail.len() > TAIL_MAX {
                match tail.first_key_value() {
                    Some((k, _)) if *k <= durable => {
                        tail.pop_first();
                    }
                    _ => break,
                }
            }
        }
        self.writes
            .send(Write::Append { rows, done: callback })
            .map_err(|_| io_err("the log writer thread stopped"))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let from = log_id.index;
        self.tail_mut().retain(|k, _| *k < from);
        self.write_and_wait(|done| Write::Truncate { from, done }).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let upto = log_id.index;
        let purged = encode(&log_id)?;
        self.tail_mut().retain(|k, _| *k > upto);
        self.write_and_wait(|done| Write::Purge { upto, purged, done }).await
    }
}
