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

/// The encoded descriptors of every `nas.v1` message and service, for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nas_descriptor.bin"));

pub mod backup_file;
pub mod transport;

/// The buffer type of file data in `WriteChunk` and `ReadChunk`.
pub use bytes::Bytes;

/// How people see enum values: in nasd's error messages and nasctl's
/// output alike, so that both spell a state the same way.
pub mod labels {
    use super::{ChnState, DiskState, LuHealth, Path, PathTarget, Role, ServiceState};

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

    /// `INSTALLING`, `INSTALLED`, `REMOVED` as in the daemon table.
    pub fn chn_state(state: i32) -> &'static str {
        match ChnState::try_from(state) {
            Ok(ChnState::ChnInstalling) => "INSTALLING",
            Ok(ChnState::ChnInstalled) => "INSTALLED",
            Ok(ChnState::ChnRemoved) => "REMOVED",
            _ => "UNKNOWN",
        }
    }

    /// `none`, `viewer`, `operator`, `admin`: a user's role on the Admin service.
    pub fn role(role: i32) -> &'static str {
        match Role::try_from(role) {
            Ok(Role::Viewer) => "viewer",
            Ok(Role::Operator) => "operator",
            Ok(Role::Admin) => "admin",
            _ => "none",
        }
    }

    /// `serving`, `failing over`, `stopped` as in the service table.
    pub fn service_state(state: i32) -> &'static str {
        match ServiceState::try_from(state) {
            Ok(ServiceState::ServiceServing) => "serving",
            Ok(ServiceState::ServiceFailingOver) => "failing over",
            Ok(ServiceState::ServiceStopped) => "stopped",
            _ => "unknown",
        }
    }

    /// `shared`, `backup` or `lu:N`: a path's target as `nasctl path` takes it.
    pub fn path_target(p: &Path) -> String {
        match PathTarget::try_from(p.target) {
            Ok(PathTarget::PathSharedLu) => "shared".into(),
            Ok(PathTarget::PathSharedLuBackup) => "backup".into(),
            Ok(PathTarget::PathDataLu) => format!("lu:{}", p.lu),
            _ => "unknown".into(),
        }
    }
}
