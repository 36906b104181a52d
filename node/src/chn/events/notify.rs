//! Telling the outside world: the event hook (a program run with the
//! event as JSON on stdin, one at a time, in order) and the webhook (an
//! HTTP POST of the same JSON, retried with backoff).
//!
//! Each has a bounded queue: when a hook or a receiver is slower than the
//! events, the newest events beyond the queue are dropped and the log says
//! so. Nothing here may block the CHN: a hook is killed after its timeout,
//! a POST gives up after its last retry.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nas_proto::Event;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::EventSettings;

/// Events waiting for the hook or the webhook, at most.
const QUEUE: usize = 256;
/// Tries of one POST, and the first wait between them (doubled each time).
const WEBHOOK_TRIES: u32 = 6;
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(250);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Notifier {
    hook: Option<mpsc::Sender<String>>,
    webhook: Option<mpsc::Sender<String>>,
}

impl Notifier {
    pub(super) fn new(settings: &EventSettings) -> (Notifier, impl std::future::Future<Output = ()>) {
        let (hook, hook_rx) = queue(settings.hook.is_some());
        let (webhook, web_rx) = queue(settings.webhook.is_some());
        let hook_task = run_hook(settings.hook.clone(), settings.hook_timeout, hook_rx);
        let web_task = run_webhook(settings.webhook.clone(), web_rx);
        let task = async move {
            tokio::join!(hook_task, web_task);
        };
        (Notifier { hook, webhook }, task)
    }

    pub(super) fn send(&self, e: &Event) {
        if self.hook.is_none() && self.webhook.is_none() {
            return;
        }
        let json = super::to_json(e);
        for (what, q) in [("hook", &self.hook), ("webhook", &self.webhook)] {
            if let Some(q) = q {
                if q.try_send(json.clone()).is_err() {
                    tracing::warn!(event = %e.kind, "the event {what} is {QUEUE} events behind: this event is not sent to it");
                }
            }
        }
    }
}

/// A bounded queue, when its consumer is configured.
fn queue(wanted: bool) -> (Option<mpsc::Sender<String>>, Option<mpsc::Receiver<String>>) {
    if !wanted {
        return (None, None);
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    (Some(tx), Some(rx))
}

async fn run_hook(program: Option<PathBuf>, timeout: Duration, rx: Option<mpsc::Receiver<String>>) {
    let (Some(program), Some(mut rx)) = (program, rx) else {
        return;
    };
    while let Some(json) = rx.recv().await {
        if let Err(why) = hook_once(&program, timeout, &json).await {
            tracing::warn!(hook = %program.display(), "event hook failed: {why}");
        }
    }
}

async fn hook_once(program: &std::path::Path, timeout: Duration, json: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(stdin) = &mut stdin {
            // A hook that does not read its input is not an error.
            let _ = stdin.write_all(json.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        drop(stdin.take());
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = (&mut e).take(4096).read_to_string(&mut err).await;
        }
        let status = child.wait().await.map_err(|e| format!("cannot wait for it: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{status}: {}", err.trim()))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        // Dropping the child (kill_on_drop) kills it.
        Err(_) => Err(format!(
            "still running after {} ms (--event-hook-timeout-ms): killed",
            timeout.as_millis()
        )),
    }
}

async fn run_webhook(url: Option<String>, rx: Option<mpsc::Receiver<String>>) {
    let (Some(url), Some(mut rx)) = (url, rx) else {
        return;
    };
    let client = match reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%url, error = %e, "cannot set up the event webhook's HTTP client; no events are posted");
            return;
        }
    };
    while let Some(json) = rx.recv().await {
        let mut wait = WEBHOOK_BACKOFF;
        for attempt in 1..=WEBHOOK_TRIES {
            let sent = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.clone())
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    if r.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("answered {}", r.status()))
                    }
                });
            match sent {
                Ok(()) => break,
                Err(why) if attempt == WEBHOOK_TRIES => {
                    tracing::warn!(%url, "event webhook: {why}; gave up on this event after {attempt} tries");
                }
                Err(why) => {
                    tracing::debug!(%url, attempt, "event webhook: {why}; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
}
