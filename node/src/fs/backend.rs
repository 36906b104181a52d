//! redb's storage on an LU: the database is a byte range of the metadata
//! area, and its length is kept in the file-system superblock.
//!
//! A length change is written into the superblock at the next sync, so it
//! becomes durable together with the pages that needed it; redb's own
//! commit protocol does the rest. The last part of the area is a reserve
//! that only changes which free space may use (deletes must work in a full
//! area). Owns the metadata area; must never touch a byte outside it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::layout::{Superblock, META_AT};
use super::ZEROS;
use crate::array::BlockDevice;

struct State {
    /// The length redb set last.
    len: u64,
    /// `sb.db_len` only grows (past the area, too: see `set_len`): a
    /// shrink is not persisted, so the durable
    /// length always covers every page any durable commit may reference
    /// (a longer database than needed is what a crash mid-growth leaves
    /// anyway, and redb copes with it).
    sb: Superblock,
    dirty: bool,
}

/// The metadata area of one file system as a redb storage backend.
pub struct LuBackend {
    dev: Arc<dyn BlockDevice>,
    state: Mutex<State>,
    reserve_open: Arc<AtomicBool>,
}

/// Bytes at the end of a metadata area of `meta_len` bytes kept for
/// changes that free space.
pub fn reserve_bytes(meta_len: u64) -> u64 {
    (meta_len / 16).clamp(256 << 10, 8 << 20)
}

impl std::fmt::Debug for LuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuBackend").finish_non_exhaustive()
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl LuBackend {
    /// `reserve_open`: whether the database may grow into the reserve now.
    pub fn new(dev: Arc<dyn BlockDevice>, sb: Superblock, reserve_open: Arc<AtomicBool>) -> Self {
        Self {
            reserve_open,
            dev,
            state: Mutex::new(State {
                len: sb.db_len,
                sb,
                dirty: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl redb::StorageBackend for LuBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let (len, meta_len) = {
            let s = self.state();
            (s.len, s.sb.meta_len)
        };
        if offset + out.len() as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("metadata read at {offset} past the database end {len}"),
            ));
        }
        // Past the area the database is virtual (see `set_len`): zeros.
        let real = meta_len.saturating_sub(offset).min(out.len() as u64) as usize;
        let (stored, virtual_part) = out.split_at_mut(real);
        virtual_part.fill(0);
        if stored.is_empty() {
            return Ok(());
        }
        self.dev.read_at(META_AT + offset, stored).map_err(io_err)
    }

    /// redb grows its file by doubling it, so a real limit here would
    /// leave up to half the area unusable. Length past the area is granted
    /// but virtual: it reads as zeros and refuses writes (redb allocates
    /// the lowest free pages first, so it writes there only once the area
    /// is really full).
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        // Growth must read as zeros; the area may hold an older, longer
        // database's pages.
        let mut at = s.len;
        let end = len.min(s.sb.meta_len);
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            self.dev.write_at(META_AT + at, &ZEROS[..n]).map_err(io_err)?;
            at += n as u64;
        }
        s.len = len;
        if len > s.sb.db_len {
            s.sb.db_len = len;
            s.dirty = true;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut s = self.state();
            if s.dirty {
                s.sb.write_next(self.dev.as_ref()).map_err(io_err)?;
                s.dirty = false;
            }
        }
        self.dev.flush().map_err(io_err)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (len, meta_len) = {
            let s = self.state();
            (s.len, s.sb.meta_len)
        };
        let end = offset + data.len() as u64;
        if end > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metadata write at {offset} past the database end {len}"),
            ));
        }
        let limit = if self.reserve_open.load(Ordering::Acquire) {
            meta_len
        } else {
            meta_len - reserve_bytes(meta_len)
        };
        if end > limit {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the metadata area is full ({} MiB)", meta_len >> 20),
            ));
        }
        self.dev.write_at(META_AT + offset, data).map_err(io_err)
    }
}
