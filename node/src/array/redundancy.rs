//! How an LU keeps its data when members fail: one interface, implemented
//! by RAID 1 mirrors (`raid1`) and RAID 5 rotating parity (`raid5`).
//!
//! Owns the dispatch from a RAID level to its scheme. A scheme reads and
//! writes members only through the device's `member_read`/`member_write`
//! (which check the fence and fail a member on error); it must never
//! return bytes it could not read or reconstruct.

use super::device::{Inner, LuDevice};
use super::layout::{Raid, StripePiece};
use super::ArrayError;

/// What the LU block device needs of a redundancy scheme.
pub(super) trait Redundancy: Sync {
    /// How many of `members` may fail with the data still served.
    fn tolerates(&self, members: usize) -> usize;
    /// Reads one piece of a stripe, from its member or reconstructed.
    fn read(&self, dev: &LuDevice, inner: &Inner, p: &StripePiece, out: &mut [u8]) -> Result<(), ArrayError>;
    /// Serves a large read by the scheme's fast path, if it can take it;
    /// `Ok(false)` leaves it to the caller, piece by piece.
    fn read_bulk(&self, dev: &LuDevice, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<bool, ArrayError>;
    /// Writes one piece of a stripe and its redundancy.
    fn write(&self, dev: &LuDevice, inner: &mut Inner, p: &StripePiece, data: &[u8]) -> Result<(), ArrayError>;
    /// Checks every block of stripe `s` against its checksum and the
    /// stripe's redundancy against its data; repairs as `mode` allows.
    fn resync(&self, dev: &LuDevice, inner: &Inner, s: u64, mode: Resync) -> Resynced;
    /// The content of stripe `s` on member `target`, from the others.
    fn rebuild_chunk(&self, dev: &LuDevice, inner: &Inner, s: u64, target: usize) -> Result<Vec<u8>, ArrayError>;
}

/// What a resync may do about what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resync {
    /// Report only (`lu scrub`).
    Check,
    /// Rewrite whichever copy fails its checksum from those that pass it
    /// (`lu scrub --repair`).
    Repair,
    /// Crash recovery of a dirty region: blocks written since the last
    /// sync have checksums that are not durable yet, so a block that fails
    /// its checksum is expected. A copy that passes still wins; where none
    /// does, the stripe is taken as it is on the disks (it holds writes
    /// never acknowledged as durable) and its checksums follow it.
    Recover,
}

/// What a resync found in one stripe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Resynced {
    /// Some block failed its checksum or the redundancy disagreed.
    pub mismatched: bool,
    pub repaired: bool,
    /// Some block has no copy that passes its checksum.
    pub lost: bool,
}

/// RAID 1: every member holds every byte.
pub(super) struct Mirror;
/// RAID 5: data chunks and one rotating parity chunk per stripe.
pub(super) struct Parity;

/// The scheme of a RAID level.
pub(super) fn of(raid: Raid) -> &'static dyn Redundancy {
    match raid {
        Raid::Mirror => &Mirror,
        Raid::Parity => &Parity,
    }
}
