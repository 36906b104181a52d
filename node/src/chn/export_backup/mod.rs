//! Backups of exports to targets outside the cluster (a directory or an S3
//! object store), restores from them, and the schedules that take them.
//!
//! Map: [`jobs`] keeps the job rows in the shared LU; [`take`] reads a
//! snapshot of an export and writes its chunks and manifest; [`restore`]
//! writes a backup back into an export; [`schedule`] is each CHN's loop
//! that runs the schedules of the exports it serves. The format on the
//! target is `nas_backup::archive`.
//!
//! Owns export backup and restore jobs. A backup or restore runs only on
//! the CHN that serves the export (the caller routes it there), one at a
//! time per export, and never reads or writes the target for a call it
//! was not asked.

pub mod jobs;
mod restore;
mod schedule;
mod take;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use nas_backup::archive::{self, ArchiveError};
use nas_backup::{Target, TargetError};
use nas_proto::{BackupInfo, BackupJob, BackupList, ExportBackup, PruneBackupsReply, VerifyBackupReply};

use crate::chn::exports::Exports;
use crate::chn::Error;
use crate::fs::{Caller, FsPath, Volume};
use crate::rt::{lock, now_ms};
use crate::shared_lu::SharedLu;
use jobs::Job;

/// A staged chunk older than this was left by a backup that crashed.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Backups and restores of the exports this CHN serves; cheap to clone.
#[derive(Clone)]
pub struct ExportBackups {
    ctx: Arc<Ctx>,
}

struct Ctx {
    lu: SharedLu,
    exports: Exports,
    /// Exports with a job running on this CHN.
    busy: Mutex<HashSet<String>>,
}

/// Backups read and restore as root of the file system.
fn root() -> Caller {
    Caller {
        uid: 0,
        user: "root".into(),
    }
}

/// A job id from `what` and the time: `home-20261128T013543.123Z`. Ids
/// of one export sort like their times.
fn job_id(what: &str) -> String {
    let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    format!("{what}-{}", stamp.replace([':', '-'], ""))
}

/// Whether `id` is a job id `job_id(export)` made (so not one of export
/// `home-2` when `export` is `home`).
fn id_of_export(id: &str, export: &str) -> bool {
    id.strip_prefix(export)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|stamp| stamp.len() == 20 && stamp.as_bytes().get(8) == Some(&b'T') && stamp.ends_with('Z'))
}

fn target(spec: &str) -> Result<Arc<Target>, Error> {
    if spec.is_empty() {
        return Err(Error::InvalidArgument(
            "no target given: name a directory on the CHNs or s3://BUCKET/PREFIX".into(),
        ));
    }
    if !spec.starts_with("s3://") && !spec.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "target {spec:?} is a relative path; give the directory's absolute path as the CHNs see it, or s3://BUCKET/PREFIX"
        )));
    }
    Ok(Arc::new(Target::parse(spec)?))
}

/// Every manifest on the target, with where it is, each read and checked.
async fn manifests(target: &Target) -> Result<Vec<(String, Result<ExportBackup, ArchiveError>)>, Error> {
    let mut out = Vec::new();
    for o in target.list_under(archive::BACKUPS).await? {
        if archive::manifest_id(&o.name).is_none() {
            continue;
        }
        let location = target.location(&o.name);
        let read = match target.get(&o.name).await {
            Ok(bytes) => archive::open_manifest(&location, &bytes),
            Err(TargetError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push((location, read));
    }
    Ok(out)
}

/// The manifest of backup `id`, read and checked.
async fn manifest(target: &Target, id: &str) -> Result<ExportBackup, Error> {
    let name = archive::manifest_name(id);
    let bytes = target.get(&name).await.map_err(|e| match e {
        TargetError::NotFound { what } => Error::NotFound(format!(
            "backup {id} is not on this target ({what} does not exist); see `nasctl backup list --target ...`"
        )),
        e => e.into(),
    })?;
    Ok(archive::open_manifest(&target.location(&name), &bytes)?)
}

impl ExportBackups {
    /// The backups, and the loop that runs the schedules of the exports
    /// this CHN serves.
    pub fn new(lu: SharedLu, exports: Exports) -> (Self, impl std::future::Future<Output = ()>) {
        let this = ExportBackups {
            ctx: Arc::new(Ctx {
                lu,
                exports,
                busy: Mutex::default(),
            }),
        };
        let looped = schedule::run(this.clone());
        (this, looped)
    }

    /// Claims `export` for one job on this CHN, refused while another
    /// runs here or anywhere.
    fn claim(&self, export: &str) -> Result<Claim, Error> {
        let now = now_ms();
        let elsewhere = self.ctx.lu.read(|t| {
            t.backup_jobs
                .values()
                .find(|j| j.export == export && jobs::alive(j, now))
                .cloned()
        });
        if let Some(j) = elsewhere {
            return Err(Error::FailedPrecondition(format!(
                "export {export} already has a {} running ({} on CHN {}, {:.0}%); wait for it or see `nasctl backup list`",
                j.kind,
                j.id,
                j.chn,
                jobs::percent(&j)
            )));
        }
        if !lock(&self.ctx.busy).insert(export.to_string()) {
            return Err(Error::FailedPrecondition(format!(
                "export {export} already has a backup or restore starting on this CHN"
            )));
        }
        Ok(Claim {
            ctx: self.ctx.clone(),
            export: export.to_string(),
        })
    }

    /// Claims the row's export and records the job as running.
    async fn start(&self, row: BackupJob) -> Result<(Claim, Job), Error> {
        let claim = self.claim(&row.export)?;
        let job = Job::start(self.ctx.lu.clone(), row).await?;
        Ok((claim, job))
    }

    /// Starts a backup of `export` (served here, as `vol`) to `target`;
    /// answers with its job row once it runs. The handle yields the
    /// manifest written, or why it failed.
    pub async fn backup(
        &self,
        vol: Arc<Volume>,
        export: &str,
        spec: &str,
        snapshot: &str,
        full: bool,
        scheduled: bool,
    ) -> Result<(BackupJob, tokio::task::JoinHandle<Result<ExportBackup, String>>), Error> {
        let target = target(spec)?;
        // Named before the job starts: an unreachable or refusing store is
        // the caller's answer, not a failed job.
        target.list_under(archive::BACKUPS).await?;
        let (claim, job) = self
            .start(BackupJob {
                id: job_id(export),
                kind: "backup".into(),
                export: export.to_string(),
                target: spec.to_string(),
                scheduled,
                ..Default::default()
            })
            .await?;
        let row = job.row();
        let plan = take::Plan {
            vol,
            target,
            snapshot: (!snapshot.is_empty()).then(|| snapshot.to_string()),
            full,
        };
        let ctx = self.ctx.clone();
        let handle = tokio::spawn(async move {
            let _claim = claim;
            let taken = take::take(&ctx, &job, plan).await;
            let outcome = match &taken {
                Ok(m) => Ok(format!(
                    "{} files and directories, {} bytes; {} bytes sent ({} new of {} chunks)",
                    m.entries.len(),
                    m.bytes,
                    m.sent_bytes,
                    m.new_chunks,
                    m.chunks
                )),
                Err(e) => Err(e.to_string()),
            };
            job.update(|r| {
                if let Ok(m) = &taken {
                    r.sent_bytes = m.sent_bytes;
                }
            });
            job.finish(outcome.clone()).await;
            taken.map_err(|e| e.to_string())
        });
        Ok((row, handle))
    }

    /// Starts restoring backup `id` from `spec` into `export` (served
    /// here, as `vol`); answers with its job row once it runs.
    pub async fn restore(
        &self,
        vol: Arc<Volume>,
        export: &str,
        spec: &str,
        id: &str,
        only: &str,
        force: bool,
    ) -> Result<BackupJob, Error> {
        let target = target(spec)?;
        let manifest = manifest(&target, id).await?;
        self.check_foreign(&manifest, force)?;
        let only = if only.is_empty() {
            None
        } else {
            Some(FsPath::parse(only)?.to_string())
        };
        let now = now_ms();
        // A restore that stopped part way may run again over what it wrote.
        let last = self.ctx.lu.read(|t| {
            t.backup_jobs
                .values()
                .filter(|j| j.kind == "restore" && j.export == export)
                .max_by_key(|j| j.started_ms)
                .cloned()
        });
        let resumes = last
            .map(|j| jobs::as_seen(j, now))
            .is_some_and(|j| j.backup == id && j.state == nas_proto::BackupJobState::BackupFailed as i32);
        let v = vol.clone();
        let has_files = !tokio::task::spawn_blocking(move || v.list(&root(), &FsPath::parse("/")?, "", 1))
            .await??
            .is_empty();
        if has_files && !force && !resumes {
            return Err(Error::FailedPrecondition(format!(
                "export {export} holds files; restore into an empty export, or give --force to write over them"
            )));
        }
        let missing: Vec<String> = manifest
            .users
            .iter()
            .filter(|u| self.ctx.lu.user(&u.name).is_none())
            .map(|u| format!("{} (uid {})", u.name, u.uid))
            .collect();
        let (claim, job) = self
            .start(BackupJob {
                id: job_id(&format!("restore-{export}")),
                kind: "restore".into(),
                export: export.to_string(),
                target: spec.to_string(),
                backup: id.to_string(),
                ..Default::default()
            })
            .await?;
        let row = job.row();
        let plan = restore::Plan {
            vol,
            target,
            manifest,
            only,
            over_existing: has_files,
        };
        tokio::spawn(async move {
            let _claim = claim;
            let outcome = restore::restore(&job, plan).await.map(|done| {
                if missing.is_empty() {
                    done
                } else {
                    format!(
                        "{done}; users of the backup not in this cluster: {} (add them with `nasctl user add NAME --uid N` and to the export)",
                        missing.join(", ")
                    )
                }
            });
            let outcome = outcome.map_err(|e| {
                format!(
                    "{e}; export {} is incomplete: run the same restore again to complete it",
                    job.row().export
                )
            });
            job.finish(outcome).await;
        });
        Ok(row)
    }

    /// Refuses a backup another cluster took, unless forced.
    fn check_foreign(&self, m: &ExportBackup, force: bool) -> Result<(), Error> {
        let ours = self.ctx.lu.array_id();
        if force || m.array_id == ours {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "backup {} was taken by another cluster (disk array {}, this one is {ours}); \
             its uids and users may mean other people here: give --force to restore it anyway",
            m.id,
            if m.array_id.is_empty() { "unknown" } else { &m.array_id }
        )))
    }

    /// The manifest of backup `id` on `spec` (to create an export for it).
    pub async fn manifest(&self, spec: &str, id: &str, force: bool) -> Result<ExportBackup, Error> {
        let m = manifest(&*target(spec)?, id).await?;
        self.check_foreign(&m, force)?;
        Ok(m)
    }

    /// The backups on `spec` (all when empty: jobs and schedules only), of
    /// `export` when given.
    pub async fn list(&self, spec: &str, export: &str) -> Result<BackupList, Error> {
        let now = now_ms();
        let wanted = |e: &str| export.is_empty() || e == export;
        let mut backups = Vec::new();
        if !spec.is_empty() {
            let ours = self.ctx.lu.array_id();
            for (location, read) in manifests(&*target(spec)?).await? {
                backups.push(match read {
                    Ok(m) if wanted(&m.export) => info(m, &ours, location),
                    Ok(_) => continue,
                    Err(e) => BackupInfo {
                        location,
                        problem: e.to_string(),
                        ..Default::default()
                    },
                });
            }
            backups.sort_by_key(|b| b.started_ms);
        }
        let (jobs, schedules) = self.ctx.lu.read(|t| {
            let mut jobs: Vec<BackupJob> = t
                .backup_jobs
                .values()
                .filter(|j| wanted(&j.export) && (spec.is_empty() || j.target == spec))
                .map(|j| jobs::as_seen(j.clone(), now))
                .collect();
            jobs.sort_by_key(|j| j.started_ms);
            let schedules = t
                .backup_schedules
                .values()
                .filter(|s| wanted(&s.export))
                .cloned()
                .collect();
            (jobs, schedules)
        });
        Ok(BackupList {
            backups,
            jobs,
            schedules,
        })
    }

    /// Reads back every chunk of backup `id` and checks it.
    pub async fn verify(&self, spec: &str, id: &str) -> Result<VerifyBackupReply, Error> {
        let target = target(spec)?;
        let m = manifest(&target, id).await?;
        let mut seen = HashSet::new();
        let mut reply = VerifyBackupReply {
            files: m.entries.len() as u64,
            ..Default::default()
        };
        for e in &m.entries {
            for c in &e.chunks {
                if !seen.insert(c.sha256.clone()) {
                    continue;
                }
                read_chunk(&target, &c.sha256, chunk_len(c)).await.map_err(|err| {
                    Error::Archive(ArchiveError::Chunk {
                        location: target.location(&archive::chunk_name(&c.sha256)),
                        why: format!("{err} (it holds bytes of {} in backup {id})", e.path),
                    })
                })?;
                reply.chunks += 1;
                reply.bytes += chunk_len(c) as u64;
            }
        }
        Ok(reply)
    }

    /// Keeps the newest `keep` backups of `export` (of each export, when
    /// empty) this cluster took on `spec`, deletes the rest, then every
    /// chunk no backup left uses.
    pub async fn prune(&self, spec: &str, export: &str, keep: u32) -> Result<PruneBackupsReply, Error> {
        if keep == 0 {
            return Err(Error::InvalidArgument("--keep must be at least 1".into()));
        }
        let now = now_ms();
        let busy = self.ctx.lu.read(|t| {
            t.backup_jobs
                .values()
                .find(|j| j.kind == "backup" && j.target == spec && jobs::alive(j, now))
                .map(|j| j.id.clone())
        });
        if let Some(id) = busy {
            // Its chunks are on the target before any manifest names them.
            return Err(Error::FailedPrecondition(format!(
                "backup {id} is being written to {spec}; prune once it ends"
            )));
        }
        let target = target(spec)?;
        let ours = self.ctx.lu.array_id();
        let all = manifests(&target).await?;
        // Newest first, per export.
        let mut mine: BTreeMap<&str, Vec<&ExportBackup>> = BTreeMap::new();
        for m in all.iter().filter_map(|(_, m)| m.as_ref().ok()) {
            if (export.is_empty() || m.export == export) && m.array_id == ours {
                mine.entry(&m.export).or_default().push(m);
            }
        }
        if mine.is_empty() {
            let of = if export.is_empty() {
                String::new()
            } else {
                format!(" of export {export}")
            };
            return Err(Error::NotFound(format!("{spec} holds no backup{of} from this cluster")));
        }
        let mut reply = PruneBackupsReply::default();
        let mut dropped = BTreeSet::new();
        for backups in mine.values_mut() {
            backups.sort_by_key(|m| std::cmp::Reverse(m.finished_ms));
            for m in backups.iter().skip(keep as usize) {
                target.delete(&archive::manifest_name(&m.id)).await?;
                reply.deleted.push(m.id.clone());
                dropped.insert(m.id.clone());
            }
            reply
                .kept
                .extend(backups.iter().take(keep as usize).map(|m| m.id.clone()));
        }
        target.sweep_temporaries(archive::CHUNKS, STALE_TEMPORARY).await?;
        if all.iter().any(|(_, m)| m.is_err()) {
            tracing::warn!(
                target = spec,
                "a damaged manifest is on the target: its chunks are kept"
            );
            return Ok(reply);
        }
        let used: HashSet<&[u8]> = all
            .iter()
            .filter_map(|(_, m)| m.as_ref().ok())
            .filter(|m| !dropped.contains(&m.id))
            .flat_map(|m| {
                m.entries
                    .iter()
                    .flat_map(|e| e.chunks.iter().map(|c| c.sha256.as_slice()))
            })
            .collect();
        for o in target.list_under(archive::CHUNKS).await? {
            let Some(hash) = archive::chunk_hash(&o.name) else {
                continue;
            };
            if !used.contains(hash.as_slice()) {
                target.delete(&o.name).await?;
                reply.chunks_deleted += 1;
                reply.bytes_freed += o.size;
            }
        }
        Ok(reply)
    }
}

/// Bytes in the chunk a reference points into.
fn chunk_len(c: &nas_proto::ChunkRef) -> usize {
    c.chunk_len.max(c.len) as usize
}

/// A chunk's bytes, read and checked.
async fn read_chunk(target: &Target, sha256: &[u8], len: usize) -> Result<Vec<u8>, Error> {
    let name = archive::chunk_name(sha256);
    let location = target.location(&name);
    let stored = target.get(&name).await.map_err(|e| match e {
        TargetError::NotFound { .. } => Error::Archive(ArchiveError::Chunk {
            location: location.clone(),
            why: "it is missing".into(),
        }),
        e => e.into(),
    })?;
    let sha = sha256.to_vec();
    Ok(tokio::task::spawn_blocking(move || archive::open_chunk(&location, &sha, &stored, len)).await??)
}

fn info(m: ExportBackup, ours: &str, location: String) -> BackupInfo {
    BackupInfo {
        foreign: m.array_id != ours,
        files: m.entries.len() as u64,
        id: m.id,
        export: m.export,
        started_ms: m.started_ms,
        finished_ms: m.finished_ms,
        bytes: m.bytes,
        sent_bytes: m.sent_bytes,
        snapshot: m.snapshot,
        taken_by: m.taken_by,
        location,
        problem: String::new(),
        longest_pause_us: m.longest_pause_us,
    }
}

/// An export claimed for a job on this CHN, until dropped.
struct Claim {
    ctx: Arc<Ctx>,
    export: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.ctx.busy).remove(&self.export);
    }
}

#[cfg(test)]
mod tests {
    use super::{id_of_export, job_id};

    #[test]
    fn a_job_id_names_its_export_and_no_other() {
        let id = job_id("home");
        assert!(id_of_export(&id, "home"), "{id}");
        assert!(!id_of_export(&job_id("home-2"), "home"));
        assert!(!id_of_export(&id, "hom"));
        assert!(!id_of_export("home-latest", "home"));
    }
}
