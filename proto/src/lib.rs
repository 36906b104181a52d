//! The gRPC protocol of the NAS cluster.
//!
//! Owns the generated message and service types (package `nas.v1`) and
//! nothing else: no logic lives here.

#![allow(clippy::large_enum_variant)]

/// Messages and services of package `nas.v1`.
pub mod v1 {
    tonic::include_proto!("nas.v1");
}

pub use v1::*;
