//! The exports this CHN serves: for each, the file system mounted on the
//! export's LU, opened through the LU host (so under the LU lock).
//!
//! A call for an export that another CHN owns is answered UNAVAILABLE with
//! the owner's address in `x-nas-owner`, which the client library follows.
//! When the LU host reopens an LU (its lock was lost and taken again), the
//! old mount is dropped and the file system mounted afresh. A planned move
//! turns new calls away, lets the calls in progress finish, and unmounts
//! before the LU lock is handed over.
//!
//! Owns the mounted volumes; must never mount an LU it did not get from
//! the LU host.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::Export;

use crate::array::{BlockDevice, LuDevice};
use crate::chn::lu_host::{LuHost, Route};
use crate::chn::Error;
use crate::fs::Volume;
use crate::shared_lu::SharedLu;

struct Mounted {
    dev: Arc<LuDevice>,
    vol: Arc<Volume>,
}

/// This CHN's mounted exports; cheap to clone.
#[derive(Clone)]
pub struct Exports {
    shared: SharedLu,
    host: LuHost,
    mounted: Arc<Mutex<HashMap<String, Mounted>>>,
    mounting: Arc<tokio::sync::Mutex<()>>,
    /// Exports being handed to another CHN: new calls wait (UNAVAILABLE,
    /// which clients retry) while the calls in progress finish.
    moving: Arc<Mutex<HashSet<String>>>,
}

impl Exports {
    pub fn new(shared: SharedLu, host: LuHost) -> Self {
        Exports {
            shared,
            host,
            mounted: Arc::default(),
            mounting: Arc::default(),
            moving: Arc::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mounted>> {
        self.mounted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volume mounted for `export` on `dev`, if that is the one.
    fn current(&self, export: &str, dev: &Arc<LuDevice>) -> Option<Arc<Volume>> {
        let map = self.map();
        map.get(export)
            .filter(|m| Arc::ptr_eq(&m.dev, dev))
            .map(|m| m.vol.clone())
    }

    /// The export's row in the service table.
    pub async fn export(&self, name: &str) -> Result<Export, Error> {
        let mut row = self.shared.export(name);
        if row.is_none() {
            self.shared.ensure_current().await?;
            row = self.shared.export(name);
        }
        row.ok_or_else(|| Error::NotFound(format!("export {name} does not exist; see `nasctl export list`")))
    }

    /// The mounted file system of `export`, mounting it if this CHN owns
    /// the export and it is not mounted yet.
    pub async fn volume(&self, export: &Export) -> Result<Arc<Volume>, Error> {
        if export.owner_chn != self.shared.name {
            let addr = self.shared.address_of(&export.owner_chn);
            return Err(Error::Elsewhere {
                message: format!(
                    "export {} is served by CHN {} at {addr}; connect there",
                    export.name, export.owner_chn
                ),
                addr,
            });
        }
        if self
            .moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&export.name)
        {
            return Err(Error::Unavailable(format!(
                "export {} is moving to another CHN; retry shortly",
                export.name
            )));
        }
        let dev = match self.host.route(export.lu).await? {
            Route::Local(dev) => dev,
            // This CHN serves the export; another still holds its LU (its
            // lease has not run out). Naming that CHN would send the client
            // back and forth: it is to retry here.
            Route::Remote(chn, _) => {
                return Err(Error::Unavailable(format!(
                    "LU {} of export {} is still held by CHN {chn}; retry shortly",
                    export.lu, export.name
                )))
            }
        };
        if let Some(vol) = self.current(&export.name, &dev) {
            return Ok(vol);
        }
        let _one_at_a_time = self.mounting.lock().await;
        if let Some(vol) = self.current(&export.name, &dev) {
            return Ok(vol);
        }
        // The LU was reopened: the old mount must be gone before the file
        // system is opened again.
        let old = self.map().remove(&export.name);
        if let Some(old) = old {
            drop_blocking(old.vol).await;
        }
        let block: Arc<dyn BlockDevice> = dev.clone();
        // Every log line of this file system (its writer thread's too)
        // names the export and its LU.
        let span = tracing::info_span!("fs", export = %export.name, lu = export.lu);
        let vol = tokio::task::spawn_blocking(move || span.in_scope(|| Volume::mount(block)))
            .await?
            .map_err(|e| {
                if dev.fence().is_tripped() {
                    // The lease ran out mid-mount: nothing is wrong with the
                    // file system, only with this attempt.
                    return Error::Unavailable(format!(
                        "export {}: the LU lease ran out while mounting; retry",
                        export.name
                    ));
                }
                Error::Mount {
                    export: export.name.clone(),
                    source: e,
                }
            })?;
        let vol = Arc::new(vol);
        tracing::info!(export = %export.name, lu = export.lu, "export mounted");
        let lost = dev.lost_ranges();
        let mapped = vol.clone();
        match tokio::task::spawn_blocking(move || mapped.files_at(&lost)).await? {
            Ok(files) => self.host.report_lost(export.lu, files).await,
            Err(e) => tracing::warn!(export = %export.name, "cannot tell which files the lost regions hold: {e}"),
        }
        self.map()
            .insert(export.name.clone(), Mounted { dev, vol: vol.clone() });
        Ok(vol)
    }
}

impl Exports {
    /// Stops serving `export` for a planned move: new calls are turned
    /// away, calls that wait on their clients are cut off (they answer
    /// UNAVAILABLE, and the clients send them again to the new owner), the
    /// other calls in progress get up to `drain` to finish, then the
    /// file system is unmounted (its writer commits what it has) and
    /// `release` runs before calls are let in again, which then find the
    /// export served elsewhere.
    pub async fn unmount_for<T>(
        &self,
        export: &str,
        drain: Duration,
        release: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(export.to_string());
        let result = async {
            let _one_at_a_time = self.mounting.lock().await;
            let deadline = tokio::time::Instant::now() + drain;
            let mounted = self.map().remove(export);
            if let Some(m) = mounted {
                // Calls in progress hold the volume; those waiting on their
                // clients give up now, the others are waited out.
                m.vol.close_calls();
                while Arc::strong_count(&m.vol) > 1 {
                    if tokio::time::Instant::now() >= deadline {
                        self.map().insert(export.to_string(), m);
                        return Err(Error::TimedOut(format!(
                            "calls on export {export} did not finish within {} s; try the move again",
                            drain.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                drop_blocking(m.vol).await;
            }
            release.await
        }
        .await;
        self.moving.lock().unwrap_or_else(|p| p.into_inner()).remove(export);
        result
    }

    /// Unmounts every export (a clean stop): each volume's writer ends
    /// its queue and closes its database.
    pub async fn unmount_all(&self) {
        let all: Vec<Mounted> = self.map().drain().map(|(_, m)| m).collect();
        for m in all {
            drop_blocking(m.vol).await;
        }
    }

    /// Whether `export` is mounted on this CHN.
    pub fn is_mounted(&self, export: &str) -> bool {
        self.map().contains_key(export)
    }
}

/// Drops a volume off the runtime: unmounting waits for its writer.
async fn drop_blocking(vol: Arc<Volume>) {
    let _ = tokio::task::spawn_blocking(move || drop(vol)).await;
}
