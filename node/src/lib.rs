//! `nasd`: one NAS head (CHN) of the replicated NAS cluster.
//!
//! Map: [`config`] parses settings; [`shared_lu`] is the Raft-replicated
//! state (tables, durable log and state machine, transport);
//! [`service`] holds the gRPC handlers; [`daemon_info`] writes this CHN's
//! heartbeat; [`array`] is the disk array and its RAID LUs; [`lu_host`]
//! holds the LUs this CHN has open; [`fs`] is the file system on a data
//! LU ([`group_commit`] drains the queues of its writer thread and the
//! Raft log's); [`exports`] mounts the exports this CHN serves; [`failover`] watches
//! partners and moves exports when a CHN fails or the operator asks; [`sessions`] checks
//! and renews client sessions; [`server`] wires them onto one port.

pub mod array;
pub mod config;
pub mod daemon_info;
pub mod exports;
pub mod failover;
pub mod fs;
pub mod group_commit;
pub mod lu_host;
pub mod server;
pub mod service;
pub mod sessions;
pub mod shared_lu;
