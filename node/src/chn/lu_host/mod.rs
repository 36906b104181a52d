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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;
use tokio::sync::mpsc;

use crate::array::fence::Fence;
use crate::array::{Array, ArrayError, LuDevice, LuHealth as Health, LuSpec, OpenOptions, Raid};
use crate::chn::Error;
use crate::rt::{lock, now_ms};
use crate::shared_lu::SharedLu;

mod io;
mod jobs;
mod lease;
mod report;

/// Where calls for an LU are served.
pub enum Route {
    Local(Arc<LuDevice>),
    /// Another CHN holds the LU lock: (CHN name, address).
    Remote(String, String),
}

struct Opened {
    dev: Arc<LuDevice>,
    job: Option<Arc<jobs::Job>>,
    reported: Option<Health>,
    /// When the last renewal that succeeded was sent.
    renewed: tokio::time::Instant,
    epoch: u64,
    /// When this CHN opened the LU: the first scheduled scrub counts from
    /// here when the table records none.
    opened: tokio::time::Instant,
    /// Checksum errors per disk already added to the disk table.
    errors_reported: HashMap<u32, u64>,
    /// What the lost regions hold, found at mount and not yet in the LU
    /// table.
    lost_unreported: Option<Vec<String>>,
}

/// How rebuilds and scrubs run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maintenance {
    /// Bytes of LU data per second, at most.
    pub rebuild_limit: Option<u64>,
    pub scrub_limit: Option<u64>,
    /// How often each LU held here is scrubbed; `None`: only on demand.
    pub scrub_every: Option<Duration>,
}

struct HostInner {
    shared: SharedLu,
    array_dir: Option<PathBuf>,
    lease: Duration,
    maintenance: Maintenance,
    open: Mutex<HashMap<u32, Opened>>,
    /// LUs this process has opened at some point: a lock it holds on one
    /// of them is this life's, not one to resume after a restart.
    opened_before: Mutex<std::collections::HashSet<u32>>,
    opening: tokio::sync::Mutex<()>,
    failures: mpsc::UnboundedSender<u32>,
    events: crate::chn::events::Events,
}

/// This CHN's LU host; cheap to clone.
#[derive(Clone)]
pub struct LuHost {
    inner: Arc<HostInner>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ArrayError> + Send + 'static) -> Result<T, Error> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

impl LuHost {
    /// Creates the host and the task that must run beside it (failure
    /// reports, lease renewal, progress reports, resuming after a restart).
    pub fn new(
        shared: SharedLu,
        array_dir: Option<PathBuf>,
        lease: Duration,
        maintenance: Maintenance,
        events: crate::chn::events::Events,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = Self {
            inner: Arc::new(HostInner {
                shared,
                array_dir,
                lease,
                maintenance,
                open: Mutex::new(HashMap::new()),
                opened_before: Mutex::default(),
                opening: tokio::sync::Mutex::new(()),
                failures: tx,
                events,
            }),
        };
        let bg = host.clone().background(rx);
        (host, bg)
    }

    fn shared(&self) -> &SharedLu {
        &self.inner.shared
    }

    /// The disk-array directory this CHN was started with.
    fn array_dir(&self) -> Result<PathBuf, Error> {
        self.inner.array_dir.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "CHN {} was started without --array; restart it with the disk-array directory",
                self.shared().name
            ))
        })
    }

    fn array(&self) -> Result<Array, Error> {
        let dir = self.array_dir()?;
        let id = u128::from_str_radix(&self.shared().array_id(), 16).map_err(|_| {
            Error::FailedPrecondition("the disk array is not initialized; run `nasctl array init`".into())
        })?;
        Ok(Array::new(dir, id))
    }

    /// Creates the disk files, then records them in the disk table. The
    /// table's own rules are checked first, so that a refused command
    /// leaves no file behind.
    pub async fn init_array(&self, disks: u32, capacity: u64) -> Result<CommandResult, Error> {
        self.shared().ensure_current().await?;
        let dir = self.array_dir()?;
        let id: u128 = rand::random();
        let cmd = InitArray {
            disks,
            disk_capacity_bytes: capacity,
            array_id: format!("{id:032x}"),
        };
        self.shared().check_init_array(&cmd)?;
        let array = Array::new(dir, id);
        blocking(move || array.create_disks(disks, capacity)).await?;
        Ok(self
            .shared()
            .write(Command {
                kind: Some(Kind::InitArray(cmd)),
            })
            .await?)
    }

    /// Records a new LU, formats its block device on this CHN, and closes
    /// it again, leaving its lock free.
    pub async fn create_lu(&self, req: CreateLu) -> Result<CommandResult, Error> {
        // The array may have been set up through another CHN a moment ago.
        self.shared().ensure_current().await?;
        self.array()?;
        let r = self
            .shared()
            .write(Command {
                kind: Some(Kind::CreateLu(req)),
            })
            .await?;
        let lu = r.assigned as u32;
        self.open_local(lu).await?;
        // Formatting needed the lock; serving the LU is the business of the
        // CHN an export names, which must not find it held here.
        let chn = self.shared().name.clone();
        self.hand_over(lu, |epoch| Command {
            kind: Some(Kind::ReleaseLuLock(ReleaseLuLock { lu, chn, epoch })),
        })
        .await?;
        Ok(r)
    }

    /// The LU's layout from tables at least as new as our last write.
    async fn spec(&self, lu: u32) -> Result<(LuSpec, i32), Error> {
        self.shared().ensure_current().await?;
        let (row, disk_capacity) = self
            .shared()
            .lu_with_disk_capacity(lu)
            .ok_or_else(|| Error::NotFound(format!("LU {lu} does not exist; see `nasctl lu list`")))?;
        let raid = match RaidLevel::try_from(row.raid) {
            Ok(RaidLevel::Raid1) => Raid::Mirror,
            _ => Raid::Parity,
        };
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

    /// Opens (or formats, if it never was) an LU on this CHN under its lock.
    async fn open_local(&self, lu: u32) -> Result<Arc<LuDevice>, Error> {
        // One opener at a time: two devices over the same disks would each
        // run crash recovery and write without seeing the other.
        let _opening = self.inner.opening.lock().await;
        if let Some(o) = lock(&self.inner.open).get(&lu) {
            return Ok(o.dev.clone());
        }
        let array = self.array()?;
        let sent = tokio::time::Instant::now();
        lock(&self.inner.opened_before).insert(lu);
        let epoch = self.take_lock(lu).await?;
        let fence = Arc::new(Fence::until(self.write_deadline(sent).into_std()));
        let (spec, health) = self.spec(lu).await?;
        let tx = self.inner.failures.clone();
        let opts = OpenOptions {
            epoch,
            on_member_failure: Some(Arc::new(move |disk| {
                let _ = tx.send(disk);
            })),
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
                dev = &mut opening => match dev {
                    Err(Error::Array(e @ ArrayError::LuFailed { .. })) => {
                        self.report_failed(lu).await;
                        return Err(Error::Array(e));
                    }
                    dev => break dev?,
                },
                _ = tick.tick() => {
                    if let Some((at, _)) = self.renew(lu, &fence).await {
                        renewed = at;
                    }
                }
            }
        };
        if fence.is_tripped() {
            return Err(Error::Unavailable(format!(
                "LU {lu}: this CHN lost the LU lock while opening it (another CHN took it, or the lease ran out); retry"
            )));
        }
        let dev = Arc::new(dev);
        self.adopt_replacements(&dev, &spec).await?;
        let resume = self
            .shared()
            .lu_with_disk_capacity(lu)
            .and_then(|(l, _)| l.job)
            .is_some_and(|j| j.kind == "rebuild" && !j.finished);
        lock(&self.inner.open).entry(lu).or_insert(Opened {
            dev: dev.clone(),
            job: None,
            reported: None,
            renewed,
            epoch,
            errors_reported: HashMap::new(),
            opened: tokio::time::Instant::now(),
            lost_unreported: None,
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
    async fn adopt_replacements(&self, dev: &Arc<LuDevice>, spec: &LuSpec) -> Result<(), Error> {
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
            blocking(move || d.replace_member(old, array.open_member(new, cap)?)).await?;
        }
        Ok(())
    }

    /// Applies a `disk replace` the table just recorded to the open device.
    pub async fn adopt(&self, lu: u32) -> Result<(), Error> {
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
    pub async fn route(&self, lu: u32) -> Result<Route, Error> {
        let open = lock(&self.inner.open).get(&lu).map(|o| o.dev.clone());
        if let Some(dev) = open {
            // Past its lease this CHN must not even read: another CHN may
            // have changed the LU since.
            if dev.fence().check(lu).is_ok() {
                return Ok(Route::Local(dev));
            }
            self.close_lost(lu, "its lease ran out without renewal");
        }
        self.shared().ensure_current().await?;
        // An exported LU that nobody holds is left to the export's owner:
        // opening it here would lock the owner out of its own file system.
        let holder = self
            .shared()
            .lu_server(lu, now_ms())?
            .filter(|chn| *chn != self.shared().name)
            .and_then(|chn| self.shared().daemon(&chn).map(|d| (chn, d.address)));
        match holder {
            Some((chn, addr)) => Ok(Route::Remote(chn, addr)),
            None => Ok(Route::Local(self.open_local(lu).await?)),
        }
    }

    /// The operator's `disk fail`: fails the member in its open LU (the
    /// failure report then marks the disk FAILED) or just marks the disk.
    pub async fn fail_disk(&self, dev: Option<Arc<LuDevice>>, disk: u32) -> Result<CommandResult, Error> {
        if let Some(dev) = dev {
            let lu = dev.lu();
            // A second failure fails the LU; that is recorded, not refused.
            if let Err(e) = blocking(move || dev.fail_member(disk)).await {
                tracing::warn!(lu, disk, "{}", e);
            }
            self.report(lu).await;
        }
        let cmd = Kind::SetDiskState(SetDiskState {
            disk,
            state: DiskState::DiskFailed as i32,
        });
        Ok(self.shared().write(Command { kind: Some(cmd) }).await?)
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
}
