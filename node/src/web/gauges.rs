//! The gauges set at each scrape from this CHN's Raft state and its copy
//! of the tables: what they show is what the tables say now, so nothing
//! has to keep them up to date between scrapes.
//!
//! It must never wait for the network: a scrape of a CHN without a quorum
//! still answers, from the local copy.

use std::collections::BTreeMap;

use metrics::gauge;
use nas_proto::labels;

use crate::rt::now_ms;
use crate::shared_lu::SharedLu;
use crate::telemetry::*;

const LU_STATES: [&str; 5] = ["NEW", "OPTIMAL", "DEGRADED", "REBUILDING", "FAILED"];
const DISK_STATES: [&str; 5] = ["NOT USED", "USED", "FAILED", "SPARE", "UNKNOWN"];

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    lu: SharedLu,
}

impl Sources {
    pub fn new(lu: SharedLu) -> Self {
        Sources { lu }
    }

    /// Sets every table-derived gauge.
    pub fn collect(&self) {
        self.raft();
        self.tables();
    }

    fn raft(&self) {
        let m = self.lu.raft.metrics().borrow().clone();
        gauge!(RAFT_TERM).set(m.current_term as f64);
        gauge!(RAFT_LEADER).set(m.current_leader.unwrap_or(0) as f64);
        gauge!(RAFT_IS_LEADER).set(if m.current_leader == Some(self.lu.id) { 1.0 } else { 0.0 });
        gauge!(RAFT_LAST_LOG_INDEX).set(m.last_log_index.unwrap_or(0) as f64);
        gauge!(RAFT_APPLIED_INDEX).set(m.last_applied.map_or(0, |l| l.index) as f64);
        if let Some(ms) = m.millis_since_quorum_ack {
            gauge!(RAFT_QUORUM_ACK_AGE).set(ms as f64 / 1000.0);
        }
    }

    fn tables(&self) {
        let me = self.lu.name.as_str();
        let now = now_ms();
        self.lu.read(|t| {
            gauge!(EXPORTS_SERVED).set(t.exports.values().filter(|e| e.owner_chn == me).count() as f64);
            // By export ("" for sessions that have not mounted one yet);
            // every export appears, so that a count that fell to zero
            // says so.
            let mut sessions: BTreeMap<&str, u64> = t.exports.keys().map(|e| (e.as_str(), 0)).collect();
            sessions.insert("", 0);
            let mut locks = sessions.clone();
            for c in t.clients.values() {
                *sessions.entry(c.export.as_str()).or_default() += 1;
            }
            for l in t.file_locks.values() {
                *locks.entry(l.export.as_str()).or_default() += l.holders.len() as u64;
            }
            for (export, n) in sessions {
                gauge!(SESSIONS_OPEN, "export" => export.to_string()).set(n as f64);
            }
            for (export, n) in locks {
                gauge!(FILE_LOCKS_HELD, "export" => export.to_string()).set(n as f64);
            }
            for lu in t.lus.values() {
                let number = lu.number.to_string();
                let now_in = labels::lu_health(lu.health);
                for state in LU_STATES {
                    gauge!(LU_STATE, "lu" => number.clone(), "state" => state).set(if state == now_in {
                        1.0
                    } else {
                        0.0
                    });
                }
                for kind in ["rebuild", "scrub"] {
                    let running = lu.job.as_ref().filter(|j| j.kind == kind && !j.finished);
                    let ratio = running.map_or(0.0, |j| j.done_bytes as f64 / j.total_bytes.max(1) as f64);
                    gauge!(LU_JOB_PROGRESS, "lu" => number.clone(), "job" => kind).set(ratio);
                }
            }
            for disk in t.disks.values() {
                let number = disk.number.to_string();
                let now_in = labels::disk_state(disk.state);
                for state in DISK_STATES {
                    gauge!(DISK_STATE, "disk" => number.clone(), "state" => state).set(if state == now_in {
                        1.0
                    } else {
                        0.0
                    });
                }
                gauge!(DISK_CHECKSUM_ERRORS, "disk" => number).set(disk.checksum_errors as f64);
            }
            for d in t.daemons.values() {
                let age = now.saturating_sub(d.heartbeat_ms) as f64 / 1000.0;
                gauge!(CHN_HEARTBEAT_AGE, "chn" => d.chn.clone()).set(age);
            }
        });
    }
}
