//! The gRPC protocol of the NAS cluster.
//!
//! Owns the generated message and service types (package `nas.v1`) and
//! the operator-facing spelling of their enums; no other logic lives here.

#![allow(clippy::large_enum_variant)]

/// Messages and services of package `nas.v1`.
pub mod v1 {
    tonic::include_proto!("nas.v1");
}

pub use v1::*;

/// The buffer type of file data in `WriteChunk` and `ReadChunk`.
pub use bytes::Bytes;

/// How people see enum values: in nasd's error messages and nasctl's
/// output alike, so that both spell a state the same way.
pub mod labels {
    use super::{DiskState, LuHealth};

    /// `NOT USED`, `USED`, `FAILED`, `SPARE` as in the physical disk table.
    pub fn disk_state(state: i32) -> &'static str {
        match DiskState::try_from(state) {
            Ok(DiskState::DiskNotUsed) => "NOT USED",
            Ok(DiskState::DiskUsed) => "USED",
            Ok(DiskState::DiskFailed) => "FAILED",
            Ok(DiskState::DiskSpare) => "SPARE",
            _ => "UNKNOWN",
        }
    }

    /// `OPTIMAL`, `DEGRADED`, `REBUILDING`, `FAILED`, or `NEW` before formatting.
    pub fn lu_health(health: i32) -> &'static str {
        match LuHealth::try_from(health) {
            Ok(LuHealth::LuOptimal) => "OPTIMAL",
            Ok(LuHealth::LuDegraded) => "DEGRADED",
            Ok(LuHealth::LuRebuilding) => "REBUILDING",
            Ok(LuHealth::LuFailed) => "FAILED",
            _ => "NEW",
        }
    }
}
