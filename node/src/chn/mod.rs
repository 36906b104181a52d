//! What one NAS head (CHN) does besides Raft: holds LUs under their locks,
//! mounts and serves exports, keeps client sessions, writes its heartbeat,
//! and moves exports when a partner fails or the operator asks.
//!
//! Owns every long-running job of a CHN that acts on the shared LU's
//! tables. Only `service/` and the server wiring sit above it; nothing in
//! it may depend on `service/`, and it changes tables only by committing
//! commands through [`crate::shared_lu::SharedLu`].

mod appender;
pub mod audit;
mod error;
pub mod events;
pub mod export_backup;
pub mod exports;
pub mod failover;
pub mod heartbeat;
pub mod lu_host;
pub mod readiness;
pub mod sessions;
pub mod state_backup;

pub use error::Error;
