//! The tree: inodes, directory entries, extents and stored replies, and
//! every change and read of them inside one redb transaction.
//!
//! Each change checks everything it depends on (names, kinds, permissions,
//! space) before it changes anything, so a refused call leaves the
//! transaction as it found it and the calls batched with it commit
//! normally. Blocks a change frees are returned to the free table only
//! when its batch ends, so no later call of the same (not yet durable)
//! batch can write into them.
//!
//! Blocks a snapshot still holds are never written in place: a change
//! that would overwrite one first gives the file fresh blocks of its own
//! (copy on write), and a block it drops goes to the snapshots' deadlist
//! instead of the free table (see [`super::snapshots`]).
//!
//! Owns the metadata tables; must never write file data outside the
//! extents of the file being written or fresh ones it allocates.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::alloc::{self, FREE};
use super::snapshots::{self, DEADLIST, LIVE, SNAPSHOT_DIR};
use super::volume::SetAttr;
use super::{Attr, Caller, DirEntry, FileKind, FsError, FsPath, Inode, Result, BLOCK, MAX_FILE_SIZE, ROOT, ZEROS};
use crate::array::BlockDevice;
use crate::rt::now_ms;

/// Inode number -> postcard-encoded [`Inode`].
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (directory, name) -> inode number.
pub const DIRENTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("dirents");
/// (inode, file offset) -> [`Extent`]; block-aligned.
pub const EXTENTS: TableDefinition<(u64, u64), Extent> = TableDefinition::new("extents.v2");
/// Extents as file systems made before snapshots keep them, without a
/// birth; `upgrade` moves them to [`EXTENTS`].
const EXTENTS_V1: TableDefinition<(u64, u64), (u64, u64)> = TableDefinition::new("extents");

/// Where a run of a file's blocks lives: (LU offset, length, birth). The
/// birth is the generation the blocks were written in: a snapshot taken
/// at generation g holds every block born at or before g that was still
/// in use then.
pub type Extent = (u64, u64, u64);

/// A run of a file's blocks, clipped to what a caller asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub file: u64,
    pub lu: u64,
    pub len: u64,
    pub birth: u64,
}
/// (client id, sequence number) -> stored reply of a completed call.
pub const REPLIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replies");
/// Counters: "next_ino", "free_bytes", "files", and the snapshot ones
/// ("generation", "newest_snapshot", "held_bytes").
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Read permission bit.
pub const R: u32 = 4;
const W: u32 = 2;
pub const X: u32 = 1;
const STICKY: u32 = 0o1000;

fn decode(bytes: &[u8]) -> Result<Inode> {
    postcard::from_bytes(bytes).map_err(|e| FsError::Corrupt(format!("inode record: {e}")))
}

fn encode(inode: &Inode) -> Vec<u8> {
    postcard::to_stdvec(inode).unwrap_or_default()
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

fn round_down(n: u64) -> u64 {
    n / BLOCK * BLOCK
}

/// Whether `caller` has all of `want` (R, W, X bits) on `inode`.
pub fn allowed(caller: &Caller, inode: &Inode, want: u32) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let bits = if caller.uid == inode.uid {
        inode.mode >> 6
    } else {
        inode.mode
    } & 7;
    bits & want == want
}

/// Fails with PERMISSION_DENIED unless `caller` has `want` on `inode`.
pub fn need(caller: &Caller, inode: &Inode, want: u32, path: &str) -> Result<()> {
    if allowed(caller, inode, want) {
        return Ok(());
    }
    let what = match want {
        R => "read",
        W => "write",
        X => "search",
        _ => "change entries of",
    };
    Err(FsError::PermissionDenied(format!(
        "user {} may not {what} {path} (owner uid {}, mode {:o}); ask its owner",
        caller.user, inode.uid, inode.mode
    )))
}

fn not_found(path: &str) -> FsError {
    FsError::NotFound(format!("{path} does not exist; check the path with `nasctl fs ls`"))
}

/// An inode by number, if it exists.
pub fn inode<T: ReadableTable<u64, &'static [u8]>>(inodes: &T, ino: u64) -> Result<Option<Inode>> {
    match inodes.get(ino).map_err(FsError::db)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

/// An inode a handle names; a missing one was deleted after opening.
pub fn by_handle<T: ReadableTable<u64, &'static [u8]>>(inodes: &T, ino: u64) -> Result<Inode> {
    inode(inodes, ino)?.ok_or_else(|| {
        FsError::NotFound(
            "the file handle names no file of this export (it was deleted, or the handle is not one this export gave); open the path again"
                .to_string(),
        )
    })
}

/// The path of inode `ino`, from its parents' names.
pub fn path_of<T: ReadableTable<u64, &'static [u8]>>(inodes: &T, ino: u64) -> Result<String> {
    let mut names = Vec::new();
    let mut cur = by_handle(inodes, ino)?;
    while cur.ino != ROOT {
        if names.len() > super::MAX_PATH {
            return Err(FsError::Corrupt(format!("inode {ino}'s parents loop")));
        }
        names.push(cur.name.clone());
        cur = by_handle(inodes, cur.parent)?;
    }
    names.reverse();
    Ok(format!("/{}", names.join("/")))
}

/// Walks `path` from the root, checking search permission on the way.
pub fn resolve<I, D>(inodes: &I, dirents: &D, caller: &Caller, path: &FsPath) -> Result<Inode>
where
    I: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<(u64, &'static str), u64>,
{
    let mut cur = inode(inodes, ROOT)?.ok_or_else(|| FsError::Corrupt("the root directory is missing".into()))?;
    let mut walked = String::new();
    for name in path.names() {
        if cur.kind != FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{walked} is a file, not a directory"
            )));
        }
        need(caller, &cur, X, if walked.is_empty() { "/" } else { &walked })?;
        walked.push('/');
        walked.push_str(name);
        let ino = dirents
            .get((cur.ino, name.as_str()))
            .map_err(FsError::db)?
            .map(|v| v.value())
            .ok_or_else(|| not_found(&walked))?;
        cur = inode(inodes, ino)?.ok_or_else(|| FsError::Corrupt(format!("entry {walked} names a missing inode")))?;
    }
    Ok(cur)
}

/// The extents of `ino` overlapping `[start, end)`, clipped to it.
pub fn mapped<E>(extents: &E, ino: u64, start: u64, end: u64) -> Result<Vec<Mapped>>
where
    E: ReadableTable<(u64, u64), Extent>,
{
    let mut out = Vec::new();
    let mut push = |f: u64, (at, len, birth): Extent| {
        let (s, e) = (f.max(start), (f + len).min(end));
        if s < e {
            out.push(Mapped {
                file: s,
                lu: at + (s - f),
                len: e - s,
                birth,
            });
        }
    };
    if let Some(e) = extents.range((ino, 0)..=(ino, start)).map_err(FsError::db)?.next_back() {
        let (k, v) = e.map_err(FsError::db)?;
        push(k.value().1, v.value());
    }
    if start < end {
        for e in extents.range((ino, start + 1)..(ino, end)).map_err(FsError::db)? {
            let (k, v) = e.map_err(FsError::db)?;
            push(k.value().1, v.value());
        }
    }
    Ok(out)
}

/// The extents of `ino` in the blocks `[offset, end)` touches, and the
/// block-aligned gaps between them that a write there must allocate.
#[allow(clippy::type_complexity)]
pub fn plan<E>(extents: &E, ino: u64, offset: u64, end: u64) -> Result<(Vec<Mapped>, Vec<(u64, u64)>)>
where
    E: ReadableTable<(u64, u64), Extent>,
{
    let (astart, aend) = (round_down(offset), round_up(end));
    let have = mapped(extents, ino, astart, aend)?;
    let mut gaps = Vec::new();
    let mut pos = astart;
    for m in &have {
        if m.file > pos {
            gaps.push((pos, m.file));
        }
        pos = m.file + m.len;
    }
    if pos < aend {
        gaps.push((pos, aend));
    }
    Ok((have, gaps))
}

/// What `stat` shows for an inode.
pub fn attr<E>(extents: &E, inode: Inode) -> Result<Attr>
where
    E: ReadableTable<(u64, u64), Extent>,
{
    let (mut head, mut count, mut bytes) = (0, 0, 0);
    for e in extents
        .range((inode.ino, 0)..=(inode.ino, u64::MAX))
        .map_err(FsError::db)?
    {
        let (_, v) = e.map_err(FsError::db)?;
        let (at, len, _) = v.value();
        if count == 0 {
            head = at;
        }
        count += 1;
        bytes += len;
    }
    Ok(Attr {
        inode,
        head_address: head,
        extents: count,
        allocated_bytes: bytes,
    })
}

/// Reads `len` bytes of a file from `offset` (the caller clipped them to
/// the size); holes read as zeros.
pub fn read_data<E>(extents: &E, dev: &dyn BlockDevice, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>>
where
    E: ReadableTable<(u64, u64), Extent>,
{
    let mut buf = vec![0u8; len as usize];
    for m in mapped(extents, ino, offset, offset + len)? {
        let s = (m.file - offset) as usize;
        dev.read_at(m.lu, &mut buf[s..s + m.len as usize])?;
    }
    Ok(buf)
}

/// A page of a directory listing: entries after `after`, at most `limit`.
pub fn list<I, D, E>(
    inodes: &I,
    dirents: &D,
    extents: &E,
    dir: &Inode,
    after: &str,
    limit: usize,
) -> Result<Vec<DirEntry>>
where
    I: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<(u64, &'static str), u64>,
    E: ReadableTable<(u64, u64), Extent>,
{
    let mut out = Vec::new();
    let range = dirents
        .range((dir.ino, after)..(dir.ino + 1, ""))
        .map_err(FsError::db)?;
    for e in range {
        let (k, v) = e.map_err(FsError::db)?;
        let name = k.value().1.to_string();
        if name.as_str() == after {
            continue;
        }
        let child = by_handle(inodes, v.value())?;
        out.push(DirEntry {
            name,
            attr: attr(extents, child)?,
        });
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// A batch's view of the tables, open for change.
pub struct Tx<'t> {
    pub(super) txn: &'t WriteTransaction,
    pub inodes: Table<'t, u64, &'static [u8]>,
    pub dirents: Table<'t, (u64, &'static str), u64>,
    pub extents: Table<'t, (u64, u64), Extent>,
    pub replies: Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) free: Table<'t, u64, u64>,
    pub(super) deadlist: Table<'t, (u64, u64), (u64, u64)>,
    meta: Table<'t, &'static str, u64>,
    dev: &'t dyn BlockDevice,
    free_bytes: u64,
    pub(super) files: u64,
    next_ino: u64,
    /// Blocks written by this batch are born in this generation.
    pub(super) generation: u64,
    /// Generation of the newest snapshot (0: none): blocks born at or
    /// before it are shared with it.
    pub(super) newest_snapshot: u64,
    /// Bytes only snapshots hold (the sum of every deadlist).
    pub(super) held_bytes: u64,
    /// Blocks freed by this batch, returned to the free table at its end.
    pub(super) freed: Vec<(u64, u64)>,
}

/// Counter names of the meta table.
pub(super) const GENERATION: &str = "generation";
pub(super) const NEWEST_SNAPSHOT: &str = "newest_snapshot";
pub(super) const HELD_BYTES: &str = "held_bytes";

/// Moves the extents of a file system made before snapshots to the table
/// that records births (all born at generation 0, before any snapshot).
pub fn upgrade(txn: &WriteTransaction) -> Result<bool> {
    use redb::TableHandle;
    let mut tables = txn.list_tables().map_err(FsError::db)?;
    if !tables.any(|t| t.name() == EXTENTS_V1.name()) {
        return Ok(false);
    }
    let old: Vec<((u64, u64), (u64, u64))> = txn
        .open_table(EXTENTS_V1)
        .map_err(FsError::db)?
        .iter()
        .map_err(FsError::db)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value())).map_err(FsError::db))
        .collect::<Result<_>>()?;
    txn.delete_table(EXTENTS_V1).map_err(FsError::db)?;
    let mut new = txn.open_table(EXTENTS).map_err(FsError::db)?;
    for (k, (at, len)) in old {
        new.insert(k, (at, len, 0)).map_err(FsError::db)?;
    }
    Ok(true)
}

/// A counter of the meta table (0 before it is first written).
pub fn counter<M: ReadableTable<&'static str, u64>>(meta: &M, key: &str) -> Result<u64> {
    Ok(meta.get(key).map_err(FsError::db)?.map(|v| v.value()).unwrap_or(0))
}

/// Whether blocks born in generation `birth` are held by a snapshot, the
/// newest one being of generation `newest_snapshot` (0: none): every block
/// a file still uses that was born by then.
pub fn held_by_snapshot(birth: u64, newest_snapshot: u64) -> bool {
    newest_snapshot != 0 && birth <= newest_snapshot
}

/// Refuses a write that needs more fresh bytes than are free.
pub fn check_space(need: u64, free: u64) -> Result<()> {
    if need > free {
        return Err(FsError::NoSpace(format!(
            "the file system is full: the write needs {} KiB, {} KiB are free; delete files to make room",
            need >> 10,
            free >> 10
        )));
    }
    Ok(())
}

impl<'t> Tx<'t> {
    pub fn open(txn: &'t WriteTransaction, dev: &'t dyn BlockDevice) -> Result<Self> {
        let meta = txn.open_table(META).map_err(FsError::db)?;
        Ok(Tx {
            txn,
            free_bytes: counter(&meta, "free_bytes")?,
            files: counter(&meta, "files")?,
            next_ino: counter(&meta, "next_ino")?.max(ROOT + 1),
            generation: counter(&meta, GENERATION)?.max(1),
            newest_snapshot: counter(&meta, NEWEST_SNAPSHOT)?,
            held_bytes: counter(&meta, HELD_BYTES)?,
            inodes: txn.open_table(INODES).map_err(FsError::db)?,
            dirents: txn.open_table(DIRENTS).map_err(FsError::db)?,
            extents: txn.open_table(EXTENTS).map_err(FsError::db)?,
            replies: txn.open_table(REPLIES).map_err(FsError::db)?,
            free: txn.open_table(FREE).map_err(FsError::db)?,
            deadlist: txn.open_table(DEADLIST).map_err(FsError::db)?,
            meta,
            dev,
            freed: Vec::new(),
        })
    }

    /// Creates the root and the free space of an empty file system.
    pub fn format(&mut self, data_at: u64, data_len: u64) -> Result<()> {
        let root = Inode {
            ino: ROOT,
            kind: FileKind::Dir,
            mode: 0o1777,
            uid: 0,
            gid: 0,
            owner: "root".into(),
            size: 0,
            mtime_ms: now_ms(),
            parent: ROOT,
            name: String::new(),
        };
        self.put(&root)?;
        alloc::release(&mut self.free, data_at, data_len)?;
        self.free_bytes = data_len;
        Ok(())
    }

    /// Whether this batch freed blocks (its commit must then be durable:
    /// a later batch may reuse them).
    pub fn frees(&self) -> bool {
        !self.freed.is_empty()
    }

    /// Returns the batch's freed blocks and writes the counters.
    pub fn finish(mut self) -> Result<()> {
        for (at, len) in std::mem::take(&mut self.freed) {
            alloc::release(&mut self.free, at, len)?;
            self.free_bytes += len;
        }
        for (k, v) in [
            ("free_bytes", self.free_bytes),
            ("files", self.files),
            ("next_ino", self.next_ino),
            (GENERATION, self.generation),
            (NEWEST_SNAPSHOT, self.newest_snapshot),
            (HELD_BYTES, self.held_bytes),
        ] {
            self.meta.insert(k, v).map_err(FsError::db)?;
        }
        Ok(())
    }

    fn put(&mut self, inode: &Inode) -> Result<()> {
        self.inodes
            .insert(inode.ino, encode(inode).as_slice())
            .map_err(FsError::db)?;
        Ok(())
    }

    fn resolve(&self, caller: &Caller, path: &FsPath) -> Result<Inode> {
        resolve(&self.inodes, &self.dirents, caller, path)
    }

    /// The parent directory of `path`, checked for changing its entries,
    /// and the last name.
    fn parent_of<'p>(&self, caller: &Caller, path: &'p FsPath) -> Result<(Inode, &'p str)> {
        if path.names().first().is_some_and(|n| n == SNAPSHOT_DIR) {
            return Err(snapshots::read_only(path));
        }
        let (parent_path, name) = path
            .split_last()
            .ok_or_else(|| FsError::InvalidArgument("the root directory cannot be changed this way".into()))?;
        let parent = self.resolve(caller, &parent_path)?;
        if parent.kind != FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{parent_path} is a file, not a directory"
            )));
        }
        need(caller, &parent, W | X, &parent_path.to_string())?;
        Ok((parent, name))
    }

    fn child(&self, dir: u64, name: &str) -> Result<Option<Inode>> {
        let ino = self.dirents.get((dir, name)).map_err(FsError::db)?.map(|v| v.value());
        match ino {
            Some(i) => Ok(Some(by_handle(&self.inodes, i)?)),
            None => Ok(None),
        }
    }

    /// In a sticky directory only the owner of an entry (or of the
    /// directory) may remove or replace it.
    fn sticky_ok(caller: &Caller, dir: &Inode, victim: &Inode, path: &FsPath) -> Result<()> {
        if dir.mode & STICKY != 0 && caller.uid != 0 && caller.uid != victim.uid && caller.uid != dir.uid {
            return Err(FsError::PermissionDenied(format!(
                "{path} belongs to {}; only its owner may remove or replace it",
                victim.owner
            )));
        }
        Ok(())
    }

    fn new_inode(&mut self, caller: &Caller, kind: FileKind, mode: u32, parent: u64, name: &str) -> Result<Inode> {
        let inode = Inode {
            ino: self.next_ino,
            kind,
            mode: mode & 0o7777,
            uid: caller.uid,
            gid: caller.uid,
            owner: caller.user.clone(),
            size: 0,
            mtime_ms: now_ms(),
            parent,
            name: name.to_string(),
        };
        self.next_ino += 1;
        self.files += 1;
        self.put(&inode)?;
        self.dirents.insert((parent, name), inode.ino).map_err(FsError::db)?;
        self.touch(parent)?;
        Ok(inode)
    }

    fn touch(&mut self, ino: u64) -> Result<()> {
        let mut i = by_handle(&self.inodes, ino)?;
        i.mtime_ms = now_ms();
        self.put(&i)
    }

    pub fn mkdir(&mut self, caller: &Caller, path: &FsPath, mode: u32) -> Result<Attr> {
        let (parent, name) = self.parent_of(caller, path)?;
        if self.child(parent.ino, name)?.is_some() {
            return Err(FsError::AlreadyExists(format!("{path} already exists")));
        }
        let inode = self.new_inode(caller, FileKind::Dir, mode, parent.ino, name)?;
        attr(&self.extents, inode)
    }

    /// Creates a file, or opens an existing one for writing (`exclusive`
    /// refuses that), emptying it if `truncate`.
    pub fn create(
        &mut self,
        caller: &Caller,
        path: &FsPath,
        mode: u32,
        exclusive: bool,
        truncate: bool,
    ) -> Result<Attr> {
        let (parent, name) = self.parent_of(caller, path)?;
        if let Some(existing) = self.child(parent.ino, name)? {
            if exclusive {
                return Err(FsError::AlreadyExists(format!("{path} already exists")));
            }
            if existing.kind == FileKind::Dir {
                return Err(FsError::FailedPrecondition(format!("{path} is a directory")));
            }
            need(caller, &existing, W, &path.to_string())?;
            if truncate {
                return self.truncate(caller, existing.ino, 0);
            }
            return attr(&self.extents, existing);
        }
        let inode = self.new_inode(caller, FileKind::File, mode, parent.ino, name)?;
        attr(&self.extents, inode)
    }

    fn writable_file(&self, caller: &Caller, ino: u64) -> Result<Inode> {
        if snapshots::split(ino).0 != LIVE {
            return Err(snapshots::read_only_handle());
        }
        let inode = by_handle(&self.inodes, ino)?;
        if inode.kind != FileKind::File {
            return Err(FsError::FailedPrecondition(format!("handle {ino} is a directory")));
        }
        need(caller, &inode, W, &format!("file {}", inode.name))?;
        Ok(inode)
    }

    /// Writes `data` at `offset`; returns the file's new size.
    pub fn write(&mut self, caller: &Caller, ino: u64, offset: u64, data: &[u8]) -> Result<u64> {
        let mut inode = self.writable_file(caller, ino)?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or_else(|| {
                FsError::OutOfRange(format!(
                    "a write of {} bytes at {offset} goes past the largest file size ({} GiB)",
                    data.len(),
                    MAX_FILE_SIZE >> 30
                ))
            })?;
        if data.is_empty() {
            return Ok(inode.size);
        }
        // Plan first: what is mapped, and what fresh blocks the gaps and
        // the blocks snapshots hold need.
        let (astart, aend) = (round_down(offset), round_up(end));
        let (have, gaps) = plan(&self.extents, ino, offset, end)?;
        let mut want: u64 = gaps.iter().map(|(s, e)| e - s).sum();
        want += self.shared_bytes(ino, astart, aend)?;
        if offset > inode.size {
            let tail = (round_down(inode.size), round_up(inode.size));
            if tail.1 <= astart {
                want += self.shared_bytes(ino, tail.0, tail.1)?;
            }
        }
        self.check_space(want)?;
        // Growing past the old size: the old last block's tail must read as
        // zeros where this write does not cover it.
        if offset > inode.size {
            self.zero_tail(ino, inode.size, offset)?;
        }
        let (have, gaps) = if self.newest_snapshot == 0 {
            (have, gaps)
        } else {
            self.own(ino, astart, aend, (offset, end))?;
            plan(&self.extents, ino, offset, end)?
        };
        for m in have {
            let (s, e) = (m.file.max(offset), (m.file + m.len).min(end));
            if s < e {
                let src = &data[(s - offset) as usize..(e - offset) as usize];
                self.dev.write_at(m.lu + (s - m.file), src)?;
            }
        }
        let mut hint = self.hint(ino, astart)?;
        for (gs, ge) in gaps {
            let pieces = alloc::allocate(&mut self.free, ge - gs, hint)?;
            self.free_bytes -= ge - gs;
            let mut f = gs;
            for (at, n) in pieces {
                let (s, e) = (f.max(offset), (f + n).min(end));
                if s == f && e == f + n {
                    // Whole blocks of data: no padding to add.
                    self.dev
                        .write_at(at, &data[(s - offset) as usize..(e - offset) as usize])?;
                } else {
                    let mut buf = vec![0u8; n as usize];
                    if s < e {
                        buf[(s - f) as usize..(e - f) as usize]
                            .copy_from_slice(&data[(s - offset) as usize..(e - offset) as usize]);
                    }
                    self.dev.write_at(at, &buf)?;
                }
                self.add_extent(ino, f, at, n, self.generation)?;
                f += n;
                hint = at + n;
            }
        }
        inode.size = inode.size.max(end);
        inode.mtime_ms = now_ms();
        self.put(&inode)?;
        Ok(inode.size)
    }

    /// Where fresh blocks for `ino` at file offset `f` should come from:
    /// right after the extent before it, so files stay contiguous.
    fn hint(&self, ino: u64, f: u64) -> Result<u64> {
        let prev = self.extents.range((ino, 0)..(ino, f)).map_err(FsError::db)?.next_back();
        match prev {
            Some(e) => {
                let (_, v) = e.map_err(FsError::db)?;
                let (at, len, _) = v.value();
                Ok(at + len)
            }
            None => Ok(0),
        }
    }

    /// Records an extent, merging it into the one before when both are
    /// contiguous in the file and on the LU and were born together.
    fn add_extent(&mut self, ino: u64, f: u64, at: u64, len: u64, birth: u64) -> Result<()> {
        let prev = match self.extents.range((ino, 0)..(ino, f)).map_err(FsError::db)?.next_back() {
            Some(e) => {
                let (k, v) = e.map_err(FsError::db)?;
                Some((k.value().1, v.value()))
            }
            None => None,
        };
        if let Some((pf, (pat, plen, pbirth))) = prev {
            if pf + plen == f && pat + plen == at && pbirth == birth {
                self.extents
                    .insert((ino, pf), (pat, plen + len, birth))
                    .map_err(FsError::db)?;
                return Ok(());
            }
        }
        self.extents.insert((ino, f), (at, len, birth)).map_err(FsError::db)?;
        Ok(())
    }

    /// Refuses a change that needs more fresh bytes than are free, naming
    /// what snapshots hold when they hold anything.
    fn check_space(&self, need: u64) -> Result<()> {
        check_space(need, self.free_bytes).map_err(|e| match e {
            FsError::NoSpace(m) if self.newest_snapshot != 0 || self.held_bytes > 0 => FsError::NoSpace(format!(
                "{m}, or delete snapshots: they hold {} KiB only they use, and overwriting blocks they share \
                 with files takes fresh ones",
                self.held_bytes >> 10
            )),
            e => e,
        })
    }

    /// Whether blocks born in generation `birth` are held by a snapshot.
    pub(super) fn is_shared(&self, birth: u64) -> bool {
        held_by_snapshot(birth, self.newest_snapshot)
    }

    /// Bytes of `ino`'s blocks in `[start, end)` that a snapshot holds.
    fn shared_bytes(&self, ino: u64, start: u64, end: u64) -> Result<u64> {
        if self.newest_snapshot == 0 {
            return Ok(0);
        }
        Ok(mapped(&self.extents, ino, start, end)?
            .iter()
            .filter(|m| self.is_shared(m.birth))
            .map(|m| m.len)
            .sum())
    }

    /// Gives `ino` blocks of its own in place of those of `[start, end)`
    /// (block-aligned) that a snapshot holds: fresh blocks, with the old
    /// contents copied into the blocks the caller will not overwrite whole
    /// (`cover` is the byte range it will write), and the old blocks go to
    /// the snapshots. The caller has checked the space.
    fn own(&mut self, ino: u64, start: u64, end: u64, cover: (u64, u64)) -> Result<()> {
        if self.newest_snapshot == 0 {
            return Ok(());
        }
        let shared: Vec<Mapped> = mapped(&self.extents, ino, start, end)?
            .into_iter()
            .filter(|m| self.is_shared(m.birth))
            .collect();
        // Only the blocks at the edges of the write can be partly covered.
        let partial: Vec<u64> = [cover.0, cover.1]
            .into_iter()
            .filter(|b| b % BLOCK != 0)
            .map(round_down)
            .collect();
        for m in shared {
            self.unmap(ino, m.file, m.file + m.len)?;
            let hint = self.hint(ino, m.file)?;
            let pieces = alloc::allocate(&mut self.free, m.len, hint)?;
            self.free_bytes -= m.len;
            let mut f = m.file;
            for (at, n) in pieces {
                for &b in partial.iter().filter(|&&b| (f..f + n).contains(&b)) {
                    let mut block = vec![0u8; BLOCK as usize];
                    self.dev.read_at(m.lu + (b - m.file), &mut block)?;
                    self.dev.write_at(at + (b - f), &block)?;
                }
                self.add_extent(ino, f, at, n, self.generation)?;
                f += n;
            }
            self.kill(m.lu, m.len, m.birth)?;
        }
        Ok(())
    }

    /// Drops blocks a file no longer uses: to the free table at the end of
    /// the batch, or, when a snapshot holds them, to the live deadlist.
    pub(super) fn kill(&mut self, at: u64, len: u64, birth: u64) -> Result<()> {
        if self.is_shared(birth) {
            self.deadlist.insert((LIVE, at), (len, birth)).map_err(FsError::db)?;
            self.held_bytes += len;
        } else {
            self.freed.push((at, len));
        }
        Ok(())
    }

    /// Removes the mapping of `[start, end)` (block-aligned) from `ino`,
    /// splitting extents at its edges; returns what was mapped there.
    fn unmap(&mut self, ino: u64, start: u64, end: u64) -> Result<Vec<Mapped>> {
        let pieces = mapped(&self.extents, ino, start, end)?;
        let mut overlapping = Vec::new();
        if let Some(e) = self
            .extents
            .range((ino, 0)..=(ino, start))
            .map_err(FsError::db)?
            .next_back()
        {
            let (k, v) = e.map_err(FsError::db)?;
            overlapping.push((k.value().1, v.value()));
        }
        if start < end {
            for e in self.extents.range((ino, start + 1)..(ino, end)).map_err(FsError::db)? {
                let (k, v) = e.map_err(FsError::db)?;
                overlapping.push((k.value().1, v.value()));
            }
        }
        for (f, (at, len, birth)) in overlapping {
            if f + len <= start {
                continue;
            }
            self.extents.remove((ino, f)).map_err(FsError::db)?;
            if f < start {
                self.extents
                    .insert((ino, f), (at, start - f, birth))
                    .map_err(FsError::db)?;
            }
            if f + len > end {
                self.extents
                    .insert((ino, end), (at + (end - f), f + len - end, birth))
                    .map_err(FsError::db)?;
            }
        }
        Ok(pieces)
    }

    /// Zeros the mapped bytes of `[from, to)` (beyond the old size, so
    /// invisible until the size grows over them).
    fn zero_tail(&mut self, ino: u64, from: u64, to: u64) -> Result<()> {
        let end = to.min(round_up(from));
        self.own(ino, round_down(from), round_up(from), (from, end))?;
        for m in mapped(&self.extents, ino, from, end)? {
            let mut done = 0;
            while done < m.len {
                let k = (m.len - done).min(ZEROS.len() as u64);
                self.dev.write_at(m.lu + done, &ZEROS[..k as usize])?;
                done += k;
            }
        }
        Ok(())
    }

    /// Sets a file's size: shrinking frees the blocks past it, growing
    /// leaves a hole that reads as zeros.
    pub fn truncate(&mut self, caller: &Caller, ino: u64, size: u64) -> Result<Attr> {
        let mut inode = self.writable_file(caller, ino)?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::OutOfRange(format!(
                "size {size} is past the largest file size ({} GiB)",
                MAX_FILE_SIZE >> 30
            )));
        }
        if size > inode.size {
            let tail = (round_down(inode.size), round_up(inode.size));
            self.check_space(self.shared_bytes(ino, tail.0, tail.1)?)?;
            self.zero_tail(ino, inode.size, size)?;
        } else {
            self.free_from(ino, round_up(size))?;
        }
        inode.size = size;
        inode.mtime_ms = now_ms();
        self.put(&inode)?;
        attr(&self.extents, inode)
    }

    /// Gives a file or directory the mode, owner and update time a backup
    /// recorded. Only root may: it is how a restore puts back what no
    /// ordinary call sets.
    pub fn set_attr(&mut self, caller: &Caller, ino: u64, set: &SetAttr) -> Result<Attr> {
        if caller.uid != 0 {
            return Err(FsError::PermissionDenied(
                "only root sets a file's owner, mode and update time".into(),
            ));
        }
        if snapshots::split(ino).0 != LIVE {
            return Err(snapshots::read_only_handle());
        }
        let mut inode = by_handle(&self.inodes, ino)?;
        inode.mode = set.mode & 0o7777;
        inode.uid = set.uid;
        inode.gid = set.gid;
        inode.owner.clone_from(&set.owner);
        inode.mtime_ms = set.mtime_ms;
        self.put(&inode)?;
        attr(&self.extents, inode)
    }

    /// Drops every block of `ino` at file offset `from` (block-aligned) or
    /// beyond.
    fn free_from(&mut self, ino: u64, from: u64) -> Result<()> {
        for m in self.unmap(ino, from, u64::MAX)? {
            self.kill(m.lu, m.len, m.birth)?;
        }
        Ok(())
    }

    /// Removes an inode and frees its blocks.
    fn drop_inode(&mut self, inode: &Inode) -> Result<()> {
        self.free_from(inode.ino, 0)?;
        self.inodes.remove(inode.ino).map_err(FsError::db)?;
        self.files = self.files.saturating_sub(1);
        Ok(())
    }

    pub fn unlink(&mut self, caller: &Caller, path: &FsPath) -> Result<()> {
        let (parent, name) = self.parent_of(caller, path)?;
        let victim = self
            .child(parent.ino, name)?
            .ok_or_else(|| not_found(&path.to_string()))?;
        if victim.kind == FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is a directory; remove it with rmdir"
            )));
        }
        Self::sticky_ok(caller, &parent, &victim, path)?;
        self.dirents.remove((parent.ino, name)).map_err(FsError::db)?;
        self.drop_inode(&victim)?;
        self.touch(parent.ino)
    }

    fn is_empty_dir(&self, ino: u64) -> Result<bool> {
        Ok(self
            .dirents
            .range((ino, "")..(ino + 1, ""))
            .map_err(FsError::db)?
            .next()
            .is_none())
    }

    pub fn rmdir(&mut self, caller: &Caller, path: &FsPath) -> Result<()> {
        let (parent, name) = self.parent_of(caller, path)?;
        let victim = self
            .child(parent.ino, name)?
            .ok_or_else(|| not_found(&path.to_string()))?;
        if victim.kind != FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is a file; remove it with rm"
            )));
        }
        if !self.is_empty_dir(victim.ino)? {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is not empty; remove its entries first"
            )));
        }
        Self::sticky_ok(caller, &parent, &victim, path)?;
        self.dirents.remove((parent.ino, name)).map_err(FsError::db)?;
        self.drop_inode(&victim)?;
        self.touch(parent.ino)
    }

    /// Moves `from` to `to` in one step, replacing a file (or an empty
    /// directory) at `to`.
    pub fn rename(&mut self, caller: &Caller, from: &FsPath, to: &FsPath) -> Result<Attr> {
        if from.is_root() || to.is_root() {
            return Err(FsError::InvalidArgument(
                "the root directory cannot be renamed or replaced".into(),
            ));
        }
        if to.starts_with(from) && to != from {
            return Err(FsError::InvalidArgument(format!(
                "cannot move {from} into itself ({to})"
            )));
        }
        let (src_dir, src_name) = self.parent_of(caller, from)?;
        let (dst_dir, dst_name) = self.parent_of(caller, to)?;
        let mut moving = self
            .child(src_dir.ino, src_name)?
            .ok_or_else(|| not_found(&from.to_string()))?;
        Self::sticky_ok(caller, &src_dir, &moving, from)?;
        let replaced = self.child(dst_dir.ino, dst_name)?;
        if let Some(old) = &replaced {
            if old.ino == moving.ino {
                return attr(&self.extents, moving);
            }
            match (moving.kind, old.kind) {
                (FileKind::Dir, FileKind::File) => {
                    return Err(FsError::FailedPrecondition(format!(
                        "{to} is a file; a directory cannot replace it"
                    )))
                }
                (FileKind::File, FileKind::Dir) => {
                    return Err(FsError::FailedPrecondition(format!(
                        "{to} is a directory; a file cannot replace it"
                    )))
                }
                (FileKind::Dir, FileKind::Dir) if !self.is_empty_dir(old.ino)? => {
                    return Err(FsError::FailedPrecondition(format!(
                        "{to} is a directory that is not empty"
                    )))
                }
                _ => {}
            }
            Self::sticky_ok(caller, &dst_dir, old, to)?;
        }
        if let Some(old) = replaced {
            self.drop_inode(&old)?;
        }
        self.dirents.remove((src_dir.ino, src_name)).map_err(FsError::db)?;
        self.dirents
            .insert((dst_dir.ino, dst_name), moving.ino)
            .map_err(FsError::db)?;
        moving.parent = dst_dir.ino;
        moving.name = dst_name.to_string();
        self.put(&moving)?;
        self.touch(src_dir.ino)?;
        if dst_dir.ino != src_dir.ino {
            self.touch(dst_dir.ino)?;
        }
        attr(&self.extents, moving)
    }

    /// The stored reply of a completed call, if any.
    pub fn reply(&self, client: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .replies
            .get((client, seq))
            .map_err(FsError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Stores a call's reply and forgets those the client has seen
    /// (every sequence number below `acked`).
    pub fn record(&mut self, client: &str, seq: u64, acked: u64, reply: &[u8]) -> Result<()> {
        self.replies.insert((client, seq), reply).map_err(FsError::db)?;
        if acked > 0 {
            self.replies
                .retain_in((client, 0)..(client, acked.min(seq)), |_, _| false)
                .map_err(FsError::db)?;
        }
        Ok(())
    }

    /// Forgets every stored reply of a client whose session ended.
    pub fn forget(&mut self, client: &str) -> Result<()> {
        self.replies
            .retain_in((client, 0)..=(client, u64::MAX), |_, _| false)
            .map_err(FsError::db)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableHandle};

    /// A file system made before snapshots keeps its extents, now born at
    /// generation 0 (before any snapshot), and the old table is gone.
    #[test]
    fn extents_without_births_are_upgraded_once() {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut old = txn.open_table(EXTENTS_V1).unwrap();
            old.insert((5, 0), (1 << 20, 8192)).unwrap();
            old.insert((5, 8192), (4 << 20, 4096)).unwrap();
        }
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        assert!(upgrade(&txn).unwrap());
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let names: Vec<String> = read.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        assert!(!names.contains(&"extents".to_string()), "{names:?}");
        let new = read.open_table(EXTENTS).unwrap();
        assert_eq!(new.get((5, 0)).unwrap().unwrap().value(), (1 << 20, 8192, 0));
        assert_eq!(new.get((5, 8192)).unwrap().unwrap().value(), (4 << 20, 4096, 0));
        let txn = db.begin_write().unwrap();
        assert!(!upgrade(&txn).unwrap(), "nothing left to upgrade");
    }
}
