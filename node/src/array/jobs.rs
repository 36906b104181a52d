//! Long-running LU maintenance: rebuild onto a replacement disk and scrub.
//!
//! Both work in small batches under the device's exclusive lock, so the LU
//! stays online and a client write is delayed by at most one batch. Rebuild
//! progress is checkpointed in the superblock (after the rebuilt stripes
//! are flushed), so a rebuild interrupted by a crash resumes there.
//! This module must never mark a member active before every stripe of it
//! is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checksum::Verified;
use super::device::LuDevice;
use super::member::Member;
use super::redundancy::Resync;
use super::superblock::{BITMAP_AT, JOURNAL_AT, JOURNAL_BYTES};
use super::ArrayError;

/// Stripes handled per lock hold.
const BATCH: u64 = 16;
/// How often rebuild progress is made durable.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Where a rebuild or scrub stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of each member handled so far.
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Rate since the job started (or resumed), in bytes of LU data per second.
    pub bytes_per_sec: u64,
    pub eta_secs: u64,
}

/// What a scrub found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrubReport {
    pub stripes_checked: u64,
    /// Stripes where a block failed its checksum or the redundancy disagreed.
    pub mismatches: u64,
    pub repaired: u64,
    /// Stripes holding a block with no copy that passes its checksum.
    pub lost: u64,
    /// Stripes that could not be checked because a member is unavailable.
    pub skipped: u64,
}

impl LuDevice {
    /// Puts disk `new` into the slot of failed member `old`; the slot then
    /// rebuilds from stripe 0. The new disk's old metadata is wiped so that
    /// nothing it held before can be mistaken for this LU's.
    pub fn replace_member(&self, old: u32, new: Arc<dyn Member>) -> Result<(), ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        let refuse = |reason: String| Err(ArrayError::Refused { lu: self.lu, reason });
        if inner.slots.iter().any(|s| s.number == new.number()) {
            return refuse(format!("disk {} is already a member", new.number()));
        }
        let Some(i) = inner.slots.iter().position(|s| s.number == old) else {
            return refuse(format!("disk {old} is not a member"));
        };
        if inner.slots[i].present() {
            return refuse(format!(
                "disk {old} has not failed; fail it first with `nasctl disk fail {old}`"
            ));
        }
        if new.capacity() < self.geo.per_disk {
            return refuse(format!(
                "disk {} is smaller than the {} bytes each member needs",
                new.number(),
                self.geo.per_disk
            ));
        }
        // Journal entries left from the disk's past must never be replayed,
        // and its blocks, unread until rebuilt, start with a fresh table.
        new.zero_meta(JOURNAL_AT, JOURNAL_BYTES)?;
        new.zero_data(0, new.capacity())?;
        let new = Arc::new(Verified::formatted(new));
        // Writes so far reach the disks before the superblocks name a new member.
        self.sync_all(inner);
        self.settle_failures(inner)?;
        inner.slots[i] = super::device::Slot::new_rebuilding(new);
        // The new member carries the same write-intent bitmap as the others:
        // recovery may read it from any of them.
        let bits = inner.bitmap.as_bytes().to_vec();
        self.meta_to_all(inner, BITMAP_AT, &bits);
        self.write_superblock(inner)?;
        tracing::info!(
            lu = self.lu,
            old,
            new = inner.slots[i].number,
            "member replaced; rebuild pending"
        );
        Ok(())
    }

    /// The disk being rebuilt and how many of its stripes are done.
    pub fn rebuild_state(&self) -> Option<(u32, u64)> {
        let inner = self.read_lock();
        inner
            .slots
            .iter()
            .find_map(|s| s.rebuilt().map(|done| (s.number, done)))
    }

    /// Rebuilds up to `max` stripes of the member being rebuilt. Returns
    /// (stripes done, stripes in total), or `None` when nothing is rebuilding.
    pub fn rebuild_step(&self, max: u64) -> Result<Option<(u64, u64)>, ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        self.check_writable()?;
        self.settle_failures(inner)?;
        let Some(t) = inner.slots.iter().position(|s| s.rebuilt().is_some()) else {
            return Ok(None);
        };
        // Journal entries describe stripes as missing on this member; once
        // rebuilt, later writes there are not journaled, so replaying an
        // older entry after a crash would undo them. Settle them first.
        self.reset_journal(inner);
        let total = self.geo.stripes();
        let start = inner.slots[t].rebuilt().unwrap_or(0);
        let end = (start + max).min(total);
        for s in start..end {
            let chunk = self.scheme().rebuild_chunk(self, inner, s, t)?;
            if !self.member_write(inner, &inner.slots[t], self.geo.disk_offset(s), &chunk) {
                self.settle_failures(inner)?;
                return Err(ArrayError::Refused {
                    lu: self.lu,
                    reason: format!("the replacement disk {} failed during rebuild", inner.slots[t].number),
                });
            }
            inner.slots[t].set_done(s + 1);
        }
        let finished = end == total;
        if finished {
            self.checkpoint(inner)?;
            if inner.slots[t].rebuilt().is_none() {
                return Err(ArrayError::Refused {
                    lu: self.lu,
                    reason: format!(
                        "the replacement disk {} failed at the end of its rebuild",
                        inner.slots[t].number
                    ),
                });
            }
            inner.slots[t].set_active();
            self.write_superblock(inner)?;
            tracing::info!(lu = self.lu, disk = inner.slots[t].number, "rebuild complete");
        } else if inner.checkpointed.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint(inner)?;
        }
        Ok(Some((end, total)))
    }

    /// Checks (and with `repair` fixes) stripes `from..from + count`.
    pub fn scrub_step(&self, from: u64, count: u64, repair: bool) -> Result<ScrubReport, ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        self.check_writable()?;
        self.settle_failures(inner)?;
        let mut r = ScrubReport::default();
        for s in from..(from + count).min(self.geo.stripes()) {
            if (0..self.geo.members).any(|i| !inner.slots[i].available(s)) {
                r.skipped += 1;
                continue;
            }
            let mode = if repair { Resync::Repair } else { Resync::Check };
            let found = self.scheme().resync(self, inner, s, mode);
            r.stripes_checked += 1;
            r.mismatches += found.mismatched as u64;
            r.repaired += found.repaired as u64;
            r.lost += found.lost as u64;
        }
        // A repair a power cut could undo is no repair.
        if r.repaired > 0 {
            self.sync_all(inner);
        }
        self.settle_failures(inner)?;
        Ok(r)
    }
}

fn progress(dev: &LuDevice, done: u64, total: u64, from: u64, started: Instant) -> Progress {
    let unit = dev.geometry().unit;
    let data = dev.geometry().data_members() as u64;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = ((done - from) * unit * data) as f64 / secs;
    let left = (total - done) * unit * data;
    Progress {
        done_bytes: done * unit,
        total_bytes: total * unit,
        bytes_per_sec: rate as u64,
        eta_secs: if rate > 0.0 {
            (left as f64 / rate).ceil() as u64
        } else {
            0
        },
    }
}

/// Runs the pending rebuild to the end (or until `cancel`), at most
/// `limit` bytes of LU data per second, calling `report` after every batch.
pub fn rebuild(
    dev: &LuDevice,
    cancel: &AtomicBool,
    limit: Option<u64>,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, ArrayError> {
    let started = Instant::now();
    let from = dev.rebuild_state().map_or(0, |(_, done)| done);
    let mut last = Progress::default();
    while !cancel.load(Ordering::Relaxed) {
        let Some((done, total)) = dev.rebuild_step(BATCH)? else {
            break;
        };
        last = progress(dev, done, total, from, started);
        report(&last);
        if done == total {
            break;
        }
        pace(dev, done - from, started, limit);
    }
    Ok(last)
}

/// Rate limit: pauses until `stripes` done since `started` fit `limit`
/// bytes of LU data per second. The device lock is not held here, so
/// clients are served meanwhile.
fn pace(dev: &LuDevice, stripes: u64, started: Instant, limit: Option<u64>) {
    if let Some(limit) = limit.filter(|&l| l > 0) {
        let g = dev.geometry();
        let bytes = stripes * g.unit * g.data_members() as u64;
        let due = Duration::from_secs_f64(bytes as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait.min(Duration::from_secs(1)));
        }
    }
}

/// Scrubs the whole LU (or until `cancel`), at most `limit` bytes of LU
/// data per second, calling `report` after every batch.
pub fn scrub(
    dev: &LuDevice,
    repair: bool,
    cancel: &AtomicBool,
    limit: Option<u64>,
    mut report: impl FnMut(&Progress, &ScrubReport),
) -> Result<ScrubReport, ArrayError> {
    let started = Instant::now();
    let total = dev.geometry().stripes();
    let mut sum = ScrubReport::default();
    let mut s = 0;
    while s < total && !cancel.load(Ordering::Relaxed) {
        let r = dev.scrub_step(s, BATCH, repair)?;
        sum.stripes_checked += r.stripes_checked;
        sum.mismatches += r.mismatches;
        sum.repaired += r.repaired;
        sum.lost += r.lost;
        sum.skipped += r.skipped;
        s = (s + BATCH).min(total);
        report(&progress(dev, s, total, 0, started), &sum);
        pace(dev, s, started, limit);
    }
    Ok(sum)
}
