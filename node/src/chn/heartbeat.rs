//! This CHN's daemon information: the periodic heartbeat row it writes
//! into the shared LU's daemon table.
//!
//! Owns the reporting loop only. It must never write for a CHN that is not
//! installed (the table would refuse it anyway) and never stop on a failed
//! write: a missed heartbeat is what partners watch for, not an error here.

use std::collections::HashMap;
use std::time::Duration;

use nas_proto::{command::Kind, Command, ReportDaemon};

use crate::rt::now_ms;
use crate::shared_lu::SharedLu;

/// The host's one-minute load average in hundredths (150 = 1.5), which
/// partners use to pick the least loaded survivor; 0 where unknown.
fn load_percent() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |l| (l * 100.0) as u32)
}

/// Writes this CHN's heartbeat every `interval` until the task is dropped.
pub async fn report_loop(lu: SharedLu, interval: Duration, version: String) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let installed = lu.daemon(&lu.name).is_some();
        if !installed {
            continue;
        }
        let role = format!("{:?}", lu.raft.metrics().borrow().state);
        let states = HashMap::from([("raft".to_string(), role), ("admin".to_string(), "running".to_string())]);
        let cmd = Command {
            kind: Some(Kind::ReportDaemon(ReportDaemon {
                chn: lu.name.clone(),
                heartbeat_ms: now_ms(),
                daemon_states: states,
                version: version.clone(),
                load: load_percent(),
            })),
        };
        if let Err(e) = lu.write(cmd).await {
            tracing::debug!(error = %e, "heartbeat not written");
        }
    }
}
