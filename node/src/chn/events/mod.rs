//! The events this CHN sees: recorded here, appended to the shared LU's
//! event table through an `Appender` (one command every quarter second),
//! and handed at once to the event hook and the webhook (`notify`).
//! `watch` finds the events that are state changes of the tables and of
//! Raft.
//!
//! It must never block or fail the change an event reports: recording is
//! a push onto a buffer, and the hook and webhook run in tasks of their
//! own behind bounded queues. Events seen while the shared LU takes no
//! writes (no quorum) wait in the buffer and are appended once it does;
//! the hook has already run for them.

mod notify;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;

use super::appender::{flush_forever, Appender};
use crate::rt::now_ms;
use crate::shared_lu::SharedLu;

/// Events the buffer holds at most while the shared LU cannot take them.
const MAX_BUFFERED: usize = 10_000;

/// How long and how much the event log keeps, and whom to tell.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub keep: u64,
    pub max_age: Duration,
    pub hook: Option<PathBuf>,
    pub hook_timeout: Duration,
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

struct Inner {
    chn: String,
    settings: EventSettings,
    buffer: Appender<Event>,
    notify: notify::Notifier,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl Events {
    /// The recorder and the task that appends its events and notifies.
    pub fn new(lu: SharedLu, settings: EventSettings) -> (Events, impl std::future::Future<Output = ()>) {
        let (notify, notify_task) = notify::Notifier::new(&settings);
        let events = Events {
            inner: Arc::new(Inner {
                chn: lu.name.clone(),
                settings,
                buffer: Appender::new(
                    lu,
                    "event",
                    MAX_BUFFERED,
                    crate::shared_lu::tables::MAX_EVENTS_PER_COMMAND,
                ),
                notify,
            }),
        };
        let flusher = events.clone();
        let task = async move {
            tokio::join!(flusher.run(), notify_task);
        };
        (events, task)
    }

    /// Records that `kind` happened, seen by this CHN now.
    pub fn record(&self, kind: &str, severity: Severity, message: String, fields: &[(&str, String)]) {
        let event = Event {
            seq: 0,
            time_ms: now_ms(),
            chn: self.inner.chn.clone(),
            kind: kind.to_string(),
            severity: severity.as_str().to_string(),
            message,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
        };
        match severity {
            Severity::Info => tracing::info!(event = kind, "{}", event.message),
            Severity::Warning | Severity::Error => tracing::warn!(event = kind, "{}", event.message),
        }
        self.inner.notify.send(&event);
        self.inner.buffer.push(event);
    }

    /// Appends what is buffered; on failure it stays for the next try.
    pub async fn flush(&self) {
        let s = &self.inner.settings;
        self.inner
            .buffer
            .flush(|events| {
                Kind::AppendEvents(AppendEvents {
                    events,
                    keep: s.keep,
                    max_age_ms: s.max_age.as_millis() as u64,
                    now_ms: now_ms(),
                })
            })
            .await;
    }

    async fn run(self) {
        flush_forever(|| self.flush()).await
    }
}

/// An event as the hook and the webhook receive it, and as `nasctl
/// events --json` prints it: the table row as one JSON object.
pub fn to_json(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
}
