//! Rows this CHN appends to a bounded log in the shared LU (the audit log,
//! the event log), gathered and appended in one command every quarter
//! second, so that recording costs the recorded act no Raft round of its
//! own.
//!
//! Owns the buffer and its flushing. It must never block or fail whoever
//! records: a full buffer drops its oldest row and says so in the log, and
//! rows an append could not commit (no quorum) stay for the next one. Rows
//! of the last quarter second before a CHN crash are lost with it.

use std::sync::Mutex;
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::Command;

use crate::shared_lu::SharedLu;

/// How often the buffer is appended to the shared LU.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

pub struct Appender<T> {
    lu: SharedLu,
    /// What the rows are, for log lines ("audit record", "event").
    what: &'static str,
    buffer: Mutex<Vec<T>>,
    /// Rows held at most while the shared LU cannot take them.
    max_buffered: usize,
    /// Rows one command may carry (the table's own limit).
    per_command: usize,
}

impl<T: Clone> Appender<T> {
    pub fn new(lu: SharedLu, what: &'static str, max_buffered: usize, per_command: usize) -> Self {
        Appender {
            lu,
            what,
            buffer: Mutex::new(Vec::new()),
            max_buffered,
            per_command,
        }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, row: T) {
        let mut buf = self.buffer();
        if buf.len() >= self.max_buffered {
            buf.remove(0);
            tracing::warn!(
                "{} buffer full (the shared LU takes no writes): the oldest {} was dropped",
                self.what,
                self.what
            );
        }
        buf.push(row);
    }

    /// Appends what is buffered with the command `append` makes of it; on
    /// failure the rows stay, ahead of newer ones, for the next try.
    pub async fn flush(&self, append: impl FnOnce(Vec<T>) -> Kind) {
        let batch: Vec<T> = {
            let mut buf = self.buffer();
            let n = buf.len().min(self.per_command);
            buf.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let cmd = append(batch.clone());
        if let Err(e) = self.lu.write(Command { kind: Some(cmd) }).await {
            tracing::debug!("{}s not appended yet: {e}", self.what);
            let mut buf = self.buffer();
            let mut again = batch;
            again.append(&mut buf);
            *buf = again;
        }
    }
}

/// Runs `flush` every [`FLUSH_EVERY`], forever (until the task is dropped).
pub async fn flush_forever<F, Fut>(mut flush: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush().await;
    }
}
