//! `backup`: backups of exports to a directory or an S3 object store,
//! restores from them, pruning, and schedules.
//!
//! The CHN serving an export runs its backup or restore; nasctl starts
//! the job and follows its row in the shared LU until it ends.

use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use ::nas_client::proto::*;
use ::nas_client::{human_size, Cluster};

use crate::output::{utc, written, Table};
use crate::status_err;

/// How often a followed job's row is read.
const POLL: Duration = Duration::from_millis(500);

#[derive(Subcommand)]
pub(crate) enum BackupCmd {
    /// Back up EXPORT to TARGET from a snapshot (taken for the backup and
    /// deleted after, unless --snapshot names one), so clients go on
    /// writing. Only chunks the target does not hold yet are sent, and
    /// files unchanged since the last backup there are not read again.
    /// TARGET is a directory as the CHNs see it, or s3://BUCKET/PREFIX with
    /// the endpoint and credentials in the CHNs' environment
    /// (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    Create {
        export: String,
        #[arg(long = "to", env = "NAS_BACKUP_TARGET")]
        target: String,
        /// Read this existing snapshot instead of taking one.
        #[arg(long)]
        snapshot: Option<String>,
        /// Read every file, even those unchanged since the last backup.
        #[arg(long)]
        full: bool,
        /// Answer once the job started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// The backups on a target (newest last), and the running and recent
    /// jobs and the schedules.
    List {
        #[arg(long, env = "NAS_BACKUP_TARGET")]
        target: Option<String>,
        #[arg(long)]
        export: Option<String>,
    },
    /// Read back every chunk of BACKUP and check its SHA-256.
    Verify {
        backup: String,
        #[arg(long, env = "NAS_BACKUP_TARGET")]
        target: String,
    },
    /// Restore BACKUP into export NEW (created on LU N when it does not
    /// exist). An export that holds files needs --force, unless the last
    /// restore into it was of this backup and did not finish: running it
    /// again completes it.
    Restore {
        backup: String,
        #[arg(long, env = "NAS_BACKUP_TARGET")]
        target: String,
        #[arg(long = "to-export")]
        export: String,
        /// LU to create the export on, when it does not exist.
        #[arg(long)]
        lu: Option<u32>,
        /// Restore only this directory (and all below it) or file.
        #[arg(long)]
        path: Option<String>,
        /// Write over an export that holds files, or restore a backup
        /// another cluster took.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete all but the newest N backups of EXPORT (of every export
    /// without --export) this cluster took on the target, then every chunk
    /// no remaining backup uses.
    Prune {
        #[arg(long, env = "NAS_BACKUP_TARGET")]
        target: String,
        #[arg(long)]
        export: Option<String>,
        #[arg(long)]
        keep: u32,
    },
    /// Back up EXPORT every interval (e.g. 1h, 30m, 1d) and keep the newest
    /// N; the export's current owner runs it, so after a failover the taker
    /// does. `--remove` deletes the schedule.
    Schedule {
        export: String,
        #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "remove")]
        every: Option<Duration>,
        #[arg(long = "to", env = "NAS_BACKUP_TARGET", required_unless_present = "remove")]
        target: Option<String>,
        #[arg(long, default_value_t = 24)]
        keep: u32,
        #[arg(long, conflicts_with_all = ["every"])]
        remove: bool,
    },
}

pub(crate) async fn run(c: &Cluster, cmd: BackupCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Create {
            export,
            target,
            snapshot,
            full,
            no_wait,
        } => {
            let req = CreateBackupRequest {
                export,
                target,
                snapshot: snapshot.unwrap_or_default(),
                full,
            };
            let job = c.create_backup(req).await.map_err(status_err)?.job.unwrap_or_default();
            follow(c, job, no_wait, json).await
        }
        BackupCmd::List { target, export } => {
            let req = ListBackupsRequest {
                target: target.unwrap_or_default(),
                export: export.unwrap_or_default(),
            };
            let r = c.list_backups(req).await.map_err(status_err)?;
            print_list(&r, json);
            Ok(())
        }
        BackupCmd::Verify { backup, target } => verify(c, backup, target, json).await,
        BackupCmd::Restore {
            backup,
            target,
            export,
            lu,
            path,
            force,
            no_wait,
        } => {
            let req = RestoreBackupRequest {
                target,
                backup,
                export,
                lu: lu.unwrap_or(0),
                path: path.unwrap_or_default(),
                force,
            };
            let job = c.restore_backup(req).await.map_err(status_err)?.job.unwrap_or_default();
            follow(c, job, no_wait, json).await
        }
        BackupCmd::Prune { target, export, keep } => prune(c, target, export.unwrap_or_default(), keep, json).await,
        BackupCmd::Schedule {
            export,
            every,
            target,
            keep,
            remove,
        } => {
            let req = ScheduleBackupRequest {
                export: export.clone(),
                every_s: every.map(|d| d.as_secs()).unwrap_or(0),
                target: target.unwrap_or_default(),
                keep,
                remove,
            };
            let r = c.schedule_backup(req).await.map_err(status_err)?;
            let what = if remove {
                format!("backup schedule of {export} removed")
            } else {
                format!("backup schedule of {export} set")
            };
            written(json, &what, r);
            Ok(())
        }
    }
}

fn running(j: &BackupJob) -> bool {
    j.state == BackupJobState::BackupRunning as i32
}

fn state(j: &BackupJob) -> &'static str {
    match BackupJobState::try_from(j.state) {
        Ok(BackupJobState::BackupRunning) => "RUNNING",
        Ok(BackupJobState::BackupDone) => "DONE",
        Ok(BackupJobState::BackupFailed) => "FAILED",
        _ => "UNKNOWN",
    }
}

/// Follows job `job` until it ends, with a progress bar on a terminal;
/// fails when the job fails.
async fn follow(c: &Cluster, mut job: BackupJob, no_wait: bool, json: bool) -> anyhow::Result<()> {
    if !no_wait {
        let bar = progress_bar(json);
        while running(&job) {
            tokio::time::sleep(POLL).await;
            let req = ListBackupsRequest {
                target: String::new(),
                export: job.export.clone(),
            };
            // A CHN that fails over under us: the next poll goes elsewhere.
            let Ok(list) = c.list_backups(req).await else { continue };
            if let Some(j) = list.jobs.into_iter().find(|j| j.id == job.id) {
                job = j;
            }
            bar.set_length(job.total_bytes.max(1));
            bar.set_position(job.done_bytes);
            bar.set_message(format!("{} sent", human_size(job.sent_bytes)));
        }
        bar.finish_and_clear();
    }
    if json {
        outln!("{}", job_json(&job));
    } else if running(&job) {
        outln!(
            "{} {} of {} started on CHN {}; follow it with `nasctl backup list --export {}`",
            job.kind,
            job.id,
            job.export,
            job.chn,
            job.export
        );
    } else {
        outln!(
            "{} {} of {}: {} — {}",
            job.kind,
            job.id,
            job.export,
            state(&job),
            job.message
        );
        if job.kind == "backup" && job.longest_pause_us > 0 {
            outln!(
                "writers to {} waited at most {:.1} ms while its snapshot was taken",
                job.export,
                job.longest_pause_us as f64 / 1000.0
            );
        }
    }
    if job.state == BackupJobState::BackupFailed as i32 {
        bail!("{} {} failed: {}", job.kind, job.id, job.message);
    }
    Ok(())
}

fn progress_bar(json: bool) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{percent:>3}% [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} ({msg})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn job_json(j: &BackupJob) -> serde_json::Value {
    json!({"id": j.id, "kind": j.kind, "export": j.export, "target": j.target, "chn": j.chn,
           "state": state(j), "started_ms": j.started_ms, "finished_ms": j.finished_ms,
           "done_bytes": j.done_bytes, "total_bytes": j.total_bytes, "bytes_per_sec": j.bytes_per_sec,
           "sent_bytes": j.sent_bytes, "files": j.files, "longest_pause_us": j.longest_pause_us,
           "backup": j.backup, "scheduled": j.scheduled, "message": j.message})
}

fn print_list(r: &BackupList, json: bool) {
    let mut backups = Table::new(&["id", "export", "finished", "files", "bytes", "sent", "note"]);
    for b in &r.backups {
        let note = if !b.problem.is_empty() {
            format!("DAMAGED: {}", b.problem)
        } else if b.foreign {
            "from another cluster".into()
        } else {
            String::new()
        };
        backups.row(vec![
            json!(b.id),
            json!(b.export),
            if json {
                json!(b.finished_ms)
            } else {
                json!(utc(b.finished_ms))
            },
            json!(b.files),
            if json {
                json!(b.bytes)
            } else {
                json!(human_size(b.bytes))
            },
            if json {
                json!(b.sent_bytes)
            } else {
                json!(human_size(b.sent_bytes))
            },
            json!(note),
        ]);
    }
    if json {
        let jobs: Vec<_> = r.jobs.iter().map(job_json).collect();
        let schedules: Vec<_> = r
            .schedules
            .iter()
            .map(|s| {
                json!({"export": s.export, "every_s": s.every_s, "target": s.target, "keep": s.keep,
                           "last_done_ms": s.last_done_ms, "last_result": s.last_result})
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"backups": backups.to_json(), "jobs": jobs, "schedules": schedules}))
                .unwrap_or_default()
        );
        return;
    }
    if !r.backups.is_empty() {
        backups.print(false);
        outln!();
    }
    let mut jobs = Table::new(&[
        "job", "kind", "export", "state", "progress", "rate", "chn", "started", "result",
    ]);
    for j in &r.jobs {
        let pct = if j.total_bytes > 0 {
            format!(
                "{:.0}%",
                (j.done_bytes as f64 * 100.0 / j.total_bytes as f64).min(100.0)
            )
        } else {
            "-".into()
        };
        jobs.row(vec![
            json!(j.id),
            json!(j.kind),
            json!(j.export),
            json!(state(j)),
            json!(pct),
            json!(format!("{}/s", human_size(j.bytes_per_sec))),
            json!(j.chn),
            json!(utc(j.started_ms)),
            json!(j.message),
        ]);
    }
    jobs.print(false);
    if !r.schedules.is_empty() {
        outln!();
        let mut t = Table::new(&["schedule", "every", "target", "keep", "last_good", "last_result"]);
        for s in &r.schedules {
            t.row(vec![
                json!(s.export),
                json!(humantime::format_duration(Duration::from_secs(s.every_s)).to_string()),
                json!(s.target),
                json!(s.keep),
                json!(if s.last_done_ms == 0 {
                    "-".to_string()
                } else {
                    utc(s.last_done_ms)
                }),
                json!(s.last_result),
            ]);
        }
        t.print(false);
    }
}

async fn verify(c: &Cluster, backup: String, target: String, json: bool) -> anyhow::Result<()> {
    let req = VerifyBackupRequest {
        target,
        backup: backup.clone(),
    };
    let r = c
        .verify_backup(req)
        .await
        .map_err(|s| anyhow!("backup {backup} failed verification: {}", s.message()))?;
    if json {
        outln!(
            "{}",
            json!({"backup": backup, "files": r.files, "chunks": r.chunks, "bytes": r.bytes})
        );
    } else {
        outln!(
            "backup {backup} is whole: {} files and directories, {} chunks ({}) read back and checked",
            r.files,
            r.chunks,
            human_size(r.bytes)
        );
    }
    Ok(())
}

async fn prune(c: &Cluster, target: String, export: String, keep: u32, json: bool) -> anyhow::Result<()> {
    let req = PruneBackupsRequest {
        target,
        export: export.clone(),
        keep,
    };
    let r = c.prune_backups(req).await.map_err(status_err)?;
    if json {
        outln!(
            "{}",
            json!({"export": export, "deleted": r.deleted, "kept": r.kept, "chunks_deleted": r.chunks_deleted, "bytes_freed": r.bytes_freed})
        );
    } else {
        let of = if export.is_empty() {
            "every export".to_string()
        } else {
            export
        };
        outln!(
            "{of}: {} backups deleted, {} kept; {} chunks ({}) no backup used were deleted",
            r.deleted.len(),
            r.kept.len(),
            r.chunks_deleted,
            human_size(r.bytes_freed)
        );
    }
    Ok(())
}
