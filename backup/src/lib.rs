//! Backups kept outside the cluster: the targets they go to (a directory
//! or an S3-compatible object store) and the format of an export backup on
//! a target (chunks named by their SHA-256, zstd-compressed, and one
//! manifest per backup).
//!
//! Owns bytes at rest on a target. It never reads or writes a file system
//! or the shared LU: nasd walks snapshots and records jobs, nasctl only
//! names targets.

pub mod archive;
pub mod target;

pub use target::{Object, Target, TargetError};
