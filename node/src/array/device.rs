//! The LU block device: one RAID 1 or RAID 5 LU over its member disks.
//!
//! Owns member health (a member that fails an I/O is never used again until
//! it is replaced and rebuilt), the superblock copies, and crash recovery on
//! open. Reads share a lock; writes, flushes and rebuild steps take it
//! exclusively, so a stripe is never read half-written. It must never
//! return bytes it cannot vouch for: when redundancy is exhausted it fails.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::checksum::{Verified, BLOCK};
use super::disk::check_range;
use super::fence::Fence;
use super::intent::{Bitmap, Journal, JournalEntry, ENTRY_HEADER};
use super::layout::{Geometry, Raid};
use super::member::Member;
use super::redundancy::{self, Redundancy, Resync};
use super::superblock::{
    MemberRecord, MemberState, Superblock, BITMAP_AT, BITMAP_BYTES, JOURNAL_AT, JOURNAL_BYTES, MAX_UNIT,
};
use super::{Array, ArrayError};

/// What a file system needs from the LU under it.
pub trait BlockDevice: Send + Sync {
    /// Bytes addressable on the device.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; fails rather than return unverifiable bytes.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError>;
    /// Writes `data` at `offset`; durable only after [`BlockDevice::flush`].
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), ArrayError>;
    /// Starts moving completed writes to the disks without waiting, so the
    /// next flush is short. A hint; the default does nothing.
    fn start_writeback(&self) {}
}

/// How an LU is laid out, as the LU management table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuSpec {
    pub lu: u32,
    pub raid: Raid,
    /// Member disks in slot order.
    pub disks: Vec<u32>,
    pub unit: u64,
    /// Bytes used on each member.
    pub per_disk: u64,
    /// Capacity every member disk's header must state.
    pub disk_capacity: u64,
}

/// Callback told the number of a disk that failed an I/O.
pub type FailureHook = Arc<dyn Fn(u32) + Send + Sync>;

/// How a CHN opens an LU.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Fencing epoch of the opener; an LU stamped with a higher one is refused.
    pub epoch: u64,
    pub on_member_failure: Option<FailureHook>,
    /// The fence of the opener's lock lease, from the first write of crash
    /// recovery at open on. Shared, so that the lock holder can extend it
    /// while a long open runs; `None`: no lease applies.
    pub fence: Option<Arc<Fence>>,
}

/// The condition of an LU, as `lu list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LuHealth {
    Optimal,
    Degraded,
    Rebuilding,
    Failed,
}

const ACTIVE: u8 = 0;
const FAILED: u8 = 1;
const REBUILDING: u8 = 2;

/// One member position of the LU.
pub(super) struct Slot {
    pub disk: Option<Arc<Verified>>,
    pub number: u32,
    state: AtomicU8,
    /// Stripes rebuilt so far, when rebuilding.
    done: AtomicU64,
    /// Stripes rebuilt as the superblocks say: what a reopen would trust.
    persisted: AtomicU64,
}

impl Slot {
    fn new(number: u32, disk: Option<Arc<Verified>>, state: MemberState) -> Self {
        let (code, done) = match (&disk, state) {
            (None, _) | (_, MemberState::Failed) => (FAILED, 0),
            (Some(_), MemberState::Active) => (ACTIVE, 0),
            (Some(_), MemberState::Rebuilding { done }) => (REBUILDING, done),
        };
        Self {
            disk,
            number,
            state: AtomicU8::new(code),
            done: AtomicU64::new(done),
            persisted: AtomicU64::new(done),
        }
    }

    /// A replacement disk that holds nothing valid yet.
    pub fn new_rebuilding(disk: Arc<Verified>) -> Self {
        Self::new(disk.number(), Some(disk), MemberState::Rebuilding { done: 0 })
    }

    /// Whether this member holds valid data for stripe `s`.
    pub fn available(&self, s: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            ACTIVE => true,
            REBUILDING => s < self.done.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Whether this member takes metadata writes (not failed).
    pub fn present(&self) -> bool {
        self.state.load(Ordering::Acquire) != FAILED
    }

    pub fn record(&self) -> MemberRecord {
        let state = match self.state.load(Ordering::Acquire) {
            ACTIVE => MemberState::Active,
            REBUILDING => MemberState::Rebuilding {
                done: self.done.load(Ordering::Acquire),
            },
            _ => MemberState::Failed,
        };
        MemberRecord {
            disk: self.number,
            state,
        }
    }

    pub fn rebuilt(&self) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == REBUILDING).then(|| self.done.load(Ordering::Acquire))
    }

    pub fn set_done(&self, done: u64) {
        self.done.store(done, Ordering::Release);
    }

    /// Whether any of stripes `s0..=s1` is rebuilt here but a reopen would
    /// not know it.
    pub fn rebuilt_unrecorded(&self, s0: u64, s1: u64) -> bool {
        self.rebuilt().is_some()
            && self.persisted.load(Ordering::Acquire) <= s1
            && s0 < self.done.load(Ordering::Acquire)
    }

    pub fn set_active(&self) {
        self.state.store(ACTIVE, Ordering::Release);
    }
}

/// State changed only under the exclusive lock.
pub(super) struct Inner {
    pub slots: Vec<Slot>,
    pub sb: Superblock,
    pub bitmap: Bitmap,
    pub journal: Journal,
    /// Intent regions whose chunks on `sb.suspect_slot` are lost.
    pub suspect: BTreeSet<u64>,
    /// When the rebuild last recorded its progress in the superblock.
    pub checkpointed: Instant,
    /// When a flush last cleared the write-intent bitmap.
    pub bitmap_cleared: Instant,
}

/// How long write-intent bits stay set after a flush. Clearing them costs a
/// durable metadata write, and setting them again on the next write
/// another: a region written over and over (a file system's metadata)
/// keeps its bit instead, which only means a little more resync after a
/// crash.
const BITMAP_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Regions a write marks dirty at once (its own and those after it).
const MARK_AHEAD: u64 = 4;

/// An open LU.
pub struct LuDevice {
    pub(super) lu: u32,
    pub(super) geo: Geometry,
    pub(super) inner: RwLock<Inner>,
    /// Why the LU failed, once it has.
    failed: Mutex<Option<String>>,
    /// A member failed and the superblocks do not say so yet.
    pending: AtomicBool,
    rr: AtomicUsize,
    opts: OpenOptions,
    fence: Arc<Fence>,
}

impl std::fmt::Debug for LuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuDevice")
            .field("lu", &self.lu)
            .field("geo", &self.geo)
            .finish()
    }
}

fn validate(spec: &LuSpec) -> Result<Geometry, ArrayError> {
    let refuse = |reason: String| Err(ArrayError::Refused { lu: spec.lu, reason });
    let min = match spec.raid {
        Raid::Mirror => 2,
        Raid::Parity => 3,
    };
    if spec.disks.len() < min {
        return refuse(format!("needs at least {min} member disks, {} given", spec.disks.len()));
    }
    let distinct: BTreeSet<_> = spec.disks.iter().collect();
    if distinct.len() != spec.disks.len() {
        return refuse("a disk is listed twice; each disk can be a member once".into());
    }
    if !spec.unit.is_power_of_two() || !(4096..=MAX_UNIT).contains(&spec.unit) {
        return refuse(format!(
            "stripe unit {} is not a power of two from 4 KiB to 1 MiB",
            spec.unit
        ));
    }
    if spec.per_disk == 0 || !spec.per_disk.is_multiple_of(spec.unit) || spec.per_disk > spec.disk_capacity {
        return refuse(format!(
            "{} bytes per member is not a positive multiple of the stripe unit within the disk capacity",
            spec.per_disk
        ));
    }
    Ok(Geometry {
        raid: spec.raid,
        members: spec.disks.len(),
        unit: spec.unit,
        per_disk: spec.per_disk,
    })
}

/// One member's chunk of a stripe, as read, unverified.
pub(super) struct RawChunk<'a> {
    pub slot: usize,
    pub disk: &'a Verified,
    pub bytes: Vec<u8>,
}

/// Reads stripe `s`'s chunk from every member that holds it, without
/// verifying: for a resync that judges each block itself. `None` when a
/// read fails (the member is then failed).
pub(super) fn read_raw_chunks<'a>(dev: &LuDevice, inner: &'a Inner, s: u64) -> Option<Vec<RawChunk<'a>>> {
    let mut out = Vec::new();
    for (i, slot) in inner.slots.iter().enumerate().filter(|(_, x)| x.available(s)) {
        let disk = slot.disk.as_deref()?;
        let mut bytes = vec![0u8; dev.geo.unit as usize];
        if let Err(e) = disk.read_raw(dev.geo.disk_offset(s), &mut bytes) {
            dev.fail_slot(slot, &e);
            return None;
        }
        out.push(RawChunk { slot: i, disk, bytes });
    }
    Some(out)
}

/// Puts a verified block back on member `slot` (it passes the member's
/// checksum); false when the write fails (the member is then failed).
pub(super) fn restore(dev: &LuDevice, inner: &Inner, slot: usize, at: u64, block: &[u8]) -> bool {
    let slot = &inner.slots[slot];
    let Some(disk) = &slot.disk else { return false };
    if dev.fence.check(dev.lu).is_err() {
        return false;
    }
    match disk.restore(at, block) {
        Ok(()) => true,
        Err(e) => {
            dev.fail_slot(slot, &e);
            false
        }
    }
}

/// `dst ^= src`, byte by byte (the compiler vectorizes it).
pub(super) fn xor(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

impl LuDevice {
    /// Formats a new LU on disks that hold nothing worth keeping: discards
    /// their data (so RAID 5 parity starts consistent) and writes the
    /// superblocks.
    pub fn create(array: &Array, spec: &LuSpec, opts: OpenOptions) -> Result<Self, ArrayError> {
        let geo = validate(spec)?;
        let mut disks = Vec::new();
        for &d in &spec.disks {
            let disk = array.open_member(d, spec.disk_capacity)?;
            disk.zero_data(0, disk.capacity())?;
            disk.zero_meta(BITMAP_AT, BITMAP_BYTES as u64)?;
            disk.zero_meta(JOURNAL_AT, JOURNAL_BYTES)?;
            let disk = Arc::new(Verified::formatted(disk));
            disk.sync()?;
            disks.push(disk);
        }
        let sb = Superblock {
            generation: 1,
            lu: spec.lu,
            raid: spec.raid,
            unit: spec.unit,
            per_disk: spec.per_disk,
            epoch: opts.epoch,
            region_stripes: Superblock::region_stripes_for(spec.unit, spec.per_disk),
            members: spec
                .disks
                .iter()
                .map(|&disk| MemberRecord {
                    disk,
                    state: MemberState::Active,
                })
                .collect(),
            suspect_slot: None,
        };
        for disk in &disks {
            sb.write(disk.as_ref())?;
        }
        let slots = disks
            .into_iter()
            .map(|d| Slot::new(d.number(), Some(d), MemberState::Active))
            .collect();
        Ok(Self::assemble(geo, sb, slots, opts))
    }

    /// Opens an existing LU: finds the newest superblock among the members
    /// the table names, opens the members it lists, and repairs what a crash
    /// may have left (journal replay, then resync of dirty regions).
    pub fn open(array: &Array, spec: &LuSpec, opts: OpenOptions) -> Result<Self, ArrayError> {
        let geo = validate(spec)?;
        let mut problems = Vec::new();
        let mut newest: Option<Superblock> = None;
        for &d in &spec.disks {
            match array
                .open_member(d, spec.disk_capacity)
                .and_then(|disk| Superblock::read(disk.as_ref()))
            {
                Ok(Some(sb)) if sb.lu == spec.lu => {
                    if newest.as_ref().is_none_or(|n| sb.generation > n.generation) {
                        newest = Some(sb);
                    }
                }
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        let Some(mut sb) = newest else {
            return Err(ArrayError::Unformatted {
                lu: spec.lu,
                problems: problems.join("; "),
            });
        };
        if sb.raid != spec.raid
            || sb.unit != spec.unit
            || sb.per_disk != spec.per_disk
            || sb.members.len() != geo.members
        {
            return Err(ArrayError::Corrupt(format!(
                "LU {}: the superblock on its disks does not match the LU table ({:?}, unit {}, {} members)",
                spec.lu,
                sb.raid,
                sb.unit,
                sb.members.len()
            )));
        }
        if sb.epoch > opts.epoch {
            return Err(ArrayError::Fenced {
                lu: spec.lu,
                found: sb.epoch,
                ours: opts.epoch,
            });
        }
        let mut newly_missing = Vec::new();
        let mut slots = Vec::new();
        for (i, m) in sb.members.iter().enumerate() {
            let disk = match m.state {
                MemberState::Failed => None,
                _ => match array.open_member(m.disk, spec.disk_capacity).and_then(Verified::open) {
                    Ok(d) => Some(Arc::new(d)),
                    Err(e) => {
                        tracing::warn!(lu = spec.lu, disk = m.disk, "member unavailable at open: {e}");
                        newly_missing.push(i);
                        if let Some(hook) = &opts.on_member_failure {
                            hook(m.disk);
                        }
                        None
                    }
                },
            };
            slots.push(Slot::new(m.disk, disk, m.state));
        }
        sb.epoch = opts.epoch;
        let dev = Self::assemble(geo, sb, slots, opts);
        dev.recover(&newly_missing)?;
        Ok(dev)
    }

    fn assemble(geo: Geometry, sb: Superblock, slots: Vec<Slot>, opts: OpenOptions) -> Self {
        let inner = Inner {
            bitmap: Bitmap::new(sb.region_stripes),
            journal: Journal::new(geo.unit),
            slots,
            sb,
            suspect: BTreeSet::new(),
            checkpointed: Instant::now(),
            bitmap_cleared: Instant::now(),
        };
        let fence = opts.fence.clone().unwrap_or_else(|| Arc::new(Fence::unlimited()));
        Self {
            lu: inner.sb.lu,
            geo,
            inner: RwLock::new(inner),
            failed: Mutex::new(None),
            pending: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
            opts,
            fence,
        }
    }

    pub fn lu(&self) -> u32 {
        self.lu
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub(super) fn read_lock(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn write_lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks found damaged on each member (by disk number) since the LU
    /// was opened.
    pub fn checksum_errors(&self) -> Vec<(u32, u64)> {
        let inner = self.read_lock();
        inner
            .slots
            .iter()
            .filter_map(|s| s.disk.as_ref().map(|d| (s.number, d.errors())))
            .collect()
    }

    /// The LU byte ranges an unclean stop with a member missing lost: the
    /// data chunks of that member in the regions being written when the
    /// CHN stopped whose surviving blocks could not be verified (reads
    /// there answer DATA_LOSS). Merged and in order.
    pub fn lost_ranges(&self) -> Vec<(u64, u64)> {
        let inner = self.read_lock();
        let (Some(missing), Raid::Parity) = (inner.sb.suspect_slot, self.geo.raid) else {
            return Vec::new();
        };
        let (members, unit) = (self.geo.members as u64, self.geo.unit);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &r in &inner.suspect {
            for s in inner.bitmap.region_stripes(r, self.geo.stripes()) {
                let parity = self.geo.parity_slot(s) as u64;
                if u64::from(missing) == parity {
                    continue;
                }
                let k = (u64::from(missing) + members - parity - 1) % members;
                let at = s * self.geo.stripe_bytes() + k * unit;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == at => last.1 += unit,
                    _ => out.push((at, unit)),
                }
            }
        }
        out
    }

    /// The member records as the device sees them now.
    pub fn members(&self) -> Vec<MemberRecord> {
        self.read_lock().slots.iter().map(Slot::record).collect()
    }

    pub fn health(&self) -> LuHealth {
        if self.failure().is_some() {
            return LuHealth::Failed;
        }
        let inner = self.read_lock();
        let failed = inner.slots.iter().filter(|s| !s.present()).count();
        if failed > self.redundancy() {
            LuHealth::Failed
        } else if inner.slots.iter().any(|s| s.rebuilt().is_some()) {
            LuHealth::Rebuilding
        } else if inner.slots.iter().any(|s| !s.present()) {
            LuHealth::Degraded
        } else {
            LuHealth::Optimal
        }
    }

    /// Takes member `disk` out of service as if it had failed an I/O (the
    /// operator's `disk fail`), and records that in the superblocks.
    pub fn fail_member(&self, disk: u32) -> Result<(), ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        let Some(slot) = inner.slots.iter().find(|s| s.number == disk) else {
            return Err(ArrayError::Refused {
                lu: self.lu,
                reason: format!("disk {disk} is not a member"),
            });
        };
        let cause = ArrayError::Refused {
            lu: self.lu,
            reason: "failed by the operator".into(),
        };
        self.fail_slot(slot, &cause);
        self.settle_failures(inner)
    }

    /// Why the LU failed, if it has.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The write fence: the LU host extends it with every lease renewal.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Refuses a commit once another CHN has opened the LU with a higher
    /// epoch (it stamps the superblocks first): the lease check alone trusts
    /// this CHN's clock and scheduling.
    fn check_epoch(&self, inner: &Inner) -> Result<(), ArrayError> {
        let Some(disk) = inner.slots.iter().filter(|s| s.present()).find_map(|s| s.disk.as_ref()) else {
            return Ok(());
        };
        match Superblock::read(disk.as_ref()) {
            Ok(Some(sb)) if sb.epoch > self.opts.epoch => {
                self.fence.trip();
                Err(ArrayError::Fenced {
                    lu: self.lu,
                    found: sb.epoch,
                    ours: self.opts.epoch,
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn check_writable(&self) -> Result<(), ArrayError> {
        self.fence.check(self.lu)?;
        self.check_usable()
    }

    fn check_usable(&self) -> Result<(), ArrayError> {
        match self.failure() {
            Some(reason) => Err(ArrayError::LuFailed { lu: self.lu, reason }),
            None => Ok(()),
        }
    }

    pub(super) fn lu_failed(&self, reason: impl Into<String>) -> ArrayError {
        let reason = reason.into();
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(lu = self.lu, "LU failed: {reason}");
            *f = Some(reason.clone());
        }
        ArrayError::LuFailed { lu: self.lu, reason }
    }

    /// Takes a member out of service after an I/O error.
    pub(super) fn fail_slot(&self, slot: &Slot, err: &ArrayError) {
        if slot.state.swap(FAILED, Ordering::AcqRel) != FAILED {
            tracing::warn!(lu = self.lu, disk = slot.number, "member disk failed: {err}");
            self.pending.store(true, Ordering::Release);
            if let Some(hook) = &self.opts.on_member_failure {
                hook(slot.number);
            }
        }
    }

    /// Reads from a member. A block that fails its checksum is repaired
    /// from the other members first; false when the bytes cannot be had:
    /// the member failed an I/O (it is then failed) or the damage could not
    /// be repaired (it stays in service, and the caller must not serve a
    /// reconstruction the member's checksums do not vouch for).
    pub(super) fn member_read(&self, inner: &Inner, slot: &Slot, offset: u64, buf: &mut [u8]) -> bool {
        let Some(disk) = &slot.disk else { return false };
        let result = match disk.read_data(offset, buf) {
            Err(ArrayError::Checksum { .. }) if self.heal(inner, slot, offset, buf.len()) => {
                disk.read_data(offset, buf)
            }
            other => other,
        };
        match result {
            Ok(()) => true,
            Err(ArrayError::Checksum { .. }) => false,
            Err(e) => {
                self.fail_slot(slot, &e);
                false
            }
        }
    }

    /// Writes to a member; on error the member is failed and false
    /// returned. A damaged block the write covers only in part is repaired
    /// first; if it cannot be, it keeps reading as damaged.
    pub(super) fn member_write(&self, inner: &Inner, slot: &Slot, offset: u64, data: &[u8]) -> bool {
        let Some(disk) = &slot.disk else { return false };
        // The lease is checked again before every member write, not only
        // when a call starts: a CHN stopped in the middle of a stripe must
        // not finish it after another CHN resynced that stripe. A skipped
        // write is not a member failure, and nothing it belongs to is ever
        // acknowledged: the fence stays shut, so no later flush succeeds.
        if self.fence.check(self.lu).is_err() {
            return true;
        }
        let result = match disk.write_data(offset, data) {
            Err(ArrayError::Checksum { .. }) if self.heal(inner, slot, offset, data.len()) => {
                disk.write_data(offset, data)
            }
            Err(ArrayError::Checksum { .. }) => disk.write_over_damage(offset, data),
            other => other,
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                self.fail_slot(slot, &e);
                false
            }
        }
    }

    /// Repairs the blocks of `slot` in `[offset, offset + len)` that fail
    /// their checksum, from the other members: each rebuilt block must
    /// match the checksum it replaces, or nothing is written. Counts each
    /// repaired block against the disk. A heal never starts another (the
    /// members it reads from are not repaired on the way), so two damaged
    /// copies of a block end in a refusal, not a loop.
    fn heal(&self, inner: &Inner, slot: &Slot, offset: u64, len: usize) -> bool {
        thread_local!(static HEALING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if HEALING.get() || len == 0 || self.fence.check(self.lu).is_err() {
            return false;
        }
        HEALING.set(true);
        let healed = self.heal_range(inner, slot, offset, len);
        HEALING.set(false);
        healed
    }

    fn heal_range(&self, inner: &Inner, slot: &Slot, offset: u64, len: usize) -> bool {
        let (Some(disk), Some(target)) = (&slot.disk, inner.slots.iter().position(|s| std::ptr::eq(s, slot))) else {
            return false;
        };
        let unit = self.geo.unit;
        for s in offset / unit..=(offset + len as u64 - 1) / unit {
            let base = self.geo.disk_offset(s);
            let mut held = vec![0u8; unit as usize];
            if let Err(e) = disk.read_raw(base, &mut held) {
                self.fail_slot(slot, &e);
                return false;
            }
            let damaged: Vec<u64> = (0..unit / BLOCK)
                .map(|b| base + b * BLOCK)
                .filter(|&at| !disk.matches(at, &held[(at - base) as usize..][..BLOCK as usize]))
                .collect();
            if damaged.is_empty() {
                continue;
            }
            let Ok(good) = self.scheme().rebuild_chunk(self, inner, s, target) else {
                tracing::error!(
                    lu = self.lu,
                    disk = slot.number,
                    stripe = s,
                    "a damaged block cannot be rebuilt: the other members cannot be read"
                );
                return false;
            };
            for at in damaged {
                let block = &good[(at - base) as usize..][..BLOCK as usize];
                disk.count_error();
                if !disk.matches(at, block) {
                    tracing::error!(lu = self.lu, disk = slot.number, offset = at, "a damaged block cannot be repaired: the copy rebuilt from the other members does not match its checksum either");
                    return false;
                }
                if !restore(self, inner, target, at, block) {
                    return false;
                }
                tracing::warn!(
                    lu = self.lu,
                    disk = slot.number,
                    offset = at,
                    "repaired a block that failed its checksum"
                );
            }
        }
        true
    }

    /// Writes a metadata range durably to every present member, all at
    /// once (each waits for its disk's flush; in parallel they share it).
    pub(super) fn meta_to_all(&self, inner: &Inner, at: u64, bytes: &[u8]) {
        if self.fence.check(self.lu).is_err() {
            return;
        }
        std::thread::scope(|scope| {
            for slot in inner.slots.iter().filter(|s| s.present()) {
                scope.spawn(move || {
                    if let Some(disk) = &slot.disk {
                        if let Err(e) = disk.write_meta_durable(at, bytes) {
                            self.fail_slot(slot, &e);
                        }
                    }
                });
            }
        });
    }

    /// Flushes every present member, all at once (each fdatasync waits on
    /// the disk; in parallel they share the wait), failing those that cannot.
    pub(super) fn sync_all(&self, inner: &Inner) {
        std::thread::scope(|scope| {
            for slot in inner.slots.iter().filter(|s| s.present()) {
                scope.spawn(move || {
                    if let Some(disk) = &slot.disk {
                        if let Err(e) = disk.sync() {
                            self.fail_slot(slot, &e);
                        }
                    }
                });
            }
        });
    }

    /// Records the members' current states in a new superblock generation.
    pub(super) fn write_superblock(&self, inner: &mut Inner) -> Result<(), ArrayError> {
        inner.sb.generation += 1;
        inner.sb.members = inner.slots.iter().map(Slot::record).collect();
        let bytes = inner.sb.encode()?;
        self.meta_to_all(inner, super::superblock::SUPERBLOCK_AT, &bytes);
        for (slot, record) in inner.slots.iter().zip(&inner.sb.members) {
            if let MemberState::Rebuilding { done } = record.state {
                slot.persisted.store(done, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Makes rebuild progress durable: the rebuilt stripes first, then the
    /// superblocks that vouch for them.
    pub(super) fn checkpoint(&self, inner: &mut Inner) -> Result<(), ArrayError> {
        for slot in inner.slots.iter().filter(|s| s.rebuilt().is_some()) {
            if let Some(disk) = &slot.disk {
                if let Err(e) = disk.sync() {
                    self.fail_slot(slot, &e);
                }
            }
        }
        self.settle_failures(inner)?;
        self.write_superblock(inner)?;
        inner.checkpointed = Instant::now();
        Ok(())
    }

    /// Makes member failures seen since the last call durable before any
    /// further write: a stale member must never look healthy after a crash.
    /// Writes made before the failure are flushed first, because from now
    /// on the intent bitmap can no longer repair them.
    pub(super) fn settle_failures(&self, inner: &mut Inner) -> Result<(), ArrayError> {
        while self.pending.swap(false, Ordering::AcqRel) {
            self.sync_all(inner);
            self.write_superblock(inner)?;
            if inner.bitmap.clear_except(&inner.suspect) {
                let bits = inner.bitmap.as_bytes().to_vec();
                self.meta_to_all(inner, BITMAP_AT, &bits);
            }
        }
        let failed: Vec<u32> = inner.slots.iter().filter(|s| !s.present()).map(|s| s.number).collect();
        if failed.len() > self.redundancy() {
            return Err(self.lu_failed(format!("member disks {failed:?} have failed, more than RAID can cover")));
        }
        Ok(())
    }

    /// Fails reads of a chunk on the suspect member inside a suspect region.
    pub(super) fn check_suspect(&self, inner: &Inner, slot: usize, s: u64) -> Result<(), ArrayError> {
        if inner.sb.suspect_slot == Some(slot as u32) && inner.suspect.contains(&inner.bitmap.region_of(s)) {
            return Err(ArrayError::DataLoss {
                lu: self.lu,
                offset: s * self.geo.stripe_bytes(),
            });
        }
        Ok(())
    }

    /// Journals the final content of a degraded stripe's missing chunk,
    /// durably, on one surviving member.
    pub(super) fn journal(
        &self,
        inner: &mut Inner,
        stripe: u64,
        slot: usize,
        start: u64,
        data: &[u8],
    ) -> Result<(), ArrayError> {
        if inner.journal.is_full() {
            self.reset_journal(inner);
        }
        let entry = JournalEntry {
            seq: inner.journal.next_seq,
            stripe,
            slot: slot as u32,
            start,
            data: data.to_vec(),
        };
        let at = inner.journal.slot_at(inner.journal.used);
        let holder = inner
            .slots
            .iter()
            .enumerate()
            .find(|(i, s)| *i != slot && s.present() && s.disk.is_some());
        let Some((_, holder)) = holder else {
            return Err(self.lu_failed("no member left to hold the write journal"));
        };
        let Some(disk) = &holder.disk else {
            return Err(self.lu_failed("journal member vanished"));
        };
        if let Err(e) = disk.write_meta_durable(at, &entry.encode()) {
            self.fail_slot(holder, &e);
            return Err(self.lu_failed(format!("journal write failed: {e}")));
        }
        inner.journal.next_seq += 1;
        inner.journal.used += 1;
        Ok(())
    }

    /// Makes journaled stripes durable in place, then empties the journal.
    pub(super) fn reset_journal(&self, inner: &mut Inner) {
        if inner.journal.used == 0 {
            return;
        }
        self.sync_all(inner);
        let len = inner.journal.slot_at(inner.journal.used) - JOURNAL_AT;
        let zeros = vec![0u8; len as usize];
        self.meta_to_all(inner, JOURNAL_AT, &zeros);
        inner.journal.used = 0;
    }

    /// Reads every valid journal entry of every present member, oldest first.
    fn read_journal(&self, inner: &Inner) -> Vec<JournalEntry> {
        let mut entries = std::collections::BTreeMap::new();
        for slot in inner.slots.iter().filter(|s| s.present()) {
            let Some(disk) = &slot.disk else { continue };
            for i in 0..inner.journal.capacity() {
                let at = inner.journal.slot_at(i);
                let mut header = vec![0u8; ENTRY_HEADER as usize];
                if disk.read_meta(at, &mut header).is_err() {
                    break;
                }
                let Some((mut e, len, crc)) = JournalEntry::decode_header(&header) else {
                    break;
                };
                if len as u64 > self.geo.unit {
                    break;
                }
                let mut data = vec![0u8; len];
                if disk.read_meta(at + ENTRY_HEADER, &mut data).is_err() || crc32fast::hash(&data) != crc {
                    break;
                }
                e.data = data;
                entries.insert(e.seq, e);
            }
        }
        entries.into_values().collect()
    }

    /// Repairs what a crash may have left: makes every block of the dirty
    /// regions agree with its checksum and parity or mirrors agree with the
    /// data (see [`Resync::Recover`]), then replays the degraded-write
    /// journal.
    fn recover(&self, newly_missing: &[usize]) -> Result<(), ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        self.pending.store(!newly_missing.is_empty(), Ordering::Release);
        // Every present member holds the same bitmap; the first readable copy serves.
        for slot in inner.slots.iter().filter(|s| s.present()) {
            let Some(disk) = &slot.disk else { continue };
            let mut bits = vec![0u8; BITMAP_BYTES];
            match disk.read_meta(BITMAP_AT, &mut bits) {
                Ok(()) => {
                    inner.bitmap = Bitmap::from_bytes(bits, inner.sb.region_stripes);
                    break;
                }
                Err(e) => self.fail_slot(slot, &e),
            }
        }
        if inner.sb.suspect_slot.is_some() {
            inner.suspect = inner.bitmap.dirty().into_iter().collect();
        }
        // Checksums first: blocks written since the last sync do not match
        // theirs yet, and the journal replay below reads those blocks.
        let dirty = inner.bitmap.dirty();
        let stripes = self.geo.stripes();
        let known_lost = inner.suspect.clone();
        for r in dirty.into_iter().filter(|r| !known_lost.contains(r)) {
            for s in inner.bitmap.region_stripes(r, stripes) {
                let found = self.scheme().resync(self, inner, s, Resync::Recover);
                let missing: Vec<usize> = (0..self.geo.members)
                    .filter(|&i| !inner.slots[i].available(s))
                    .collect();
                if let (Raid::Parity, [m]) = (self.geo.raid, missing.as_slice()) {
                    if found.lost && newly_missing.contains(m) && self.geo.parity_slot(s) != *m {
                        tracing::error!(lu = self.lu, region = r, stripe = s, "a member went missing while this stripe was being written, and the blocks left cannot be verified: marking the region's chunks on the missing member lost");
                        inner.suspect.insert(r);
                        inner.sb.suspect_slot = Some(*m as u32);
                    }
                }
            }
        }
        let entries = if self.geo.raid == Raid::Parity {
            self.read_journal(inner)
        } else {
            Vec::new()
        };
        for e in &entries {
            self.replay_entry(inner, e);
        }
        if let Some(last) = entries.last() {
            inner.journal.next_seq = last.seq + 1;
            inner.journal.used = inner.journal.capacity();
        }
        self.sync_all(inner);
        self.reset_journal(inner);
        if inner.bitmap.clear_except(&inner.suspect) {
            let bits = inner.bitmap.as_bytes().to_vec();
            self.meta_to_all(inner, BITMAP_AT, &bits);
        }
        self.pending.store(false, Ordering::Release);
        self.write_superblock(inner)?;
        self.settle_failures(inner)
    }

    /// Recomputes parity of a journaled stripe from the journaled chunk.
    fn replay_entry(&self, inner: &Inner, e: &JournalEntry) {
        let (s, m) = (e.stripe, e.slot as usize);
        let p = self.geo.parity_slot(s);
        let end = e.start + e.data.len() as u64;
        if s >= self.geo.stripes() || m >= self.geo.members || end > self.geo.unit || m == p {
            return;
        }
        if inner.slots[m].available(s) || !inner.slots[p].available(s) {
            return;
        }
        let base = self.geo.disk_offset(s);
        let mut parity = e.data.clone();
        let mut tmp = vec![0u8; e.data.len()];
        for i in (0..self.geo.members).filter(|&i| i != m && i != p) {
            if !inner.slots[i].available(s) || !self.member_read(inner, &inner.slots[i], base + e.start, &mut tmp) {
                return;
            }
            xor(&mut parity, &tmp);
        }
        self.member_write(inner, &inner.slots[p], base + e.start, &parity);
    }

    /// How this LU keeps its data when members fail.
    pub(super) fn scheme(&self) -> &'static dyn Redundancy {
        redundancy::of(self.geo.raid)
    }

    /// Reads a range stripe by stripe (any health).
    pub(super) fn read_pieces(&self, inner: &Inner, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        for p in self.geo.pieces(offset, buf.len() as u64) {
            self.scheme()
                .read(self, inner, &p, &mut buf[p.buf_at..p.buf_at + p.len as usize])?;
        }
        Ok(())
    }

    /// How many members may fail with the data still served.
    fn redundancy(&self) -> usize {
        self.scheme().tolerates(self.geo.members)
    }

    /// What must be durable before stripes `s0..=s1` are written.
    fn before_write(&self, inner: &mut Inner, s0: u64, s1: u64) -> Result<(), ArrayError> {
        self.settle_failures(inner)?;
        // A healthy write to a stripe rebuilt since the last checkpoint
        // would, after a crash, be read back through parity as if the
        // stripe were still missing; record the progress first.
        if inner.slots.iter().any(|s| s.rebuilt_unrecorded(s0, s1)) {
            self.checkpoint(inner)?;
        }
        // A region marked makes its next ones marked too: every durable
        // metadata write waits for all the data the member has dirty, so
        // a sequential writer pays one for several regions, at the price
        // of a little more resync after a crash.
        let last = (self.geo.stripes() - 1).min(s1 + (MARK_AHEAD - 1) * inner.sb.region_stripes);
        if inner.bitmap.mark(s0, s1) {
            inner.bitmap.mark(s1, last);
            let bits = inner.bitmap.as_bytes().to_vec();
            self.meta_to_all(inner, BITMAP_AT, &bits);
        }
        Ok(())
    }

    /// Writes a range stripe by stripe (any health).
    fn write_pieces(&self, inner: &mut Inner, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        for p in self.geo.pieces(offset, data.len() as u64) {
            self.before_write(inner, p.stripe, p.stripe)?;
            self.scheme()
                .write(self, inner, &p, &data[p.buf_at..p.buf_at + p.len as usize])?;
        }
        Ok(())
    }

    pub(super) fn next_mirror(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }
}

impl BlockDevice for LuDevice {
    fn len(&self) -> u64 {
        self.geo.capacity()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        let inner = self.read_lock();
        check_range("LU", offset, buf.len(), self.geo.capacity())?;
        // Writes skipped behind a shut fence must not be read back as done.
        if self.fence.is_tripped() {
            return Err(ArrayError::LeaseLost { lu: self.lu });
        }
        self.check_usable()?;
        self.prefetch(&inner, offset, buf.len());
        if self.scheme().read_bulk(self, &inner, offset, buf)? {
            return Ok(());
        }
        self.read_pieces(&inner, offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        check_range("LU", offset, data.len(), self.geo.capacity())?;
        self.check_writable()?;
        self.write_pieces(inner, offset, data)?;
        self.settle_failures(inner)
    }

    fn start_writeback(&self) {
        let inner = self.read_lock();
        for disk in inner
            .slots
            .iter()
            .filter(|s| s.present())
            .filter_map(|s| s.disk.as_ref())
        {
            disk.start_writeback();
        }
    }

    fn flush(&self) -> Result<(), ArrayError> {
        self.flush_and_clear(false)
    }
}

impl LuDevice {
    /// Flushes and leaves the LU clean: no write-intent bit stays set, so
    /// the next open resyncs nothing, and a member missing by then costs
    /// no region. For a clean stop or a planned move; the device stays
    /// usable.
    pub fn close(&self) -> Result<(), ArrayError> {
        self.flush_and_clear(true)
    }

    fn flush_and_clear(&self, clear_now: bool) -> Result<(), ArrayError> {
        let mut guard = self.write_lock();
        let inner = &mut *guard;
        self.check_writable()?;
        self.check_epoch(inner)?;
        self.settle_failures(inner)?;
        self.sync_all(inner);
        self.settle_failures(inner)?;
        self.reset_journal(inner);
        if (clear_now || inner.bitmap_cleared.elapsed() >= BITMAP_LINGER) && inner.bitmap.clear_except(&inner.suspect) {
            let bits = inner.bitmap.as_bytes().to_vec();
            self.meta_to_all(inner, BITMAP_AT, &bits);
            inner.bitmap_cleared = Instant::now();
        }
        self.settle_failures(inner)
    }
}
