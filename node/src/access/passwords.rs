//! Password hashing and checking, on a bounded pool.
//!
//! argon2 costs tens of milliseconds of CPU and memory by design: at most
//! `MAX_HASHING` run at once, off the async runtime, and at most
//! `MAX_WAITING` more wait; beyond that a login is refused at once, so a
//! login flood cannot starve the CHN's other work. An unknown user is
//! checked against a dummy hash made with the same parameters, so that it
//! costs the same time as a known one. Owns hashing only; it must never
//! store or log a password.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::{PasswordHash, PasswordVerifier};
use tokio::sync::Semaphore;

/// argon2 runs at once, at most: one core's worth, leaving the others to
/// Raft and the file service.
const MAX_HASHING: usize = 1;
/// Password checks that may wait for a turn.
const MAX_WAITING: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks are waiting ({MAX_WAITING}); retry in a second")]
    Busy,
    #[error("cannot hash the password: {0}")]
    Internal(String),
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    turns: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    dummy: Arc<String>,
}

fn hash_now(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Internal(e.to_string()))
}

fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Passwords {
    pub fn new() -> Result<Passwords, HashError> {
        Ok(Passwords {
            turns: Arc::new(Semaphore::new(MAX_HASHING)),
            waiting: Arc::new(AtomicUsize::new(0)),
            dummy: Arc::new(hash_now("not any user's password")?),
        })
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(HashError::Busy);
        }
        let turn = self.turns.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let turn = turn.map_err(|e| HashError::Internal(e.to_string()))?;
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(turn);
            out
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))?;
        Ok(out)
    }

    /// A PHC string for a new password.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_string();
        self.run(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `hash`; with no hash (an unknown user) it
    /// checks against the dummy and answers false in the same time.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, HashError> {
        let known = hash.is_some();
        let (password, hash) = (password.to_string(), hash.unwrap_or(&self.dummy).to_string());
        let matched = self.run(move || verify_now(&password, &hash)).await?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_users_never_match_and_floods_are_bounded() {
        let p = Passwords::new().unwrap();
        let h = p.hash("correct horse").await.unwrap();
        assert!(p.verify("correct horse", Some(&h)).await.unwrap());
        assert!(!p.verify("wrong", Some(&h)).await.unwrap());
        assert!(!p.verify("not any user's password", None).await.unwrap());
        let flood: Vec<_> = (0..MAX_WAITING + 40)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.verify("x", None).await })
            })
            .collect();
        let mut busy = 0;
        for f in flood {
            if matches!(f.await.unwrap(), Err(HashError::Busy)) {
                busy += 1;
            }
        }
        assert!(busy > 0, "some of a flood beyond the queue must be refused");
    }
}
