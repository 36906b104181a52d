//! Where the file system lives on its LU.
//!
//! ```text
//! 0        4 KiB     8 KiB      1 MiB                  data_at            LU end
//! | sb A   | sb B    | (unused) | metadata (redb)      | file data extents  |
//! ```
//!
//! The superblock is kept in two slots written alternately, each with a
//! generation and a CRC, so a torn superblock write leaves the other slot
//! valid. It records the geometry and how long the redb database currently
//! is (the database grows inside its fixed metadata area).
//!
//! Owns the superblock format; must never write anything but the slots.

use serde::{Deserialize, Serialize};

use super::{FsError, Result, BLOCK};
use crate::array::BlockDevice;

const MAGIC: [u8; 8] = *b"NASFS001";
const SLOTS: [u64; 2] = [0, 4096];
const SLOT_BYTES: usize = 4096;
/// Start of the metadata area.
pub const META_AT: u64 = 1 << 20;

/// The file system's geometry and the metadata length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub fs_id: u128,
    pub generation: u64,
    pub meta_len: u64,
    pub data_at: u64,
    pub data_len: u64,
    /// Current length of the redb database.
    pub db_len: u64,
}

impl Superblock {
    /// The geometry for an LU of `capacity` bytes, or why it cannot hold a
    /// file system.
    pub fn for_capacity(capacity: u64, fs_id: u128) -> Result<Self> {
        let mib = 1u64 << 20;
        // A sixteenth for metadata: ample for inodes, extents and replies
        // (a few hundred bytes per file), bounded so big LUs keep their data.
        let meta_len = (capacity / 16).clamp(8 * mib, 512 * mib) / mib * mib;
        let data_at = META_AT + meta_len;
        if capacity < data_at + 4 * mib {
            return Err(FsError::NoSpace(format!(
                "an LU of {} MiB is too small for a file system; it needs at least {} MiB",
                capacity / mib,
                (data_at + 4 * mib) / mib
            )));
        }
        let data_len = (capacity - data_at) / BLOCK * BLOCK;
        Ok(Superblock {
            fs_id,
            generation: 0,
            meta_len,
            data_at,
            data_len,
            db_len: 0,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(SLOT_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out.resize(SLOT_BYTES, 0);
        out
    }

    fn decode(slot: &[u8]) -> Option<Self> {
        if slot.len() < 16 || slot[..8] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(slot[8..12].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(slot[12..16].try_into().ok()?);
        let body = slot.get(16..16 + len)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        postcard::from_bytes(body).ok()
    }

    /// The newest valid superblock on `dev`, or `None` when the LU holds
    /// no file system.
    pub fn read(dev: &dyn BlockDevice) -> Result<Option<Self>> {
        let mut best: Option<Superblock> = None;
        let mut magic_seen = false;
        for at in SLOTS {
            let mut slot = vec![0u8; SLOT_BYTES];
            dev.read_at(at, &mut slot)?;
            magic_seen |= slot[..8] == MAGIC;
            if let Some(sb) = Self::decode(&slot) {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
        }
        if best.is_none() && magic_seen {
            return Err(FsError::Corrupt(
                "both file-system superblocks of the LU are damaged; restore the LU from a backup".into(),
            ));
        }
        Ok(best)
    }

    /// Writes the next generation into the older slot (not flushed).
    pub fn write_next(&mut self, dev: &dyn BlockDevice) -> Result<()> {
        self.generation += 1;
        let slot = SLOTS[(self.generation % 2) as usize];
        dev.write_at(slot, &self.encode())?;
        Ok(())
    }
}
