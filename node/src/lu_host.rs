//! The data LUs this CHN has open, and everything that ties them to the
//! shared LU: LU locks (a lease plus a fencing epoch), formatting and
//! opening block devices, which CHN serves calls for an LU, rebuild and
//! scrub jobs, and reporting disk failures, LU health and job progress into
//! the tables.
//!
//! Owns the only path by which this CHN opens an LU. It must never open an
//! LU without holding its lock, and never keep one open after losing it:
//! every open LU's write fence ends a fifth of the lease before the lock
//! does, and only a renewal that reached the tables moves it on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;
use tokio::sync::mpsc;
use tonic::Status;

use crate::array::fence::Fence;
use crate::array::{jobs, Array, ArrayError, BlockDevice, LuDevice, LuHealth as Health, LuSpec, OpenOptions, Raid};
use crate::service::admin::now_ms;
use crate::shared_lu::SharedLu;

/// Where calls for an LU are served.
pub enum Route {
    Local(Arc<LuDevice>),
    /// Another CHN holds the LU lock: (CHN name, address).
    Remote(String, String),
}

/// A rebuild or scrub running on this CHN.
struct Job {
    cancel: AtomicBool,
    state: Mutex<LuJob>,
}

struct Opened {
    dev: Arc<LuDevice>,
    job: Option<Arc<Job>>,
    reported: Option<Health>,
    /// When the last renewal that succeeded was sent.
    renewed: tokio::time::Instant,
    epoch: u64,
}

struct HostInner {
    shared: SharedLu,
    array_dir: Option<PathBuf>,
    lease: Duration,
    rebuild_limit: Option<u64>,
    open: Mutex<HashMap<u32, Opened>>,
    opening: tokio::sync::Mutex<()>,
    failures: mpsc::UnboundedSender<u32>,
}

/// This CHN's LU host; cheap to clone.
#[derive(Clone)]
pub struct LuHost {
    inner: Arc<HostInner>,
}

/// The gRPC status for an array error, keeping its advice.
pub fn status(e: ArrayError) -> Status {
    let msg = e.to_string();
    match e {
        ArrayError::OutOfRange { .. } => Status::out_of_range(msg),
        ArrayError::DiskExists { .. } => Status::already_exists(msg),
        ArrayError::DataLoss { .. } | ArrayError::Corrupt(_) => Status::data_loss(msg),
        ArrayError::Io { .. } => Status::internal(msg),
        _ => Status::failed_precondition(msg),
    }
}

fn health_proto(h: Health) -> LuHealth {
    match h {
        Health::Optimal => LuHealth::LuOptimal,
        Health::Degraded => LuHealth::LuDegraded,
        Health::Rebuilding => LuHealth::LuRebuilding,
        Health::Failed => LuHealth::LuFailed,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ArrayError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("LU task failed: {e}")))?
        .map_err(status)
}

impl LuHost {
    /// Creates the host and the task that must run beside it (failure
    /// reports, lease renewal, progress reports, resuming after a restart).
    pub fn new(
        shared: SharedLu,
        array_dir: Option<PathBuf>,
        lease: Duration,
        rebuild_limit: Option<u64>,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = Self {
            inner: Arc::new(HostInner {
                shared,
                array_dir,
                lease,
                rebuild_limit,
                open: Mutex::new(HashMap::new()),
                opening: tokio::sync::Mutex::new(()),
                failures: tx,
            }),
        };
        let bg = host.clone().background(rx);
        (host, bg)
    }

    fn shared(&self) -> &SharedLu {
        &self.inner.shared
    }

    /// The disk-array directory this CHN was started with.
    fn array_dir(&self) -> Result<PathBuf, Status> {
        self.inner.array_dir.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "CHN {} was started without --array; restart it with the disk-array directory",
                self.shared().name
            ))
        })
    }

    fn array(&self) -> Result<Array, Status> {
        let dir = self.array_dir()?;
        let id = self.shared().state.read().tables.shared_lu.array_id.clone();
        let id = u128::from_str_radix(&id, 16)
            .map_err(|_| Status::failed_precondition("the disk array is not initialized; run `nasctl array init`"))?;
        Ok(Array::new(dir, id))
    }

    /// Creates the disk files, then records them in the disk table. The
    /// table's own rules are checked first, so that a refused command
    /// leaves no file behind.
    pub async fn init_array(&self, disks: u32, capacity: u64) -> Result<CommandResult, Status> {
        self.shared().ensure_current().await?;
        let dir = self.array_dir()?;
        let id: u128 = rand::random();
        let cmd = InitArray {
            disks,
            disk_capacity_bytes: capacity,
            array_id: format!("{id:032x}"),
        };
        self.shared()
            .state
            .read()
            .tables
            .check_init_array(&cmd)
            .map_err(|r| Status::new(r.code, r.message))?;
        let array = Array::new(dir, id);
        blocking(move || array.create_disks(disks, capacity)).await?;
        self.shared()
            .write(Command {
                kind: Some(Kind::InitArray(cmd)),
            })
            .await
    }

    /// Records a new LU, then formats its block device on this CHN.
    pub async fn create_lu(&self, req: CreateLu) -> Result<CommandResult, Status> {
        // The array may have been set up through another CHN a moment ago.
        self.shared().ensure_current().await?;
        self.array()?;
        let r = self
            .shared()
            .write(Command {
                kind: Some(Kind::CreateLu(req)),
            })
            .await?;
        self.open_local(r.assigned as u32).await?;
        Ok(r)
    }

    /// The LU's layout from tables at least as new as our last write.
    async fn spec(&self, lu: u32) -> Result<(LuSpec, i32), Status> {
        self.shared().ensure_current().await?;
        let state = self.shared().state.read();
        let t = &state.tables;
        let row = t
            .lus
            .get(&lu)
            .ok_or_else(|| Status::not_found(format!("LU {lu} does not exist; see `nasctl lu list`")))?;
        let raid = match RaidLevel::try_from(row.raid) {
            Ok(RaidLevel::Raid1) => Raid::Mirror,
            _ => Raid::Parity,
        };
        let disk_capacity = row
            .disks
            .first()
            .and_then(|d| t.disks.get(d))
            .map_or(0, |d| d.capacity_bytes);
        let spec = LuSpec {
            lu,
            raid,
            disks: row.disks.clone(),
            unit: row.stripe_unit_bytes,
            per_disk: row.per_disk_bytes,
            disk_capacity,
        };
        Ok((spec, row.health))
    }

    /// Takes the LU lock (or renews it) and returns the fencing epoch.
    async fn take_lock(&self, lu: u32) -> Result<u64, Status> {
        let cmd = Kind::AcquireLuLock(AcquireLuLock {
            lu,
            chn: self.shared().name.clone(),
            lease_ms: self.inner.lease.as_millis() as u64,
            now_ms: now_ms(),
        });
        Ok(self.shared().write(Command { kind: Some(cmd) }).await?.assigned)
    }

    /// Opens (or formats, if it never was) an LU on this CHN under its lock.
    async fn open_local(&self, lu: u32) -> Result<Arc<LuDevice>, Status> {
        // One opener at a time: two devices over the same disks would each
        // run crash recovery and write without seeing the other.
        let _opening = self.inner.opening.lock().await;
        if let Some(o) = lock(&self.inner.open).get(&lu) {
            return Ok(o.dev.clone());
        }
        let array = self.array()?;
        let sent = tokio::time::Instant::now();
        let epoch = self.take_lock(lu).await?;
        let fence = Arc::new(Fence::until(self.write_deadline(sent).into_std()));
        let (spec, health) = self.spec(lu).await?;
        let tx = self.inner.failures.clone();
        let opts = OpenOptions {
            epoch,
            on_member_failure: Some(Arc::new(move |disk| {
                let _ = tx.send(disk);
            })),
            abort_at_member_write: None,
            fence: Some(fence.clone()),
        };
        // Format only an LU the table calls new *and* no member recognizes:
        // a lost health report must never lead to wiping a formatted LU.
        let fresh = health == LuHealth::Unspecified as i32;
        let s = spec.clone();
        let opening = blocking(move || match LuDevice::open(&array, &s, opts.clone()) {
            Err(ArrayError::Unformatted { .. }) if fresh => LuDevice::create(&array, &s, opts),
            other => other,
        });
        // Crash recovery at open can outlast a lease (a busy machine, many
        // dirty stripes): renew the lock meanwhile, as renew_loop does for
        // open LUs, or the LU would be closed again as soon as it opened.
        tokio::pin!(opening);
        let mut tick = tokio::time::interval(self.inner.lease / 7);
        tick.tick().await;
        let mut renewed = sent;
        let dev = loop {
            tokio::select! {
                dev = &mut opening => break dev?,
                _ = tick.tick() => {
                    if let Some((at, _)) = self.renew(lu, &fence).await {
                        renewed = at;
                    }
                }
            }
        };
        if fence.is_tripped() {
            return Err(Status::unavailable(format!(
                "LU {lu}: this CHN lost the LU lock while opening it (another CHN took it, or the lease ran out); retry"
            )));
        }
        let dev = Arc::new(dev);
        self.adopt_replacements(&dev, &spec).await?;
        let resume = {
            let state = self.shared().state.read();
            state
                .tables
                .lus
                .get(&lu)
                .and_then(|l| l.job.clone())
                .is_some_and(|j| j.kind == "rebuild" && !j.finished)
        };
        lock(&self.inner.open).entry(lu).or_insert(Opened {
            dev: dev.clone(),
            job: None,
            reported: None,
            renewed,
            epoch,
        });
        tracing::info!(lu, epoch, "LU open on this CHN");
        self.report(lu).await;
        if let (true, Some((disk, done))) = (resume, dev.rebuild_state()) {
            tracing::info!(
                lu,
                disk,
                "resuming the interrupted rebuild at stripe {done} of {}",
                dev.geometry().stripes()
            );
            self.start_job(lu, false, false)?;
        }
        Ok(dev)
    }

    /// Puts replacement disks the table names (after `disk replace`) into
    /// the device's failed slots.
    async fn adopt_replacements(&self, dev: &Arc<LuDevice>, spec: &LuSpec) -> Result<(), Status> {
        let members = dev.members();
        let failed: Vec<u32> = members
            .iter()
            .filter(|m| m.state == crate::array::superblock::MemberState::Failed)
            .map(|m| m.disk)
            .collect();
        let new: Vec<u32> = spec
            .disks
            .iter()
            .copied()
            .filter(|d| !members.iter().any(|m| m.disk == *d))
            .collect();
        for (old, new) in failed.into_iter().zip(new) {
            let array = self.array()?;
            let (d, cap) = (dev.clone(), spec.disk_capacity);
            blocking(move || d.replace_member(old, array.open_disk(new, cap)?)).await?;
        }
        Ok(())
    }

    /// Applies a `disk replace` the table just recorded to the open device.
    pub async fn adopt(&self, lu: u32) -> Result<(), Status> {
        let dev = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone());
        let Some(dev) = dev else { return Ok(()) };
        let (spec, _) = self.spec(lu).await?;
        self.adopt_replacements(&dev, &spec).await?;
        self.report(lu).await;
        Ok(())
    }

    /// Where calls for `lu` go: here if this CHN holds (or can take) the
    /// lock, else the CHN that holds it (for an exported LU nobody holds,
    /// the export's owner).
    pub async fn route(&self, lu: u32) -> Result<Route, Status> {
        let open = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone());
        if let Some(dev) = open {
            // Past its lease this CHN must not even read: another CHN may
            // have changed the LU since.
            if dev.fence().check(lu).is_ok() {
                return Ok(Route::Local(dev));
            }
            self.close(lu, "its lease ran out without renewal");
        }
        self.shared().ensure_current().await?;
        let holder = {
            let state = self.shared().state.read();
            let t = &state.tables;
            if !t.lus.contains_key(&lu) {
                return Err(Status::not_found(format!(
                    "LU {lu} does not exist; see `nasctl lu list`"
                )));
            }
            let me = &self.shared().name;
            let held = t
                .lu_locks
                .get(&lu)
                .filter(|l| l.lease_expiry_ms > now_ms())
                .map(|l| l.chn.clone());
            // An exported LU that nobody holds is left to the export's owner:
            // opening it here would lock the owner out of its own file system.
            let owner = t.exports.values().find(|e| e.lu == lu).map(|e| e.owner_chn.clone());
            held.or(owner)
                .filter(|chn| chn != me)
                .and_then(|chn| t.daemons.get(&chn).map(|d| (chn.clone(), d.address.clone())))
        };
        match holder {
            Some((chn, addr)) => Ok(Route::Remote(chn, addr)),
            None => Ok(Route::Local(self.open_local(lu).await?)),
        }
    }

    /// The operator's `disk fail`: fails the member in its open LU (the
    /// failure report then marks the disk FAILED) or just marks the disk.
    pub async fn fail_disk(&self, dev: Option<Arc<LuDevice>>, disk: u32) -> Result<CommandResult, Status> {
        if let Some(dev) = dev {
            let lu = dev.lu();
            // A second failure fails the LU; that is recorded, not refused.
            if let Err(e) = blocking(move || dev.fail_member(disk)).await {
                tracing::warn!(lu, disk, "{}", e.message());
            }
            self.report(lu).await;
        }
        let cmd = Kind::SetDiskState(SetDiskState {
            disk,
            state: DiskState::DiskFailed as i32,
        });
        self.shared().write(Command { kind: Some(cmd) }).await
    }

    /// Starts a rebuild (or a scrub) of an LU open here; returns its state.
    pub fn start_job(&self, lu: u32, scrub: bool, repair: bool) -> Result<LuJob, Status> {
        let mut open = lock(&self.inner.open);
        let o = open
            .get_mut(&lu)
            .ok_or_else(|| Status::unavailable(format!("LU {lu} is not open on this CHN")))?;
        if let Some(j) = &o.job {
            let s = lock(&j.state).clone();
            if !s.finished {
                return Err(Status::failed_precondition(format!(
                    "a {} of LU {lu} is already running ({:.0}% done); wait for it",
                    s.kind,
                    pct(&s)
                )));
            }
        }
        if !scrub && o.dev.rebuild_state().is_none() {
            return Err(Status::failed_precondition(format!(
                "LU {lu} has no member to rebuild; replace a failed disk first with `nasctl disk replace N`"
            )));
        }
        let job = Arc::new(Job {
            cancel: AtomicBool::new(false),
            state: Mutex::new(LuJob {
                kind: if scrub { "scrub" } else { "rebuild" }.into(),
                chn: self.shared().name.clone(),
                updated_ms: now_ms(),
                ..LuJob::default()
            }),
        });
        o.job = Some(job.clone());
        let dev = o.dev.clone();
        let limit = self.inner.rebuild_limit;
        let started = lock(&job.state).clone();
        tokio::task::spawn_blocking(move || {
            let update = |p: &jobs::Progress| {
                let mut s = lock(&job.state);
                s.done_bytes = p.done_bytes;
                s.total_bytes = p.total_bytes;
                s.bytes_per_sec = p.bytes_per_sec;
                s.eta_secs = p.eta_secs;
                s.updated_ms = now_ms();
            };
            let result = if scrub {
                jobs::scrub(&dev, repair, &job.cancel, |p, _| update(p)).map(|r| {
                    format!(
                        "checked {} stripes: {} inconsistent, {} repaired, {} skipped (degraded)",
                        r.stripes_checked, r.mismatches, r.repaired, r.skipped
                    )
                })
            } else {
                jobs::rebuild(&dev, &job.cancel, limit, update).map(|p| {
                    format!(
                        "rebuilt {} MiB of the new member at {:.1} MB/s of LU data",
                        p.total_bytes >> 20,
                        p.bytes_per_sec as f64 / 1e6
                    )
                })
            };
            let mut s = lock(&job.state);
            s.finished = true;
            s.updated_ms = now_ms();
            s.result = result.unwrap_or_else(|e| format!("failed: {e}"));
            tracing::info!(lu, "{} finished: {}", s.kind, s.result);
        });
        Ok(started)
    }

    /// Writes the LU's health and job progress into the LU table.
    async fn report(&self, lu: u32) {
        let Some(dev) = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone()) else {
            return;
        };
        // A rebuild or scrub holds the device for a while: wait for it off
        // the runtime, and never under the map lock the renewals need.
        let Ok(health) = tokio::task::spawn_blocking(move || dev.health()).await else {
            return;
        };
        let job = {
            let open = lock(&self.inner.open);
            let Some(o) = open.get(&lu) else { return };
            let job = o.job.as_ref().map(|j| lock(&j.state).clone());
            if job.is_none() && o.reported == Some(health) {
                return;
            }
            job
        };
        let finished = job.as_ref().is_some_and(|j| j.finished);
        let cmd = Kind::ReportLu(ReportLu {
            lu,
            health: health_proto(health) as i32,
            job,
        });
        match self.shared().write(Command { kind: Some(cmd) }).await {
            // Only a report that reached the table settles anything: a lost
            // one is simply sent again on the next tick.
            Ok(_) => {
                if let Some(o) = lock(&self.inner.open).get_mut(&lu) {
                    o.reported = Some(health);
                    if finished && o.job.as_ref().is_some_and(|j| lock(&j.state).finished) {
                        o.job = None;
                    }
                }
            }
            Err(e) => tracing::debug!(lu, "LU report not written: {}", e.message()),
        }
    }

    /// Until when a lock renewal sent at `sent` lets this CHN write: a
    /// fifth of the lease before it ends, to leave room for clock rates and
    /// scheduling delays.
    fn write_deadline(&self, sent: tokio::time::Instant) -> tokio::time::Instant {
        sent + self.inner.lease - self.inner.lease / 5
    }

    /// Closes an LU: nothing on this CHN writes it again, even through a
    /// device handle still in use. Returns the epoch it was held at.
    fn close(&self, lu: u32, why: &str) -> Option<u64> {
        let o = lock(&self.inner.open).remove(&lu)?;
        o.dev.fence().trip();
        if let Some(j) = o.job {
            j.cancel.store(true, Ordering::Relaxed);
        }
        tracing::warn!(lu, epoch = o.epoch, "closing LU: {why}");
        Some(o.epoch)
    }

    /// Closes an LU for a planned move and gives its lock up with `hand`
    /// (a command that releases the lock held at the given epoch).
    pub async fn hand_over(&self, lu: u32, hand: impl FnOnce(u64) -> Command) -> Result<CommandResult, Status> {
        let _opening = self.inner.opening.lock().await;
        let epoch = self.close(lu, "handed over").unwrap_or(0);
        self.shared().write(hand(epoch)).await
    }

    /// Whether this CHN has `lu` open and may write it.
    pub fn holds(&self, lu: u32) -> bool {
        lock(&self.inner.open)
            .get(&lu)
            .is_some_and(|o| !o.dev.fence().is_tripped())
    }

    /// The lease this CHN takes LU locks for.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Renews the locks of the open LUs every seventh of the lease and
    /// closes those whose lease ran out. A task of its own: nothing else
    /// (reports, a device busy with a rebuild) may delay a renewal.
    async fn renew_loop(self) {
        let mut tick = tokio::time::interval(self.inner.lease / 7);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open: Vec<(u32, Arc<LuDevice>)> = lock(&self.inner.open)
                .iter()
                .map(|(lu, o)| (*lu, o.dev.clone()))
                .collect();
            for (lu, dev) in open {
                let Some((sent, epoch)) = self.renew(lu, dev.fence()).await else {
                    continue;
                };
                let still_open = match lock(&self.inner.open).get_mut(&lu) {
                    Some(o) => {
                        o.renewed = sent;
                        true
                    }
                    None => false,
                };
                if !still_open {
                    tokio::spawn(self.clone().release_if_closed(lu, epoch));
                }
            }
            // Without a renewal (no quorum, say) the lease runs out and
            // another CHN may take the LU: the fence has stopped writes
            // already; close it so that the next use opens it afresh.
            let now = tokio::time::Instant::now();
            let expired: Vec<u32> = lock(&self.inner.open)
                .iter()
                .filter(|(_, o)| o.dev.fence().is_tripped() || now >= self.write_deadline(o.renewed))
                .map(|(lu, _)| *lu)
                .collect();
            for lu in expired {
                self.close(lu, "its lease ran out without renewal");
            }
        }
    }

    /// Renews the lock of `lu` and, when that worked, lets `fence` go on
    /// for another lease from the moment the renewal was sent. Returns that
    /// moment and the lock's epoch. A lock that another CHN took shuts the
    /// fence for good.
    async fn renew(&self, lu: u32, fence: &Fence) -> Option<(tokio::time::Instant, u64)> {
        let sent = tokio::time::Instant::now();
        match self.take_lock(lu).await {
            Ok(epoch) => {
                if sent.elapsed() > self.inner.lease / 5 {
                    tracing::warn!(lu, took_ms = sent.elapsed().as_millis() as u64, "slow LU lock renewal");
                }
                fence.extend(self.write_deadline(sent).into_std());
                Some((sent, epoch))
            }
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                fence.trip();
                self.close(lu, e.message());
                None
            }
            Err(e) => {
                tracing::warn!(lu, "LU lock not renewed: {}", e.message());
                None
            }
        }
    }

    /// Gives up a lock that a renewal took after the LU was closed (a
    /// renewal applied after a handover takes the freed lock again, which
    /// would keep the new owner waiting a lease).
    async fn release_if_closed(self, lu: u32, epoch: u64) {
        // Under the opening lock no open of this LU is half done, so an LU
        // missing from the map is really closed.
        let _opening = self.inner.opening.lock().await;
        if lock(&self.inner.open).contains_key(&lu) {
            return;
        }
        let cmd = Kind::ReleaseLuLock(ReleaseLuLock {
            lu,
            chn: self.shared().name.clone(),
            epoch,
        });
        if let Err(e) = self.shared().write(Command { kind: Some(cmd) }).await {
            tracing::debug!(lu, "lock of a closed LU not released: {}", e.message());
        }
    }

    async fn background(self, mut failures: mpsc::UnboundedReceiver<u32>) {
        let renewals = tokio::spawn(self.clone().renew_loop());
        let _stop_renewals = AbortOnDrop(renewals);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resumed = false;
        loop {
            tokio::select! {
                Some(disk) = failures.recv() => {
                    let cmd = Kind::SetDiskState(SetDiskState { disk, state: DiskState::DiskFailed as i32 });
                    if let Err(e) = self.shared().write(Command { kind: Some(cmd) }).await {
                        tracing::warn!(disk, "disk failure not recorded yet: {}", e.message());
                        let _ = self.inner.failures.send(disk);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                _ = tick.tick() => {
                    if !resumed {
                        resumed = self.resume_held().await;
                    }
                    let open: Vec<u32> = lock(&self.inner.open).keys().copied().collect();
                    for lu in open {
                        self.report(lu).await;
                    }
                }
            }
        }
    }

    /// After a restart: reopens the LUs whose lock this CHN still holds, so
    /// that crash recovery runs and an interrupted rebuild resumes.
    async fn resume_held(&self) -> bool {
        if self.inner.array_dir.is_none() || self.shared().ensure_current().await.is_err() {
            return self.inner.array_dir.is_none();
        }
        let mine: Vec<u32> = {
            let state = self.shared().state.read();
            state
                .tables
                .lu_locks
                .values()
                .filter(|l| l.chn == self.shared().name)
                .map(|l| l.lu)
                .collect()
        };
        for lu in mine {
            if let Err(e) = self.open_local(lu).await {
                tracing::warn!(lu, "cannot reopen LU: {}", e.message());
            }
        }
        true
    }

    /// Reads raw bytes of an LU open here.
    pub async fn read(dev: Arc<LuDevice>, offset: u64, len: usize) -> Result<Vec<u8>, Status> {
        blocking(move || {
            let mut buf = vec![0u8; len];
            dev.read_at(offset, &mut buf)?;
            Ok(buf)
        })
        .await
    }

    /// Writes raw bytes to an LU open here, flushing if asked.
    pub async fn write(dev: Arc<LuDevice>, offset: u64, data: Vec<u8>, flush: bool) -> Result<(), Status> {
        blocking(move || {
            dev.write_at(offset, &data)?;
            if flush {
                dev.flush()?;
            }
            Ok(())
        })
        .await
    }
}

/// Aborts a task when the task that spawned it ends or is aborted.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn pct(j: &LuJob) -> f64 {
    if j.total_bytes == 0 {
        0.0
    } else {
        j.done_bytes as f64 * 100.0 / j.total_bytes as f64
    }
}
