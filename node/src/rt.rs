//! Clock and task helpers shared by every layer of the CHN.
//!
//! Owns the wall clock as commands carry it, the ownership of spawned
//! tasks, and locking that survives a poisoned mutex. A leaf: it must never
//! import anything from this crate.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as commands and table rows carry time.
/// A clock before 1970 reads as 0 rather than failing.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Aborts a task when the task that spawned it ends or is aborted.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Locks `m` even if a thread panicked while holding it: the guarded maps
/// hold plain bookkeeping that stays consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
