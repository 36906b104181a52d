//! `nasd`: one NAS head (CHN) of the replicated NAS cluster.
//!
//! Map, bottom up: [`rt`] holds clock and task helpers; [`array`] is the
//! disk array and its RAID LUs; [`fs`] the file system on a data LU
//! ([`group_commit`] drains the queues of its writer thread and the Raft
//! log's); [`shared_lu`] the Raft-replicated tables; [`chn`] what one NAS
//! head does with them (LU locks, exports, sessions, heartbeat, failover);
//! [`service`] the gRPC handlers; [`server`] wires them onto one port and
//! [`config`] parses the settings. docs/ARCHITECTURE.md has the full map.

pub mod access;
pub mod array;
pub mod chn;
pub mod config;
pub mod fs;
pub mod group_commit;
pub mod rt;
pub mod server;
pub mod service;
pub mod shared_lu;
pub mod telemetry;
pub mod web;
