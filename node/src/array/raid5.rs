//! RAID 5: data chunks plus one rotating parity chunk per stripe.
//!
//! Owns the parity read path (direct, or reconstructed from the other
//! members), the three write paths (full stripe: parity from the new data
//! alone; partial stripe: read-modify-write of the old data and parity;
//! degraded: reconstruct, journal the missing chunk, write), and parity
//! resync. It must never return reconstructed bytes when two members of a
//! stripe are unavailable.

use super::bulk::data_runs;
use super::device::{xor, Inner, LuDevice};
use super::layout::{ChunkPiece, StripePiece};
use super::ArrayError;

impl LuDevice {
    pub(super) fn parity_read(&self, inner: &Inner, p: &StripePiece, out: &mut [u8]) -> Result<(), ArrayError> {
        let base = self.geo.disk_offset(p.stripe);
        for c in self.geo.chunks(p) {
            self.check_suspect(inner, c.slot, p.stripe)?;
            let dst = &mut out[c.piece_at..c.piece_at + (c.end - c.start) as usize];
            let slot = &inner.slots[c.slot];
            if slot.available(p.stripe) && self.member_read(slot, base + c.start, dst) {
                continue;
            }
            self.reconstruct(inner, p.stripe, c.slot, c.start, dst)?;
        }
        Ok(())
    }

    /// Reads whole stripes `s0..` (LU bytes `out`, a multiple of the stripe
    /// size) when every member is healthy there: one `preadv` per member
    /// and run of data chunks, straight into `out`. Returns false (having
    /// failed the member) when a read fails; the caller then goes stripe by
    /// stripe, reconstructing.
    pub(super) fn parity_read_stripes(&self, inner: &Inner, s0: u64, out: &mut [u8]) -> bool {
        let g = self.geo;
        let unit = g.unit as usize;
        let k_count = g.data_members();
        let s1 = s0 + (out.len() / unit / k_count) as u64 - 1;
        // Chunk j of `out` is data chunk j % k of stripe s0 + j / k; each
        // member's list comes out in stripe order.
        let mut per_member: Vec<Vec<std::io::IoSliceMut<'_>>> = (0..g.members).map(|_| Vec::new()).collect();
        for (j, chunk) in out.chunks_mut(unit).enumerate() {
            let s = s0 + (j / k_count) as u64;
            per_member[g.data_slot(s, j % k_count)].push(std::io::IoSliceMut::new(chunk));
        }
        for (i, (slot, chunks)) in inner.slots.iter().zip(per_member).enumerate() {
            let Some(disk) = &slot.disk else { return false };
            // A run of stripes where this member holds data is contiguous on it.
            let mut chunks = chunks.into_iter();
            for (start, end) in data_runs(&g, s0, s1, i) {
                let mut run: Vec<_> = chunks.by_ref().take((end - start) as usize).collect();
                if let Err(e) = disk.read_data_vectored(g.disk_offset(s0 + start), &mut run) {
                    self.fail_slot(slot, &e);
                    return false;
                }
            }
        }
        true
    }

    /// Rebuilds `[start, start + out.len())` of member `missing`'s chunk of
    /// stripe `s` from every other member.
    fn reconstruct(&self, inner: &Inner, s: u64, missing: usize, start: u64, out: &mut [u8]) -> Result<(), ArrayError> {
        let at = self.geo.disk_offset(s) + start;
        out.fill(0);
        let mut tmp = vec![0u8; out.len()];
        for (i, slot) in inner.slots.iter().enumerate().filter(|(i, _)| *i != missing) {
            if !slot.available(s) || !self.member_read(slot, at, &mut tmp) {
                let (a, b) = (inner.slots[missing].number, inner.slots[i].number);
                let reason = format!("stripe {s} has two unavailable members (disks {a} and {b})");
                return Err(ArrayError::LuFailed { lu: self.lu, reason });
            }
            xor(out, &tmp);
        }
        Ok(())
    }

    pub(super) fn parity_write(&self, inner: &mut Inner, p: &StripePiece, data: &[u8]) -> Result<(), ArrayError> {
        let chunks = self.geo.chunks(p);
        // A member failing mid-way turns a healthy write into a degraded one;
        // at most two retries, since each retry follows a new failure.
        for _ in 0..3 {
            let missing: Vec<usize> = (0..self.geo.members)
                .filter(|&i| !inner.slots[i].available(p.stripe))
                .collect();
            let done = match missing.as_slice() {
                [] if p.within == 0 && p.len == self.geo.stripe_bytes() => {
                    self.full_stripe_write(inner, p, &chunks, data)
                }
                [] => self.read_modify_write(inner, p, &chunks, data),
                [m] if *m == self.geo.parity_slot(p.stripe) => {
                    self.write_chunks(inner, p, &chunks, data, None);
                    true
                }
                [m] => self.degraded_write(inner, p, &chunks, data, *m)?,
                _ => {
                    let disks: Vec<u32> = missing.iter().map(|&i| inner.slots[i].number).collect();
                    return Err(ArrayError::LuFailed {
                        lu: self.lu,
                        reason: format!("stripe {} has members {disks:?} unavailable", p.stripe),
                    });
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(self.lu_failed(format!("stripe {} could not be written", p.stripe)))
    }

    fn write_chunks(&self, inner: &Inner, p: &StripePiece, chunks: &[ChunkPiece], data: &[u8], skip: Option<usize>) {
        let base = self.geo.disk_offset(p.stripe);
        for c in chunks.iter().filter(|c| Some(c.slot) != skip) {
            let src = &data[c.piece_at..c.piece_at + (c.end - c.start) as usize];
            if inner.slots[c.slot].available(p.stripe) {
                self.member_write(&inner.slots[c.slot], base + c.start, src);
            }
        }
    }

    /// Parity from the new data alone: no reads.
    fn full_stripe_write(&self, inner: &Inner, p: &StripePiece, chunks: &[ChunkPiece], data: &[u8]) -> bool {
        let mut parity = vec![0u8; self.geo.unit as usize];
        for c in chunks {
            xor(&mut parity, &data[c.piece_at..c.piece_at + (c.end - c.start) as usize]);
        }
        self.write_chunks(inner, p, chunks, data, None);
        let ps = self.geo.parity_slot(p.stripe);
        self.member_write(&inner.slots[ps], self.geo.disk_offset(p.stripe), &parity);
        true
    }

    /// New parity = old parity ^ old data ^ new data, over the bytes written.
    /// Returns false when a read failed (the member is then failed).
    fn read_modify_write(&self, inner: &Inner, p: &StripePiece, chunks: &[ChunkPiece], data: &[u8]) -> bool {
        let base = self.geo.disk_offset(p.stripe);
        let lo = chunks.iter().map(|c| c.start).min().unwrap_or(0);
        let hi = chunks.iter().map(|c| c.end).max().unwrap_or(0);
        let ps = self.geo.parity_slot(p.stripe);
        let mut parity = vec![0u8; (hi - lo) as usize];
        if !self.member_read(&inner.slots[ps], base + lo, &mut parity) {
            return false;
        }
        for c in chunks {
            let len = (c.end - c.start) as usize;
            let mut old = vec![0u8; len];
            if !self.member_read(&inner.slots[c.slot], base + c.start, &mut old) {
                return false;
            }
            let region = &mut parity[(c.start - lo) as usize..][..len];
            xor(region, &old);
            xor(region, &data[c.piece_at..c.piece_at + len]);
        }
        self.write_chunks(inner, p, chunks, data, None);
        self.member_write(&inner.slots[ps], base + lo, &parity);
        true
    }

    /// Member `m` (holding data) is unavailable: reconstruct its chunk, fold
    /// in the new data, journal its final content, then write in place.
    fn degraded_write(
        &self,
        inner: &mut Inner,
        p: &StripePiece,
        chunks: &[ChunkPiece],
        data: &[u8],
        m: usize,
    ) -> Result<bool, ArrayError> {
        let s = p.stripe;
        let base = self.geo.disk_offset(s);
        let (lo, hi) = match chunks.len() {
            1 => (chunks[0].start, chunks[0].end),
            _ => (0, self.geo.unit),
        };
        let width = (hi - lo) as usize;
        let k_count = self.geo.data_members();
        let mut bufs = vec![vec![0u8; width]; k_count];
        let mut parity = vec![0u8; width];
        let ps = self.geo.parity_slot(s);
        if !self.member_read(&inner.slots[ps], base + lo, &mut parity) {
            return Ok(false);
        }
        let mut missing_k = 0;
        for (k, buf) in bufs.iter_mut().enumerate() {
            let slot = self.geo.data_slot(s, k);
            if slot == m {
                missing_k = k;
            } else if !self.member_read(&inner.slots[slot], base + lo, buf) {
                return Ok(false);
            }
        }
        let mut missing = parity.clone();
        for (k, buf) in bufs.iter().enumerate() {
            if k != missing_k {
                xor(&mut missing, buf);
            }
        }
        bufs[missing_k] = missing;
        for c in chunks {
            let k = (0..k_count)
                .find(|&k| self.geo.data_slot(s, k) == c.slot)
                .unwrap_or(missing_k);
            let len = (c.end - c.start) as usize;
            bufs[k][(c.start - lo) as usize..][..len].copy_from_slice(&data[c.piece_at..c.piece_at + len]);
        }
        self.journal(inner, s, m, lo, &bufs[missing_k])?;
        parity.fill(0);
        for buf in &bufs {
            xor(&mut parity, buf);
        }
        self.write_chunks(inner, p, chunks, data, Some(m));
        self.member_write(&inner.slots[ps], base + lo, &parity);
        Ok(true)
    }

    /// Checks stripe `s`'s parity against its data; with `repair`, rewrites
    /// the parity. Returns (mismatched, repaired); a degraded stripe cannot
    /// be checked and reports (false, false).
    pub(super) fn parity_resync(&self, inner: &Inner, s: u64, repair: bool) -> (bool, bool) {
        if (0..self.geo.members).any(|i| !inner.slots[i].available(s)) {
            return (false, false);
        }
        let unit = self.geo.unit as usize;
        let base = self.geo.disk_offset(s);
        let mut expect = vec![0u8; unit];
        let mut buf = vec![0u8; unit];
        for k in 0..self.geo.data_members() {
            if !self.member_read(&inner.slots[self.geo.data_slot(s, k)], base, &mut buf) {
                return (false, false);
            }
            xor(&mut expect, &buf);
        }
        let ps = self.geo.parity_slot(s);
        if !self.member_read(&inner.slots[ps], base, &mut buf) {
            return (false, false);
        }
        if buf == expect {
            return (false, false);
        }
        let repaired = repair && self.member_write(&inner.slots[ps], base, &expect);
        (true, repaired)
    }

    /// The content of stripe `s`'s chunk on member `target`, from the others.
    pub(super) fn parity_rebuild_chunk(&self, inner: &Inner, s: u64, target: usize) -> Result<Vec<u8>, ArrayError> {
        let mut out = vec![0u8; self.geo.unit as usize];
        self.reconstruct(inner, s, target, 0, &mut out)?;
        Ok(out)
    }
}
