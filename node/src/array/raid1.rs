//! RAID 1: every member holds every byte. Reads go to one healthy member
//! in turn; writes go to all of them.
//!
//! Owns the mirror read, write and resync paths. It must never read a
//! member for a stripe it does not hold valid data for.

use super::bulk::{mirror_share, BULK_MIN};
use super::device::{Inner, LuDevice};
use super::layout::StripePiece;
use super::redundancy::{Mirror, Redundancy};
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
                all &= dev.member_read(slot, at, &mut buf[from..from + part]);
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
            if slot.available(p.stripe) && dev.member_read(slot, at, out) {
                return Ok(());
            }
        }
        Err(dev.lu_failed("no mirror member can be read"))
    }

    fn write(&self, dev: &LuDevice, inner: &mut Inner, p: &StripePiece, data: &[u8]) -> Result<(), ArrayError> {
        let at = dev.geo.disk_offset(p.stripe) + p.within;
        let mut written = 0;
        for slot in inner.slots.iter().filter(|s| s.available(p.stripe)) {
            if dev.member_write(slot, at, data) {
                written += 1;
            }
        }
        if written == 0 {
            return Err(dev.lu_failed("no mirror member can be written"));
        }
        Ok(())
    }

    /// Compares the mirrors of stripe `s`; with `repair`, copies the first
    /// readable member over those that differ. Returns (differed, repaired).
    fn resync(&self, dev: &LuDevice, inner: &Inner, s: u64, repair: bool) -> (bool, bool) {
        let at = dev.geo.disk_offset(s);
        let unit = dev.geo.unit as usize;
        let mut reference: Option<Vec<u8>> = None;
        let mut differs = false;
        let mut repaired = false;
        for slot in inner.slots.iter().filter(|x| x.available(s)) {
            let mut buf = vec![0u8; unit];
            if !dev.member_read(slot, at, &mut buf) {
                continue;
            }
            match &reference {
                None => reference = Some(buf),
                Some(r) if *r != buf => {
                    differs = true;
                    if repair && dev.member_write(slot, at, r) {
                        repaired = true;
                    }
                }
                Some(_) => {}
            }
        }
        (differs, repaired)
    }

    /// The content of stripe `s` for a member being rebuilt: a copy from a
    /// member that holds it.
    fn rebuild_chunk(&self, dev: &LuDevice, inner: &Inner, s: u64, target: usize) -> Result<Vec<u8>, ArrayError> {
        let mut buf = vec![0u8; dev.geo.unit as usize];
        let at = dev.geo.disk_offset(s);
        for (i, slot) in inner.slots.iter().enumerate() {
            if i != target && slot.available(s) && dev.member_read(slot, at, &mut buf) {
                return Ok(buf);
            }
        }
        Err(dev.lu_failed("no mirror member left to rebuild from"))
    }

    fn read_bulk(&self, dev: &LuDevice, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<bool, ArrayError> {
        if buf.len() < BULK_MIN {
            return Ok(false);
        }
        self.mirror_read_large(dev, inner, offset, buf)?;
        Ok(true)
    }
}
