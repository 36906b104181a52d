//! Restoring a backup into an export on the CHN that serves it: the
//! directories, then each file's chunks read back and checked, then every
//! recorded owner, mode and update time.
//!
//! A file is complete once its attributes are set (that change comes last
//! and is committed durably with the writes before it at each batch), so a
//! rerun after a crash skips the files that already match and writes the
//! rest. It must never report a restore done before it is durable.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use nas_backup::Target;
use nas_proto::{BackupEntry, ChunkRef, ExportBackup};

use super::jobs::Job;
use super::root;
use super::take::change;
use crate::chn::Error;
use crate::fs::volume::{Change, Outcome, SetAttr};
use crate::fs::{FileKind, FsError, FsPath, Volume};

/// Chunks fetched and checked ahead of the writes.
const PREFETCH: usize = 4;
/// Files or bytes after which the restore commits durably.
const BATCH_FILES: usize = 256;
const BATCH_BYTES: u64 = 64 << 20;

/// Which part of a backup to restore.
pub struct Plan {
    pub vol: Arc<Volume>,
    pub target: Arc<Target>,
    pub manifest: ExportBackup,
    /// Only this path (a directory with all below it, or a file); the root
    /// when `None`.
    pub only: Option<String>,
    /// The export held files when the restore started (forced, or an
    /// earlier run of it stopped): files that already match are skipped.
    pub over_existing: bool,
}

/// Whether `path` is `only` or lies below it.
fn selected(path: &str, only: &Option<String>) -> bool {
    match only.as_deref() {
        None | Some("/") => true,
        Some(p) => path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')),
    }
}

pub async fn restore(job: &Job, plan: Plan) -> Result<String, Error> {
    let entries: Vec<&BackupEntry> = plan
        .manifest
        .entries
        .iter()
        .filter(|e| selected(&e.path, &plan.only))
        .collect();
    if entries.is_empty() {
        return Err(Error::NotFound(format!(
            "backup {} holds nothing at {}",
            plan.manifest.id,
            plan.only.as_deref().unwrap_or("/")
        )));
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    job.update(|r| {
        r.total_bytes = total;
        r.files = entries.len() as u64;
    });
    if let Some(first) = entries.first() {
        make_parents(&plan.vol, &first.path).await?;
    }
    let mut complete = vec![false; entries.len()];
    if plan.over_existing {
        for (i, e) in entries.iter().enumerate() {
            complete[i] = !e.dir && matches_already(&plan.vol, e).await?;
        }
    }
    let mut chunks = Chunks::new(
        plan.target.clone(),
        entries
            .iter()
            .zip(&complete)
            .filter(|(_, done)| !**done)
            .flat_map(|(e, _)| e.chunks.iter().cloned()),
    );
    let (mut done, mut skipped, mut since_commit, mut bytes_since) = (0u64, 0u64, 0usize, 0u64);
    for (e, complete) in entries.iter().zip(complete) {
        job.check()?;
        if e.dir {
            mkdir(&plan.vol, &e.path, e.mode).await?;
        } else if complete {
            skipped += 1;
        } else {
            let ino = write_file(&plan, &mut chunks, e).await?;
            set_attr(&plan.vol, e, Some(ino)).await?;
            since_commit += 1;
            bytes_since += e.size;
        }
        done += e.size;
        job.update(|r| r.done_bytes = done);
        if since_commit >= BATCH_FILES || bytes_since >= BATCH_BYTES {
            commit(&plan.vol).await?;
            (since_commit, bytes_since) = (0, 0);
        }
    }
    // Directories last and deepest first: adding their entries changed
    // their update times.
    for e in entries.iter().rev().filter(|e| e.dir) {
        set_attr(&plan.vol, e, None).await?;
    }
    commit(&plan.vol).await?;
    Ok(format!(
        "restored {} files and directories ({} bytes) from backup {}{}",
        entries.len(),
        total,
        plan.manifest.id,
        if skipped > 0 {
            format!("; {skipped} files were already complete from an earlier run")
        } else {
            String::new()
        }
    ))
}

/// Makes every change before it durable.
async fn commit(vol: &Arc<Volume>) -> Result<(), Error> {
    change(vol, Change::Sync { ino: crate::fs::ROOT }, true).await?;
    Ok(())
}

fn path(p: &str) -> Result<FsPath, Error> {
    Ok(FsPath::parse(p)?)
}

async fn make_parents(vol: &Arc<Volume>, p: &str) -> Result<(), Error> {
    let parsed = path(p)?;
    let names = parsed.names();
    let mut cur = String::new();
    for name in names.iter().take(names.len().saturating_sub(1)) {
        cur.push('/');
        cur.push_str(name);
        mkdir(vol, &cur, 0o755).await?;
    }
    Ok(())
}

async fn mkdir(vol: &Arc<Volume>, p: &str, mode: u32) -> Result<(), Error> {
    if p == "/" {
        return Ok(());
    }
    match change(vol, Change::Mkdir { path: path(p)?, mode }, false).await {
        Ok(_) => Ok(()),
        Err(Error::File(FsError::AlreadyExists(_))) if stat(vol, p).await?.is_some_and(|a| a.kind == FileKind::Dir) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn stat(vol: &Arc<Volume>, p: &str) -> Result<Option<crate::fs::Inode>, Error> {
    let parsed = path(p)?;
    let vol = vol.clone();
    match tokio::task::spawn_blocking(move || vol.stat(&root(), &parsed)).await? {
        Ok(a) => Ok(Some(a.inode)),
        Err(FsError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether an earlier run restored this file whole (its attributes, set
/// last, match).
async fn matches_already(vol: &Arc<Volume>, e: &BackupEntry) -> Result<bool, Error> {
    Ok(stat(vol, &e.path).await?.is_some_and(|i| {
        i.kind == FileKind::File && i.size == e.size && i.mtime_ms == e.mtime_ms && i.mode == e.mode && i.uid == e.uid
    }))
}

/// The chunks of the files a restore writes, in the order it writes them,
/// fetched and checked a few ahead while it writes. Consecutive references
/// to one chunk (small files packed together) fetch it once.
struct Chunks {
    upcoming: BoxStream<'static, Result<Fetched, Error>>,
    current: Option<Fetched>,
}

/// A chunk's SHA-256 and its checked bytes.
type Fetched = (Vec<u8>, Arc<Vec<u8>>);

impl Chunks {
    fn new(target: Arc<Target>, refs: impl Iterator<Item = ChunkRef>) -> Self {
        let mut order: Vec<ChunkRef> = Vec::new();
        for c in refs {
            if order.last().is_none_or(|l| l.sha256 != c.sha256) {
                order.push(c);
            }
        }
        let upcoming = futures::stream::iter(order)
            .map(move |c| {
                let target = target.clone();
                async move {
                    let data = super::read_chunk(&target, &c.sha256, super::chunk_len(&c)).await?;
                    Ok((c.sha256, Arc::new(data)))
                }
            })
            .buffered(PREFETCH)
            .boxed();
        Chunks {
            upcoming,
            current: None,
        }
    }

    /// The bytes of the chunk `c` points into: the current one, or the next.
    async fn get(&mut self, c: &ChunkRef) -> Result<Arc<Vec<u8>>, Error> {
        if let Some((sha, data)) = &self.current {
            if *sha == c.sha256 {
                return Ok(data.clone());
            }
        }
        let (sha, data) = self
            .upcoming
            .next()
            .await
            .ok_or_else(|| Error::Internal("a restore ran out of chunks before its files".into()))??;
        if sha != c.sha256 {
            return Err(Error::Internal("a restore's chunks came out of order".into()));
        }
        self.current = Some((sha, data.clone()));
        Ok(data)
    }
}

/// Writes the file's bytes; returns its handle.
async fn write_file(plan: &Plan, chunks: &mut Chunks, e: &BackupEntry) -> Result<u64, Error> {
    let created = change(
        &plan.vol,
        Change::Create {
            path: path(&e.path)?,
            mode: e.mode,
            exclusive: false,
            truncate: true,
        },
        false,
    )
    .await?;
    let Outcome::Attr(attr) = created else {
        return Err(Error::Internal(format!("creating {} returned {created:?}", e.path)));
    };
    let mut offset = 0u64;
    for c in &e.chunks {
        let chunk = chunks.get(c).await?;
        let (from, to) = (c.offset as usize, c.offset as usize + c.len as usize);
        let Some(piece) = chunk.get(from..to) else {
            return Err(Error::FailedPrecondition(format!(
                "backup {} places bytes {from}..{to} of {} in a chunk of {} bytes: the manifest is inconsistent",
                plan.manifest.id,
                e.path,
                chunk.len()
            )));
        };
        change(
            &plan.vol,
            Change::Write {
                ino: attr.inode.ino,
                offset,
                data: bytes::Bytes::copy_from_slice(piece),
            },
            false,
        )
        .await?;
        offset += c.len as u64;
    }
    if offset != e.size {
        return Err(Error::FailedPrecondition(format!(
            "backup {} lists {} bytes of chunks for {} ({} bytes): the manifest is inconsistent",
            plan.manifest.id, offset, e.path, e.size
        )));
    }
    Ok(attr.inode.ino)
}

/// Sets what the backup recorded of `e`, on handle `ino` (looked up
/// when `None`).
async fn set_attr(vol: &Arc<Volume>, e: &BackupEntry, ino: Option<u64>) -> Result<(), Error> {
    let ino = match ino {
        Some(ino) => ino,
        None => match stat(vol, &e.path).await? {
            Some(inode) => inode.ino,
            None => return Err(Error::NotFound(format!("{} vanished while it was restored", e.path))),
        },
    };
    let set = SetAttr {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        owner: e.owner.clone(),
        mtime_ms: e.mtime_ms,
    };
    change(vol, Change::SetAttr { ino, set }, false).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn a_path_selects_itself_and_what_is_below_it_only() {
        let only = Some("/a/b".to_string());
        assert!(selected("/a/b", &only));
        assert!(selected("/a/b/c", &only));
        assert!(!selected("/a/bc", &only));
        assert!(!selected("/a", &only));
        assert!(selected("/anything", &None));
        assert!(selected("/x", &Some("/".into())));
    }
}
