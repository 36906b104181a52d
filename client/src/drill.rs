//! Failover drills: a writer that records every acknowledged write, a
//! checker that reads them all back, and the timeline of a failover as the
//! cluster reports it.
//!
//! Owns the drill's bookkeeping and its verdict; it injects no fault
//! itself (that takes a process id or a container name, which the caller
//! has). Used by `nasctl drill` and by the integration tests, so that an
//! operator's drill and CI check the same thing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::proto::FailoverStatusRequest;
use crate::{Cluster, NasClient};

/// Bytes of every record a writer stores.
const RECORD: usize = 64;

/// Milliseconds since the Unix epoch (the clock the tables use).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    /// When the acknowledgement arrived.
    pub at_ms: u64,
    /// The CHN address that served it.
    pub served_by: String,
}

/// What the writers did and what they were told.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Per writer: the number of its last acknowledged record, and one
    /// that was sent but not acknowledged (it may or may not have landed).
    pub latest: BTreeMap<usize, (u64, Option<u64>)>,
    /// Every acknowledged record file: path and record number.
    pub files: Vec<(String, u64)>,
    pub acks: Vec<Ack>,
    /// Calls that failed even after the client's retries, with the error.
    pub errors: Vec<String>,
}

/// The writers' shared ledger and stop switch.
pub struct Writers {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn record(writer: usize, n: u64) -> Vec<u8> {
    let mut r = format!("writer {writer} record {n}").into_bytes();
    r.resize(RECORD, b'.');
    r
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writers {
    /// Starts `count` writers under `dir` (created if missing). Writer `i`
    /// keeps one file open from start to end, `dir/w{i}.latest`, and
    /// overwrites it with each new record through that handle (so a
    /// handle that went stale in a failover shows as an error); and it
    /// creates each record as a new file `dir/w{i}-{n}` exclusively (so a
    /// call applied twice shows as ALREADY_EXISTS).
    pub async fn start(client: Arc<NasClient>, dir: &str, count: usize) -> Result<Writers, Status> {
        match client.mkdir(dir, 0o755).await {
            Err(s) if s.code() != tonic::Code::AlreadyExists => return Err(s),
            _ => {}
        }
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..count {
            let latest = client.create(&format!("{dir}/w{w}.latest"), 0o644, false, true).await?;
            let (client, ledger, stop, dir) = (client.clone(), ledger.clone(), stop.clone(), dir.to_string());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = format!("{dir}/w{w}-{n}");
                    lock(&ledger).latest.entry(w).or_insert((0, None)).1 = Some(n);
                    let data = record(w, n);
                    let done = async {
                        let f = client.create(&path, 0o644, true, false).await?;
                        client.write(f.handle, 0, &data).await?;
                        client.write(latest.handle, 0, &data).await
                    }
                    .await;
                    let mut l = lock(&ledger);
                    match done {
                        Ok(_) => {
                            l.latest.insert(w, (n, None));
                            l.files.push((path, n));
                            l.acks.push(Ack {
                                at_ms: now_ms(),
                                served_by: client.serving_addr(),
                            });
                        }
                        Err(s) => {
                            l.errors.push(format!("{path}: {:?}: {}", s.code(), s.message()));
                            // A writer that got an error stops: what it wrote
                            // last is uncertain, and the drill has failed.
                            return;
                        }
                    }
                }
            }));
        }
        Ok(Writers { ledger, stop, tasks })
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        lock(&self.ledger).acks.len()
    }

    /// Errors so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.ledger).errors.clone()
    }

    /// The first acknowledgement at or after `after_ms` served by another
    /// CHN than `not_by`.
    pub fn first_ack_elsewhere(&self, after_ms: u64, not_by: &str) -> Option<Ack> {
        lock(&self.ledger)
            .acks
            .iter()
            .find(|a| a.at_ms >= after_ms && a.served_by != not_by)
            .cloned()
    }

    /// The first acknowledgement at or after `after_ms`.
    pub fn first_ack_after(&self, after_ms: u64) -> Option<Ack> {
        lock(&self.ledger).acks.iter().find(|a| a.at_ms >= after_ms).cloned()
    }

    /// Stops the writers and returns what they recorded.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *lock(&self.ledger))
    }
}

/// What reading every acknowledged write back found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged writes read back.
    pub checked: usize,
    /// Acknowledged writes that were missing or wrong, with what was found.
    pub lost: Vec<String>,
}

/// Reads back every acknowledged write of `ledger` from `dir`.
pub async fn check(client: &NasClient, dir: &str, ledger: &Ledger) -> Result<Verdict, Status> {
    let mut v = Verdict::default();
    for (path, n) in &ledger.files {
        let w: usize = path
            .rsplit('/')
            .next()
            .and_then(|f| f.trim_start_matches('w').split('-').next())
            .and_then(|w| w.parse().ok())
            .unwrap_or(usize::MAX);
        match client.open(path).await {
            Ok(f) => {
                let got = client.read(f.handle, 0, RECORD as u64).await?;
                if got != record(w, *n) {
                    v.lost
                        .push(format!("{path}: holds {:?}", String::from_utf8_lossy(&got)));
                }
            }
            Err(s) => v.lost.push(format!("{path}: {:?}: {}", s.code(), s.message())),
        }
        v.checked += 1;
    }
    for (w, (acked, pending)) in &ledger.latest {
        let path = format!("{dir}/w{w}.latest");
        let f = client.open(&path).await?;
        let got = client.read(f.handle, 0, RECORD as u64).await?;
        let ok = (*acked == 0 && got.is_empty())
            || got == record(*w, *acked)
            || pending.is_some_and(|p| got == record(*w, p));
        if !ok {
            v.lost.push(format!(
                "{path}: holds {:?}, acknowledged record {acked}",
                String::from_utf8_lossy(&got)
            ));
        }
        v.checked += 1;
    }
    Ok(v)
}

/// A failover as the cluster told it, times in ms after the fault.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// A surviving CHN first reported the failed one as failed.
    pub detected_ms: Option<u64>,
    /// The service table named a new owner (its own record of the move).
    pub taken_over_ms: Option<u64>,
    /// The new owner.
    pub new_owner: Option<String>,
}

/// Watches, through `watcher` (a CHN other than the failed one), until the
/// export has moved away from `owner` or `limit` passes.
pub async fn watch_failover(watcher: &Cluster, export: &str, owner: &str, fault_ms: u64, limit: Duration) -> Timeline {
    // One login, not a password check per look.
    let _ = watcher.log_in().await;
    let mut t = Timeline::default();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let status = tokio::time::timeout(
            Duration::from_millis(500),
            watcher.admin_at(0).failover_status(FailoverStatusRequest {}),
        )
        .await;
        // A CHN that just restarted may answer from an old copy of the
        // tables, where the export is still wherever it was back then.
        let current = match status {
            Ok(Ok(r)) => Some(r.into_inner()).filter(|r| !r.possibly_stale),
            _ => None,
        };
        if let Some(r) = current {
            if t.detected_ms.is_none() && r.chns.iter().any(|c| c.chn == owner && c.failed) {
                t.detected_ms = Some(now_ms().saturating_sub(fault_ms));
            }
            let moved = r
                .exports
                .iter()
                .filter_map(|e| e.export.as_ref())
                .find(|e| e.name == export && e.owner_chn != owner);
            if let Some(e) = moved {
                let taken = e.moved_ms.saturating_sub(fault_ms);
                t.taken_over_ms = Some(taken);
                t.new_owner = Some(e.owner_chn.clone());
                // This watcher may see the failure only after the move (a
                // slow first answer); the move proves the detection.
                t.detected_ms = Some(t.detected_ms.map_or(taken, |d| d.min(taken)));
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t
}

/// The `p` quantile (0 to 1) of `sorted`, by the nearest-rank method.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}
