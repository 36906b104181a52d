//! File handles clients cannot guess: a handle is the file's inode number
//! enciphered with a 64-bit block cipher under a key of its export, so it
//! looks random and a made-up handle names a real file with odds of about
//! (files in the export) / 2^64. Inode numbers are never reused, so a
//! deleted file's handle never names another file.
//!
//! Owns the mapping between handles and inode numbers; it must never let
//! an inode number out unenciphered, and never decide who may use a file
//! (the file system checks permissions on every call, and a handle is
//! only obtained through a path lookup that checked search permission).

use blowfish::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use blowfish::Blowfish;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The handle cipher of one export.
pub struct Handles {
    cipher: Blowfish,
}

impl Handles {
    /// The cipher of `export` under the cluster's handle key. Each export
    /// gets its own key, so a handle of one names nothing in another.
    pub fn new(cluster_key: &[u8], export: &str) -> Handles {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(cluster_key) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(b"nas file handles\0");
        mac.update(export.as_bytes());
        let key = mac.finalize().into_bytes();
        let Ok(cipher) = Blowfish::new_from_slice(&key[..16]) else {
            unreachable!("Blowfish takes keys of 4 to 56 bytes")
        };
        Handles { cipher }
    }

    /// The handle clients see for inode `ino`.
    pub fn seal(&self, ino: u64) -> u64 {
        let mut block = Array::from(ino.to_be_bytes());
        self.cipher.encrypt_block(&mut block);
        u64::from_be_bytes(block.into())
    }

    /// The inode number a handle stands for (any handle maps to one; a
    /// made-up one maps to a number no file has).
    pub fn open(&self, handle: u64) -> u64 {
        let mut block = Array::from(handle.to_be_bytes());
        self.cipher.decrypt_block(&mut block);
        u64::from_be_bytes(block.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_do_not_reveal_inode_numbers() {
        let h = Handles::new(&[7; 32], "home");
        let sealed: Vec<u64> = (1..=1000).map(|ino| h.seal(ino)).collect();
        for (ino, handle) in (1..=1000).zip(&sealed) {
            assert_eq!(h.open(*handle), ino);
        }
        // Neighbouring inodes get unrelated handles, far outside the
        // range of inode numbers.
        assert!(sealed.iter().all(|s| *s > 1 << 32), "{:?}", &sealed[..4]);
        let mut sorted = sealed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), sealed.len());
        // Another export, or another cluster key: other handles.
        assert_ne!(Handles::new(&[7; 32], "small").seal(1), h.seal(1));
        assert_ne!(Handles::new(&[8; 32], "home").seal(1), h.seal(1));
        // Guessing: made-up handles open to inode numbers no file has.
        let guessed = (0..10_000u64).filter(|g| h.open(*g) <= 1_000_000).count();
        assert_eq!(guessed, 0);
    }
}
