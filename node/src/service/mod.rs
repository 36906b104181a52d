//! The gRPC services one CHN serves on its port: `Nas` (the file service),
//! `Admin` (management terminal), `Raft` (CHN to CHN) and the standard
//! health service.
//!
//! Handlers translate requests into shared-LU commands and reads; they
//! must never touch storage directly.

pub mod admin;
pub mod audit_args;
pub mod authz;
pub mod backup_copies;
pub mod call_metrics;
pub mod nas;
pub mod raft;
pub mod snapshots;
pub mod status;
