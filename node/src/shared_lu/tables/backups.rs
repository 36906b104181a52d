//! The backup job and schedule tables: export backups and restores that
//! run or ran, and the schedules the exports' owners follow.

use super::*;

/// Finished jobs kept; older ones are dropped as new ones start.
pub const MAX_FINISHED_JOBS: usize = 200;
/// Shortest schedule interval.
pub const MIN_EVERY_S: u64 = 1;

fn running(job: &BackupJob) -> bool {
    job.state == BackupJobState::BackupRunning as i32
}

impl Tables {
    pub(super) fn record_backup_job(&mut self, c: &RecordBackupJob) -> Result<Applied, Rejection> {
        let Some(job) = &c.job else {
            return reject(RejectKind::InvalidArgument, "backup job is missing");
        };
        check_name("backup job", &job.id)?;
        if job.kind != "backup" && job.kind != "restore" {
            return reject(
                RejectKind::InvalidArgument,
                format!("backup job kind {:?} is neither backup nor restore", job.kind),
            );
        }
        if BackupJobState::try_from(job.state).is_err() || job.state == 0 {
            return reject(
                RejectKind::InvalidArgument,
                format!("backup job state {} is unknown", job.state),
            );
        }
        if let Some(old) = self.backup_jobs.get(&job.id) {
            if !running(old) {
                return reject(
                    RejectKind::FailedPrecondition,
                    format!(
                        "backup job {} already ended ({}); start a new one",
                        job.id,
                        if old.message.is_empty() { "done" } else { &old.message }
                    ),
                );
            }
            if old.chn != job.chn && running(job) {
                return reject(
                    RejectKind::FailedPrecondition,
                    format!("backup job {} is run by CHN {}, not {}", job.id, old.chn, job.chn),
                );
            }
        } else if !self.exports.contains_key(&job.export) {
            return reject(RejectKind::NotFound, format!("export {} does not exist", job.export));
        }
        if !self.backup_jobs.contains_key(&job.id) && !running(job) {
            return reject(
                RejectKind::FailedPrecondition,
                format!("backup job {} never ran", job.id),
            );
        }
        let mut touched = vec![RowKey::BackupJob(job.id.clone())];
        self.backup_jobs.insert(job.id.clone(), job.clone());
        let mut finished: Vec<(u64, String)> = self
            .backup_jobs
            .values()
            .filter(|j| !running(j))
            .map(|j| (j.started_ms, j.id.clone()))
            .collect();
        if finished.len() > MAX_FINISHED_JOBS {
            finished.sort_unstable();
            for (_, id) in finished.into_iter().take(self.backup_jobs.len() - MAX_FINISHED_JOBS) {
                self.backup_jobs.remove(&id);
                touched.push(RowKey::BackupJob(id));
            }
        }
        Ok(Applied::rows(touched))
    }

    pub(super) fn set_backup_schedule(&mut self, c: &SetBackupSchedule) -> Result<Applied, Rejection> {
        let Some(s) = &c.schedule else {
            return reject(RejectKind::InvalidArgument, "backup schedule is missing");
        };
        let key = RowKey::BackupSchedule(s.export.clone());
        if c.remove {
            if self.backup_schedules.remove(&s.export).is_none() {
                return reject(
                    RejectKind::NotFound,
                    format!("export {} has no backup schedule", s.export),
                );
            }
            return Ok(Applied::rows(vec![key]));
        }
        if !self.exports.contains_key(&s.export) {
            return reject(RejectKind::NotFound, format!("export {} does not exist", s.export));
        }
        if s.every_s < MIN_EVERY_S {
            return reject(
                RejectKind::InvalidArgument,
                format!("a schedule runs at most every {MIN_EVERY_S} s; give --every 1m, 1h, 1d..."),
            );
        }
        if s.keep == 0 {
            return reject(
                RejectKind::InvalidArgument,
                "a schedule keeps at least 1 backup (--keep)",
            );
        }
        if s.target.is_empty() {
            return reject(
                RejectKind::InvalidArgument,
                "a schedule needs a target (--to DIR or s3://...)",
            );
        }
        self.backup_schedules.insert(s.export.clone(), s.clone());
        Ok(Applied::rows(vec![key]))
    }

    /// Jobs a backup copy shows running were run by processes that are
    /// gone: a restored cluster sees them failed.
    pub(super) fn end_restored_jobs(&mut self) {
        for job in self.backup_jobs.values_mut().filter(|j| running(j)) {
            job.state = BackupJobState::BackupFailed as i32;
            job.message = "the cluster was restored from a shared LU backup while this job ran".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn with_export() -> Tables {
        let mut t = Tables::default();
        t.exports.insert(
            "home".into(),
            Export {
                name: "home".into(),
                ..Default::default()
            },
        );
        t
    }

    fn job(id: &str, state: BackupJobState, started_ms: u64) -> Command {
        cmd(Kind::RecordBackupJob(RecordBackupJob {
            job: Some(BackupJob {
                id: id.into(),
                kind: "backup".into(),
                export: "home".into(),
                chn: "CHN1".into(),
                state: state as i32,
                started_ms,
                ..Default::default()
            }),
        }))
    }

    #[test]
    fn a_finished_job_never_runs_again_and_old_ones_are_dropped() {
        let mut t = with_export();
        t.apply(&job("b1", BackupJobState::BackupRunning, 1)).unwrap();
        t.apply(&job("b1", BackupJobState::BackupFailed, 1)).unwrap();
        rejected_with(
            &mut t,
            job("b1", BackupJobState::BackupRunning, 1),
            RejectKind::FailedPrecondition,
            "already ended",
        );
        let mut other = job("b2", BackupJobState::BackupRunning, 2);
        if let Some(Kind::RecordBackupJob(c)) = &mut other.kind {
            c.job.as_mut().unwrap().export = "nope".into();
        }
        rejected_with(&mut t, other, RejectKind::NotFound, "does not exist");
        rejected_with(
            &mut t,
            job("new", BackupJobState::BackupDone, 1),
            RejectKind::FailedPrecondition,
            "never ran",
        );
        for i in 0..MAX_FINISHED_JOBS as u64 + 5 {
            let id = format!("j{i}");
            t.apply(&job(&id, BackupJobState::BackupRunning, 10 + i)).unwrap();
            t.apply(&job(&id, BackupJobState::BackupDone, 10 + i)).unwrap();
        }
        t.apply(&job("live", BackupJobState::BackupRunning, 0)).unwrap();
        assert_eq!(t.backup_jobs.len(), MAX_FINISHED_JOBS + 1);
        assert!(t.backup_jobs.contains_key("live"), "a running job is never dropped");
        assert!(!t.backup_jobs.contains_key("b1"), "the oldest finished go first");
    }

    #[test]
    fn schedules_need_an_export_a_target_an_interval_and_a_count() {
        let mut t = with_export();
        let set = |every_s, keep, target: &str, remove| {
            cmd(Kind::SetBackupSchedule(SetBackupSchedule {
                schedule: Some(BackupSchedule {
                    export: "home".into(),
                    every_s,
                    target: target.into(),
                    keep,
                    ..Default::default()
                }),
                remove,
            }))
        };
        rejected_with(
            &mut t,
            set(0, 3, "/t", false),
            RejectKind::InvalidArgument,
            "at most every",
        );
        rejected_with(&mut t, set(60, 0, "/t", false), RejectKind::InvalidArgument, "--keep");
        rejected_with(&mut t, set(60, 3, "", false), RejectKind::InvalidArgument, "target");
        rejected_with(
            &mut t,
            set(60, 3, "/t", true),
            RejectKind::NotFound,
            "no backup schedule",
        );
        t.apply(&set(60, 3, "/t", false)).unwrap();
        assert_eq!(t.backup_schedules["home"].every_s, 60);
        t.apply(&set(0, 0, "", true)).unwrap();
        assert!(t.backup_schedules.is_empty());
    }
}
