//! A member disk that fails on command, behind the same [`Member`]
//! interface as the disk file: for crash and fault tests of the RAID
//! layer, in the spirit of TigerBeetle's simulated storage. It can fail
//! I/O, tear a write, and cut the power: every write a member has not
//! synced is undone, as a disk cache that loses power would (LazyFS does
//! the same for the Jepsen tests of etcd).
//!
//! Owns fault injection only. `nasd` never builds one: an [`Array`] uses
//! it only when a test installs [`Faults::wrapper`].
//!
//! [`Array`]: super::Array

use std::collections::{BTreeSet, HashMap};
use std::io::IoSliceMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::member::{Member, MemberWrapper};
use super::ArrayError;

/// The faults to inject, shared by every member a wrapper made: data
/// writes are counted across all of them, in the order they are issued.
#[derive(Default)]
pub struct Faults {
    data_writes: AtomicU64,
    /// Abort the process right before the data write with this number
    /// (0: never).
    abort_at: AtomicU64,
    /// Store only the first half of the data write with this number, then
    /// fail it with EIO: a torn write (0: never).
    tear_at: AtomicU64,
    /// Disks whose every I/O fails with EIO from now on.
    broken: Mutex<BTreeSet<u32>>,
    /// Whether writes are recorded so that a power cut can undo them.
    volatile: std::sync::atomic::AtomicBool,
    /// Per disk: the disk itself and what each write since its last sync
    /// overwrote, oldest first.
    unsynced: Mutex<HashMap<u32, (Arc<dyn Member>, Vec<Undo>)>>,
}

/// What one write overwrote.
struct Undo {
    meta: bool,
    offset: u64,
    old: Vec<u8>,
}

impl Faults {
    /// Faults that abort the process before data write `n` (from 1).
    pub fn abort_at_write(n: u64) -> Arc<Faults> {
        let f = Faults::default();
        f.abort_at.store(n, Ordering::Relaxed);
        Arc::new(f)
    }

    /// Tears the next data write issued by any member.
    pub fn tear_next_write(&self) {
        self.tear_at.store(self.data_writes() + 1, Ordering::Relaxed);
    }

    /// Writes are lost unless synced: see [`Faults::power_cut`].
    pub fn volatile() -> Arc<Faults> {
        let f = Faults::default();
        f.volatile.store(true, Ordering::Relaxed);
        Arc::new(f)
    }

    /// Cuts the power: every write a member has not synced since is
    /// undone, newest first, and what is left made durable. The devices
    /// open over these members must be dropped without another call.
    pub fn power_cut(&self) {
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        for (disk, undo) in unsynced.values_mut() {
            for u in undo.drain(..).rev() {
                let put = if u.meta {
                    disk.write_meta(u.offset, &u.old)
                } else {
                    disk.write_data(u.offset, &u.old)
                };
                if let Err(e) = put.and_then(|()| disk.sync()) {
                    tracing::error!("power cut: a lost write could not be undone: {e}");
                }
            }
        }
    }

    fn record(&self, inner: &Arc<dyn Member>, meta: bool, offset: u64, len: usize) -> Result<(), ArrayError> {
        if !self.volatile.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut old = vec![0u8; len];
        if meta {
            inner.read_meta(offset, &mut old)?;
        } else {
            inner.read_data(offset, &mut old)?;
        }
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        let (_, undo) = unsynced
            .entry(inner.number())
            .or_insert_with(|| (inner.clone(), Vec::new()));
        undo.push(Undo { meta, offset, old });
        Ok(())
    }

    /// Everything disk `n` wrote so far is durable.
    fn synced(&self, n: u32) {
        if let Some((_, undo)) = self.unsynced.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&n) {
            undo.clear();
        }
    }

    /// No fault yet; break disks later with [`Faults::break_disk`].
    pub fn none() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Every later I/O of disk `n` fails with EIO.
    pub fn break_disk(&self, n: u32) {
        self.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
    }

    /// Data writes issued so far, by every member.
    pub fn data_writes(&self) -> u64 {
        self.data_writes.load(Ordering::Relaxed)
    }

    /// The wrapper to give [`Array::with_member_wrapper`](super::Array::with_member_wrapper).
    pub fn wrapper(self: &Arc<Self>) -> MemberWrapper {
        let faults = self.clone();
        Arc::new(move |disk| {
            Arc::new(FaultyMember {
                inner: Arc::new(disk),
                faults: faults.clone(),
            }) as Arc<dyn Member>
        })
    }
}

/// A member whose I/O goes through [`Faults`].
pub struct FaultyMember {
    inner: Arc<dyn Member>,
    faults: Arc<Faults>,
}

impl FaultyMember {
    fn check(&self, what: &str) -> Result<(), ArrayError> {
        let broken = self.faults.broken.lock().unwrap_or_else(|p| p.into_inner());
        if broken.contains(&self.inner.number()) {
            return Err(eio(format!("injected: {what} of disk {} failed", self.inner.number())));
        }
        Ok(())
    }
}

fn eio(context: String) -> ArrayError {
    ArrayError::io(context, std::io::Error::from_raw_os_error(libc::EIO))
}

impl Member for FaultyMember {
    fn number(&self) -> u32 {
        self.inner.number()
    }

    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        self.check("read")?;
        self.inner.read_data(offset, buf)
    }

    fn read_data_vectored(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> Result<(), ArrayError> {
        self.check("read")?;
        self.inner.read_data_vectored(offset, bufs)
    }

    fn write_data(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        let n = self.faults.data_writes.fetch_add(1, Ordering::Relaxed) + 1;
        if self.faults.abort_at.load(Ordering::Relaxed) == n {
            tracing::error!("fault injection: aborting before member write {n}");
            std::process::abort();
        }
        self.check("write")?;
        self.faults.record(&self.inner, false, offset, data.len())?;
        if self.faults.tear_at.load(Ordering::Relaxed) == n {
            self.inner.write_data(offset, &data[..data.len() / 2])?;
            return Err(eio(format!(
                "injected: write {n} to disk {} was torn",
                self.inner.number()
            )));
        }
        self.inner.write_data(offset, data)
    }

    fn read_meta(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        self.check("metadata read")?;
        self.inner.read_meta(offset, buf)
    }

    fn write_meta(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.check("metadata write")?;
        self.faults.record(&self.inner, true, offset, data.len())?;
        self.inner.write_meta(offset, data)
    }

    fn write_meta_durable(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.check("metadata write")?;
        self.inner.write_meta_durable(offset, data)?;
        self.faults.synced(self.inner.number());
        Ok(())
    }

    fn will_need(&self, offset: u64, len: u64) {
        self.inner.will_need(offset, len)
    }

    fn zero_data(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        self.check("write")?;
        self.faults.record(&self.inner, false, offset, len as usize)?;
        self.inner.zero_data(offset, len)
    }

    fn zero_meta(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        self.check("metadata write")?;
        self.faults.record(&self.inner, true, offset, len as usize)?;
        self.inner.zero_meta(offset, len)
    }

    fn sync(&self) -> Result<(), ArrayError> {
        self.check("sync")?;
        self.inner.sync()?;
        self.faults.synced(self.inner.number());
        Ok(())
    }

    fn start_writeback(&self) {
        self.inner.start_writeback()
    }
}
