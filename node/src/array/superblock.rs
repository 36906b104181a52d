//! The LU superblock: what every member disk records about the LU it
//! belongs to, and where the LU's metadata sits in a disk's metadata area.
//!
//! Owns the encoding and the choice among members' copies (highest valid
//! generation wins). It must never decide member health: the device does.

use serde::{Deserialize, Serialize};

use super::layout::Raid;
use super::member::Member;
use super::ArrayError;

/// Offsets within a disk's metadata area.
pub const SUPERBLOCK_AT: u64 = 0;
pub const SUPERBLOCK_BYTES: usize = 4096;
/// The write-intent bitmap: one bit per region of stripes.
pub const BITMAP_AT: u64 = 4096;
pub const BITMAP_BYTES: usize = 32 << 10;
/// The degraded-write journal ring.
pub const JOURNAL_AT: u64 = 1 << 20;
/// Up to the end of the metadata area (which starts after the 4 KiB disk header).
pub const JOURNAL_BYTES: u64 = (3 << 20) - 4096;
/// The block checksum table ([`super::checksum`]), sized by the disk's capacity.
pub const CHECKSUMS_AT: u64 = JOURNAL_AT + JOURNAL_BYTES;
/// The largest stripe unit whose chunks fit a journal entry.
pub const MAX_UNIT: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"NASLUSB1";

/// The life of one member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Active,
    /// Must never be read or written again: its data is stale.
    Failed,
    /// Being rebuilt; stripes below `done` hold valid data.
    Rebuilding {
        done: u64,
    },
}

/// One member slot of the LU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub disk: u32,
    pub state: MemberState,
}

/// What an LU's members record about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Bumped on every change; the highest valid copy is the truth.
    pub generation: u64,
    pub lu: u32,
    pub raid: Raid,
    pub unit: u64,
    pub per_disk: u64,
    /// Fencing epoch of the CHN that last opened the LU for writing.
    pub epoch: u64,
    /// Stripes per write-intent bit.
    pub region_stripes: u64,
    pub members: Vec<MemberRecord>,
    /// A member that went missing while stripes were being written: its
    /// chunks in still-dirty regions cannot be reconstructed reliably.
    pub suspect_slot: Option<u32>,
}

impl Superblock {
    /// Stripes per intent bit so that the bitmap covers the whole LU, and at
    /// least 4 MiB of each member per bit so that sequential writes rarely
    /// wait for a bitmap update.
    pub fn region_stripes_for(unit: u64, per_disk: u64) -> u64 {
        let stripes = per_disk / unit;
        let bits = (BITMAP_BYTES * 8) as u64;
        stripes.div_ceil(bits).max((4 << 20) / unit).max(1)
    }

    pub fn encode(&self) -> Result<Vec<u8>, ArrayError> {
        let body = postcard::to_allocvec(self).map_err(|e| ArrayError::Corrupt(format!("superblock encoding: {e}")))?;
        let mut b = Vec::with_capacity(SUPERBLOCK_BYTES);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        b.extend_from_slice(&body);
        if b.len() > SUPERBLOCK_BYTES {
            return Err(ArrayError::Corrupt(format!(
                "superblock of LU {} is too large",
                self.lu
            )));
        }
        b.resize(SUPERBLOCK_BYTES, 0);
        Ok(b)
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.get(0..8)? != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(b.get(12..16)?.try_into().ok()?);
        let body = b.get(16..16usize.checked_add(len)?)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        postcard::from_bytes(body).ok()
    }

    /// Reads a disk's copy; `None` when it has none or it is damaged.
    pub fn read(disk: &dyn Member) -> Result<Option<Self>, ArrayError> {
        let mut b = vec![0u8; SUPERBLOCK_BYTES];
        disk.read_meta(SUPERBLOCK_AT, &mut b)?;
        Ok(Self::decode(&b))
    }

    pub fn write(&self, disk: &dyn Member) -> Result<(), ArrayError> {
        disk.write_meta_durable(SUPERBLOCK_AT, &self.encode()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let sb = Superblock {
            generation: 3,
            lu: 2,
            raid: Raid::Parity,
            unit: 65536,
            per_disk: 1 << 30,
            epoch: 9,
            region_stripes: 64,
            members: vec![
                MemberRecord {
                    disk: 1,
                    state: MemberState::Active,
                },
                MemberRecord {
                    disk: 4,
                    state: MemberState::Rebuilding { done: 17 },
                },
            ],
            suspect_slot: None,
        };
        let mut raw = sb.encode().unwrap();
        assert_eq!(Superblock::decode(&raw), Some(sb));
        raw[20] ^= 0xff;
        assert_eq!(Superblock::decode(&raw), None);
        assert_eq!(Superblock::decode(&[0u8; 16]), None);
    }

    #[test]
    fn bitmap_covers_the_largest_disk() {
        let unit = 4096;
        let per_disk = 64u64 << 40;
        let r = Superblock::region_stripes_for(unit, per_disk);
        assert!((per_disk / unit).div_ceil(r) <= (BITMAP_BYTES * 8) as u64);
    }
}
