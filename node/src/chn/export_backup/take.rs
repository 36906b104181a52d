//! Taking a backup of an export on the CHN that serves it: a snapshot
//! (so that clients go on writing), a walk of the snapshot's tree, the
//! chunks of every changed file that the target does not hold yet, and the
//! manifest last.
//!
//! It must never write a manifest before every chunk it names is on the
//! target, and never leave its own snapshot behind once it ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use nas_backup::archive::{self, CHUNK};
use nas_backup::Target;
use nas_proto::{BackupEntry, BackupUser, ChunkRef, ExportBackup};
use tokio::task::JoinSet;

use super::jobs::Job;
use super::{root, Ctx};
use crate::chn::Error;
use crate::fs::snapshots;
use crate::fs::volume::{Change, Outcome};
use crate::fs::{FileKind, Request, Volume};
use crate::rt::now_ms;

/// Chunks compressed and sent at once.
const IN_FLIGHT: usize = 4;
/// Names the snapshots backups take for themselves.
const SNAPSHOT_PREFIX: &str = "backup-";

/// What to back up, and where to.
pub struct Plan {
    pub vol: Arc<Volume>,
    pub target: Arc<Target>,
    /// An existing snapshot to read, or `None` to take one for the backup.
    pub snapshot: Option<String>,
    /// Read every file, even those unchanged since the last backup.
    pub full: bool,
}

pub async fn take(ctx: &Ctx, job: &Job, plan: Plan) -> Result<ExportBackup, Error> {
    let row = job.row();
    let export = ctx.lu.export(&row.export).unwrap_or_default();
    let (snapshot, snapshot_ms, pause_us, ours) = match &plan.snapshot {
        Some(name) => {
            let vol = plan.vol.clone();
            let all = tokio::task::spawn_blocking(move || vol.snapshots()).await??;
            let Some(s) = all.into_iter().find(|s| &s.name == name) else {
                return Err(Error::NotFound(format!(
                    "export {} has no snapshot {name}; see `nasctl snapshot list {}`",
                    row.export, row.export
                )));
            };
            (s.name, s.created_ms, 0, false)
        }
        None => {
            drop_leftovers(ctx, &plan.vol).await?;
            let name = format!("{SNAPSHOT_PREFIX}{}", row.id);
            let started = Instant::now();
            let created = change(&plan.vol, Change::Snapshot { name: name.clone() }, true).await?;
            let pause = started.elapsed().as_micros() as u64;
            let ms = match created {
                Outcome::Snapshot(s) => s.created_ms,
                _ => now_ms(),
            };
            (name, ms, pause, true)
        }
    };
    job.update(|r| r.longest_pause_us = pause_us);
    let result = copy(ctx, job, &plan, &snapshot, snapshot_ms).await;
    if ours {
        let dropped = change(&plan.vol, Change::DeleteSnapshot { name: snapshot.clone() }, true).await;
        if let Err(e) = dropped {
            tracing::warn!(snapshot, error = %e, "could not delete the snapshot a backup was read from");
        }
    }
    let (entries, counts) = result?;
    let users = export
        .users
        .iter()
        .filter_map(|name| ctx.lu.user(name))
        .map(|u| BackupUser {
            name: u.name,
            uid: u.uid,
        })
        .collect();
    let manifest = ExportBackup {
        id: row.id.clone(),
        export: row.export.clone(),
        array_id: ctx.lu.array_id(),
        snapshot: if ours { String::new() } else { snapshot },
        snapshot_ms,
        started_ms: row.started_ms,
        finished_ms: now_ms(),
        taken_by: ctx.lu.name.clone(),
        lu: ctx.lu.read(|t| t.lus.get(&export.lu).cloned()),
        export_row: Some(export),
        users,
        entries,
        bytes: counts.bytes,
        sent_bytes: counts.sent,
        chunks: counts.chunks,
        new_chunks: counts.new_chunks,
        longest_pause_us: pause_us,
    };
    plan.target
        .put(&archive::manifest_name(&row.id), archive::seal_manifest(&manifest))
        .await?;
    Ok(manifest)
}

/// Deletes the snapshots that backups killed with their CHN left: they
/// would hold their blocks for ever.
async fn drop_leftovers(ctx: &Ctx, vol: &Arc<Volume>) -> Result<(), Error> {
    let v = vol.clone();
    let all = tokio::task::spawn_blocking(move || v.snapshots()).await??;
    let now = now_ms();
    for s in all {
        let Some(id) = s.name.strip_prefix(SNAPSHOT_PREFIX) else {
            continue;
        };
        let running = ctx
            .lu
            .read(|t| t.backup_jobs.get(id).is_some_and(|j| super::jobs::alive(j, now)));
        if !running {
            tracing::info!(snapshot = %s.name, "deleting the snapshot of a backup that did not end");
            change(vol, Change::DeleteSnapshot { name: s.name }, true).await?;
        }
    }
    Ok(())
}

pub(super) async fn change(vol: &Volume, change: Change, durable: bool) -> Result<Outcome, Error> {
    Ok(vol
        .change(Request {
            caller: root(),
            change,
            call: None,
            durable,
            stream_since: None,
        })
        .await?)
}

#[derive(Default)]
struct Counts {
    bytes: u64,
    sent: u64,
    chunks: u64,
    new_chunks: u64,
}

/// A file or directory of the snapshot, and the handle to read it by.
struct Found {
    entry: BackupEntry,
    id: u64,
}

async fn copy(
    ctx: &Ctx,
    job: &Job,
    plan: &Plan,
    snapshot: &str,
    snapshot_ms: u64,
) -> Result<(Vec<BackupEntry>, Counts), Error> {
    let row = job.row();
    let vol = plan.vol.clone();
    let name = snapshot.to_string();
    let found: Vec<Found> = tokio::task::spawn_blocking(move || vol.snapshot_tree(&name))
        .await??
        .into_iter()
        .map(|(path, inode)| Found {
            entry: entry(&path, &inode),
            id: inode.ino,
        })
        .collect();
    let total: u64 = found.iter().map(|f| f.entry.size).sum();
    job.update(|r| {
        r.total_bytes = total;
        r.files = found.len() as u64;
    });
    let previous = if plan.full {
        HashMap::new()
    } else {
        unchanged_since(ctx, &plan.target, &row.export).await?
    };
    let mut known: HashSet<[u8; 32]> = plan
        .target
        .list_under(archive::CHUNKS)
        .await?
        .iter()
        .filter_map(|o| archive::chunk_hash(&o.name))
        .collect();
    let mut counts = Counts::default();
    let mut sending = Sender::new(plan.target.clone());
    let mut entries = Vec::with_capacity(found.len());
    let mut pack = Vec::new();
    let mut pack_bytes = 0u64;
    for (idx, Found { entry, id }) in found.into_iter().enumerate() {
        job.check()?;
        entries.push(entry);
        let entry = &mut entries[idx];
        if entry.dir || entry.size == 0 {
            continue;
        }
        let reused = previous
            .get(&entry.path)
            .filter(|p| same_file(p, entry) && p.chunks.iter().all(|c| has(&known, &c.sha256)));
        if let Some(p) = reused {
            entry.chunks = p.chunks.clone();
            counts.bytes += entry.size;
        } else if entry.size < CHUNK as u64 {
            pack.push((idx, id, entry.size));
            pack_bytes += entry.size;
            if pack_bytes >= CHUNK as u64 {
                send_pack(
                    plan,
                    std::mem::take(&mut pack),
                    &mut entries,
                    &mut known,
                    &mut sending,
                    &mut counts,
                )
                .await?;
                pack_bytes = 0;
            }
        } else {
            let size = entry.size;
            let mut offset = 0;
            while offset < size {
                let vol = plan.vol.clone();
                let (data, sha256) = tokio::task::spawn_blocking(move || {
                    vol.read(&root(), id, offset, CHUNK as u64).map(|d| {
                        let h = archive::hash(&d);
                        (d, h)
                    })
                })
                .await??;
                if data.is_empty() {
                    break;
                }
                offset += data.len() as u64;
                entries[idx].chunks.push(ChunkRef {
                    sha256: sha256.to_vec(),
                    len: data.len() as u32,
                    offset: 0,
                    chunk_len: data.len() as u32,
                });
                counts.bytes += data.len() as u64;
                if known.insert(sha256) {
                    counts.new_chunks += 1;
                    counts.sent += sending.send(sha256, data).await?;
                }
                job.update(|r| {
                    r.done_bytes = counts.bytes;
                    r.sent_bytes = counts.sent;
                });
            }
        }
        job.update(|r| r.done_bytes = counts.bytes);
    }
    send_pack(plan, pack, &mut entries, &mut known, &mut sending, &mut counts).await?;
    counts.chunks = entries
        .iter()
        .flat_map(|e| e.chunks.iter().map(|c| c.sha256.clone()))
        .collect::<HashSet<_>>()
        .len() as u64;
    counts.sent += sending.finish().await?;
    // A file changed in the last millisecond before the snapshot may
    // change again within that millisecond after it, leaving size and time
    // alike: such files are read again next time.
    for e in entries.iter_mut().filter(|e| e.mtime_ms >= snapshot_ms) {
        e.ino = 0;
    }
    Ok((entries, counts))
}

/// Reads the small files `members` (entry index, handle, size) into one
/// chunk, points each entry at its bytes in it, and sends it if new.
async fn send_pack(
    plan: &Plan,
    members: Vec<(usize, u64, u64)>,
    entries: &mut [BackupEntry],
    known: &mut HashSet<[u8; 32]>,
    sending: &mut Sender,
    counts: &mut Counts,
) -> Result<(), Error> {
    if members.is_empty() {
        return Ok(());
    }
    let vol = plan.vol.clone();
    let (data, sha256, members) = tokio::task::spawn_blocking(move || {
        let mut data = Vec::with_capacity(CHUNK * 2);
        let mut placed = Vec::with_capacity(members.len());
        for (idx, id, size) in members {
            let bytes = vol.read(&root(), id, 0, size)?;
            placed.push((idx, data.len() as u32, bytes.len() as u32));
            data.extend_from_slice(&bytes);
        }
        let sha256 = archive::hash(&data);
        Ok::<_, Error>((data, sha256, placed))
    })
    .await??;
    for (idx, offset, len) in members {
        entries[idx].chunks = vec![ChunkRef {
            sha256: sha256.to_vec(),
            len,
            offset,
            chunk_len: data.len() as u32,
        }];
        counts.bytes += len as u64;
    }
    if known.insert(sha256) {
        counts.new_chunks += 1;
        counts.sent += sending.send(sha256, data).await?;
    }
    Ok(())
}

fn has(known: &HashSet<[u8; 32]>, sha256: &[u8]) -> bool {
    <[u8; 32]>::try_from(sha256).is_ok_and(|h| known.contains(&h))
}

fn same_file(before: &BackupEntry, now: &BackupEntry) -> bool {
    before.ino != 0 && before.ino == now.ino && before.size == now.size && before.mtime_ms == now.mtime_ms
}

/// The files of the newest backup of `export` on the target that this
/// cluster took, by path: what need not be read again if unchanged. Backup
/// ids end in their start time, so only the newest manifests are read.
async fn unchanged_since(ctx: &Ctx, target: &Target, export: &str) -> Result<HashMap<String, BackupEntry>, Error> {
    let array = ctx.lu.array_id();
    let mut ids: Vec<String> = target
        .list_under(archive::BACKUPS)
        .await?
        .iter()
        .filter_map(|o| archive::manifest_id(&o.name))
        .filter(|id| super::id_of_export(id, export))
        .map(str::to_string)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids {
        // A damaged manifest, or another cluster's: try the one before.
        if let Ok(m) = super::manifest(target, &id).await {
            if m.export == export && m.array_id == array {
                return Ok(m.entries.into_iter().map(|e| (e.path.clone(), e)).collect());
            }
        }
    }
    Ok(HashMap::new())
}

fn entry(path: &str, inode: &crate::fs::Inode) -> BackupEntry {
    BackupEntry {
        path: path.to_string(),
        dir: inode.kind == FileKind::Dir,
        mode: inode.mode,
        uid: inode.uid,
        gid: inode.gid,
        owner: inode.owner.clone(),
        size: if inode.kind == FileKind::Dir { 0 } else { inode.size },
        mtime_ms: inode.mtime_ms,
        chunks: Vec::new(),
        ino: snapshots::split(inode.ino).1,
    }
}

/// Compresses and stages chunks a few at a time, while the next are read;
/// they become durable under their names together, before the manifest.
struct Sender {
    target: Arc<Target>,
    tasks: JoinSet<Result<u64, Error>>,
    staged: Vec<String>,
}

impl Sender {
    fn new(target: Arc<Target>) -> Self {
        Sender {
            target,
            tasks: JoinSet::new(),
            staged: Vec::new(),
        }
    }

    /// Queues one chunk; returns the stored bytes of chunks that finished.
    async fn send(&mut self, sha256: [u8; 32], data: Vec<u8>) -> Result<u64, Error> {
        let mut sent = 0;
        while self.tasks.len() >= IN_FLIGHT {
            sent += self.next().await?;
        }
        let target = self.target.clone();
        self.tasks.spawn(async move {
            let sealed = tokio::task::spawn_blocking(move || archive::seal_chunk(&data))
                .await?
                .map_err(|e| Error::Internal(format!("compressing a chunk: {e}")))?;
            let len = sealed.len() as u64;
            target.stage(&archive::chunk_name(&sha256), sealed).await?;
            Ok(len)
        });
        self.staged.push(archive::chunk_name(&sha256));
        Ok(sent)
    }

    async fn next(&mut self) -> Result<u64, Error> {
        match self.tasks.join_next().await {
            Some(done) => done?,
            None => Ok(0),
        }
    }

    /// Waits for every queued chunk and makes them all durable.
    async fn finish(mut self) -> Result<u64, Error> {
        let mut sent = 0;
        while !self.tasks.is_empty() {
            sent += self.next().await?;
        }
        self.target.commit_staged(self.staged).await?;
        Ok(sent)
    }
}
