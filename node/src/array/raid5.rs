//! RAID 5: data chunks plus one rotating parity chunk per stripe.
//!
//! Owns the parity read path (direct, or reconstructed from the other
//! members), the three write paths (full stripe: parity from the new data
//! alone; partial stripe: read-modify-write of the old data and parity;
//! degraded: reconstruct, journal the missing chunk, write), and parity
//! resync. It must never return reconstructed bytes when two members of a
//! stripe are unavailable.

use super::bulk::{data_runs, BULK_MIN};
use super::checksum::BLOCK;
use super::device::{read_raw_chunks, restore, xor, Inner, LuDevice, RawChunk};
use super::layout::{ChunkPiece, StripePiece};
use super::member::Member;
use super::redundancy::{Parity, Redundancy, Resync, Resynced};
use super::ArrayError;

impl Parity {
    /// Reads whole stripes `s0..` (LU bytes `out`, a multiple of the stripe
    /// size) when every member is healthy there: one `preadv` per member
    /// and run of data chunks, straight into `out`. Returns false (having
    /// failed the member) when a read fails; the caller then goes stripe by
    /// stripe, reconstructing.
    fn parity_read_stripes(&self, dev: &LuDevice, inner: &Inner, s0: u64, out: &mut [u8]) -> bool {
        let g = dev.geo;
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
                match disk.read_data_vectored(g.disk_offset(s0 + start), &mut run) {
                    Ok(()) => {}
                    // Piece by piece, the damaged block is repaired.
                    Err(ArrayError::Checksum { .. }) => return false,
                    Err(e) => {
                        dev.fail_slot(slot, &e);
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Rebuilds `[start, start + out.len())` of member `missing`'s chunk of
    /// stripe `s` from every other member.
    fn reconstruct(
        &self,
        dev: &LuDevice,
        inner: &Inner,
        s: u64,
        missing: usize,
        start: u64,
        out: &mut [u8],
    ) -> Result<(), ArrayError> {
        let at = dev.geo.disk_offset(s) + start;
        out.fill(0);
        let mut tmp = vec![0u8; out.len()];
        for (i, slot) in inner.slots.iter().enumerate().filter(|(i, _)| *i != missing) {
            if !slot.available(s) || !dev.member_read(inner, slot, at, &mut tmp) {
                if slot.available(s) {
                    return Err(ArrayError::Corrupted {
                        lu: dev.lu,
                        offset: s * dev.geo.stripe_bytes(),
                    });
                }
                let (a, b) = (inner.slots[missing].number, inner.slots[i].number);
                let reason = format!("stripe {s} has two unavailable members (disks {a} and {b})");
                return Err(ArrayError::LuFailed { lu: dev.lu, reason });
            }
            xor(out, &tmp);
        }
        Ok(())
    }

    fn write_chunks(
        &self,
        dev: &LuDevice,
        inner: &Inner,
        p: &StripePiece,
        chunks: &[ChunkPiece],
        data: &[u8],
        skip: Option<usize>,
    ) {
        let base = dev.geo.disk_offset(p.stripe);
        for c in chunks.iter().filter(|c| Some(c.slot) != skip) {
            let src = &data[c.piece_at..c.piece_at + (c.end - c.start) as usize];
            if inner.slots[c.slot].available(p.stripe) {
                dev.member_write(inner, &inner.slots[c.slot], base + c.start, src);
            }
        }
    }

    /// Parity from the new data alone: no reads.
    fn full_stripe_write(
        &self,
        dev: &LuDevice,
        inner: &Inner,
        p: &StripePiece,
        chunks: &[ChunkPiece],
        data: &[u8],
    ) -> bool {
        let mut parity = vec![0u8; dev.geo.unit as usize];
        for c in chunks {
            xor(&mut parity, &data[c.piece_at..c.piece_at + (c.end - c.start) as usize]);
        }
        self.write_chunks(dev, inner, p, chunks, data, None);
        let ps = dev.geo.parity_slot(p.stripe);
        dev.member_write(inner, &inner.slots[ps], dev.geo.disk_offset(p.stripe), &parity);
        true
    }

    /// New parity = old parity ^ old data ^ new data, over the bytes written.
    /// Returns false when a read failed (the member is then failed).
    fn read_modify_write(
        &self,
        dev: &LuDevice,
        inner: &Inner,
        p: &StripePiece,
        chunks: &[ChunkPiece],
        data: &[u8],
    ) -> bool {
        let base = dev.geo.disk_offset(p.stripe);
        let lo = chunks.iter().map(|c| c.start).min().unwrap_or(0);
        let hi = chunks.iter().map(|c| c.end).max().unwrap_or(0);
        let ps = dev.geo.parity_slot(p.stripe);
        let mut parity = vec![0u8; (hi - lo) as usize];
        if !dev.member_read(inner, &inner.slots[ps], base + lo, &mut parity) {
            return false;
        }
        for c in chunks {
            let len = (c.end - c.start) as usize;
            let mut old = vec![0u8; len];
            if !dev.member_read(inner, &inner.slots[c.slot], base + c.start, &mut old) {
                return false;
            }
            let region = &mut parity[(c.start - lo) as usize..][..len];
            xor(region, &old);
            xor(region, &data[c.piece_at..c.piece_at + len]);
        }
        self.write_chunks(dev, inner, p, chunks, data, None);
        dev.member_write(inner, &inner.slots[ps], base + lo, &parity);
        true
    }

    /// Member `m` (holding data) is unavailable: reconstruct its chunk, fold
    /// in the new data, journal its final content, then write in place.
    fn degraded_write(
        &self,
        dev: &LuDevice,
        inner: &mut Inner,
        p: &StripePiece,
        chunks: &[ChunkPiece],
        data: &[u8],
        m: usize,
    ) -> Result<bool, ArrayError> {
        let s = p.stripe;
        let base = dev.geo.disk_offset(s);
        let (lo, hi) = match chunks.len() {
            1 => (chunks[0].start, chunks[0].end),
            _ => (0, dev.geo.unit),
        };
        let width = (hi - lo) as usize;
        let k_count = dev.geo.data_members();
        let mut bufs = vec![vec![0u8; width]; k_count];
        let mut parity = vec![0u8; width];
        let ps = dev.geo.parity_slot(s);
        if !dev.member_read(inner, &inner.slots[ps], base + lo, &mut parity) {
            return Ok(false);
        }
        let mut missing_k = 0;
        for (k, buf) in bufs.iter_mut().enumerate() {
            let slot = dev.geo.data_slot(s, k);
            if slot == m {
                missing_k = k;
            } else if !dev.member_read(inner, &inner.slots[slot], base + lo, buf) {
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
                .find(|&k| dev.geo.data_slot(s, k) == c.slot)
                .unwrap_or(missing_k);
            let len = (c.end - c.start) as usize;
            bufs[k][(c.start - lo) as usize..][..len].copy_from_slice(&data[c.piece_at..c.piece_at + len]);
        }
        dev.journal(inner, s, m, lo, &bufs[missing_k])?;
        parity.fill(0);
        for buf in &bufs {
            xor(&mut parity, buf);
        }
        self.write_chunks(dev, inner, p, chunks, data, Some(m));
        dev.member_write(inner, &inner.slots[ps], base + lo, &parity);
        Ok(true)
    }
}

impl Parity {
    /// Recovery of a stripe with a member missing: nothing can tell a block
    /// of the present members written since the last sync from a damaged
    /// one, so each is kept as it is and its checksum follows it. Reports
    /// the stripe `lost` when any was, because the missing chunk rebuilt
    /// from them is then not vouched for.
    fn recover_degraded(&self, dev: &LuDevice, inner: &Inner, s: u64, chunks: &[RawChunk<'_>]) -> Resynced {
        let mut out = Resynced::default();
        let base = dev.geo.disk_offset(s);
        for c in chunks {
            for (i, block) in c.bytes.chunks(BLOCK as usize).enumerate() {
                let addr = base + i as u64 * BLOCK;
                if !c.disk.matches(addr, block) {
                    out.mismatched = true;
                    out.lost = true;
                    out.repaired |= dev.member_write(inner, &inner.slots[c.slot], addr, block);
                }
            }
        }
        out
    }
}

impl Redundancy for Parity {
    fn tolerates(&self, _members: usize) -> usize {
        1
    }

    fn read(&self, dev: &LuDevice, inner: &Inner, p: &StripePiece, out: &mut [u8]) -> Result<(), ArrayError> {
        let base = dev.geo.disk_offset(p.stripe);
        for c in dev.geo.chunks(p) {
            dev.check_suspect(inner, c.slot, p.stripe)?;
            let dst = &mut out[c.piece_at..c.piece_at + (c.end - c.start) as usize];
            let slot = &inner.slots[c.slot];
            if slot.available(p.stripe) {
                if dev.member_read(inner, slot, base + c.start, dst) {
                    continue;
                }
                // Still in service: the chunk failed its checksum and
                // could not be repaired; a reconstruction would not be
                // vouched for either.
                if slot.available(p.stripe) {
                    return Err(ArrayError::Corrupted {
                        lu: dev.lu,
                        offset: p.stripe * dev.geo.stripe_bytes() + p.within + c.piece_at as u64,
                    });
                }
            }
            self.reconstruct(dev, inner, p.stripe, c.slot, c.start, dst)?;
        }
        Ok(())
    }

    fn write(&self, dev: &LuDevice, inner: &mut Inner, p: &StripePiece, data: &[u8]) -> Result<(), ArrayError> {
        let chunks = dev.geo.chunks(p);
        // A member failing mid-way turns a healthy write into a degraded one;
        // at most two retries, since each retry follows a new failure.
        for _ in 0..3 {
            let missing: Vec<usize> = (0..dev.geo.members)
                .filter(|&i| !inner.slots[i].available(p.stripe))
                .collect();
            let done = match missing.as_slice() {
                [] if p.within == 0 && p.len == dev.geo.stripe_bytes() => {
                    self.full_stripe_write(dev, inner, p, &chunks, data)
                }
                [] => self.read_modify_write(dev, inner, p, &chunks, data),
                [m] if *m == dev.geo.parity_slot(p.stripe) => {
                    self.write_chunks(dev, inner, p, &chunks, data, None);
                    true
                }
                [m] => self.degraded_write(dev, inner, p, &chunks, data, *m)?,
                _ => {
                    let disks: Vec<u32> = missing.iter().map(|&i| inner.slots[i].number).collect();
                    return Err(ArrayError::LuFailed {
                        lu: dev.lu,
                        reason: format!("stripe {} has members {disks:?} unavailable", p.stripe),
                    });
                }
            };
            if done {
                return Ok(());
            }
            // Nothing failed, yet a read did: a block this write needs is
            // damaged on a member and cannot be rebuilt from the others.
            if (0..dev.geo.members).all(|i| inner.slots[i].available(p.stripe) != missing.contains(&i)) {
                return Err(ArrayError::Corrupted {
                    lu: dev.lu,
                    offset: p.stripe * dev.geo.stripe_bytes(),
                });
            }
        }
        Err(dev.lu_failed(format!("stripe {} could not be written", p.stripe)))
    }

    /// Block by block: a block that fails its checksum is rebuilt from the
    /// others when that rebuild passes it; parity that disagrees with data
    /// that passes is recomputed. Parity is never recomputed from a data
    /// block that fails its checksum, except in recovery, where no copy of
    /// the block passes (see [`Resync::Recover`]). A degraded stripe cannot
    /// be checked and reports nothing.
    fn resync(&self, dev: &LuDevice, inner: &Inner, s: u64, mode: Resync) -> Resynced {
        let mut out = Resynced::default();
        let g = dev.geo;
        let (unit, base, ps) = (g.unit as usize, g.disk_offset(s), g.parity_slot(s));
        let chunks = match read_raw_chunks(dev, inner, s) {
            Some(c) if c.len() == g.members => c,
            Some(c) if mode == Resync::Recover => return self.recover_degraded(dev, inner, s, &c),
            _ => return out,
        };
        let block_size = BLOCK as usize;
        for at in (0..unit).step_by(block_size) {
            let block = |i: usize| &chunks[i].bytes[at..at + block_size];
            let addr = base + at as u64;
            let bad: Vec<usize> = (0..g.members)
                .filter(|&i| !chunks[i].disk.matches(addr, block(i)))
                .collect();
            let xor_except = |skip: usize| {
                let mut acc = vec![0u8; block_size];
                (0..g.members)
                    .filter(|&i| i != skip)
                    .for_each(|i| xor(&mut acc, block(i)));
                acc
            };
            let parity = xor_except(ps);
            if bad.is_empty() && parity == block(ps) {
                continue;
            }
            out.mismatched = true;
            let accept = |out: &mut Resynced| {
                for &i in bad.iter().filter(|&&i| i != ps) {
                    dev.member_write(inner, &inner.slots[i], addr, block(i));
                }
                out.repaired |= dev.member_write(inner, &inner.slots[ps], addr, &parity);
            };
            match (bad.as_slice(), mode) {
                ([], Resync::Check) => {}
                ([], _) => out.repaired |= dev.member_write(inner, &inner.slots[ps], addr, &parity),
                ([one], _) if chunks[*one].disk.matches(addr, &xor_except(*one)) => {
                    let rebuilt = xor_except(*one);
                    if mode != Resync::Recover {
                        chunks[*one].disk.count_error();
                        tracing::warn!(
                            lu = dev.lu,
                            disk = inner.slots[*one].number,
                            offset = addr,
                            "scrub: block fails its checksum; the other members hold it"
                        );
                    }
                    if mode != Resync::Check {
                        out.repaired |= restore(dev, inner, *one, addr, &rebuilt);
                    }
                }
                (_, Resync::Recover) => accept(&mut out),
                _ => {
                    tracing::error!(
                        lu = dev.lu,
                        stripe = s,
                        offset = addr,
                        "scrub: block fails its checksum on more than one member, or its rebuild does; it is lost"
                    );
                    out.lost = true;
                }
            }
        }
        out
    }

    /// The content of stripe `s`'s chunk on member `target`, from the others.
    fn rebuild_chunk(&self, dev: &LuDevice, inner: &Inner, s: u64, target: usize) -> Result<Vec<u8>, ArrayError> {
        let mut out = vec![0u8; dev.geo.unit as usize];
        self.reconstruct(dev, inner, s, target, 0, &mut out)?;
        Ok(out)
    }

    /// Whole stripes in the middle of a large healthy read go member by
    /// member; the partial stripes at its ends, piece by piece.
    fn read_bulk(&self, dev: &LuDevice, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<bool, ArrayError> {
        let sb = dev.geo.stripe_bytes();
        let end = offset + buf.len() as u64;
        let (head, tail) = (offset.next_multiple_of(sb).min(end), end - end % sb);
        let healthy = |s0: u64, s1: u64| {
            inner.suspect.is_empty() && inner.slots.iter().all(|s| s.available(s0) && s.available(s1))
        };
        if tail <= head || ((tail - head) as usize) < BULK_MIN || !healthy(head / sb, (tail - 1) / sb) {
            return Ok(false);
        }
        let (front, rest) = buf.split_at_mut((head - offset) as usize);
        let (middle, back) = rest.split_at_mut((tail - head) as usize);
        if !self.parity_read_stripes(dev, inner, head / sb, middle) {
            return Ok(false);
        }
        dev.read_pieces(inner, offset, front)?;
        dev.read_pieces(inner, tail, back)?;
        Ok(true)
    }
}
