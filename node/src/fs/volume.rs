//! A mounted file system: one writer thread that commits changes in
//! groups, and reads that run concurrently on redb snapshots.
//!
//! Group commit: the writer takes every change waiting in its queue, applies
//! them one after another in a single transaction and commits once, so 64
//! clients pay for one flush of the LU instead of 64. A change that is
//! refused does not disturb the others; an I/O failure aborts the whole
//! group, and every caller in it is told nothing was committed.
//!
//! Changes that carry a (client id, sequence number) store their reply in
//! the same transaction; the same call sent again gets the stored reply
//! and is not applied twice.
//!
//! Reads take the data lock shared and the writer takes it exclusive, so a
//! read never sees an extent whose blocks a concurrent change has freed
//! and reused.
//!
//! The metadata area must never fill up to the last page: a transaction
//! that fails there leaves redb refusing every later one. So the writer
//! counts redb's pages now and then, and once less than a reserve is left,
//! refuses changes that would add to the metadata, while those that free
//! space (unlink, rmdir, truncate) go on in the reserve, one per
//! transaction. Should a group fail in the database all the same, the
//! writer reopens it. Owns the redb database of the LU; must never let a
//! caller reach it except through [`Volume`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::backend::LuBackend;
use super::layout::Superblock;
use super::snapshots::{self, BlockCheck, SnapshotInfo, View, SNAPSHOT_DIR, SNAPSHOT_DIR_ID};
use super::tree::{self, Tx, EXTENTS, META, REPLIES};
use super::{Attr, Caller, DirEntry, FileKind, FsError, FsPath, Inode, Result, Space, MAX_FILE_SIZE, ROOT};
use crate::array::BlockDevice;

/// One change to the tree.
#[derive(Debug, Clone)]
pub enum Change {
    Mkdir {
        path: FsPath,
        mode: u32,
    },
    /// Create a file, or open an existing one for writing.
    Create {
        path: FsPath,
        mode: u32,
        exclusive: bool,
        truncate: bool,
    },
    Write {
        ino: u64,
        offset: u64,
        data: bytes::Bytes,
    },
    Truncate {
        ino: u64,
        size: u64,
    },
    Unlink {
        path: FsPath,
    },
    Rmdir {
        path: FsPath,
    },
    Rename {
        from: FsPath,
        to: FsPath,
    },
    /// Changes nothing; committed durably, it makes every change before it
    /// durable too (the pieces of a streamed write). Fails if the file is gone.
    Sync {
        ino: u64,
    },
    /// Drop the stored replies of a client whose session ended.
    Forget {
        client: String,
    },
    /// Take a snapshot of the tree as the changes before it leave it.
    Snapshot {
        name: String,
    },
    DeleteSnapshot {
        name: String,
    },
    /// Set what a backup recorded of a file or directory (root only).
    SetAttr {
        ino: u64,
        set: SetAttr,
    },
}

/// The attributes a restore puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub owner: String,
    pub mtime_ms: u64,
}

/// What a change returns; stored as the reply of an exactly-once call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Attr(Attr),
    /// The file's size after a write.
    Size(u64),
    Done,
    // Stored replies are postcard: new variants go last, so that the
    // replies stored by an older nasd still decode.
    Snapshot(SnapshotInfo),
}

/// Identifies one client call for exactly-once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallId {
    pub client: String,
    pub seq: u64,
    /// Every call of this client below this number has been answered.
    pub acked: u64,
}

/// A change, who makes it, and how it must be committed.
#[derive(Debug, Clone)]
pub struct Request {
    pub caller: Caller,
    pub change: Change,
    pub call: Option<CallId>,
    /// Whether the caller waits for the change to be durable (every change
    /// but the pieces of a streamed write).
    pub durable: bool,
    /// For the pieces of a streamed write: the database generation (see
    /// [`Volume::generation`]) when its first piece was sent. Refused if
    /// the database was reopened since: the earlier pieces, committed but
    /// not durable, did not survive that.
    pub stream_since: Option<u64>,
}

struct Job {
    req: Request,
    reply: oneshot::Sender<Result<Outcome>>,
}

struct Inner {
    /// Replaced whole when the writer reopens it; readers keep the one
    /// they started with.
    db: RwLock<Arc<Database>>,
    dev: Arc<dyn BlockDevice>,
    data_lock: RwLock<()>,
    data_len: u64,
    meta_len: u64,
    /// Less than the reserve is left in the metadata area.
    meta_full: AtomicBool,
    /// When the writer last counted the database's pages, and commits since.
    usage_checked: std::sync::Mutex<(std::time::Instant, u32)>,
    /// The database's length, as its storage backend set it.
    db_len: Arc<std::sync::atomic::AtomicU64>,
    /// Times the database was reopened.
    generation: std::sync::atomic::AtomicU64,
    /// Why the database cannot be reopened, once it cannot: every call
    /// gets this from then on.
    broken: std::sync::Mutex<Option<FsError>>,
}

/// Opens the database in the metadata area of `dev`, as its superblock
/// describes it (a new one when `sb` is given: the LU is being formatted).
fn open_db(dev: &Arc<dyn BlockDevice>, sb: Superblock, db_len: &Arc<std::sync::atomic::AtomicU64>) -> Result<Database> {
    let backend = LuBackend::new(dev.clone(), sb, db_len.clone());
    Database::builder()
        .set_cache_size(64 << 20)
        .create_with_backend(backend)
        .map_err(|e| FsError::Corrupt(format!("the file system's metadata cannot be opened: {e}")))
}

/// A mounted file system; dropping it stops its writer once the queue is
/// empty.
pub struct Volume {
    inner: Arc<Inner>,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Set when the volume is about to be unmounted: calls that wait on
    /// their client (a stream the client stopped sending, a lock wait)
    /// give up at once instead of holding the unmount up.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Drop for Volume {
    /// Waits for the writer to finish its queue and close the database, so
    /// the LU can be mounted again (here or by another CHN) right after.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Most changes committed by one transaction.
const GROUP: usize = 256;

impl Volume {
    /// Mounts the file system on `dev`, formatting an LU that holds none.
    pub fn mount(dev: Arc<dyn BlockDevice>) -> Result<Volume> {
        let (sb, fresh) = match Superblock::read(dev.as_ref())? {
            Some(sb) => (sb, false),
            None => (Superblock::for_capacity(dev.len(), rand::random())?, true),
        };
        let (data_at, data_len, meta_len) = (sb.data_at, sb.data_len, sb.meta_len);
        let db_len = Arc::default();
        let db = open_db(&dev, sb, &db_len)?;
        if fresh {
            let txn = db.begin_write().map_err(FsError::db)?;
            {
                let mut tx = Tx::open(&txn, dev.as_ref())?;
                tx.format(data_at, data_len)?;
                tx.finish()?;
            }
            txn.commit().map_err(FsError::db)?;
            tracing::info!(data_mib = data_len >> 20, "formatted a file system");
        } else {
            let txn = db.begin_write().map_err(FsError::db)?;
            if tree::upgrade(&txn)? {
                txn.commit().map_err(FsError::db)?;
                tracing::info!("file-system extents now record their birth (for snapshots)");
            } else {
                txn.abort().map_err(FsError::db)?;
            }
        }
        let inner = Arc::new(Inner {
            db: RwLock::new(Arc::new(db)),
            dev,
            data_lock: RwLock::new(()),
            data_len,
            meta_len,
            meta_full: AtomicBool::new(false),
            usage_checked: std::sync::Mutex::new((std::time::Instant::now(), 0)),
            db_len,
            generation: Default::default(),
            broken: std::sync::Mutex::new(None),
        });
        let (queue, rx) = mpsc::channel();
        let writer = inner.clone();
        // The writer logs within the span its volume was mounted in (the
        // export it serves).
        let span = tracing::Span::current();
        let writer = std::thread::Builder::new()
            .name("fs-writer".into())
            .spawn(move || span.in_scope(|| writer.run(rx)))
            .map_err(|e| FsError::Io(format!("cannot start the file-system writer: {e}")))?;
        Ok(Volume {
            inner,
            queue: Some(queue),
            writer: Some(writer),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Tells the calls waiting on their clients to give up: the volume is
    /// about to be unmounted.
    pub fn close_calls(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`Volume::close_calls`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Applies a change; returns once it is committed (durably if asked).
    pub async fn change(&self, req: Request) -> Result<Outcome> {
        let rx = self.enqueue(req)?;
        rx.await
            .map_err(|_| FsError::Io("the file-system writer stopped".into()))?
    }

    /// [`Volume::change`] for callers outside an async runtime.
    pub fn change_blocking(&self, req: Request) -> Result<Outcome> {
        let rx = self.enqueue(req)?;
        rx.blocking_recv()
            .map_err(|_| FsError::Io("the file-system writer stopped".into()))?
    }

    fn enqueue(&self, req: Request) -> Result<oneshot::Receiver<Result<Outcome>>> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .as_ref()
            .and_then(|q| q.send(Job { req, reply: tx }).ok())
            .ok_or_else(|| FsError::Io("the file system is unmounted".into()))?;
        Ok(rx)
    }

    /// Counts reopenings of the database (each loses the changes that were
    /// committed but not durable).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction> {
        self.inner.db().begin_read().map_err(FsError::db)
    }

    /// Metadata of the file or directory at `path` (under
    /// `/.snapshot/NAME` in that snapshot).
    pub fn stat(&self, caller: &Caller, path: &FsPath) -> Result<Attr> {
        let txn = self.read_txn()?;
        match place(&txn, path)? {
            Place::SnapshotDir => Ok(snapshot_dir_attr(&txn)?),
            Place::In(view, path) => {
                let inodes = open_view(&txn, view.inodes())?;
                let dirents = open_view(&txn, view.dirents())?;
                let extents = open_view(&txn, view.extents())?;
                exposed(
                    &view,
                    tree::attr(&extents, tree::resolve(&inodes, &dirents, caller, &path)?)?,
                )
            }
        }
    }

    /// Metadata of the file a handle names.
    pub fn stat_handle(&self, id: u64) -> Result<Attr> {
        let txn = self.read_txn()?;
        if id == SNAPSHOT_DIR_ID {
            return snapshot_dir_attr(&txn);
        }
        let (view, ino) = View::of(id);
        let inodes = open_view(&txn, view.inodes())?;
        let extents = open_view(&txn, view.extents())?;
        exposed(&view, tree::attr(&extents, tree::by_handle(&inodes, ino)?)?)
    }

    /// Opens an existing file for reading: checks kind and permission.
    pub fn open(&self, caller: &Caller, path: &FsPath) -> Result<Attr> {
        let attr = self.stat(caller, path)?;
        if attr.inode.kind == FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is a directory; list it instead"
            )));
        }
        tree::need(caller, &attr.inode, tree::R, &path.to_string())?;
        Ok(attr)
    }

    /// Reads up to `len` bytes from `offset`; fewer at the end of the file.
    pub fn read(&self, caller: &Caller, id: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        let _shared = self.inner.data_lock.read().unwrap_or_else(|p| p.into_inner());
        let txn = self.read_txn()?;
        if id == SNAPSHOT_DIR_ID {
            return Err(FsError::FailedPrecondition(format!("/{SNAPSHOT_DIR} is a directory")));
        }
        let (view, ino) = View::of(id);
        let inodes = open_view(&txn, view.inodes())?;
        let extents = open_view(&txn, view.extents())?;
        let inode = tree::by_handle(&inodes, ino)?;
        if inode.kind == FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!("{} is a directory", inode.name)));
        }
        tree::need(caller, &inode, tree::R, &format!("file {}", inode.name))?;
        if offset > inode.size {
            return Err(FsError::OutOfRange(format!(
                "offset {offset} is past the end of {} ({} bytes)",
                inode.name, inode.size
            )));
        }
        let len = len.min(inode.size - offset);
        tree::read_data(&extents, self.inner.dev.as_ref(), ino, offset, len).map_err(|e| match e {
            FsError::Corrupt(m) => FsError::Corrupt(format!(
                "file {} (inode {ino}), bytes {offset}..{}: {m}",
                inode.name,
                offset + len
            )),
            e => e,
        })
    }

    /// A page of the directory at `path`: entries after `after`.
    pub fn list(&self, caller: &Caller, path: &FsPath, after: &str, limit: usize) -> Result<Vec<DirEntry>> {
        let txn = self.read_txn()?;
        let (view, path) = match place(&txn, path)? {
            Place::SnapshotDir => return list_snapshot_dir(&txn, after, limit.max(1)),
            Place::In(view, path) => (view, path),
        };
        let inodes = open_view(&txn, view.inodes())?;
        let dirents = open_view(&txn, view.dirents())?;
        let extents = open_view(&txn, view.extents())?;
        let dir = tree::resolve(&inodes, &dirents, caller, &path)?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::FailedPrecondition(format!(
                "{path} is a file; stat it instead"
            )));
        }
        tree::need(caller, &dir, tree::R, &path.to_string())?;
        let entries = tree::list(&inodes, &dirents, &extents, &dir, after, limit.max(1))?
            .into_iter()
            .map(|e| DirEntry {
                attr: Attr {
                    inode: view.expose(e.attr.inode),
                    ..e.attr
                },
                ..e
            })
            .collect::<Vec<_>>();
        if tree::allowed(caller, &dir, tree::X) {
            return Ok(entries);
        }
        // Read without search permission lists names and kinds only, as
        // POSIX does: a handle would open what the caller may not reach.
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                attr: Attr {
                    inode: Inode {
                        ino: 0,
                        kind: e.attr.inode.kind,
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        owner: String::new(),
                        size: 0,
                        mtime_ms: 0,
                        parent: 0,
                        name: e.attr.inode.name.clone(),
                    },
                    head_address: 0,
                    extents: 0,
                    allocated_bytes: 0,
                },
                ..e
            })
            .collect())
    }

    /// Every directory and file of snapshot `name`, each directory before
    /// what it holds, with paths from the export root and attributes as
    /// stored (not made read-only as callers see them); each inode's id is
    /// the handle to read it by. What a backup copies.
    pub fn snapshot_tree(&self, name: &str) -> Result<Vec<(String, Inode)>> {
        const PAGE: usize = 1000;
        let txn = self.read_txn()?;
        let generation = snapshots::generation_of(&txn, name)?;
        let view = View::snapshot(generation);
        let inodes = open_view(&txn, view.inodes())?;
        let dirents = open_view(&txn, view.dirents())?;
        let extents = open_view(&txn, view.extents())?;
        let mut out = vec![("/".to_string(), tree::by_handle(&inodes, ROOT)?)];
        let mut next = 0;
        while next < out.len() {
            let (dir_path, dir) = out[next].clone();
            next += 1;
            if dir.kind != FileKind::Dir {
                continue;
            }
            let mut after = String::new();
            loop {
                let page = tree::list(&inodes, &dirents, &extents, &dir, &after, PAGE)?;
                for e in &page {
                    let path = if dir_path == "/" {
                        format!("/{}", e.name)
                    } else {
                        format!("{dir_path}/{}", e.name)
                    };
                    out.push((path, e.attr.inode.clone()));
                }
                match page.last() {
                    Some(last) if page.len() == PAGE => after = last.name.clone(),
                    _ => break,
                }
            }
        }
        for (_, inode) in &mut out {
            inode.ino = snapshots::join(generation, inode.ino);
        }
        Ok(out)
    }

    /// Size, free space and file count.
    pub fn space(&self) -> Result<Space> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(META).map_err(FsError::db)?;
        let sb = Superblock::read(self.inner.dev.as_ref())?;
        Ok(Space {
            data_bytes: self.inner.data_len,
            free_bytes: tree::counter(&meta, "free_bytes")?,
            files: tree::counter(&meta, "files")?,
            meta_bytes: self.inner.meta_len,
            // The database's length may run past the area (it is virtual there).
            meta_used_bytes: sb.map_or(0, |sb| sb.db_len.min(sb.meta_len)),
            snapshot_bytes: tree::counter(&meta, tree::HELD_BYTES)?,
        })
    }

    /// What the LU byte ranges `ranges` hold: for each file of the live
    /// tree with blocks there, its path and the byte range of it they
    /// cover; and the file system's own structures, if they are hit.
    pub fn files_at(&self, ranges: &[(u64, u64)]) -> Result<Vec<String>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let sb = Superblock::read(self.inner.dev.as_ref())?
            .ok_or_else(|| FsError::Corrupt("the file-system superblock is gone".into()))?;
        let mut out = Vec::new();
        for &(at, len) in ranges.iter().filter(|(at, _)| *at < sb.data_at) {
            out.push(format!(
                "file-system metadata (LU bytes {at}..{})",
                (at + len).min(sb.data_at)
            ));
        }
        let txn = self.read_txn()?;
        let inodes = txn.open_table(tree::INODES).map_err(FsError::db)?;
        let extents = txn.open_table(EXTENTS).map_err(FsError::db)?;
        let mut hit: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        for e in extents.iter().map_err(FsError::db)? {
            let (k, v) = e.map_err(FsError::db)?;
            let ((ino, f), (x, n, _)) = (k.value(), v.value());
            for &(at, len) in ranges {
                let (s, e) = (x.max(at), (x + n).min(at + len));
                if s < e {
                    let span = hit.entry(ino).or_insert((u64::MAX, 0));
                    span.0 = span.0.min(f + (s - x));
                    span.1 = span.1.max(f + (e - x));
                }
            }
        }
        for (ino, (lo, hi)) in hit {
            out.push(format!("{} (bytes {lo}..{hi})", tree::path_of(&inodes, ino)?));
        }
        Ok(out)
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        snapshots::list(&self.read_txn()?)
    }

    /// Checks that every block of the data area is in exactly one place
    /// (free, in the live tree, or held only by snapshots) and that no
    /// block is leaked; see [`snapshots::check`].
    pub fn check_blocks(&self) -> Result<BlockCheck> {
        let _shared = self.inner.data_lock.read().unwrap_or_else(|p| p.into_inner());
        let sb = Superblock::read(self.inner.dev.as_ref())?
            .ok_or_else(|| FsError::Corrupt("the file-system superblock is gone".into()))?;
        snapshots::check(&self.read_txn()?, sb.data_at, sb.data_len)
    }

    /// Refuses, before anything is stored, a write of `len` bytes at
    /// `offset` that cannot fit in the free space. (Writers racing for the
    /// last free blocks can still run out part-way through a streamed
    /// write; each piece then fails whole.)
    pub fn check_fits(&self, ino: u64, offset: u64, len: u64) -> Result<()> {
        let end = offset.saturating_add(len).min(MAX_FILE_SIZE);
        let txn = self.read_txn()?;
        let extents = txn.open_table(EXTENTS).map_err(FsError::db)?;
        let meta = txn.open_table(META).map_err(FsError::db)?;
        let (have, gaps) = tree::plan(&extents, ino, offset, end)?;
        let newest = tree::counter(&meta, tree::NEWEST_SNAPSHOT)?;
        let shared: u64 = have
            .iter()
            .filter(|m| tree::held_by_snapshot(m.birth, newest))
            .map(|m| m.len)
            .sum();
        let need = gaps.iter().map(|(s, e)| e - s).sum::<u64>() + shared;
        tree::check_space(need, tree::counter(&meta, "free_bytes")?)
    }

    /// The stored reply of a completed call, if any.
    pub fn stored_reply(&self, client: &str, seq: u64) -> Result<Option<Outcome>> {
        let txn = self.read_txn()?;
        let replies = txn.open_table(REPLIES).map_err(FsError::db)?;
        let found = replies.get((client, seq)).map_err(FsError::db)?;
        found.map(|v| decode_outcome(v.value())).transpose()
    }
}

/// Where a path leads.
enum Place {
    /// `/.snapshot`: the list of snapshots.
    SnapshotDir,
    /// A path in the live tree, or (under `/.snapshot/NAME`) in a snapshot.
    In(View, FsPath),
}

fn place(txn: &redb::ReadTransaction, path: &FsPath) -> Result<Place> {
    match path.names() {
        [first] if first == SNAPSHOT_DIR => Ok(Place::SnapshotDir),
        [first, name, rest @ ..] if first == SNAPSHOT_DIR => {
            let generation = snapshots::generation_of(txn, name)?;
            let inner = FsPath::parse(&format!("/{}", rest.join("/")))?;
            Ok(Place::In(View::snapshot(generation), inner))
        }
        _ => Ok(Place::In(View::live(), path.clone())),
    }
}

/// Opens a table of a view; a snapshot's are gone once it is deleted.
fn open_view<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<'_, K, V>,
) -> Result<redb::ReadOnlyTable<K, V>> {
    txn.open_table(def).map_err(|e| match e {
        redb::TableError::TableDoesNotExist(_) => {
            FsError::NotFound("that snapshot was deleted; see `nasctl snapshot list`".into())
        }
        e => FsError::db(e),
    })
}

fn exposed(view: &View, attr: Attr) -> Result<Attr> {
    Ok(Attr {
        inode: view.expose(attr.inode),
        ..attr
    })
}

fn snapshot_dir_attr(txn: &redb::ReadTransaction) -> Result<Attr> {
    let newest = snapshots::list(txn)?.last().map_or(0, |s| s.created_ms);
    Ok(Attr {
        inode: snapshots::snapshot_dir_inode(newest),
        head_address: 0,
        extents: 0,
        allocated_bytes: 0,
    })
}

/// `/.snapshot`: one directory per snapshot, its root as it was.
fn list_snapshot_dir(txn: &redb::ReadTransaction, after: &str, limit: usize) -> Result<Vec<DirEntry>> {
    let mut all = snapshots::list(txn)?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for s in all.into_iter().filter(|s| s.name.as_str() > after).take(limit) {
        let view = View::snapshot(s.generation);
        let inodes = open_view(txn, view.inodes())?;
        let mut root = view.expose(tree::by_handle(&inodes, ROOT)?);
        root.name = s.name.clone();
        root.mtime_ms = s.created_ms;
        out.push(DirEntry {
            name: s.name,
            attr: Attr {
                inode: root,
                head_address: 0,
                extents: 0,
                allocated_bytes: 0,
            },
        });
    }
    Ok(out)
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome> {
    postcard::from_bytes(bytes).map_err(|e| FsError::Corrupt(format!("stored reply: {e}")))
}

/// Why a group failed in the database itself, which redb then refuses to
/// use until it is reopened.
struct Broken(FsError);

impl Inner {
    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn run(&self, rx: mpsc::Receiver<Job>) {
        while let Some(batch) = crate::group_commit::next_group(&rx, GROUP) {
            let results = self.apply_or_recover(&batch);
            for (job, r) in batch.into_iter().zip(results) {
                let _ = job.reply.send(r);
            }
        }
    }

    /// Applies a group; after a failure in the database, reopens it. When
    /// the failure was a full metadata area, and from then on until space
    /// is freed, applies changes one per transaction: those that would add
    /// to the metadata are refused, and each of the others fits the
    /// reserve and frees room for the next.
    fn apply_or_recover(&self, batch: &[Job]) -> Vec<Result<Outcome>> {
        let all_fail = |e: FsError| batch.iter().map(|_| Err(e.clone())).collect::<Vec<_>>();
        if let Some(why) = self.broken.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return all_fail(why);
        }
        if !self.meta_full.load(Ordering::Acquire) {
            let Broken(e) = match self.apply(batch, false) {
                Ok(results) => return results,
                Err(b) => b,
            };
            if let Err(why) = self.reopen() {
                return all_fail(why);
            }
            if !matches!(e, FsError::MetadataFull(_)) {
                // Nothing was committed, and the database is usable again.
                return all_fail(e);
            }
            tracing::warn!(
                "the file system's metadata area ran full: refusing changes that add to it until space is freed"
            );
            self.meta_full.store(true, Ordering::Release);
        }
        batch
            .iter()
            .map(|job| match self.apply(std::slice::from_ref(job), true) {
                Ok(results) => results
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Err(FsError::Io("a change got no result".into()))),
                Err(Broken(e)) => {
                    tracing::warn!(change = ?job.req.change, "a change failed in a full metadata area: {e}");
                    self.reopen()?;
                    Err(e)
                }
            })
            .collect()
    }

    /// Drops the database redb refuses to use after a failed transaction
    /// and opens it again from what is durable on the LU. If that fails,
    /// the volume refuses every call from now on: UNAVAILABLE when the LU
    /// is no longer this CHN's (its lease ran out: the export moves, and
    /// clients follow it), DATA_LOSS when the LU failed or its metadata
    /// cannot be read, so that clients stop retrying.
    fn reopen(&self) -> Result<()> {
        let _exclusive = self.data_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        let opened = match Superblock::read(self.dev.as_ref()) {
            Ok(Some(sb)) => open_db(&self.dev, sb, &self.db_len),
            Ok(None) => Err(FsError::Corrupt("the file-system superblock is gone".into())),
            Err(e) => Err(e),
        };
        match opened {
            Ok(new) => {
                *db = Arc::new(new);
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!("file-system metadata reopened after a failed transaction");
                Ok(())
            }
            Err(e) => {
                let why = match e {
                    FsError::Io(m) => FsError::Io(format!(
                        "the file system's metadata cannot be reopened here after a failed transaction ({m})"
                    )),
                    e => FsError::Corrupt(format!(
                        "the file system's metadata cannot be reopened after a failed transaction ({e}); \
                         move the export to another CHN (`nasctl export move`) or restore it"
                    )),
                };
                tracing::error!("{why}");
                *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Applies a group of changes in one transaction; one result each.
    /// With `meta_full`, changes that would add to the metadata are refused
    /// and the others may use the reserve.
    fn apply(&self, batch: &[Job], meta_full: bool) -> std::result::Result<Vec<Result<Outcome>>, Broken> {
        let _exclusive = self.data_lock.write().unwrap_or_else(|p| p.into_inner());
        let db = self.db();
        let mut txn = db.begin_write().map_err(|e| Broken(FsError::db(e)))?;
        let mut results = Vec::with_capacity(batch.len());
        let staged = (|| {
            let mut tx = Tx::open(&txn, self.dev.as_ref())?;
            for job in batch {
                let reopened = job
                    .req
                    .stream_since
                    .is_some_and(|g| g != self.generation.load(Ordering::Acquire));
                let r = if reopened {
                    Err(FsError::Interrupted(
                        "the file system was reopened while this streamed write was in flight, and its earlier pieces were not kept; send the whole write again".into(),
                    ))
                } else if meta_full && adds_metadata(&job.req.change) {
                    Err(FsError::MetadataFull(super::metadata_full()))
                } else {
                    apply_one(&mut tx, &job.req)
                };
                if let Err(e @ (FsError::Io(_) | FsError::Corrupt(_))) = &r {
                    return Err(e.clone());
                }
                if let (false, Err(e @ FsError::MetadataFull(_))) = (meta_full, &r) {
                    return Err(e.clone());
                }
                results.push(r);
            }
            let durable = batch.iter().any(|j| j.req.durable) || tx.frees();
            tx.finish()?;
            self.check_usage(&txn, meta_full)?;
            Ok(durable)
        })();
        let committed = staged.and_then(|durable| {
            let level = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            txn.set_durability(level).map_err(FsError::db)?;
            txn.commit().map_err(FsError::db)?;
            Ok(durable)
        });
        let durable = committed.map_err(|e| {
            tracing::error!("file-system group of {} changes not committed: {e}", batch.len());
            Broken(e)
        })?;
        if !durable {
            // Pieces of a streamed write: let the disks take them now, while
            // the next ones travel, rather than all at the final flush.
            self.dev.start_writeback();
        }
        Ok(results)
    }
}

/// The part of the metadata area kept for changes that free space: a
/// transaction that frees pages needs fresh ones first (copy on write).
fn reserve_bytes(meta_len: u64) -> u64 {
    (meta_len / 8).clamp(1 << 20, 32 << 20)
}

/// The largest length a database now `len` bytes long can grow to in an
/// area of `meta_len` bytes: redb grows by doubling (less a page), so
/// between half and all of the area.
fn reachable(len: u64, meta_len: u64) -> u64 {
    let mut at = len.max(4096);
    while let Some(next) = at.checked_mul(2).map(|d| d - 4096).filter(|&n| n <= meta_len) {
        at = next;
    }
    at.min(meta_len)
}

impl Inner {
    /// Counts the database's pages and decides whether the area is full:
    /// less than the reserve left, or, once full, less than twice the
    /// reserve, so that a few deletes do not flip it back and forth. redb
    /// walks its trees to count, so this runs every few commits: as many
    /// as the reserve can take the growth of (a group adds at most a few
    /// hundred entries), or after half a second.
    fn check_usage(&self, txn: &redb::WriteTransaction, full: bool) -> Result<()> {
        let every = (self.meta_len / (2 << 20)).clamp(4, 256) as u32;
        {
            let mut checked = self.usage_checked.lock().unwrap_or_else(|p| p.into_inner());
            checked.1 += 1;
            if checked.1 < every && checked.0.elapsed() < std::time::Duration::from_millis(500) {
                return Ok(());
            }
            *checked = (std::time::Instant::now(), 0);
        }
        let stats = txn.stats().map_err(FsError::db)?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        let reserve = reserve_bytes(self.meta_len);
        let left = reachable(self.db_len.load(Ordering::Acquire), self.meta_len).saturating_sub(used);
        let now_full = if full { left < 2 * reserve } else { left < reserve };
        if now_full != full {
            if now_full {
                tracing::warn!(
                    used,
                    meta_bytes = self.meta_len,
                    "the file system's metadata area is full: refusing changes that add to it until space is freed"
                );
            } else {
                tracing::info!(
                    used,
                    meta_bytes = self.meta_len,
                    "the file system's metadata area has room again"
                );
            }
            self.meta_full.store(now_full, Ordering::Release);
        }
        Ok(())
    }
}

/// Whether a change can need more metadata than it frees.
fn adds_metadata(change: &Change) -> bool {
    matches!(
        change,
        Change::Mkdir { .. }
            | Change::Create { .. }
            | Change::Write { .. }
            | Change::Rename { .. }
            | Change::Snapshot { .. }
    )
}

fn apply_one(tx: &mut Tx<'_>, req: &Request) -> Result<Outcome> {
    if let Some(call) = &req.call {
        if let Some(bytes) = tx.reply(&call.client, call.seq)? {
            return decode_outcome(&bytes);
        }
    }
    let c = &req.caller;
    let out = match &req.change {
        Change::Mkdir { path, mode } => Outcome::Attr(tx.mkdir(c, path, *mode)?),
        Change::Create {
            path,
            mode,
            exclusive,
            truncate,
        } => Outcome::Attr(tx.create(c, path, *mode, *exclusive, *truncate)?),
        Change::Write { ino, offset, data } => Outcome::Size(tx.write(c, *ino, *offset, data)?),
        Change::Truncate { ino, size } => Outcome::Attr(tx.truncate(c, *ino, *size)?),
        Change::Unlink { path } => {
            tx.unlink(c, path)?;
            Outcome::Done
        }
        Change::Rmdir { path } => {
            tx.rmdir(c, path)?;
            Outcome::Done
        }
        Change::Rename { from, to } => Outcome::Attr(tx.rename(c, from, to)?),
        Change::Sync { ino } => Outcome::Size(tree::by_handle(&tx.inodes, *ino)?.size),
        Change::Forget { client } => {
            tx.forget(client)?;
            Outcome::Done
        }
        Change::Snapshot { name } => Outcome::Snapshot(tx.snapshot(name, crate::rt::now_ms())?),
        Change::DeleteSnapshot { name } => {
            tx.delete_snapshot(name)?;
            Outcome::Done
        }
        Change::SetAttr { ino, set } => Outcome::Attr(tx.set_attr(c, *ino, set)?),
    };
    if let Some(call) = &req.call {
        let bytes = postcard::to_stdvec(&out).map_err(|e| FsError::Io(format!("encoding a reply: {e}")))?;
        tx.record(&call.client, call.seq, call.acked, &bytes)?;
    }
    Ok(out)
}
