//! LU locks (leases with fencing epochs) and file locks (held by sessions).

use super::*;

impl Tables {
    /// Frees an LU lock but keeps its epoch: the LU superblock carries the
    /// highest epoch it was opened with, and the next holder must exceed it.
    pub(super) fn release(&mut self, lu: u32) {
        if let Some(l) = self.lu_locks.get_mut(&lu) {
            l.chn.clear();
            l.lease_expiry_ms = 0;
        }
    }

    pub(super) fn acquire_lu_lock(&mut self, c: &AcquireLuLock) -> Result<Applied, Rejection> {
        if c.lu != 0 && !self.lus.contains_key(&c.lu) {
            return reject(RejectKind::NotFound, format!("LU {} does not exist", c.lu));
        }
        self.live_chn(&c.chn, "locking")?;
        if c.lease_ms == 0 {
            return reject(RejectKind::InvalidArgument, "lease must be longer than 0 ms");
        }
        let epoch = match self.lu_locks.get(&c.lu) {
            Some(l) if l.chn == c.chn => l.epoch,
            Some(l) if l.lease_expiry_ms > c.now_ms => {
                return reject(
                    RejectKind::LockHeld,
                    format!(
                        "LU {} is locked by CHN {} for {} ms more",
                        c.lu,
                        l.chn,
                        l.lease_expiry_ms - c.now_ms
                    ),
                );
            }
            Some(l) => l.epoch + 1,
            None => 1,
        };
        let lock = LuLock {
            lu: c.lu,
            chn: c.chn.clone(),
            epoch,
            lease_expiry_ms: c.now_ms.saturating_add(c.lease_ms),
        };
        self.lu_locks.insert(c.lu, lock);
        Ok(Applied {
            assigned: epoch,
            touched: vec![RowKey::LuLock(c.lu)],
        })
    }

    pub(super) fn release_lu_lock(&mut self, c: &ReleaseLuLock) -> Result<Applied, Rejection> {
        match self.lu_locks.get(&c.lu) {
            Some(l) if l.chn == c.chn && l.epoch == c.epoch => {
                self.release(c.lu);
                Ok(Applied::rows(vec![RowKey::LuLock(c.lu)]))
            }
            Some(l) => reject(
                RejectKind::LockHeld,
                format!(
                    "LU {} is held by CHN {} at epoch {}, not by {} at {}",
                    c.lu, l.chn, l.epoch, c.chn, c.epoch
                ),
            ),
            None => reject(RejectKind::NotFound, format!("LU {} is not locked", c.lu)),
        }
    }

    pub(super) fn acquire_file_lock(&mut self, c: &AcquireFileLock) -> Result<Applied, Rejection> {
        if !self.exports.contains_key(&c.export) {
            return reject(RejectKind::NotFound, format!("export {} does not exist", c.export));
        }
        if c.path.is_empty() || c.session.is_empty() {
            return reject(RejectKind::InvalidArgument, "file lock needs a path and a session");
        }
        if !self.clients.contains_key(&c.session) {
            return reject(
                RejectKind::SessionEnded,
                format!("session {} has ended; open a new session", c.session),
            );
        }
        let mode = LockMode::try_from(c.mode).unwrap_or(LockMode::Unspecified);
        if mode == LockMode::Unspecified {
            return reject(RejectKind::InvalidArgument, "lock mode must be shared or exclusive");
        }
        let key = (c.export.clone(), c.path.clone());
        // Work on a copy so that a refused lock leaves the table untouched.
        let mut row = self.file_locks.get(&key).cloned().unwrap_or_else(|| FileLock {
            export: c.export.clone(),
            path: c.path.clone(),
            holders: vec![],
        });
        row.holders
            .retain(|h| h.lease_expiry_ms > c.now_ms || h.session == c.session);
        let conflict = row.holders.iter().find(|h| {
            h.session != c.session && (mode == LockMode::LockExclusive || h.mode == LockMode::LockExclusive as i32)
        });
        if let Some(h) = conflict {
            return reject(
                RejectKind::FailedPrecondition,
                format!("{}:{} is locked by session {}", c.export, c.path, h.session),
            );
        }
        let expiry = c.now_ms.saturating_add(c.lease_ms);
        match row.holders.iter_mut().find(|h| h.session == c.session) {
            Some(h) => {
                h.mode = mode as i32;
                h.lease_expiry_ms = expiry;
            }
            None => row.holders.push(FileLockHolder {
                session: c.session.clone(),
                mode: mode as i32,
                lease_expiry_ms: expiry,
            }),
        }
        self.file_locks.insert(key.clone(), row);
        Ok(Applied::rows(vec![RowKey::FileLock(key)]))
    }

    pub(super) fn release_file_lock(&mut self, c: &ReleaseFileLock) -> Result<Applied, Rejection> {
        let key = (c.export.clone(), c.path.clone());
        let Some(row) = self.file_locks.get_mut(&key) else {
            return reject(RejectKind::NotFound, format!("{}:{} is not locked", c.export, c.path));
        };
        let before = row.holders.len();
        row.holders.retain(|h| !c.all_holders && h.session != c.session);
        if row.holders.len() == before {
            return reject(
                RejectKind::NotFound,
                format!("session {} holds no lock on {}:{}", c.session, c.export, c.path),
            );
        }
        if row.holders.is_empty() {
            self.file_locks.remove(&key);
        }
        Ok(Applied::rows(vec![RowKey::FileLock(key)]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn lu_locks_fence_with_rising_epochs() {
        let mut t = with_array(2);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        register(&mut t, "CHN1", 1);
        register(&mut t, "CHN5", 5);
        let acquire = |chn: &str, now: u64| {
            cmd(Kind::AcquireLuLock(AcquireLuLock {
                lu: 1,
                chn: chn.into(),
                lease_ms: 1000,
                now_ms: now,
            }))
        };
        assert_eq!(t.apply(&acquire("CHN1", 10_000)).unwrap().assigned, 1);
        rejected_with(
            &mut t,
            acquire("CHN5", 10_500),
            RejectKind::LockHeld,
            "locked by CHN CHN1",
        );
        assert_eq!(
            t.apply(&acquire("CHN5", 11_001)).unwrap().assigned,
            2,
            "taker after expiry bumps the epoch"
        );
        let release = |chn: &str, epoch: u64| {
            cmd(Kind::ReleaseLuLock(ReleaseLuLock {
                lu: 1,
                chn: chn.into(),
                epoch,
            }))
        };
        rejected_with(&mut t, release("CHN1", 1), RejectKind::LockHeld, "held by CHN CHN5");
        t.apply(&release("CHN5", 2)).unwrap();
        assert_eq!(
            t.apply(&acquire("CHN1", 12_000)).unwrap().assigned,
            3,
            "a released lock keeps its epoch: the LU superblock says 2"
        );
    }

    #[test]
    fn file_locks_conflict_and_expire() {
        let mut t = with_array(2);
        t.apply(&lu(RaidLevel::Raid1, &[1, 2])).unwrap();
        register(&mut t, "CHN1", 1);
        t.apply(&cmd(Kind::CreateExport(CreateExport {
            export: Some(Export {
                name: "home".into(),
                lu: 1,
                owner_chn: "CHN1".into(),
                ..Default::default()
            }),
        })))
        .unwrap();
        let lock = |session: &str, mode: LockMode, now: u64| {
            cmd(Kind::AcquireFileLock(AcquireFileLock {
                export: "home".into(),
                path: "/a".into(),
                session: session.into(),
                mode: mode as i32,
                lease_ms: 100,
                now_ms: now,
            }))
        };
        rejected_with(
            &mut t,
            lock("s1", LockMode::LockShared, 0),
            RejectKind::SessionEnded,
            "open a new session",
        );
        for s in ["s1", "s2", "s3"] {
            t.apply(&cmd(Kind::UpsertClient(UpsertClient {
                client: Some(Client {
                    client_id: s.into(),
                    lease_ms: 100,
                    ..Default::default()
                }),
            })))
            .unwrap();
        }
        t.apply(&lock("s1", LockMode::LockShared, 0)).unwrap();
        t.apply(&lock("s2", LockMode::LockShared, 0)).unwrap();
        rejected_with(
            &mut t,
            lock("s3", LockMode::LockExclusive, 50),
            RejectKind::FailedPrecondition,
            "locked by session",
        );
        // s1 is heard of again: its hold lives on, s2's runs out.
        t.apply(&cmd(Kind::TouchClients(TouchClients {
            client_ids: vec!["s1".into(), "gone".into()],
            now_ms: 90,
        })))
        .unwrap();
        rejected_with(
            &mut t,
            lock("s3", LockMode::LockExclusive, 150),
            RejectKind::FailedPrecondition,
            "locked by session s1",
        );
        let ended = t
            .apply(&cmd(Kind::ExpireClients(ExpireClients { now_ms: 150 })))
            .unwrap();
        assert_eq!(ended.assigned, 2, "s2 and s3 were last seen at 0");
        assert!(!t.clients.contains_key("s2"));
        let key = ("home".to_string(), "/a".to_string());
        assert_eq!(t.file_locks[&key].holders.len(), 1);
        // Closing s1's session releases its lock.
        t.apply(&cmd(Kind::RemoveClient(RemoveClient { client_id: "s1".into() })))
            .unwrap();
        assert!(!t.file_locks.contains_key(&key));
    }
}
