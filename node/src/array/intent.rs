//! Crash consistency of an LU: the write-intent bitmap and the degraded
//! write journal, which together close the RAID 5 write hole.
//!
//! * Healthy LU: before a stripe is written, the bit of its region is set
//!   and made durable on every member. A crash can then leave data and
//!   parity disagreeing only inside dirty regions, and opening the LU
//!   recomputes parity (or re-copies mirrors) there. Bits are cleared after
//!   a flush has made the region's writes durable.
//! * Degraded LU: a torn write would corrupt the chunk of the missing
//!   member, which lives only as parity, including bytes the write never
//!   touched. So before a stripe is written in place, the missing chunk's
//!   final content is journaled; replay recomputes parity from it.
//!
//! Owns the in-memory bitmap and the journal entry format. It must never
//! perform I/O by itself: the device decides which disks hold these.

use std::collections::BTreeSet;

use super::superblock::{BITMAP_BYTES, JOURNAL_AT, JOURNAL_BYTES};

const ENTRY_MAGIC: &[u8; 8] = b"NASJRNL1";
/// Header block of a journal entry; the chunk bytes follow it.
pub const ENTRY_HEADER: u64 = 4096;

/// The write-intent bitmap of one LU.
#[derive(Debug, Clone)]
pub struct Bitmap {
    bits: Vec<u8>,
    region_stripes: u64,
}

impl Bitmap {
    pub fn new(region_stripes: u64) -> Self {
        Self {
            bits: vec![0; BITMAP_BYTES],
            region_stripes: region_stripes.max(1),
        }
    }

    pub fn from_bytes(bits: Vec<u8>, region_stripes: u64) -> Self {
        let mut b = Self::new(region_stripes);
        let n = bits.len().min(BITMAP_BYTES);
        b.bits[..n].copy_from_slice(&bits[..n]);
        b
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn region_of(&self, stripe: u64) -> u64 {
        stripe / self.region_stripes
    }

    /// Stripes `[first, end)` of region `r`, clipped to `stripes`.
    pub fn region_stripes(&self, r: u64, stripes: u64) -> std::ops::Range<u64> {
        let first = r * self.region_stripes;
        first.min(stripes)..(first + self.region_stripes).min(stripes)
    }

    fn bit(r: u64) -> (usize, u8) {
        ((r / 8) as usize, 1 << (r % 8))
    }

    /// Sets the bits of stripes `s0..=s1`; true when any was clear, i.e.
    /// when the bitmap must be made durable before the write.
    pub fn mark(&mut self, s0: u64, s1: u64) -> bool {
        let mut changed = false;
        for r in self.region_of(s0)..=self.region_of(s1) {
            let (i, m) = Self::bit(r);
            if let Some(b) = self.bits.get_mut(i) {
                changed |= *b & m == 0;
                *b |= m;
            }
        }
        changed
    }

    /// Clears every bit except `keep`; true when any bit changed.
    pub fn clear_except(&mut self, keep: &BTreeSet<u64>) -> bool {
        let before = self.bits.clone();
        self.bits.iter_mut().for_each(|b| *b = 0);
        for &r in keep {
            let (i, m) = Self::bit(r);
            if let Some(b) = self.bits.get_mut(i) {
                *b |= m;
            }
        }
        before != self.bits
    }

    pub fn dirty(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, b) in self.bits.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    out.push(i as u64 * 8 + bit);
                }
            }
        }
        out
    }
}

/// One journaled stripe: the final content of the missing member's chunk
/// over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub seq: u64,
    pub stripe: u64,
    pub slot: u32,
    pub start: u64,
    pub data: Vec<u8>,
}

impl JournalEntry {
    /// Header block followed by the data.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; ENTRY_HEADER as usize];
        b[0..8].copy_from_slice(ENTRY_MAGIC);
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.stripe.to_le_bytes());
        b[24..28].copy_from_slice(&self.slot.to_le_bytes());
        b[28..36].copy_from_slice(&self.start.to_le_bytes());
        b[36..44].copy_from_slice(&(self.data.len() as u64).to_le_bytes());
        b[44..48].copy_from_slice(&crc32fast::hash(&self.data).to_le_bytes());
        let crc = crc32fast::hash(&b[0..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    /// Parses a header; returns the entry without data and the data length.
    pub fn decode_header(h: &[u8]) -> Option<(Self, usize, u32)> {
        if h.get(0..8)? != ENTRY_MAGIC {
            return None;
        }
        let u64_at = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(h.get(i..i + 8)?.try_into().ok()?)) };
        let u32_at = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(h.get(i..i + 4)?.try_into().ok()?)) };
        if crc32fast::hash(h.get(0..48)?) != u32_at(48)? {
            return None;
        }
        let len = usize::try_from(u64_at(36)?).ok()?;
        let e = Self {
            seq: u64_at(8)?,
            stripe: u64_at(16)?,
            slot: u32_at(24)?,
            start: u64_at(28)?,
            data: Vec::new(),
        };
        Some((e, len, u32_at(44)?))
    }
}

/// The journal ring of one LU: which entry slot comes next.
#[derive(Debug, Clone)]
pub struct Journal {
    entry_bytes: u64,
    pub used: u64,
    pub next_seq: u64,
}

impl Journal {
    pub fn new(unit: u64) -> Self {
        Self {
            entry_bytes: ENTRY_HEADER + unit,
            used: 0,
            next_seq: 1,
        }
    }

    pub fn capacity(&self) -> u64 {
        JOURNAL_BYTES / self.entry_bytes
    }

    /// Metadata offset of entry slot `i`.
    pub fn slot_at(&self, i: u64) -> u64 {
        JOURNAL_AT + i * self.entry_bytes
    }

    pub fn is_full(&self) -> bool {
        self.used >= self.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_marks_regions_once() {
        let mut b = Bitmap::new(4);
        assert!(b.mark(0, 5));
        assert!(!b.mark(1, 7));
        assert_eq!(b.dirty(), vec![0, 1]);
        assert!(b.mark(9, 9));
        let keep = BTreeSet::from([2]);
        assert!(b.clear_except(&keep));
        assert_eq!(b.dirty(), vec![2]);
        assert_eq!(b.region_stripes(2, 10), 8..10);
    }

    #[test]
    fn journal_entry_round_trip_and_damage() {
        let e = JournalEntry {
            seq: 5,
            stripe: 9,
            slot: 2,
            start: 512,
            data: vec![7; 100],
        };
        let raw = e.encode();
        let (h, len, crc) = JournalEntry::decode_header(&raw[..ENTRY_HEADER as usize]).unwrap();
        assert_eq!((h.seq, h.stripe, h.slot, h.start, len), (5, 9, 2, 512, 100));
        assert_eq!(crc, crc32fast::hash(&raw[ENTRY_HEADER as usize..]));
        let mut bad = raw.clone();
        bad[17] ^= 1;
        assert!(JournalEntry::decode_header(&bad[..ENTRY_HEADER as usize]).is_none());
    }
}
