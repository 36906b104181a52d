//! What this CHN tells the tables about its LUs: disk failures, LU health
//! and job progress, and reopening held LUs after a restart.

use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;
use tokio::sync::mpsc;

use super::LuHost;
use crate::array::LuHealth as Health;
use crate::rt::{lock, AbortOnDrop};

fn health_proto(h: Health) -> LuHealth {
    match h {
        Health::Optimal => LuHealth::LuOptimal,
        Health::Degraded => LuHealth::LuDegraded,
        Health::Rebuilding => LuHealth::LuRebuilding,
        Health::Failed => LuHealth::LuFailed,
    }
}

impl LuHost {
    /// Writes the LU's health and job progress into the LU table.
    pub(super) async fn report(&self, lu: u32) {
        let Some(dev) = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone()) else {
            return;
        };
        // A rebuild or scrub holds the device for a while: wait for it off
        // the runtime, and never under the map lock the renewals need.
        let Ok((health, errors)) = tokio::task::spawn_blocking(move || (dev.health(), dev.checksum_errors())).await
        else {
            return;
        };
        let (job, new_errors, lost) = {
            let open = lock(&self.inner.open);
            let Some(o) = open.get(&lu) else { return };
            let lost = o.lost_unreported.clone();
            let job = o.job.as_ref().map(|j| lock(&j.state).clone());
            let new_errors: std::collections::HashMap<u32, u64> = errors
                .iter()
                .filter_map(|&(disk, n)| {
                    let delta = n.saturating_sub(o.errors_reported.get(&disk).copied().unwrap_or(0));
                    (delta > 0).then_some((disk, delta))
                })
                .collect();
            if job.is_none() && o.reported == Some(health) && new_errors.is_empty() && lost.is_none() {
                return;
            }
            (job, new_errors, lost)
        };
        let finished = job.as_ref().is_some_and(|j| j.finished);
        let cmd = Kind::ReportLu(ReportLu {
            lu,
            health: health_proto(health) as i32,
            job,
            checksum_errors: new_errors,
            lost_known: lost.is_some(),
            lost: lost.clone().unwrap_or_default(),
        });
        match self.shared().write(Command { kind: Some(cmd) }).await {
            // Only a report that reached the table settles anything: a lost
            // one is simply sent again on the next tick.
            Ok(_) => {
                if let Some(o) = lock(&self.inner.open).get_mut(&lu) {
                    o.reported = Some(health);
                    o.errors_reported.extend(errors);
                    if o.lost_unreported == lost {
                        o.lost_unreported = None;
                    }
                    if finished && o.job.as_ref().is_some_and(|j| lock(&j.state).finished) {
                        o.job = None;
                    }
                }
            }
            Err(e) => tracing::debug!(lu, "LU report not written: {}", e),
        }
    }

    /// Records what the lost regions of `lu` hold (files and byte ranges),
    /// for the LU table; sent with the next report.
    pub async fn report_lost(&self, lu: u32, lost: Vec<String>) {
        if !lost.is_empty() {
            tracing::error!(lu, lost = ?lost, "blocks lost in an unclean stop with a member missing belong to these");
        }
        if let Some(o) = lock(&self.inner.open).get_mut(&lu) {
            o.lost_unreported = Some(lost);
        }
        self.report(lu).await;
    }

    /// Records an LU that could not be opened because too many of its
    /// members are gone: the table must not go on calling it degraded.
    pub(super) async fn report_failed(&self, lu: u32) {
        let cmd = Kind::ReportLu(ReportLu {
            lu,
            health: LuHealth::LuFailed as i32,
            job: None,
            ..Default::default()
        });
        if let Err(e) = self.shared().write(Command { kind: Some(cmd) }).await {
            tracing::warn!(lu, "LU failure not recorded: {}", e);
        }
    }

    pub(super) async fn background(self, mut failures: mpsc::UnboundedReceiver<u32>) {
        let renewals = tokio::spawn(self.clone().renew_loop());
        let _stop_renewals = AbortOnDrop(renewals);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resumed = false;
        loop {
            tokio::select! {
                Some(disk) = failures.recv() => {
                    let cmd = Kind::SetDiskState(SetDiskState { disk, state: DiskState::DiskFailed as i32 });
                    if let Err(e) = self.shared().write(Command { kind: Some(cmd) }).await {
                        tracing::warn!(disk, "disk failure not recorded yet: {}", e);
                        let _ = self.inner.failures.send(disk);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                _ = tick.tick() => {
                    if !resumed {
                        resumed = self.resume_held().await;
                    }
                    let open: Vec<u32> = lock(&self.inner.open).keys().copied().collect();
                    for lu in open {
                        self.report(lu).await;
                    }
                    self.start_due_scrubs();
                }
            }
        }
    }

    /// After a restart: reopens the LUs whose lock this CHN still holds, so
    /// that crash recovery runs and an interrupted rebuild resumes. A lock
    /// on an LU this process has opened itself (formatting a new LU, say,
    /// while the cluster was still forming) is not a previous life's: that
    /// LU may have been handed over since.
    pub(super) async fn resume_held(&self) -> bool {
        if self.inner.array_dir.is_none() || self.shared().ensure_current().await.is_err() {
            return self.inner.array_dir.is_none();
        }
        let mut mine = self.shared().locks_held_by(&self.shared().name);
        mine.retain(|lu| !lock(&self.inner.opened_before).contains(lu));
        for lu in mine {
            if let Err(e) = self.open_local(lu).await {
                tracing::warn!(lu, "cannot reopen LU: {}", e);
            }
        }
        true
    }
}
