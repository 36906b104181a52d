//! This CHN's share of the audit log: records of Admin changes, logins
//! and refused calls, appended to the shared LU's audit table through an
//! `Appender` (in one command every quarter second).
//!
//! It must never block or fail a call because of auditing. Records of the
//! last quarter second before a CHN crash are lost with it (the README
//! says so).

use std::sync::Arc;
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;

use super::appender::{flush_forever, Appender};
use crate::rt::now_ms;
use crate::shared_lu::SharedLu;

/// Records the buffer holds at most while the shared LU cannot take them.
const MAX_BUFFERED: usize = 100_000;

/// How long and how much the audit log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: u64,
    pub max_age: Duration,
}

struct Inner {
    chn: String,
    retention: Retention,
    buffer: Appender<AuditRecord>,
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
                chn: lu.name.clone(),
                retention,
                buffer: Appender::new(
                    lu,
                    "audit record",
                    MAX_BUFFERED,
                    crate::shared_lu::tables::MAX_AUDIT_RECORDS_PER_COMMAND,
                ),
            }),
        };
        let task = a.clone().run();
        (a, task)
    }

    /// Records an event; the CHN and the time are filled in here.
    pub fn record(&self, mut rec: AuditRecord) {
        rec.chn = self.inner.chn.clone();
        rec.time_ms = now_ms();
        self.inner.buffer.push(rec);
    }

    /// Appends what is buffered; on failure it stays for the next try.
    pub async fn flush(&self) {
        let r = self.inner.retention;
        self.inner
            .buffer
            .flush(|records| {
                Kind::AppendAudit(AppendAudit {
                    records,
                    keep: r.keep,
                    max_age_ms: r.max_age.as_millis() as u64,
                    now_ms: now_ms(),
                })
            })
            .await;
    }

    async fn run(self) {
        flush_forever(|| self.flush()).await
    }
}
