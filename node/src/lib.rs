//! `nasd`: one NAS head (CHN) of the replicated NAS cluster.
//!
//! Map: [`config`] parses settings; [`shared_lu`] is the Raft-replicated
//! state (tables, durable log and state machine, transport);
//! [`service`] holds the gRPC handlers; [`daemon_info`] writes this CHN's
//! heartbeat; [`server`] wires them onto one port.

pub mod array;
pub mod config;
pub mod daemon_info;
pub mod server;
pub mod service;
pub mod shared_lu;
