//! One member disk of an LU, as the RAID code sees it: data and metadata
//! areas, reads, writes and syncs.
//!
//! Owns the interface between the RAID layer and its storage. The disk
//! file ([`PhysicalDisk`](super::PhysicalDisk)) is the one implementation
//! `nasd` uses; tests put a fault-injecting one
//! ([`faults::FaultyMember`](super::faults::FaultyMember)) behind the same
//! interface. An implementation must never report a write done before the
//! bytes are in its data (or metadata) area as a later read sees them, nor
//! a sync done before every earlier write is durable.

use std::io::IoSliceMut;
use std::sync::Arc;

use super::ArrayError;

/// A member disk.
pub trait Member: Send + Sync {
    /// The disk's number in the array.
    fn number(&self) -> u32;
    /// Bytes in the data area.
    fn capacity(&self) -> u64;
    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError>;
    /// Reads one contiguous range of the data area into several buffers, in order.
    fn read_data_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<(), ArrayError>;
    fn write_data(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError>;
    fn read_meta(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError>;
    /// Writes to the metadata area, durable after the next [`Member::sync`].
    fn write_meta(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError>;
    /// Writes to the metadata area, durable when it returns.
    fn write_meta_durable(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError>;
    /// A hint that a data range will be read soon.
    fn will_need(&self, offset: u64, len: u64);
    fn zero_data(&self, offset: u64, len: u64) -> Result<(), ArrayError>;
    fn zero_meta(&self, offset: u64, len: u64) -> Result<(), ArrayError>;
    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), ArrayError>;
    /// A hint to start writing dirty data back now.
    fn start_writeback(&self);
}

/// Turns a freshly opened disk file into the member the LU uses (a
/// fault-injecting wrapper in tests).
pub type MemberWrapper = Arc<dyn Fn(super::PhysicalDisk) -> Arc<dyn Member> + Send + Sync>;
