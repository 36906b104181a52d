//! This CHN's share of the audit log: records of Admin changes, logins
//! and refused calls are gathered here and appended to the shared LU's
//! audit table in one command every quarter second, so that auditing costs
//! the calls it records no Raft round of their own.
//!
//! Owns the buffer and its flushing. It must never block or fail a call
//! because of auditing: a full buffer drops its oldest records and says
//! so in the log. Records of the last quarter second before a CHN crash
//! are lost with it (the README says so).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;

use crate::rt::now_ms;
use crate::shared_lu::SharedLu;

/// How often the buffer is appended to the shared LU.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Records the buffer holds at most while the shared LU cannot take them.
const MAX_BUFFERED: usize = 100_000;

/// How long and how much the audit log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: u64,
    pub max_age: Duration,
}

struct Inner {
    lu: SharedLu,
    retention: Retention,
    buffer: Mutex<Vec<AuditRecord>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

impl Auditor {
    /// The auditor and the task that flushes it.
    pub fn new(lu: SharedLu, retention: Retention) -> (Auditor, impl std::future::Future<Output = ()>) {
        let a = Auditor {
            inner: Arc::new(Inner {
                lu,
                retention,
                buffer: Mutex::new(Vec::new()),
            }),
        };
        let task = a.clone().run();
        (a, task)
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Vec<AuditRecord>> {
        self.inner.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event; the CHN and the time are filled in here.
    pub fn record(&self, mut rec: AuditRecord) {
        rec.chn = self.inner.lu.name.clone();
        rec.time_ms = now_ms();
        let mut buf = self.buffer();
        if buf.len() >= MAX_BUFFERED {
            buf.remove(0);
            tracing::warn!("audit buffer full (the shared LU takes no writes): the oldest record was dropped");
        }
        buf.push(rec);
    }

    /// Appends what is buffered; on failure it stays for the next try.
    pub async fn flush(&self) {
        let batch: Vec<AuditRecord> = {
            let mut buf = self.buffer();
            let n = buf.len().min(crate::shared_lu::tables::MAX_AUDIT_RECORDS_PER_COMMAND);
            buf.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let r = self.inner.retention;
        let cmd = Kind::AppendAudit(AppendAudit {
            records: batch.clone(),
            keep: r.keep,
            max_age_ms: r.max_age.as_millis() as u64,
            now_ms: now_ms(),
        });
        if let Err(e) = self.inner.lu.write(Command { kind: Some(cmd) }).await {
            tracing::debug!("audit records not appended yet: {e}");
            let mut buf = self.buffer();
            let mut again = batch;
            again.append(&mut buf);
            *buf = again;
        }
    }

    async fn run(self) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }
}
