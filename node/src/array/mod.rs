//! The disk array: physical disks as files in the array directory, and LUs
//! (RAID 1 mirrors and RAID 5 rotating parity) as block devices over them.
//!
//! Map: [`member`] is the interface the RAID code has of a member disk;
//! [`disk`] is one disk file and its header, the member `nasd` uses, and
//! [`faults`] a member that fails on command, for tests; [`checksum`]
//! verifies every block read from a member against its checksum; [`layout`] is RAID
//! geometry; [`superblock`] is what members record about their LU;
//! [`intent`] holds the write-intent bitmap and degraded-write journal that
//! make writes crash-consistent; [`fence`] stops writes once the LU lock lease is over; [`device`] is the LU block device with its
//! RAID 1 (`raid1`) and RAID 5 (`raid5`) paths and the readahead hints for
//! large reads (`bulk`); [`jobs`] runs rebuild and scrub.
//!
//! Everything here is synchronous file I/O and knows nothing of the shared
//! LU or gRPC: the CHN's LU host records what happens here in the tables.

mod bulk;
pub mod checksum;
pub mod device;
pub mod disk;
pub mod faults;
pub mod fence;
#[cfg(test)]
mod integrity_tests;
pub mod intent;
pub mod jobs;
pub mod layout;
pub mod member;
mod raid1;
mod raid5;
mod redundancy;
pub mod superblock;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use device::{BlockDevice, LuDevice, LuHealth, LuSpec, OpenOptions};
pub use disk::PhysicalDisk;
pub use layout::Raid;
pub use member::{Member, MemberWrapper};

/// Everything that can go wrong in the disk array, each naming what to do.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {disk} is missing: {path} does not exist; put the disk back or replace it with `nasctl disk replace {disk}`")]
    DiskMissing { disk: u32, path: PathBuf },
    #[error("disk {disk} ({path}) already exists; remove it by hand only if it holds nothing you need")]
    DiskExists { disk: u32, path: PathBuf },
    #[error("disk {disk} ({path}) has no valid disk header; it is not a disk of this array")]
    DiskNoHeader { disk: u32, path: PathBuf },
    #[error("disk {disk} ({path}) belongs to another array ({found:032x}, expected {expected:032x}); it was swapped in by mistake")]
    DiskForeign {
        disk: u32,
        path: PathBuf,
        found: u128,
        expected: u128,
    },
    #[error("disk {disk} ({path}) has format version {found}; this nasd reads version {expected} (block checksums were added in version 2): recreate the array or use a matching nasd")]
    DiskVersion {
        disk: u32,
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("slot of disk {disk} ({path}) holds disk {found}; disks were swapped, put each back in its place")]
    DiskSwapped { disk: u32, path: PathBuf, found: u32 },
    #[error("disk {disk} ({path}) is {found} bytes, expected {expected}; it was truncated or replaced by a disk of the wrong size")]
    DiskWrongSize {
        disk: u32,
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{what} range {offset}+{len} is outside 0..{limit}")]
    OutOfRange {
        what: &'static str,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("LU {lu} is not formatted: no member disk holds its superblock ({problems})")]
    Unformatted { lu: u32, problems: String },
    #[error("LU {lu} has failed: {reason}; its data cannot be served")]
    LuFailed { lu: u32, reason: String },
    #[error("disk {disk}: the block at {offset} does not match its checksum")]
    Checksum { disk: u32, offset: u64 },
    #[error("LU {lu}: the bytes at {offset} fail their checksum and no member holds a good copy; they are lost, restore them from a backup")]
    Corrupted { lu: u32, offset: u64 },
    #[error("LU {lu}: bytes at {offset} lived on a disk that went missing while they were being written; they are lost, rewrite them")]
    DataLoss { lu: u32, offset: u64 },
    #[error(
        "LU {lu} was opened with fencing epoch {found} by another CHN (ours is {ours}); this CHN must not write it"
    )]
    Fenced { lu: u32, found: u64, ours: u64 },
    #[error(
        "LU {lu}: this CHN's lock lease ran out before the write; another CHN may own the LU now, so it is closed here"
    )]
    LeaseLost { lu: u32 },
    #[error("LU {lu}: {reason}")]
    Refused { lu: u32, reason: String },
    #[error("corrupt array metadata: {0}")]
    Corrupt(String),
}

impl ArrayError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The disk-array directory and the identity of the array it holds.
#[derive(Clone)]
pub struct Array {
    pub dir: PathBuf,
    pub id: u128,
    wrap: Option<MemberWrapper>,
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Array({}, {:032x})", self.dir.display(), self.id)
    }
}

impl Array {
    pub fn new(dir: impl AsRef<Path>, id: u128) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            id,
            wrap: None,
        }
    }

    /// Opens LU members through `wrap` (a fault-injecting member, in tests).
    pub fn with_member_wrapper(mut self, wrap: MemberWrapper) -> Self {
        self.wrap = Some(wrap);
        self
    }

    /// Creates disks `1..=count`; a disk already there is checked instead,
    /// so that an initialization interrupted half-way can be repeated.
    pub fn create_disks(&self, count: u32, capacity: u64) -> Result<(), ArrayError> {
        for number in 1..=count {
            match PhysicalDisk::create(&self.dir, self.id, number, capacity) {
                Ok(_) => {}
                Err(ArrayError::DiskExists { .. }) => {
                    PhysicalDisk::open(&self.dir, self.id, number, capacity)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn open_disk(&self, number: u32, capacity: u64) -> Result<PhysicalDisk, ArrayError> {
        PhysicalDisk::open(&self.dir, self.id, number, capacity)
    }

    /// Opens disk `number` as an LU member.
    pub fn open_member(&self, number: u32, capacity: u64) -> Result<Arc<dyn Member>, ArrayError> {
        let disk = self.open_disk(number, capacity)?;
        Ok(match &self.wrap {
            Some(wrap) => wrap(disk),
            None => Arc::new(disk),
        })
    }
}
