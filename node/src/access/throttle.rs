//! Throttling of failed logins, per user name and per source address.
//!
//! Every attempt counts as a failure until it succeeds, so that attempts
//! running at once cannot all slip past the check. After a few free
//! attempts each further one doubles the wait before the next, up to a
//! ceiling; a success clears the key. Refusing a throttled attempt costs a
//! map lookup, no hashing, so a flood of wrong passwords cannot buy CPU.
//! Owns only these counters; it must never decide whether a password is
//! right.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one key that cost nothing.
const FREE_FAILURES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_millis(250);
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Keys kept at most; the oldest are dropped beyond it, so a flood of
/// made-up user names cannot grow memory without bound.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn wait(&self) -> Duration {
        let Some(over) = self.count.checked_sub(FREE_FAILURES + 1) else {
            return Duration::ZERO;
        };
        FIRST_WAIT.saturating_mul(1u32 << over.min(16)).min(MAX_WAIT)
    }

    fn retry_at(&self) -> Instant {
        self.last + self.wait()
    }
}

/// Failure counters of many keys.
#[derive(Default)]
pub struct Throttle {
    keys: Mutex<HashMap<String, Failures>>,
}

impl Throttle {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt of every key in `keys`, counting it as a failure
    /// of each; or, when one of them must wait, starts nothing and says
    /// which key and for how long.
    pub fn attempt<'k>(&self, keys: &[&'k str], now: Instant) -> Result<(), (&'k str, Duration)> {
        let mut map = self.keys();
        for key in keys {
            if let Some(f) = map.get(*key) {
                let at = f.retry_at();
                if at > now {
                    return Err((key, at - now));
                }
            }
        }
        for key in keys {
            Self::count(&mut map, key, now);
        }
        Ok(())
    }

    fn count(keys: &mut HashMap<String, Failures>, key: &str, now: Instant) {
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            // Forget keys whose waits are long over before anything else.
            keys.retain(|_, f| f.retry_at() + MAX_WAIT > now);
            if keys.len() >= MAX_KEYS {
                if let Some(oldest) = keys.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) {
                    keys.remove(&oldest);
                }
            }
        }
        let f = keys.entry(key.to_string()).or_insert(Failures { count: 0, last: now });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// Clears `keys` after a success.
    pub fn succeeded(&self, keys: &[&str]) {
        let mut map = self.keys();
        for key in keys {
            map.remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_attempts_and_clear_on_success() {
        let t = Throttle::default();
        let mut now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.attempt(&["alice"], now), Ok(()));
        }
        assert_eq!(t.attempt(&["alice"], now), Ok(()));
        assert_eq!(t.attempt(&["alice"], now), Err(("alice", FIRST_WAIT)));
        assert_eq!(t.attempt(&["bob", "alice"], now), Err(("alice", FIRST_WAIT)));
        assert_eq!(t.attempt(&["bob"], now), Ok(()), "keys are independent");
        now += FIRST_WAIT;
        assert_eq!(t.attempt(&["alice"], now), Ok(()));
        assert_eq!(t.attempt(&["alice"], now), Err(("alice", FIRST_WAIT * 2)));
        for _ in 0..40 {
            now += MAX_WAIT;
            assert_eq!(t.attempt(&["alice"], now), Ok(()));
        }
        assert_eq!(t.attempt(&["alice"], now), Err(("alice", MAX_WAIT)));
        t.succeeded(&["alice"]);
        assert_eq!(t.attempt(&["alice"], now), Ok(()));
    }
}
