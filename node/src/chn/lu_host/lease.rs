//! LU locks: taking, renewing and giving them up, and closing an LU whose
//! lease ran out. Nothing else may move an open LU's write fence.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use nas_proto::command::Kind;
use nas_proto::*;

use super::LuHost;
use crate::array::fence::Fence;
use crate::array::LuDevice;
use crate::chn::events::Severity;
use crate::chn::Error;
use crate::rt::{lock, now_ms};
use crate::shared_lu::RejectKind;

impl LuHost {
    /// Takes the LU lock (or renews it) and returns the fencing epoch.
    pub(super) async fn take_lock(&self, lu: u32) -> Result<u64, Error> {
        let cmd = Kind::AcquireLuLock(AcquireLuLock {
            lu,
            chn: self.shared().name.clone(),
            lease_ms: self.inner.lease.as_millis() as u64,
            now_ms: now_ms(),
        });
        Ok(self.shared().write(Command { kind: Some(cmd) }).await?.assigned)
    }

    /// Until when a lock renewal sent at `sent` lets this CHN write: a
    /// fifth of the lease before it ends, to leave room for clock rates and
    /// scheduling delays.
    pub(super) fn write_deadline(&self, sent: tokio::time::Instant) -> tokio::time::Instant {
        sent + self.inner.lease - self.inner.lease / 5
    }

    /// Closes an LU: nothing on this CHN writes it again, even through a
    /// device handle still in use. Returns the epoch it was held at.
    pub(super) fn close(&self, lu: u32, why: &str) -> Option<u64> {
        let o = lock(&self.inner.open).remove(&lu)?;
        o.dev.fence().trip();
        if let Some(j) = o.job {
            j.cancel.store(true, Ordering::Relaxed);
        }
        tracing::info!(lu, epoch = o.epoch, "closing LU: {why}");
        Some(o.epoch)
    }

    /// Closes an LU whose lock this CHN lost: another CHN may own it by now.
    pub(super) fn close_lost(&self, lu: u32, why: &str) {
        tracing::warn!(lu, "LU lease lost: {why}");
        metrics::counter!(crate::telemetry::LU_FENCE_TRIPS, "cause" => "lock lost").increment(1);
        if self.close(lu, why).is_some() {
            let exports: Vec<String> = self.shared().read(|t| {
                t.exports
                    .values()
                    .filter(|e| e.lu == lu)
                    .map(|e| e.name.clone())
                    .collect()
            });
            self.inner.events.record(
                "export.fenced",
                Severity::Warning,
                format!(
                    "{} stopped writing LU {lu} (export {}): {why}",
                    self.shared().name,
                    if exports.is_empty() {
                        "none".to_string()
                    } else {
                        exports.join(", ")
                    }
                ),
                &[
                    ("chn", self.shared().name.clone()),
                    ("lu", lu.to_string()),
                    ("export", exports.join(",")),
                ],
            );
        }
    }

    /// Flushes `lu` and clears its write-intent bits while this CHN still
    /// holds it, so that whoever opens it next has nothing to resync.
    async fn leave_clean(&self, lu: u32) {
        let dev = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone());
        let Some(dev) = dev.filter(|d| d.fence().check(lu).is_ok()) else {
            return;
        };
        match tokio::task::spawn_blocking(move || dev.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(lu, "LU not left clean: {e}"),
            Err(e) => tracing::warn!(lu, "LU not left clean: {e}"),
        }
    }

    /// At a clean stop: leaves every open LU clean and closes it.
    pub async fn close_all(&self) {
        let lus: Vec<u32> = lock(&self.inner.open).keys().copied().collect();
        for lu in lus {
            self.leave_clean(lu).await;
            self.close(lu, "the CHN is stopping");
        }
    }

    /// Closes an LU for a planned move and gives its lock up with `hand`
    /// (a command that releases the lock held at the given epoch).
    pub async fn hand_over(&self, lu: u32, hand: impl FnOnce(u64) -> Command) -> Result<CommandResult, Error> {
        let _opening = self.inner.opening.lock().await;
        self.leave_clean(lu).await;
        let epoch = self.close(lu, "handed over").unwrap_or(0);
        Ok(self.shared().write(hand(epoch)).await?)
    }

    /// Renews the locks of the open LUs every seventh of the lease and
    /// closes those whose lease ran out. A task of its own: nothing else
    /// (reports, a device busy with a rebuild) may delay a renewal.
    pub(super) async fn renew_loop(self) {
        let mut tick = tokio::time::interval(self.inner.lease / 7);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open: Vec<(u32, Arc<LuDevice>)> = lock(&self.inner.open)
                .iter()
                .map(|(lu, o)| (*lu, o.dev.clone()))
                .collect();
            for (lu, dev) in open {
                let Some((sent, epoch)) = self.renew(lu, dev.fence()).await else {
                    continue;
                };
                let still_open = match lock(&self.inner.open).get_mut(&lu) {
                    Some(o) => {
                        o.renewed = sent;
                        true
                    }
                    None => false,
                };
                if !still_open {
                    tokio::spawn(self.clone().release_if_closed(lu, epoch));
                }
            }
            // Without a renewal (no quorum, say) the lease runs out and
            // another CHN may take the LU: the fence has stopped writes
            // already; close it so that the next use opens it afresh.
            let now = tokio::time::Instant::now();
            let expired: Vec<u32> = lock(&self.inner.open)
                .iter()
                .filter(|(_, o)| o.dev.fence().is_tripped() || now >= self.write_deadline(o.renewed))
                .map(|(lu, _)| *lu)
                .collect();
            for lu in expired {
                self.close_lost(lu, "its lease ran out without renewal");
            }
        }
    }

    /// Renews the lock of `lu` and, when that worked, lets `fence` go on
    /// for another lease from the moment the renewal was sent. Returns that
    /// moment and the lock's epoch. A lock that another CHN took shuts the
    /// fence for good.
    pub(super) async fn renew(&self, lu: u32, fence: &Fence) -> Option<(tokio::time::Instant, u64)> {
        let sent = tokio::time::Instant::now();
        match self.take_lock(lu).await {
            Ok(epoch) => {
                if sent.elapsed() > self.inner.lease / 5 {
                    tracing::warn!(lu, took_ms = sent.elapsed().as_millis() as u64, "slow LU lock renewal");
                }
                fence.extend(self.write_deadline(sent).into_std());
                renewal("ok");
                Some((sent, epoch))
            }
            Err(Error::SharedLu(e)) if e.is_rejected(RejectKind::LockHeld) => {
                renewal("refused");
                fence.trip();
                self.close_lost(lu, &e.to_string());
                None
            }
            Err(e) => {
                renewal("failed");
                tracing::warn!(lu, "LU lock not renewed: {}", e);
                None
            }
        }
    }

    /// Gives up a lock that a renewal took after the LU was closed (a
    /// renewal applied after a handover takes the freed lock again, which
    /// would keep the new owner waiting a lease).
    pub(super) async fn release_if_closed(self, lu: u32, epoch: u64) {
        // Under the opening lock no open of this LU is half done, so an LU
        // missing from the map is really closed.
        let _opening = self.inner.opening.lock().await;
        if lock(&self.inner.open).contains_key(&lu) {
            return;
        }
        let cmd = Kind::ReleaseLuLock(ReleaseLuLock {
            lu,
            chn: self.shared().name.clone(),
            epoch,
        });
        if let Err(e) = self.shared().write(Command { kind: Some(cmd) }).await {
            tracing::debug!(lu, "lock of a closed LU not released: {}", e);
        }
    }
}

fn renewal(result: &'static str) {
    metrics::counter!(crate::telemetry::LU_LEASE_RENEWALS, "result" => result).increment(1);
}
