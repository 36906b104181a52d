//! The shared LU's state machine, durable in redb.
//!
//! Owns `state.redb` under the CHN's data directory (one row per table
//! row, the applied log id and membership those rows reflect, and the
//! latest snapshot) and the in-memory `Tables` that readers share. It must
//! never apply a command anywhere but through `Tables::apply`, and never
//! let the rows in redb run ahead of the applied position stored with them.
//!
//! Applying an entry changes only memory: the rows it touched are marked
//! dirty and written, with the snapshot, in one durable commit each time a
//! snapshot is built or installed. Entries applied since are still in the
//! Raft log (it is purged only behind a durable snapshot), and openraft
//! applies them again after a restart. A commit per applied entry cost as
//! much as the rest of the apply and bought nothing a crash would keep.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::log_store::Durability;
use super::tables::{Row, RowKey, Tables};
use super::{ChnNode, Entry, NodeId, TypeConfig};
use nas_proto::{CommandResult, CommandResults};

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const APPLIED_KEY: &str = "applied";
const SNAPSHOT_KEY: &str = "snapshot";

/// Tables plus the Raft position they reflect.
#[derive(Debug, Default)]
pub struct Applied {
    pub tables: Tables,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, ChnNode>,
    /// Rows changed since they were last written to redb.
    dirty: BTreeSet<RowKey>,
}

#[derive(Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ChnNode>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ChnNode>,
    data: Vec<u8>,
}

/// The state machine given to openraft; `reader()` hands out read access.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    state: Arc<RwLock<Applied>>,
    snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
    /// Held from taking the dirty rows until they are committed, so that
    /// two commits never land in the other order (an older row over a
    /// newer one, with the older position).
    persist_lock: Arc<tokio::sync::Mutex<()>>,
    /// An entry is applied only once it is durable in this CHN's log.
    durability: Durability,
}

/// Read access to the applied tables, for the Admin service.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<Applied>>,
}

impl StateReader {
    /// Locks the applied state for reading. Hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic while applying; the data is still
        // the last consistent copy, so reading it is safe.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    postcard::to_allocvec(v).map_err(io_err)
}

fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, StorageError<NodeId>> {
    postcard::from_bytes(b).map_err(read_err)
}

/// One row write: the encoded key and the new value, or `None` to delete.
type RowWrite = (Vec<u8>, Option<Vec<u8>>);

impl StateMachineStore {
    /// Opens (or creates) `state.redb` in `dir` and loads every table.
    /// Entries are applied once `durability` says they are synced.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StorageError<NodeId>> {
        let db = Database::create(dir.join("state.redb")).map_err(read_err)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(ROWS).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.commit().map_err(io_err)?;

        let mut applied = Applied::default();
        let tx = db.begin_read().map_err(read_err)?;
        for item in tx.open_table(ROWS).map_err(read_err)?.iter().map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            applied.tables.put_row(decode::<Row>(v.value())?);
        }
        if let Some(v) = tx
            .open_table(META)
            .map_err(read_err)?
            .get(APPLIED_KEY)
            .map_err(read_err)?
        {
            let meta: AppliedMeta = decode(v.value())?;
            applied.last_applied = meta.last_applied;
            applied.membership = meta.membership;
        }
        Ok(StateMachineStore {
            db: Arc::new(db),
            state: Arc::new(RwLock::new(applied)),
            snapshot_seq: Arc::new(Default::default()),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
            durability,
        })
    }

    /// A handle for reading the applied tables.
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
        }
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn applied_meta(state: &Applied) -> Result<Vec<u8>, StorageError<NodeId>> {
        encode(&AppliedMeta {
            last_applied: state.last_applied,
            membership: state.membership.clone(),
        })
    }

    /// Commits `rows`, the applied position and the snapshot durably, on a
    /// blocking thread (it waits for an fsync).
    async fn persist(
        &self,
        rows: Vec<RowWrite>,
        meta: Vec<u8>,
        snapshot: Vec<u8>,
        replace_all: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || commit_rows(&db, &rows, &meta, &snapshot, replace_all))
            .await
            .map_err(io_err)?
    }

    fn encode_rows(
        tables: &Tables,
        keys: impl IntoIterator<Item = RowKey>,
    ) -> Result<Vec<RowWrite>, StorageError<NodeId>> {
        keys.into_iter()
            .map(|k| {
                let value = tables.get_row(&k).map(|r| encode(&r)).transpose()?;
                Ok((encode(&k)?, value))
            })
            .collect()
    }
}

/// Commits row changes, the applied position and the snapshot in one
/// durable transaction, so that a crash keeps all of them or none. With
/// `replace_all`, the rows replace the whole table (an installed snapshot).
fn commit_rows(
    db: &Database,
    rows: &[RowWrite],
    meta: &[u8],
    snapshot: &[u8],
    replace_all: bool,
) -> Result<(), StorageError<NodeId>> {
    let tx = db.begin_write().map_err(io_err)?;
    {
        let mut t = tx.open_table(ROWS).map_err(io_err)?;
        if replace_all {
            t.retain(|_, _| false).map_err(io_err)?;
        }
        for (k, v) in rows {
            match v {
                Some(v) => {
                    t.insert(k.as_slice(), v.as_slice()).map_err(io_err)?;
                }
                None => {
                    t.remove(k.as_slice()).map_err(io_err)?;
                }
            }
        }
        let mut m = tx.open_table(META).map_err(io_err)?;
        m.insert(APPLIED_KEY, meta).map_err(io_err)?;
        m.insert(SNAPSHOT_KEY, snapshot).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let _persisted = self.persist_lock.clone().lock_owned().await;
        let (data, last_applied, membership, dirty, rows, applied_meta) = {
            let mut state = self.write_state();
            let dirty = std::mem::take(&mut state.dirty);
            let rows = Self::encode_rows(&state.tables, dirty.iter().cloned());
            (
                state.tables.to_proto().encode_to_vec(),
                state.last_applied,
                state.membership.clone(),
                dirty,
                rows,
                Self::applied_meta(&state),
            )
        };
        let seq = self.snapshot_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => format!("empty-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        let committed = async { self.persist(rows?, applied_meta?, stored?, false).await }.await;
        if let Err(e) = committed {
            // Not written: these rows go with the next snapshot.
            self.write_state().dirty.extend(dirty);
            return Err(e);
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ChnNode>), StorageError<NodeId>> {
        let s = self.reader();
        let s = s.read();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResults>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The leader's own entries may be committed before its log has
        // synced them (see log_store): applying is where they take effect.
        if let Some(last) = entries.last() {
            self.durability.synced(last.log_id.index).await.map_err(io_err)?;
        }
        let mut guard = self.write_state();
        let state = &mut *guard;
        let mut out = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let mut results = CommandResults::default();
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Normal(batch) => {
                    for cmd in &batch.commands {
                        let mut result = CommandResult {
                            log_index: entry.log_id.index,
                            ..Default::default()
                        };
                        match state.tables.apply(cmd) {
                            Ok(applied) => {
                                result.assigned = applied.assigned;
                                state.dirty.extend(applied.touched);
                            }
                            Err(rejection) => {
                                result.code = rejection.kind.code();
                                result.message = rejection.message;
                            }
                        }
                        results.results.push(result);
                    }
                }
            }
            out.push(results);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ChnNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let proto = nas_proto::Tables::decode(data.as_slice())
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        let _persisted = self.persist_lock.clone().lock_owned().await;
        let (rows, applied_meta) = {
            let mut state = self.write_state();
            state.tables = Tables::from_proto(proto);
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            // Every row is written below; a failure there stops Raft
            // (openraft treats storage errors as fatal), so nothing is
            // left to mark.
            state.dirty.clear();
            let keys = state.tables.all_rows().iter().map(Row::key).collect::<Vec<_>>();
            (Self::encode_rows(&state.tables, keys)?, Self::applied_meta(&state)?)
        };
        self.persist(rows, applied_meta, stored, true).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(read_err)?;
            let t = tx.open_table(META).map_err(read_err)?;
            match t.get(SNAPSHOT_KEY).map_err(read_err)? {
                Some(v) => Ok(Some(decode::<StoredSnapshot>(v.value())?)),
                None => Ok::<_, StorageError<NodeId>>(None),
            }
        })
        .await
        .map_err(io_err)??;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nas_proto::{command::Kind, Client, Command, CommandBatch, UpsertClient};
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    fn upsert(index: u64, id: &str) -> Entry {
        let client = Client {
            client_id: id.into(),
            ..Default::default()
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Arc::new(CommandBatch {
                commands: vec![Command {
                    kind: Some(Kind::UpsertClient(UpsertClient { client: Some(client) })),
                }],
            })),
        }
    }

    fn clients(store: &StateMachineStore) -> Vec<String> {
        store.reader().read().tables.clients.keys().cloned().collect()
    }

    /// Applied entries reach redb with the next snapshot, never alone:
    /// after a restart the rows and the applied position match, and
    /// openraft re-applies the rest from the log.
    #[test]
    fn rows_are_written_with_each_snapshot_and_match_the_applied_position() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let mut store = StateMachineStore::open(dir.path(), Durability::always()).unwrap();
            store.apply([upsert(1, "a"), upsert(2, "b")]).await.unwrap();
            let snap = store.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
            store.apply([upsert(3, "c")]).await.unwrap();
            assert_eq!(clients(&store), ["a", "b", "c"]);
        });
        let mut again = StateMachineStore::open(dir.path(), Durability::always()).unwrap();
        assert_eq!(clients(&again), ["a", "b"], "rows as of the snapshot, not later");
        let (applied, _) = rt.block_on(again.applied_state()).unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        rt.block_on(async {
            again.apply([upsert(3, "c")]).await.unwrap();
            again.build_snapshot().await.unwrap();
        });
        drop(again);
        let third = StateMachineStore::open(dir.path(), Durability::always()).unwrap();
        assert_eq!(clients(&third), ["a", "b", "c"]);
    }
}
