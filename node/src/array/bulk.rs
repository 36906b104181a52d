//! Large reads: keeping every member busy at once.
//!
//! A 1 MiB read over 64 KiB chunks is 16 member reads issued one after
//! another, and each member file sees a pattern full of holes (RAID 5
//! parity chunks, RAID 1 chunks read from the other mirror) that defeats
//! the kernel's sequential readahead. So a large read first announces, per
//! member, exactly the ranges it will read (`POSIX_FADV_WILLNEED`): the
//! kernel fetches them asynchronously and in parallel, and the reads that
//! follow find them in memory. Helper threads per request would cost more
//! than they win on few cores; hints cost nothing.
//!
//! Owns only these hints. It must never decide what a read returns: the
//! RAID paths do.

use super::device::{Inner, LuDevice};
use super::layout::{Geometry, Raid};
use super::member::Member;

/// Reads at least this large are announced to the kernel first (smaller in
/// unit tests, so that the model tests exercise the large-read paths).
pub const BULK_MIN: usize = if cfg!(test) { 16 << 10 } else { 256 << 10 };

impl LuDevice {
    /// Announces the member ranges a large read will touch.
    pub(super) fn prefetch(&self, inner: &Inner, offset: u64, len: usize) {
        if len < BULK_MIN {
            return;
        }
        let g = self.geo;
        let sb = g.stripe_bytes();
        let (s0, s1) = (offset / sb, (offset + len as u64 - 1) / sb);
        let healthy = inner.slots.iter().all(|s| s.available(s0) && s.available(s1));
        for (i, slot) in inner.slots.iter().enumerate() {
            let Some(disk) = &slot.disk else { continue };
            if !slot.available(s0) {
                continue;
            }
            match (g.raid, healthy) {
                (Raid::Mirror, _) => {
                    if let Some((at, n)) = mirror_share(offset, len, inner.slots.len(), i) {
                        disk.will_need(at, n as u64);
                    }
                }
                (Raid::Parity, true) => {
                    for (start, end) in data_runs(&g, s0, s1, i) {
                        disk.will_need(g.disk_offset(s0 + start), (end - start) * g.unit);
                    }
                }
                // Degraded: reconstruction reads every surviving chunk.
                (Raid::Parity, false) => disk.will_need(g.disk_offset(s0), (s1 - s0 + 1) * g.unit),
            }
        }
    }
}

/// RAID 1: the contiguous share `(offset, len)` of a large read that mirror
/// `member` of `members` serves, so that each mirror reads sequentially.
pub fn mirror_share(offset: u64, len: usize, members: usize, member: usize) -> Option<(u64, usize)> {
    let share = len.div_ceil(members).next_multiple_of(4096);
    let start = member * share;
    (start < len).then(|| (offset + start as u64, share.min(len - start)))
}

/// Runs of consecutive stripes (as row ranges from `s0`) in which member
/// `slot` holds data rather than parity.
pub(super) fn data_runs(g: &Geometry, s0: u64, s1: u64, slot: usize) -> Vec<(u64, u64)> {
    let rows = s1 - s0 + 1;
    let mut runs = Vec::new();
    let mut row = 0;
    while row < rows {
        let start = row;
        while row < rows && g.parity_slot(s0 + row) != slot {
            row += 1;
        }
        if row > start {
            runs.push((start, row));
        }
        row += 1;
    }
    runs
}
