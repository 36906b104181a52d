//! Job rows of export backups and restores: started, refreshed while they
//! run, ended with their outcome.
//!
//! A job's CHN refreshes its row every [`REFRESH`] whatever the job is
//! doing; a row left RUNNING for [`STALE`] without a refresh belongs to a
//! CHN that stopped, and is shown (and, by the leader, recorded) as failed.
//! It must never record a job as done before what it did is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::{BackupJob, BackupJobState, Command, RecordBackupJob};

use crate::chn::Error;
use crate::rt::{lock, now_ms};
use crate::shared_lu::SharedLu;

/// How often a running job's row is refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);
/// A running row not refreshed for this long belongs to a stopped CHN.
pub const STALE: Duration = Duration::from_secs(15);

pub fn running(job: &BackupJob) -> bool {
    job.state == BackupJobState::BackupRunning as i32
}

/// Whether `job` runs as far as anyone can tell at `now`.
pub fn alive(job: &BackupJob, now: u64) -> bool {
    running(job) && now.saturating_sub(job.updated_ms) < STALE.as_millis() as u64
}

/// `job` as it stands at `now`: a running row whose CHN stopped
/// refreshing it is failed.
pub fn as_seen(mut job: BackupJob, now: u64) -> BackupJob {
    if running(&job) && !alive(&job, now) {
        job.state = BackupJobState::BackupFailed as i32;
        job.message = stopped_message(&job);
    }
    job
}

fn stopped_message(job: &BackupJob) -> String {
    let what = if job.kind == "restore" {
        format!(
            "export {} is incomplete; run the same restore again to complete it",
            job.export
        )
    } else {
        "nothing of it is listed as a backup".to_string()
    };
    format!(
        "CHN {} stopped running it (killed, cut off or restarted) at {:.0}%: {what}",
        job.chn,
        percent(job)
    )
}

pub fn percent(job: &BackupJob) -> f64 {
    if job.total_bytes == 0 {
        return if running(job) { 0.0 } else { 100.0 };
    }
    (job.done_bytes as f64 * 100.0 / job.total_bytes as f64).min(100.0)
}

async fn record(lu: &SharedLu, job: BackupJob) -> Result<(), Error> {
    lu.write(Command {
        kind: Some(Kind::RecordBackupJob(RecordBackupJob { job: Some(job) })),
    })
    .await?;
    Ok(())
}

/// Records as failed the running jobs whose CHN stopped; the leader does
/// this, so that the row says it, not only listings.
pub async fn end_stale(lu: &SharedLu) {
    let now = now_ms();
    let stale: Vec<BackupJob> = lu.read(|t| {
        t.backup_jobs
            .values()
            .filter(|j| running(j) && !alive(j, now))
            .cloned()
            .collect()
    });
    for job in stale {
        let ended = as_seen(job, now);
        if let Err(e) = record(lu, ended).await {
            tracing::debug!(error = %e, "could not record a stopped backup job as failed");
        }
    }
}

/// A running job of this CHN: its row, kept fresh until it ends.
pub struct Job {
    lu: SharedLu,
    row: Arc<Mutex<BackupJob>>,
    /// Set when the row was ended by someone else (the leader judged this
    /// CHN stopped): the job must stop too.
    ended_elsewhere: Arc<AtomicBool>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Job {
    /// Records `row` as running (a new id, or refused) and starts
    /// refreshing it.
    pub async fn start(lu: SharedLu, mut row: BackupJob) -> Result<Job, Error> {
        let now = now_ms();
        row.state = BackupJobState::BackupRunning as i32;
        row.chn.clone_from(&lu.name);
        row.started_ms = now;
        row.updated_ms = now;
        record(&lu, row.clone()).await?;
        let shared = Arc::new(Mutex::new(row));
        let ended_elsewhere = Arc::new(AtomicBool::new(false));
        let refresher = tokio::spawn(refresh(lu.clone(), shared.clone(), ended_elsewhere.clone()));
        Ok(Job {
            lu,
            row: shared,
            ended_elsewhere,
            refresher,
        })
    }

    /// Refuses to go on once the row was ended by someone else.
    pub fn check(&self) -> Result<(), Error> {
        if self.ended_elsewhere.load(Ordering::Acquire) {
            return Err(Error::FailedPrecondition(format!(
                "backup job {} was recorded as failed while it ran (its refreshes did not reach the shared LU in time)",
                self.id()
            )));
        }
        Ok(())
    }

    pub fn id(&self) -> String {
        lock(&self.row).id.clone()
    }

    pub fn row(&self) -> BackupJob {
        lock(&self.row).clone()
    }

    /// Notes progress; the next refresh records it.
    pub fn update(&self, f: impl FnOnce(&mut BackupJob)) {
        let mut row = lock(&self.row);
        f(&mut row);
        let secs = now_ms().saturating_sub(row.started_ms) as f64 / 1000.0;
        if secs > 0.0 {
            row.bytes_per_sec = (row.done_bytes as f64 / secs) as u64;
        }
    }

    /// Records how the job ended.
    pub async fn finish(self, outcome: Result<String, String>) {
        self.refresher.abort();
        let mut row = self.row();
        row.updated_ms = now_ms();
        row.finished_ms = row.updated_ms;
        match outcome {
            Ok(summary) => {
                row.state = BackupJobState::BackupDone as i32;
                row.done_bytes = row.total_bytes;
                row.message = summary;
            }
            Err(why) => {
                row.state = BackupJobState::BackupFailed as i32;
                row.message = why;
            }
        }
        // The shared LU may be without quorum for a moment; the row must
        // not stay RUNNING if a retry can record the end.
        for _ in 0..10 {
            match record(&self.lu, row.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(job = %row.id, error = %e, "could not record the end of a backup job; retrying");
                    tokio::time::sleep(REFRESH).await;
                }
            }
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh(lu: SharedLu, row: Arc<Mutex<BackupJob>>, ended_elsewhere: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let mut current = lock(&row).clone();
        current.updated_ms = now_ms();
        let id = current.id.clone();
        if let Err(e) = record(&lu, current).await {
            if lu.read(|t| t.backup_jobs.get(&id).is_some_and(|j| !running(j))) {
                ended_elsewhere.store(true, Ordering::Release);
                return;
            }
            tracing::warn!(error = %e, "could not refresh a backup job's row");
        }
    }
}
