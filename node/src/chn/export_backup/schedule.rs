//! Each CHN's loop over the backup schedules: it backs up the exports it
//! serves when they are due, then prunes to the schedule's count; the
//! leader also ends the rows of jobs whose CHN stopped.
//!
//! A schedule is due `every_s` after its last good backup. The last good
//! backup is in the shared LU, so after a failover the taker runs the next
//! one (at once if the old owner died during one). It must never run a
//! schedule for an export this CHN does not serve.

use std::collections::HashMap;
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::{BackupSchedule, Command, SetBackupSchedule};
use tokio::time::Instant;

use super::{jobs, ExportBackups};
use crate::rt::now_ms;

/// How often the schedules are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Least wait before a failed scheduled backup is tried again.
const RETRY: Duration = Duration::from_secs(30);

pub async fn run(this: ExportBackups) {
    let mut tried: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let lu = &this.ctx.lu;
        if lu.leader().is_some_and(|(_, n)| n.name == lu.name) {
            jobs::end_stale(lu).await;
        }
        let now = now_ms();
        let due: Vec<BackupSchedule> = lu.read(|t| {
            t.backup_schedules
                .values()
                .filter(|s| t.exports.get(&s.export).is_some_and(|e| e.owner_chn == lu.name))
                .filter(|s| now.saturating_sub(s.last_done_ms) >= s.every_s.saturating_mul(1000))
                .filter(|s| {
                    !t.backup_jobs
                        .values()
                        .any(|j| j.export == s.export && jobs::alive(j, now))
                })
                .cloned()
                .collect()
        });
        for s in due {
            if crate::rt::lock(&this.ctx.busy).contains(&s.export) {
                continue;
            }
            let wait = Duration::from_secs(s.every_s).min(RETRY);
            if tried.get(&s.export).is_some_and(|at| at.elapsed() < wait) {
                continue;
            }
            tried.insert(s.export.clone(), Instant::now());
            let this = this.clone();
            tokio::spawn(async move { this.run_scheduled(s).await });
        }
    }
}

impl ExportBackups {
    async fn run_scheduled(&self, mut s: BackupSchedule) {
        let taken = async {
            let row = self.ctx.exports.export(&s.export).await?;
            let vol = self.ctx.exports.volume(&row).await?;
            let (_, handle) = self.backup(vol, &s.export, &s.target, "", false, true).await?;
            let manifest = handle
                .await
                .map_err(crate::chn::Error::from)?
                .map_err(crate::chn::Error::Internal)?;
            let pruned = self.prune(&s.target, &s.export, s.keep).await?;
            Ok::<_, crate::chn::Error>((manifest.id, pruned.deleted.len()))
        };
        match taken.await {
            Ok((id, pruned)) => {
                s.last_done_ms = now_ms();
                s.last_result = format!("backup {id} done; {pruned} older backups pruned");
            }
            Err(e) => {
                tracing::warn!(export = %s.export, error = %e, "a scheduled backup failed");
                s.last_result = format!("failed: {e}");
            }
        }
        let recorded = self
            .ctx
            .lu
            .write(Command {
                kind: Some(Kind::SetBackupSchedule(SetBackupSchedule {
                    schedule: Some(s),
                    remove: false,
                })),
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record how a scheduled backup ended");
        }
    }
}
