//! RAID 1: every member holds every byte. Reads go to one healthy member
//! in turn; writes go to all of them.
//!
//! Owns the mirror read, write and resync paths. It must never read a
//! member for a stripe it does not hold valid data for.

use super::bulk::{mirror_share, BULK_MIN};
use super::checksum::BLOCK;
use super::device::{read_raw_chunks, Inner, LuDevice};
use super::layout::StripePiece;
use super::redundancy::{Mirror, Redundancy, Resync, Resynced};
use super::ArrayError;

impl Mirror {
    /// A large read: each mirror serves one contiguous share, so that every
    /// member file is read sequentially. Falls back to piece by piece (which
    /// tries every mirror) when a share cannot be read.
    fn mirror_read_large(&self, dev: &LuDevice, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        let n = inner.slots.len();
        let (s0, s1) = (offset / dev.geo.unit, (offset + buf.len() as u64 - 1) / dev.geo.unit);
        if inner.slots.iter().all(|s| s.available(s0) && s.available(s1)) {
            let len = buf.len();
            let mut all = true;
            for (i, slot) in inner.slots.iter().enumerate() {
                let Some((at, part)) = mirror_share(offset, len, n, i) else {
                    continue;
                };
                let from = (at - offset) as usize;
                all &= dev.member_read(inner, slot, at, &mut buf[from..from + part]);
            }
            if all {
                return Ok(());
            }
        }
        for p in dev.geo.pieces(offset, buf.len() as u64) {
            self.read(dev, inner, &p, &mut buf[p.buf_at..p.buf_at + p.len as usize])?;
        }
        Ok(())
    }
}

impl Redundancy for Mirror {
    fn tolerates(&self, members: usize) -> usize {
        members - 1
    }

    fn read(&self, dev: &LuDevice, inner: &Inner, p: &StripePiece, out: &mut [u8]) -> Result<(), ArrayError> {
        let n = inner.slots.len();
        let first = dev.next_mirror();
        let at = dev.geo.disk_offset(p.stripe) + p.within;
        for i in 0..n {
            let slot = &inner.slots[(first + i) % n];
            if slot.available(p.stripe) && dev.member_read(inner, slot, at, out) {
                return Ok(());
            }
        }
        // A mirror still in service failed only the checksum of a block no
        // other mirror holds intact.
        if inner.slots.iter().any(|s| s.available(p.stripe)) {
            return Err(ArrayError::Corrupted { lu: dev.lu, offset: at });
        }
        Err(dev.lu_failed("no mirror member can be read"))
    }

    fn write(&self, dev: &LuDevice, inner: &mut Inner, p: &StripePiece, data: &[u8]) -> Result<(), ArrayError> {
        let at = dev.geo.disk_offset(p.stripe) + p.within;
        let mut written = 0;
        for slot in inner.slots.iter().filter(|s| s.available(p.stripe)) {
            if dev.member_write(inner, slot, at, data) {
                written += 1;
            }
        }
        if written == 0 {
            return Err(dev.lu_failed("no mirror member can be written"));
        }
        Ok(())
    }

    /// Block by block: copies that fail their checksum are rewritten from
    /// one that passes; where none passes, recovery keeps the first copy
    /// (see [`Resync::Recover`]) and anything else reports the block lost.
    fn resync(&self, dev: &LuDevice, inner: &Inner, s: u64, mode: Resync) -> Resynced {
        let mut out = Resynced::default();
        let Some(chunks) = read_raw_chunks(dev, inner, s) else {
            return out;
        };
        let base = dev.geo.disk_offset(s);
        let block_size = BLOCK as usize;
        for at in (0..dev.geo.unit as usize).step_by(block_size) {
            let block = |i: usize| &chunks[i].bytes[at..at + block_size];
            let addr = base + at as u64;
            let (good, bad): (Vec<usize>, Vec<usize>) =
                (0..chunks.len()).partition(|&i| chunks[i].disk.matches(addr, block(i)));
            let source = match (good.first(), mode) {
                (Some(&g), _) if bad.is_empty() && good.iter().all(|&i| block(i) == block(g)) => continue,
                (Some(&g), _) => g,
                (None, Resync::Recover) => 0,
                (None, _) => {
                    out.mismatched = true;
                    out.lost = true;
                    tracing::error!(
                        lu = dev.lu,
                        offset = addr,
                        "scrub: no mirror of the block passes its checksum; it is lost"
                    );
                    continue;
                }
            };
            out.mismatched = true;
            if mode != Resync::Recover {
                for &i in &bad {
                    chunks[i].disk.count_error();
                    tracing::warn!(
                        lu = dev.lu,
                        disk = inner.slots[chunks[i].slot].number,
                        offset = addr,
                        "scrub: block fails its checksum; another mirror holds it"
                    );
                }
            }
            if mode == Resync::Check {
                continue;
            }
            // Every copy that differs or fails its checksum takes the
            // source's bytes, and its checksum follows them.
            for i in (0..chunks.len()).filter(|&i| bad.contains(&i) || block(i) != block(source)) {
                out.repaired |= dev.member_write(inner, &inner.slots[chunks[i].slot], addr, block(source));
            }
        }
        out
    }

    /// The content of stripe `s` for a member being rebuilt: a copy from a
    /// member that holds it.
    fn rebuild_chunk(&self, dev: &LuDevice, inner: &Inner, s: u64, target: usize) -> Result<Vec<u8>, ArrayError> {
        let mut buf = vec![0u8; dev.geo.unit as usize];
        let at = dev.geo.disk_offset(s);
        for (i, slot) in inner.slots.iter().enumerate() {
            if i != target && slot.available(s) && dev.member_read(inner, slot, at, &mut buf) {
                return Ok(buf);
            }
        }
        Err(ArrayError::LuFailed {
            lu: dev.lu,
            reason: format!("no mirror holds a readable copy of stripe {s}"),
        })
    }

    fn read_bulk(&self, dev: &LuDevice, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<bool, ArrayError> {
        if buf.len() < BULK_MIN {
            return Ok(false);
        }
        self.mirror_read_large(dev, inner, offset, buf)?;
        Ok(true)
    }
}
