//! Snapshots of the file system: read-only copies of the tree at one
//! moment that share every block with it until the live tree changes one.
//!
//! Taking a snapshot copies the tree's metadata (inodes, entries, extents)
//! into tables of its own and copies no file data. From then on the live
//! tree never writes a block born at or before the snapshot's generation
//! in place ([`super::tree`] gives the file a fresh one), and a block it
//! drops goes to a deadlist instead of the free table.
//!
//! Deadlists follow ZFS: each snapshot, and the live tree, has one; it
//! holds the blocks born before the previous snapshot that were dropped
//! while it was the newest. Deleting snapshot S, between the previous
//! snapshot P and the next one N (or the live tree), frees the blocks on
//! N's deadlist born after P (only S held them) and moves S's deadlist to
//! N. So every block is in exactly one place: the free table, the live
//! tree, or one deadlist; [`check`] proves it.
//!
//! Owns the snapshot tables, the registry and the deadlists; must never
//! free a block that a snapshot or the live tree still references.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use super::alloc::FREE;
use super::tree::{self, Extent, Tx, DIRENTS, EXTENTS, INODES, META};
use super::{FileKind, FsError, FsPath, Inode, Result, ROOT};

/// The directory through which snapshots are read: `/.snapshot/NAME/...`.
pub const SNAPSHOT_DIR: &str = ".snapshot";
/// The deadlist and inode-id prefix of the live tree.
pub const LIVE: u64 = 0;
/// Most snapshots an export keeps at once.
pub const MAX_SNAPSHOTS: usize = 256;
/// Inode ids carry the snapshot's generation above this bit (0: live), so
/// that one handle space names files of the live tree and of snapshots.
const GEN_SHIFT: u32 = 44;
const INO_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// The id `/.snapshot` itself answers with; no inode has it.
pub const SNAPSHOT_DIR_ID: u64 = INO_MASK;

/// (dataset, LU offset) -> (length, birth): blocks only snapshots hold.
/// The dataset is the generation of the snapshot whose deadlist it is, or
/// [`LIVE`].
pub const DEADLIST: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("deadlist");
/// Snapshot name -> postcard [`Row`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

/// (generation, inode number) of an inode id.
pub fn split(id: u64) -> (u64, u64) {
    (id >> GEN_SHIFT, id & INO_MASK)
}

/// The id of inode `ino` in the snapshot of generation `generation`.
pub fn join(generation: u64, ino: u64) -> u64 {
    generation << GEN_SHIFT | ino
}

/// What a change under `/.snapshot` is told.
/// What a change through a snapshot's handle is told.
pub fn read_only_handle() -> FsError {
    FsError::PermissionDenied(
        "this handle names a file in a snapshot, and snapshots are read-only; copy the file out instead".into(),
    )
}

pub fn read_only(path: &FsPath) -> FsError {
    FsError::PermissionDenied(format!(
        "{path} is in a snapshot, and snapshots are read-only; copy what you need out of it"
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    generation: u64,
    created_ms: u64,
    files: u64,
}

/// A snapshot as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub generation: u64,
    pub created_ms: u64,
    pub files: u64,
    /// What deleting it would free: blocks no other snapshot and not the
    /// live tree holds.
    pub unique_bytes: u64,
}

/// The tables of one tree: the live one or a snapshot's.
pub struct View {
    pub generation: u64,
    inodes: String,
    dirents: String,
    extents: String,
}

impl View {
    pub fn live() -> View {
        View {
            generation: LIVE,
            inodes: INODES.name().into(),
            dirents: DIRENTS.name().into(),
            extents: EXTENTS.name().into(),
        }
    }

    pub fn snapshot(generation: u64) -> View {
        let name = |t: &str| format!("snapshot.{generation}.{t}");
        View {
            generation,
            inodes: name("inodes"),
            dirents: name("dirents"),
            extents: name("extents"),
        }
    }

    /// The view an inode id belongs to, and its inode number there.
    pub fn of(id: u64) -> (View, u64) {
        let (generation, ino) = split(id);
        let view = if generation == LIVE {
            View::live()
        } else {
            View::snapshot(generation)
        };
        (view, ino)
    }

    pub fn inodes(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.inodes)
    }

    pub fn dirents(&self) -> TableDefinition<'_, (u64, &'static str), u64> {
        TableDefinition::new(&self.dirents)
    }

    pub fn extents(&self) -> TableDefinition<'_, (u64, u64), Extent> {
        TableDefinition::new(&self.extents)
    }

    /// An inode as callers of this view see it: its id carries the view.
    pub fn expose(&self, mut inode: Inode) -> Inode {
        inode.ino = join(self.generation, inode.ino);
        inode.parent = join(self.generation, inode.parent);
        if self.generation != LIVE {
            // Read-only, whatever the live tree allowed.
            inode.mode &= !0o222;
        }
        inode
    }
}

fn decode_row(bytes: &[u8]) -> Result<Row> {
    postcard::from_bytes(bytes).map_err(|e| FsError::Corrupt(format!("snapshot record: {e}")))
}

/// Checks a snapshot name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with
/// a dot.
fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(FsError::InvalidArgument(format!(
            "snapshot name {name:?} is not allowed; use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
        )))
    }
}

/// Every deadlist entry of `dataset`.
fn deadlist_of<T: ReadableTable<(u64, u64), (u64, u64)>>(t: &T, dataset: u64) -> Result<Vec<(u64, u64, u64)>> {
    t.range((dataset, 0)..=(dataset, u64::MAX))
        .map_err(FsError::db)?
        .map(|e| {
            let (k, v) = e.map_err(FsError::db)?;
            let (len, birth) = v.value();
            Ok((k.value().1, len, birth))
        })
        .collect()
}

/// Whether a block born in `birth` came after snapshot `prev` (every block
/// did when there is none: blocks of file systems made before snapshots
/// are born at 0).
fn born_after(birth: u64, prev: Option<u64>) -> bool {
    prev.is_none_or(|p| birth > p)
}

/// The neighbours of snapshot `pos` of `all` (oldest first): the previous
/// snapshot's generation (none for the oldest) and the dataset whose
/// deadlist follows it (the next snapshot's, or the live tree's).
fn neighbours(all: &[(u64, String, Row)], pos: usize) -> (Option<u64>, u64) {
    let prev = pos.checked_sub(1).map(|p| all[p].0);
    let next = all.get(pos + 1).map_or(LIVE, |(g, _, _)| *g);
    (prev, next)
}

/// The blocks only snapshot `pos` of `all` holds: on the deadlist that
/// follows it, born after the snapshot before it. Deleting it frees
/// exactly these.
fn held_only_by<T: ReadableTable<(u64, u64), (u64, u64)>>(
    deadlist: &T,
    all: &[(u64, String, Row)],
    pos: usize,
) -> Result<Vec<(u64, u64, u64)>> {
    let (prev, next) = neighbours(all, pos);
    Ok(deadlist_of(deadlist, next)?
        .into_iter()
        .filter(|&(_, _, birth)| born_after(birth, prev))
        .collect())
}

/// The generations of every snapshot, oldest first, with their names.
fn generations<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<Vec<(u64, String, Row)>> {
    let mut out = Vec::new();
    for e in t.iter().map_err(FsError::db)? {
        let (k, v) = e.map_err(FsError::db)?;
        let row = decode_row(v.value())?;
        out.push((row.generation, k.value().to_string(), row));
    }
    out.sort_by_key(|(g, _, _)| *g);
    Ok(out)
}

impl Tx<'_> {
    /// Takes snapshot `name` of the tree as this batch leaves it so far.
    pub fn snapshot(&mut self, name: &str, now_ms: u64) -> Result<SnapshotInfo> {
        let files = self.files;
        check_snapshot_name(name)?;
        let mut registry = self.txn.open_table(SNAPSHOTS).map_err(FsError::db)?;
        if registry.get(name).map_err(FsError::db)?.is_some() {
            return Err(FsError::AlreadyExists(format!("snapshot {name} already exists")));
        }
        if registry.len().map_err(FsError::db)? as usize >= MAX_SNAPSHOTS {
            return Err(FsError::FailedPrecondition(format!(
                "the export already keeps {MAX_SNAPSHOTS} snapshots; delete old ones first"
            )));
        }
        let generation = self.generation;
        let view = View::snapshot(generation);
        {
            let mut inodes = self.txn.open_table(view.inodes()).map_err(FsError::db)?;
            for e in self.inodes.iter().map_err(FsError::db)? {
                let (k, v) = e.map_err(FsError::db)?;
                inodes.insert(k.value(), v.value()).map_err(FsError::db)?;
            }
            let mut dirents = self.txn.open_table(view.dirents()).map_err(FsError::db)?;
            for e in self.dirents.iter().map_err(FsError::db)? {
                let (k, v) = e.map_err(FsError::db)?;
                dirents.insert(k.value(), v.value()).map_err(FsError::db)?;
            }
            let mut extents = self.txn.open_table(view.extents()).map_err(FsError::db)?;
            for e in self.extents.iter().map_err(FsError::db)? {
                let (k, v) = e.map_err(FsError::db)?;
                extents.insert(k.value(), v.value()).map_err(FsError::db)?;
            }
        }
        // What the live tree dropped since the previous snapshot is now
        // this one's to account for.
        for (at, len, birth) in deadlist_of(&self.deadlist, LIVE)? {
            self.deadlist.remove((LIVE, at)).map_err(FsError::db)?;
            self.deadlist
                .insert((generation, at), (len, birth))
                .map_err(FsError::db)?;
        }
        let row = Row {
            generation,
            created_ms: now_ms,
            files,
        };
        let bytes = postcard::to_stdvec(&row).map_err(|e| FsError::Io(format!("encoding a snapshot record: {e}")))?;
        registry.insert(name, bytes.as_slice()).map_err(FsError::db)?;
        self.newest_snapshot = generation;
        self.generation += 1;
        Ok(SnapshotInfo {
            name: name.into(),
            generation,
            created_ms: now_ms,
            files,
            unique_bytes: 0,
        })
    }

    /// Deletes snapshot `name`, freeing the blocks only it held.
    pub fn delete_snapshot(&mut self, name: &str) -> Result<()> {
        let mut registry = self.txn.open_table(SNAPSHOTS).map_err(FsError::db)?;
        let all = generations(&registry)?;
        let Some(pos) = all.iter().position(|(_, n, _)| n == name) else {
            return Err(FsError::NotFound(format!(
                "snapshot {name} does not exist; see `nasctl snapshot list`"
            )));
        };
        let this = all[pos].0;
        let (prev, next) = neighbours(&all, pos);
        for (at, len, _) in held_only_by(&self.deadlist, &all, pos)? {
            self.deadlist.remove((next, at)).map_err(FsError::db)?;
            self.held_bytes = self.held_bytes.saturating_sub(len);
            self.freed.push((at, len));
        }
        for (at, len, birth) in deadlist_of(&self.deadlist, this)? {
            self.deadlist.remove((this, at)).map_err(FsError::db)?;
            self.deadlist.insert((next, at), (len, birth)).map_err(FsError::db)?;
        }
        let view = View::snapshot(this);
        self.txn.delete_table(view.inodes()).map_err(FsError::db)?;
        self.txn.delete_table(view.dirents()).map_err(FsError::db)?;
        self.txn.delete_table(view.extents()).map_err(FsError::db)?;
        registry.remove(name).map_err(FsError::db)?;
        if self.newest_snapshot == this {
            self.newest_snapshot = prev.unwrap_or(0);
        }
        Ok(())
    }
}

/// The generation of snapshot `name`.
pub fn generation_of(txn: &ReadTransaction, name: &str) -> Result<u64> {
    let missing = || FsError::NotFound(format!("snapshot {name} does not exist; see `nasctl snapshot list`"));
    let registry = match txn.open_table(SNAPSHOTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(missing()),
        Err(e) => return Err(FsError::db(e)),
    };
    let row = registry.get(name).map_err(FsError::db)?.ok_or_else(missing)?;
    Ok(decode_row(row.value())?.generation)
}

/// Every snapshot, oldest first, with what deleting each would free.
pub fn list(txn: &ReadTransaction) -> Result<Vec<SnapshotInfo>> {
    let registry = match txn.open_table(SNAPSHOTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(FsError::db(e)),
    };
    let deadlist = txn.open_table(DEADLIST).map_err(FsError::db)?;
    let all = generations(&registry)?;
    let mut out = Vec::new();
    for (i, (generation, name, row)) in all.iter().enumerate() {
        let unique_bytes = held_only_by(&deadlist, &all, i)?.iter().map(|(_, len, _)| len).sum();
        out.push(SnapshotInfo {
            name: name.clone(),
            generation: *generation,
            created_ms: row.created_ms,
            files: row.files,
            unique_bytes,
        });
    }
    Ok(out)
}

/// `/.snapshot` itself, as a directory listing shows it.
pub fn snapshot_dir_inode(created_ms: u64) -> Inode {
    Inode {
        ino: SNAPSHOT_DIR_ID,
        kind: FileKind::Dir,
        mode: 0o555,
        uid: 0,
        gid: 0,
        owner: "root".into(),
        size: 0,
        mtime_ms: created_ms,
        parent: ROOT,
        name: SNAPSHOT_DIR.into(),
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockCheck {
    pub data_bytes: u64,
    pub free_bytes: u64,
    pub live_bytes: u64,
    pub held_bytes: u64,
    /// Bytes of the data area that nothing references and that are not free.
    pub leaked_bytes: u64,
    /// Bytes claimed twice: by two files of one tree, by the free table
    /// and a tree, or by a deadlist and the live tree.
    pub double_owned_bytes: u64,
    /// What is wrong, one line each; empty when all is well.
    pub problems: Vec<String>,
}

/// Sorted, merged intervals, and the bytes where the input overlapped itself.
fn union(mut v: Vec<(u64, u64)>) -> (Vec<(u64, u64)>, u64) {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    let mut overlap = 0;
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s < last.1 => {
                overlap += e.min(last.1) - s;
                last.1 = last.1.max(e);
            }
            Some(last) if s == last.1 => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    (out, overlap)
}

fn total(v: &[(u64, u64)]) -> u64 {
    v.iter().map(|(s, e)| e - s).sum()
}

/// Bytes two merged interval lists share.
fn shared(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            n += e - s;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
}

fn extents_of<T: ReadableTable<(u64, u64), Extent>>(t: &T) -> Result<Vec<(u64, u64)>> {
    t.iter()
        .map_err(FsError::db)?
        .map(|e| {
            let (_, v) = e.map_err(FsError::db)?;
            let (at, len, _) = v.value();
            Ok((at, at + len))
        })
        .collect()
}

/// Proves that every block of the data area is in exactly one place: free,
/// used by the live tree, or on one deadlist (held only by snapshots),
/// that every block a snapshot references is not free, and that the
/// counters match.
pub fn check(txn: &ReadTransaction, data_at: u64, data_len: u64) -> Result<BlockCheck> {
    let mut problems = Vec::new();
    let mut double = 0;
    let (live, overlap) = union(extents_of(&txn.open_table(EXTENTS).map_err(FsError::db)?)?);
    if overlap > 0 {
        problems.push(format!("{overlap} bytes are used by two files of the live tree"));
        double += overlap;
    }
    let mut referenced = live.clone();
    let snaps = match txn.open_table(SNAPSHOTS) {
        Ok(t) => generations(&t)?,
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(FsError::db(e)),
    };
    let mut in_snapshots = Vec::new();
    for (generation, name, _) in &snaps {
        let view = View::snapshot(*generation);
        let (refs, overlap) = union(extents_of(&txn.open_table(view.extents()).map_err(FsError::db)?)?);
        if overlap > 0 {
            problems.push(format!("{overlap} bytes are used by two files of snapshot {name}"));
            double += overlap;
        }
        in_snapshots.extend(refs.iter().copied());
        referenced.extend(refs);
    }
    let (referenced, _) = union(referenced);
    let (in_snapshots, _) = union(in_snapshots);
    let free_list: Vec<(u64, u64)> = txn
        .open_table(FREE)
        .map_err(FsError::db)?
        .iter()
        .map_err(FsError::db)?
        .map(|e| {
            let (k, v) = e.map_err(FsError::db)?;
            Ok((k.value(), k.value() + v.value()))
        })
        .collect::<Result<_>>()?;
    let (free, overlap) = union(free_list);
    double += overlap;
    let free_and_used = shared(&free, &referenced);
    if free_and_used > 0 {
        problems.push(format!("{free_and_used} bytes are free and in use at once"));
        double += free_and_used;
    }
    let dead_list: Vec<(u64, u64)> = match txn.open_table(DEADLIST) {
        Ok(t) => t
            .iter()
            .map_err(FsError::db)?
            .map(|e| {
                let (k, v) = e.map_err(FsError::db)?;
                Ok((k.value().1, k.value().1 + v.value().0))
            })
            .collect::<Result<_>>()?,
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(FsError::db(e)),
    };
    let (dead, overlap) = union(dead_list);
    if overlap > 0 {
        problems.push(format!("{overlap} bytes are on two deadlists"));
        double += overlap;
    }
    let dead_and_live = shared(&dead, &live);
    if dead_and_live > 0 {
        problems.push(format!("{dead_and_live} bytes are on a deadlist and in the live tree"));
        double += dead_and_live;
    }
    let orphaned = total(&dead) - shared(&dead, &in_snapshots);
    if orphaned > 0 {
        problems.push(format!("{orphaned} bytes are on a deadlist but in no snapshot"));
    }
    let (area, _) = union(vec![(data_at, data_at + data_len)]);
    let outside = total(&referenced) + total(&free) - shared(&referenced, &area) - shared(&free, &area);
    if outside > 0 {
        problems.push(format!("{outside} bytes referenced or free lie outside the data area"));
    }
    let (accounted, _) = union(referenced.iter().chain(&free).copied().collect());
    let leaked = data_len.saturating_sub(shared(&accounted, &area));
    if leaked > 0 {
        problems.push(format!("{leaked} bytes are neither free nor used (leaked)"));
    }
    let meta = txn.open_table(META).map_err(FsError::db)?;
    for (counter, want, what) in [
        ("free_bytes", total(&free), "free"),
        (tree::HELD_BYTES, total(&dead), "held by snapshots"),
    ] {
        let got = tree::counter(&meta, counter)?;
        if got != want {
            problems.push(format!("the {what} counter says {got} bytes, the tables {want}"));
        }
    }
    Ok(BlockCheck {
        data_bytes: data_len,
        free_bytes: total(&free),
        live_bytes: total(&live),
        held_bytes: total(&dead),
        leaked_bytes: leaked,
        double_owned_bytes: double,
        problems,
    })
}
