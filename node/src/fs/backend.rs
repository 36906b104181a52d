//! redb's storage on an LU: the database is a byte range of the metadata
//! area, and its length is kept in the file-system superblock.
//!
//! A length change is written into the superblock at the next sync, so it
//! becomes durable together with the pages that needed it; redb's own
//! commit protocol does the rest. Owns the metadata area; must never touch
//! a byte outside it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::layout::{Superblock, META_AT};
use super::ZEROS;
use crate::array::BlockDevice;

struct State {
    /// The length redb set last.
    len: u64,
    /// `sb.db_len` only grows: a shrink is not persisted, so the durable
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
    /// The database's current length, for the volume to read.
    len: Arc<AtomicU64>,
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
    /// `len` is kept equal to the database's length.
    pub fn new(dev: Arc<dyn BlockDevice>, sb: Superblock, len: Arc<AtomicU64>) -> Self {
        len.store(sb.db_len, Ordering::Release);
        Self {
            len,
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
        let len = self.state().len;
        if offset + out.len() as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("metadata read at {offset} past the database end {len}"),
            ));
        }
        self.dev.read_at(META_AT + offset, out).map_err(io_err)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state();
        if len > s.sb.meta_len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the metadata area is full ({} MiB)", s.sb.meta_len >> 20),
            ));
        }
        // Growth must read as zeros; the area may hold an older, longer
        // database's pages.
        let mut at = s.len;
        while at < len {
            let n = (len - at).min(ZEROS.len() as u64) as usize;
            self.dev.write_at(META_AT + at, &ZEROS[..n]).map_err(io_err)?;
            at += n as u64;
        }
        s.len = len;
        self.len.store(len, Ordering::Release);
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
        let len = self.state().len;
        if offset + data.len() as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("metadata write at {offset} past the database end {len}"),
            ));
        }
        self.dev.write_at(META_AT + offset, data).map_err(io_err)
    }
}
