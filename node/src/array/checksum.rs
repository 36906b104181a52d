//! Block checksums of one member disk: a crc32c of every 4 KiB block of
//! its data area, kept in a table in the member's metadata area, apart
//! from the blocks they cover.
//!
//! [`Verified`] wraps a [`Member`] so that no byte leaves it unverified: a
//! read whose blocks do not match their checksums fails with
//! [`ArrayError::Checksum`] instead of returning them. Each checksum also
//! covers the block's address, so a write that landed in the wrong place
//! fails too. Owns the table and its persistence; it must never decide
//! which copy of a block is right (the RAID scheme does, from the other
//! members), and never make a checksum durable before its block: table
//! pages are written by [`Member::sync`], ahead of the same fdatasync that
//! makes the data durable, so a crash can only leave checksums that are
//! stale for blocks written since the last sync, which the write-intent
//! bitmap marks for recovery.

use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::member::Member;
use super::superblock::CHECKSUMS_AT;
use super::ArrayError;

/// Bytes covered by one checksum.
pub const BLOCK: u64 = 4096;
const PAGE: usize = 4096;
/// Checksums per table page; the page's last word is the page's own crc.
const PER_PAGE: u64 = (PAGE / 4 - 1) as u64;

/// Bytes of metadata area the table of a member of `capacity` bytes needs.
pub fn table_bytes(capacity: u64) -> u64 {
    capacity.div_ceil(BLOCK).div_ceil(PER_PAGE) * PAGE as u64
}

/// The checksum of the block at member offset `at`.
pub fn block_sum(at: u64, block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&at.to_le_bytes()), block)
}

struct Table {
    sums: Vec<u32>,
    /// Pages changed since the last sync.
    dirty: BTreeSet<u64>,
}

impl Table {
    fn set(&mut self, block: u64, sum: u32) {
        if let Some(s) = self.sums.get_mut(block as usize) {
            if *s != sum {
                *s = sum;
                self.dirty.insert(block / PER_PAGE);
            }
        }
    }

    fn page(&self, page: u64) -> Vec<u8> {
        let mut out = vec![0u8; PAGE];
        let first = (page * PER_PAGE) as usize;
        let last = (first + PER_PAGE as usize).min(self.sums.len());
        for (i, sum) in self.sums[first..last].iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&sum.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[..PAGE - 4]);
        out[PAGE - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

/// A member whose every data block is verified on read.
pub struct Verified {
    disk: Arc<dyn Member>,
    table: Mutex<Table>,
    /// Blocks found not to match their checksum since the member was opened.
    errors: AtomicU64,
}

impl Verified {
    /// A member whose data area was just zeroed: every block holds zeros.
    /// The table reaches the disk with the next [`Member::sync`].
    pub fn formatted(disk: Arc<dyn Member>) -> Self {
        let blocks = disk.capacity() / BLOCK;
        let zeros = [0u8; BLOCK as usize];
        let sums = (0..blocks).map(|b| block_sum(b * BLOCK, &zeros)).collect();
        let pages = blocks.div_ceil(PER_PAGE);
        Self::with(disk, sums, (0..pages).collect())
    }

    /// Opens a member and reads its table. A page that fails its own crc
    /// is rebuilt from the data it covers, and said so: those blocks go
    /// unverified until they are next written.
    pub fn open(disk: Arc<dyn Member>) -> Result<Self, ArrayError> {
        let blocks = disk.capacity() / BLOCK;
        let mut sums = Vec::with_capacity(blocks as usize);
        let mut dirty = BTreeSet::new();
        let mut raw = vec![0u8; PAGE];
        let mut block = vec![0u8; BLOCK as usize];
        for page in 0..blocks.div_ceil(PER_PAGE) {
            disk.read_meta(CHECKSUMS_AT + page * PAGE as u64, &mut raw)?;
            let first = page * PER_PAGE;
            let count = PER_PAGE.min(blocks - first) as usize;
            let stored = u32::from_le_bytes([raw[PAGE - 4], raw[PAGE - 3], raw[PAGE - 2], raw[PAGE - 1]]);
            if crc32c::crc32c(&raw[..PAGE - 4]) == stored {
                sums.extend(
                    raw[..count * 4]
                        .chunks_exact(4)
                        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                );
                continue;
            }
            tracing::warn!(
                disk = disk.number(),
                page,
                "a page of the member's checksum table is damaged; recomputing it from the data it covers"
            );
            for b in first..first + count as u64 {
                disk.read_data(b * BLOCK, &mut block)?;
                sums.push(block_sum(b * BLOCK, &block));
            }
            dirty.insert(page);
        }
        Ok(Self::with(disk, sums, dirty))
    }

    fn with(disk: Arc<dyn Member>, sums: Vec<u32>, dirty: BTreeSet<u64>) -> Self {
        Self {
            disk,
            table: Mutex::new(Table { sums, dirty }),
            errors: AtomicU64::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `block` (one whole block at member offset `at`) matches its checksum.
    pub fn matches(&self, at: u64, block: &[u8]) -> bool {
        let sum = self.table().sums.get((at / BLOCK) as usize).copied();
        sum == Some(block_sum(at, block))
    }

    /// The first block of `data` (whole blocks from the block-aligned
    /// member offset `at`) that does not match its checksum.
    fn first_bad(&self, at: u64, data: &[u8]) -> Option<u64> {
        let table = self.table();
        data.chunks(BLOCK as usize).enumerate().find_map(|(i, block)| {
            let b = at + i as u64 * BLOCK;
            (table.sums.get((b / BLOCK) as usize) != Some(&block_sum(b, block))).then_some(b)
        })
    }

    fn mismatch(&self, offset: u64) -> ArrayError {
        ArrayError::Checksum {
            disk: self.disk.number(),
            offset,
        }
    }

    /// Reads without verifying: for the RAID scheme that decides which
    /// copy is right.
    pub fn read_raw(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        self.disk.read_data(offset, buf)
    }

    /// Puts back a block's verified content (from the other members)
    /// without touching its checksum, which it matches.
    pub fn restore(&self, at: u64, block: &[u8]) -> Result<(), ArrayError> {
        debug_assert!(self.matches(at, block));
        self.disk.write_data(at, block)
    }

    /// Writes `data` although part of a block it covers is damaged and
    /// could not be repaired: that block keeps its old checksum, so it
    /// still reads as damaged rather than as good.
    pub fn write_over_damage(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.write(offset, data, true)
    }

    fn write(&self, offset: u64, data: &[u8], over_damage: bool) -> Result<(), ArrayError> {
        let (start, end) = aligned(offset, data.len());
        let mut sums = Vec::with_capacity(((end - start) / BLOCK) as usize);
        let mut b = start;
        while b < end {
            let (lo, hi) = (b.max(offset), (b + BLOCK).min(offset + data.len() as u64));
            let new = &data[(lo - offset) as usize..(hi - offset) as usize];
            if lo == b && hi == b + BLOCK {
                sums.push(Some(block_sum(b, new)));
            } else {
                let mut edge = vec![0u8; BLOCK as usize];
                self.disk.read_data(b, &mut edge)?;
                if self.first_bad(b, &edge).is_some() {
                    if !over_damage {
                        return Err(self.mismatch(b));
                    }
                    sums.push(None);
                } else {
                    edge[(lo - b) as usize..(hi - b) as usize].copy_from_slice(new);
                    sums.push(Some(block_sum(b, &edge)));
                }
            }
            b += BLOCK;
        }
        self.disk.write_data(offset, data)?;
        let mut table = self.table();
        for (i, sum) in sums.into_iter().enumerate() {
            if let Some(sum) = sum {
                table.set(start / BLOCK + i as u64, sum);
            }
        }
        Ok(())
    }

    /// Counts a block found damaged on this member.
    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks found damaged on this member since it was opened.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// The block-aligned range around `[offset, offset + len)`.
fn aligned(offset: u64, len: usize) -> (u64, u64) {
    let start = offset / BLOCK * BLOCK;
    (start, (offset + len as u64).next_multiple_of(BLOCK))
}

impl Member for Verified {
    fn number(&self) -> u32 {
        self.disk.number()
    }

    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        let (start, end) = aligned(offset, buf.len());
        if start == offset && end == offset + buf.len() as u64 {
            self.disk.read_data(offset, buf)?;
            return match self.first_bad(offset, buf) {
                Some(b) => Err(self.mismatch(b)),
                None => Ok(()),
            };
        }
        let mut whole = vec![0u8; (end - start) as usize];
        self.disk.read_data(start, &mut whole)?;
        if let Some(b) = self.first_bad(start, &whole) {
            return Err(self.mismatch(b));
        }
        let from = (offset - start) as usize;
        buf.copy_from_slice(&whole[from..from + buf.len()]);
        Ok(())
    }

    fn read_data_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<(), ArrayError> {
        let whole_blocks = offset.is_multiple_of(BLOCK) && bufs.iter().all(|b| b.len().is_multiple_of(BLOCK as usize));
        if !whole_blocks {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut all = vec![0u8; total];
            self.read_data(offset, &mut all)?;
            let mut at = 0;
            for b in bufs.iter_mut() {
                let n = b.len();
                b.copy_from_slice(&all[at..at + n]);
                at += n;
            }
            return Ok(());
        }
        self.disk.read_data_vectored(offset, bufs)?;
        let mut at = offset;
        for b in bufs.iter() {
            if let Some(bad) = self.first_bad(at, b) {
                return Err(self.mismatch(bad));
            }
            at += b.len() as u64;
        }
        Ok(())
    }

    /// Writes and records the new checksums. A write that covers part of a
    /// block checks the rest of that block first: a damaged block must be
    /// repaired, never given a checksum that vouches for its damage.
    fn write_data(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.write(offset, data, false)
    }

    fn write_meta(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.disk.write_meta(offset, data)
    }

    fn read_meta(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        self.disk.read_meta(offset, buf)
    }

    fn write_meta_durable(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.disk.write_meta_durable(offset, data)
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.disk.will_need(offset, len)
    }

    /// Zeroes whole blocks (partial ones are written as zeros).
    fn zero_data(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        let (start, end) = aligned(offset, len as usize);
        let (inner_start, inner_end) = (offset.next_multiple_of(BLOCK), (offset + len) / BLOCK * BLOCK);
        if inner_start >= inner_end {
            return self.write_data(offset, &vec![0u8; len as usize]);
        }
        if start < inner_start {
            self.write_data(offset, &vec![0u8; (inner_start - offset) as usize])?;
        }
        if inner_end < end {
            self.write_data(inner_end, &vec![0u8; (offset + len - inner_end) as usize])?;
        }
        self.disk.zero_data(inner_start, inner_end - inner_start)?;
        let zeros = [0u8; BLOCK as usize];
        let mut table = self.table();
        for b in (inner_start..inner_end).step_by(BLOCK as usize) {
            table.set(b / BLOCK, block_sum(b, &zeros));
        }
        Ok(())
    }

    fn zero_meta(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        self.disk.zero_meta(offset, len)
    }

    /// Writes the changed table pages, then makes them and every data
    /// write durable with one sync.
    fn sync(&self) -> Result<(), ArrayError> {
        let pages: Vec<(u64, Vec<u8>)> = {
            let mut table = self.table();
            let dirty = std::mem::take(&mut table.dirty);
            dirty.into_iter().map(|p| (p, table.page(p))).collect()
        };
        let written = pages
            .iter()
            .try_for_each(|(p, bytes)| self.disk.write_meta(CHECKSUMS_AT + p * PAGE as u64, bytes))
            .and_then(|()| self.disk.sync());
        if written.is_err() {
            // Not durable: write them again with the next sync.
            self.table().dirty.extend(pages.iter().map(|(p, _)| *p));
        }
        written
    }

    fn start_writeback(&self) {
        self.disk.start_writeback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::array::PhysicalDisk;

    fn disk(dir: &std::path::Path) -> Arc<dyn Member> {
        Arc::new(PhysicalDisk::create(dir, 1, 1, 1 << 20).unwrap())
    }

    #[test]
    fn table_pages_cover_every_block() {
        assert_eq!(table_bytes(0), 0);
        assert_eq!(table_bytes(BLOCK), 4096);
        assert_eq!(table_bytes(PER_PAGE * BLOCK), 4096);
        assert_eq!(table_bytes(PER_PAGE * BLOCK + 1), 8192);
    }

    #[test]
    fn a_flipped_byte_fails_the_read_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let raw = disk(dir.path());
        let v = Verified::formatted(raw.clone());
        v.write_data(8192, &[7u8; 8192]).unwrap();
        v.write_data(100, b"partial").unwrap();
        v.sync().unwrap();
        let mut buf = vec![0u8; 7];
        v.read_data(100, &mut buf).unwrap();
        assert_eq!(&buf, b"partial");

        raw.write_data(9000, &[8]).unwrap();
        let v = Verified::open(raw.clone()).unwrap();
        let mut buf = vec![0u8; 8192];
        assert!(matches!(
            v.read_data(8192, &mut buf),
            Err(ArrayError::Checksum { offset: 8192, .. })
        ));
        // A partial write into the damaged block is refused: it must be repaired first.
        assert!(matches!(v.write_data(9001, b"x"), Err(ArrayError::Checksum { .. })));
        let mut good = vec![7u8; 4096];
        assert!(!v.matches(8192, &{
            let mut b = good.clone();
            b[808] = 8;
            b
        }));
        v.restore(8192, &good).unwrap();
        v.read_data(8192, &mut buf).unwrap();
        good.resize(8192, 7);
        assert_eq!(buf, good);
    }

    #[test]
    fn a_block_written_at_the_wrong_address_fails() {
        let dir = tempfile::tempdir().unwrap();
        let raw = disk(dir.path());
        let v = Verified::formatted(raw.clone());
        v.write_data(0, &[1u8; 4096]).unwrap();
        v.write_data(4096, &[1u8; 4096]).unwrap();
        let mut block = vec![0u8; 4096];
        v.read_data(4096, &mut block).unwrap();
        // The same bytes are a different checksum at another address.
        assert!(!v.matches(8192, &block));
    }

    #[test]
    fn a_damaged_table_page_is_rebuilt_from_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let raw = disk(dir.path());
        let v = Verified::formatted(raw.clone());
        v.write_data(0, &[3u8; 4096]).unwrap();
        v.sync().unwrap();
        raw.write_meta_durable(CHECKSUMS_AT + 10, &[0xff]).unwrap();
        let v = Verified::open(raw).unwrap();
        let mut buf = vec![0u8; 4096];
        v.read_data(0, &mut buf).unwrap();
        assert_eq!(buf, vec![3u8; 4096]);
    }
}
