//! The shared LU's backup on the disk array, and disaster restore from it.
//!
//! The leader writes a copy of the tables to `<array>/shared-lu-backup`
//! after every snapshot and, when anything changed, at least every
//! `every`; any CHN writes one on demand (`nasctl shared-lu backup`) and
//! says what the location holds. A CHN that belongs to no shared LU can
//! start a new one from a copy (`nasctl cluster restore`).
//!
//! Owns the backup location. It must never write a copy of tables that
//! are not committed (the leader's applied state, or any CHN's once
//! `ensure_current` confirmed it), and never restore into a CHN that
//! already belongs to a shared LU.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::{ChnState, Command, PathTarget, RegisterChn, RestoreTables, SharedLuBackup};
use tokio::time::Instant;

use crate::array::disk::array_ids_in;
use crate::chn::Error;
use crate::rt::{lock, now_ms};
use crate::shared_lu::SharedLu;
use nas_proto::backup_file::{self as backup, Copy, Listed};

/// How often the leader looks whether a copy is due.
const TICK: Duration = Duration::from_secs(1);

/// This CHN's writer of shared LU copies.
#[derive(Clone)]
pub struct StateBackup {
    inner: Arc<Inner>,
}

struct Inner {
    lu: SharedLu,
    location: Option<PathBuf>,
    every: Option<Duration>,
    /// One copy at a time from this CHN.
    writing: tokio::sync::Mutex<()>,
    last: Mutex<Last>,
}

/// The last automatic copy this CHN wrote, and why the last one failed.
#[derive(Default)]
struct Last {
    index: u64,
    snapshot: Option<u64>,
    at: Option<Instant>,
    error: String,
}

/// What the backup location holds, as this CHN reads it.
pub struct Status {
    pub location: PathBuf,
    pub copies: Vec<Listed>,
    pub every: Option<Duration>,
    pub initialized: bool,
    pub last_error: String,
}

/// A new shared LU started from a copy.
pub struct Restored {
    pub copy: Copy,
    pub sessions_dropped: usize,
    pub file_locks_dropped: usize,
}

impl StateBackup {
    /// The writer, and the leader's loop that writes copies when due.
    /// Without an array directory there is no location and nothing runs.
    pub fn new(
        lu: SharedLu,
        array: Option<PathBuf>,
        every: Option<Duration>,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let this = StateBackup {
            inner: Arc::new(Inner {
                lu,
                location: array.map(|a| a.join(backup::ARRAY_FOLDER)),
                every,
                writing: tokio::sync::Mutex::new(()),
                last: Mutex::new(Last::default()),
            }),
        };
        (this.clone(), this.run())
    }

    fn lu(&self) -> &SharedLu {
        &self.inner.lu
    }

    /// The backup location on the disk array.
    pub fn location(&self) -> Result<&Path, Error> {
        self.inner.location.as_deref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "CHN {} was started without --array, so it has no backup location; restart it with the disk-array directory",
                self.lu().name
            ))
        })
    }

    /// Whether this CHN may write the backup: the backup is initialized
    /// and the path table gives this CHN a path to it.
    fn writable(&self) -> Result<(), Error> {
        self.location()?;
        let me = self.lu().name.clone();
        let (initialized, path) = self.lu().read(|t| {
            let key = (me.clone(), PathTarget::PathSharedLuBackup as i32, 0);
            (t.shared_lu.backup_initialized, t.paths.contains_key(&key))
        });
        if !initialized {
            return Err(Error::FailedPrecondition(
                "the shared LU backup is not initialized; run `nasctl shared-lu init`".into(),
            ));
        }
        if !path {
            return Err(Error::FailedPrecondition(format!(
                "CHN {me} has no path to the shared LU backup; run `nasctl path add {me} --to backup`"
            )));
        }
        Ok(())
    }

    /// Writes a copy of this CHN's applied tables.
    async fn write(&self) -> Result<Copy, Error> {
        let location = self.location()?.to_path_buf();
        let _one = self.inner.writing.lock().await;
        let (tables, log_index, log_term) = self.lu().copy_with_position();
        let copy = SharedLuBackup {
            array_id: tables
                .shared_lu
                .as_ref()
                .map(|s| s.array_id.clone())
                .unwrap_or_default(),
            log_index,
            log_term,
            taken_ms: now_ms(),
            taken_by: self.lu().name.clone(),
            tables: Some(tables),
        };
        let writer = self.lu().name.clone();
        Ok(tokio::task::spawn_blocking(move || backup::write(&location, &copy, &writer)).await??)
    }

    /// A copy now, of tables confirmed current with the leader.
    pub async fn backup_now(&self) -> Result<Copy, Error> {
        self.lu().ensure_current().await?;
        self.writable()?;
        self.write().await
    }

    /// The copies in the backup location, each read and checked.
    pub async fn status(&self) -> Result<Status, Error> {
        let location = self.location()?.to_path_buf();
        let dir = location.clone();
        let copies = tokio::task::spawn_blocking(move || backup::list(&dir)).await??;
        Ok(Status {
            location,
            copies,
            every: self.inner.every,
            initialized: self.lu().read(|t| t.shared_lu.backup_initialized),
            last_error: lock(&self.inner.last).error.clone(),
        })
    }

    /// Refuses to start a new, empty shared LU over a disk array that holds
    /// copies of one: after losing every data directory, `cluster up` would
    /// otherwise quietly begin a new cluster next to the old one's data.
    pub fn refuse_bootstrap_over_backup(&self) -> Result<(), Error> {
        let Some(location) = &self.inner.location else {
            return Ok(());
        };
        let listed = backup::list(location)?;
        if listed.is_empty() {
            return Ok(());
        }
        let newest = match listed.into_iter().find_map(|l| l.copy.ok()) {
            Some(c) => format!(
                "newest: log index {}, written {} s ago by {}",
                c.backup.log_index,
                now_ms().saturating_sub(c.backup.taken_ms) / 1000,
                c.backup.taken_by
            ),
            None => "none of them reads back whole".into(),
        };
        Err(Error::FailedPrecondition(format!(
            "the disk array holds copies of a cluster's shared LU in {} ({newest}); to bring that cluster back run \
             `nasctl cluster restore`; to start a new cluster over this array anyway, move that folder away first",
            location.display()
        )))
    }

    /// Starts a new shared LU on this CHN from `image` (bytes of a copy),
    /// or from the newest good copy in the backup location.
    pub async fn restore(&self, image: Option<Vec<u8>>, force: bool) -> Result<Restored, Error> {
        let lu = self.lu();
        if lu.is_initialized().await? {
            return Err(Error::FailedPrecondition(format!(
                "CHN {} already belongs to a shared LU; a backup is restored only onto CHNs started with empty \
                 --data directories (stop every nasd, move their data directories away, start them, then restore)",
                lu.name
            )));
        }
        let copy = match image {
            Some(bytes) => backup::decode(Path::new("the uploaded copy"), &bytes)?,
            None => {
                let location = self.location()?.to_path_buf();
                tokio::task::spawn_blocking(move || backup::newest_good(&location)).await??
            }
        };
        self.check_array(&copy, force)?;
        let tables = copy.backup.tables.clone().unwrap_or_default();
        let (sessions_dropped, file_locks_dropped) = (tables.clients.len(), tables.file_locks.len());
        lu.bootstrap().await?;
        let started = "a new shared LU was started on this CHN, but";
        let write = |kind| async move {
            lu.write(Command { kind: Some(kind) }).await.map_err(|e| {
                Error::Internal(format!(
                    "{started} filling it failed ({e}); stop this nasd, empty its --data directory and restore again"
                ))
            })
        };
        write(Kind::RestoreTables(RestoreTables {
            tables: Some(tables),
            now_ms: now_ms(),
        }))
        .await?;
        write(Kind::RegisterChn(RegisterChn {
            chn: lu.name.clone(),
            node_id: lu.id,
            address: lu.addr.clone(),
            state: ChnState::ChnInstalled as i32,
        }))
        .await?;
        // CHNs that join next get the tables as one snapshot, and the
        // new group's first copy follows from it.
        if let Err(e) = lu.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "no snapshot after the restore; the next one comes with the log");
        }
        tracing::info!(
            index = copy.backup.log_index,
            taken_by = %copy.backup.taken_by,
            from = %copy.path.display(),
            "shared LU restored from a backup; changes after its index are not in it"
        );
        Ok(Restored {
            copy,
            sessions_dropped,
            file_locks_dropped,
        })
    }

    /// A copy made for another disk array than the one this CHN sees is
    /// another cluster's: restoring it would point LUs at strangers' disks.
    fn check_array(&self, copy: &Copy, force: bool) -> Result<(), Error> {
        let (Ok(location), false) = (self.location(), copy.backup.array_id.is_empty() || force) else {
            return Ok(());
        };
        let Some(array) = location.parent() else {
            return Ok(());
        };
        let found = array_ids_in(array);
        let wanted = u128::from_str_radix(&copy.backup.array_id, 16).ok();
        if found.is_empty() || wanted.is_some_and(|w| found.contains(&w)) {
            return Ok(());
        }
        let found: Vec<String> = found.iter().map(|id| format!("{id:032x}")).collect();
        Err(Error::FailedPrecondition(format!(
            "{} was made for disk array {}, but the disks in {} belong to {}: it is another cluster's backup; \
             give --force to restore it anyway",
            copy.path.display(),
            copy.backup.array_id,
            array.display(),
            found.join(", ")
        )))
    }

    /// Whether an automatic copy is due: this CHN leads, and a snapshot
    /// was built, or the tables changed and `every` has passed, since the
    /// last copy.
    fn due(&self) -> Option<(u64, Option<u64>)> {
        let m = self.lu().raft.metrics().borrow().clone();
        if m.current_leader != Some(self.lu().id) {
            return None;
        }
        let index = m.last_applied.map_or(0, |l| l.index);
        let snapshot = m.snapshot.map(|l| l.index);
        let last = lock(&self.inner.last);
        let due = match last.at {
            None => true,
            Some(at) => {
                snapshot != last.snapshot
                    || (index > last.index && self.inner.every.is_some_and(|every| at.elapsed() >= every))
            }
        };
        due.then_some((index, snapshot))
    }

    async fn run(self) {
        if self.inner.location.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some((index, snapshot)) = self.due() else {
                continue;
            };
            let result = match self.writable() {
                Ok(()) => self.write().await,
                Err(e) => Err(e),
            };
            let mut last = lock(&self.inner.last);
            match result {
                Ok(copy) => {
                    tracing::debug!(index = copy.backup.log_index, file = %copy.path.display(), "shared LU backup written");
                    *last = Last {
                        index,
                        snapshot,
                        at: Some(Instant::now()),
                        error: String::new(),
                    };
                }
                Err(e) => {
                    let error = e.to_string();
                    if error != last.error {
                        tracing::warn!(error = %error, "shared LU backup not written");
                    }
                    last.error = error;
                }
            }
        }
    }
}
