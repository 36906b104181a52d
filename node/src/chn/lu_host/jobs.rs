//! Rebuild and scrub jobs of the LUs open on this CHN, run off the async
//! runtime; one job per LU at a time.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use nas_proto::LuJob;

use super::LuHost;
use crate::array::jobs;
use crate::chn::Error;
use crate::rt::{lock, now_ms};

/// A rebuild or scrub running on this CHN.
pub(super) struct Job {
    pub(super) cancel: AtomicBool,
    pub(super) state: Mutex<LuJob>,
}

impl LuHost {
    /// Starts a rebuild (or a scrub) of an LU open here; returns its state.
    pub fn start_job(&self, lu: u32, scrub: bool, repair: bool) -> Result<LuJob, Error> {
        let mut open = lock(&self.inner.open);
        let o = open
            .get_mut(&lu)
            .ok_or_else(|| Error::Unavailable(format!("LU {lu} is not open on this CHN")))?;
        if let Some(j) = &o.job {
            let s = lock(&j.state).clone();
            if !s.finished {
                return Err(Error::FailedPrecondition(format!(
                    "a {} of LU {lu} is already running ({:.0}% done); wait for it",
                    s.kind,
                    pct(&s)
                )));
            }
        }
        if !scrub && o.dev.rebuild_state().is_none() {
            return Err(Error::FailedPrecondition(format!(
                "LU {lu} has no member to rebuild; replace a failed disk first with `nasctl disk replace N`"
            )));
        }
        let job = Arc::new(Job {
            cancel: AtomicBool::new(false),
            state: Mutex::new(LuJob {
                kind: if scrub { "scrub" } else { "rebuild" }.into(),
                chn: self.shared().name.clone(),
                updated_ms: now_ms(),
                ..LuJob::default()
            }),
        });
        o.job = Some(job.clone());
        let dev = o.dev.clone();
        let m = self.inner.maintenance;
        let started = lock(&job.state).clone();
        tokio::task::spawn_blocking(move || {
            let update = |p: &jobs::Progress| {
                let mut s = lock(&job.state);
                s.done_bytes = p.done_bytes;
                s.total_bytes = p.total_bytes;
                s.bytes_per_sec = p.bytes_per_sec;
                s.eta_secs = p.eta_secs;
                s.updated_ms = now_ms();
            };
            let result = if scrub {
                jobs::scrub(&dev, repair, &job.cancel, m.scrub_limit, |p, _| update(p)).map(|r| {
                    let mut s = lock(&job.state);
                    (s.damaged, s.lost) = (r.mismatches, r.lost);
                    drop(s);
                    format!(
                        "checked {} stripes: {} with a damaged or inconsistent block, {} repaired, {} with a block lost (no copy passes its checksum), {} skipped (degraded)",
                        r.stripes_checked, r.mismatches, r.repaired, r.lost, r.skipped
                    )
                })
            } else {
                jobs::rebuild(&dev, &job.cancel, m.rebuild_limit, update).map(|p| {
                    format!(
                        "rebuilt {} MiB of the new member at {:.1} MB/s of LU data",
                        p.total_bytes >> 20,
                        p.bytes_per_sec as f64 / 1e6
                    )
                })
            };
            let mut s = lock(&job.state);
            s.finished = true;
            s.updated_ms = now_ms();
            s.failed = result.is_err();
            s.result = result.unwrap_or_else(|e| format!("failed: {e}"));
            tracing::info!(lu, "{} finished: {}", s.kind, s.result);
        });
        Ok(started)
    }
}

impl LuHost {
    /// Starts the scrubs that are due: an LU held here whose last scrub
    /// (as the LU table records it) is older than the schedule's period.
    pub(super) fn start_due_scrubs(&self) {
        let Some(every) = self.inner.maintenance.scrub_every else {
            return;
        };
        let due: Vec<u32> = {
            let open = lock(&self.inner.open);
            open.iter()
                .filter(|(_, o)| o.job.as_ref().is_none_or(|j| lock(&j.state).finished))
                .filter(|(&lu, o)| {
                    // The job here is newer than the table's until reported.
                    let here = o.job.as_ref().map(|j| lock(&j.state).clone());
                    let last = here
                        .or_else(|| self.shared().lu_with_disk_capacity(lu).and_then(|(l, _)| l.job))
                        .filter(|j| j.kind == "scrub" && j.finished)
                        .map(|j| j.updated_ms);
                    match last {
                        Some(ms) => now_ms().saturating_sub(ms) >= every.as_millis() as u64,
                        None => o.opened.elapsed() >= every,
                    }
                })
                .map(|(&lu, _)| lu)
                .collect()
        };
        for lu in due {
            match self.start_job(lu, true, true) {
                Ok(_) => tracing::info!(lu, "scheduled scrub started"),
                Err(e) => tracing::debug!(lu, "scheduled scrub not started: {e}"),
            }
        }
    }
}

fn pct(j: &LuJob) -> f64 {
    if j.total_bytes == 0 {
        0.0
    } else {
        j.done_bytes as f64 * 100.0 / j.total_bytes as f64
    }
}
