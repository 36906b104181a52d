//! The write fence of an open LU: the time until which this CHN's LU lock
//! lease lets it write, and the epoch it opened the LU with.
//!
//! Every write and flush of an LU passes [`Fence::check`] first, so a CHN
//! that was paused (SIGSTOP), cut off, or starved past its lease does not
//! write one more block when it wakes: the taker may already be writing.
//! The check uses the monotonic clock, which keeps running while a process
//! is stopped. Once tripped a fence stays tripped: the file system above
//! may have seen a write fail half way, so the LU must be closed and opened
//! afresh under a new lock. It must never be re-armed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::ArrayError;

/// Write permission of one open LU.
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Milliseconds after `origin` when writing must stop; `u64::MAX` for
    /// an LU opened without a lease (tools and tests).
    until_ms: AtomicU64,
    tripped: AtomicBool,
}

impl Fence {
    /// A fence that never closes by itself.
    pub fn unlimited() -> Self {
        Fence {
            origin: Instant::now(),
            until_ms: AtomicU64::new(u64::MAX),
            tripped: AtomicBool::new(false),
        }
    }

    /// A fence that closes at `until` unless extended.
    pub fn until(until: Instant) -> Self {
        let f = Self::unlimited();
        f.limit_to(until);
        f
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Lets writes go on until `until`. Ignored once tripped.
    pub fn extend(&self, until: Instant) {
        if !self.is_tripped() {
            self.until_ms.fetch_max(self.ms(until), Ordering::AcqRel);
        }
    }

    /// Lets writes go on only until `until` (when a lease first applies).
    fn limit_to(&self, until: Instant) {
        self.until_ms.store(self.ms(until), Ordering::Release);
    }

    /// Stops all further writes.
    pub fn trip(&self) {
        self.tripped.store(true, Ordering::Release);
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Fails once the lease is over (and from then on).
    pub fn check(&self, lu: u32) -> Result<(), ArrayError> {
        if !self.is_tripped() && self.ms(Instant::now()) < self.until_ms.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.tripped.swap(true, Ordering::AcqRel) {
            metrics::counter!(crate::telemetry::LU_FENCE_TRIPS, "cause" => "lease ended").increment(1);
        }
        Err(ArrayError::LeaseLost { lu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lapsed_fence_stays_closed() {
        let f = Fence::unlimited();
        f.check(1).expect("unlimited");
        f.limit_to(Instant::now() + Duration::from_millis(30));
        f.check(1).expect("inside the lease");
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.check(1).is_ok() {
            assert!(Instant::now() < deadline, "fence never closed");
            std::thread::yield_now();
        }
        f.extend(Instant::now() + Duration::from_secs(60));
        assert!(matches!(f.check(1), Err(ArrayError::LeaseLost { lu: 1 })));
    }
}
