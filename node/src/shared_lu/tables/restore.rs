//! Filling a new shared LU from a backup: which parts of a copy come back
//! and which are dropped.

use super::*;

impl Tables {
    /// Replaces every table with a backup's. Sessions and file locks were
    /// held by processes that are gone, so they are dropped rather than
    /// half-restored; LU locks keep their epochs (a taker must still move
    /// past them) but their leases are over; heartbeats count from the
    /// restore, so failover judges each CHN afresh instead of at once.
    pub(super) fn restore(&mut self, c: &RestoreTables) -> Result<Applied, Rejection> {
        if !self.users.is_empty() || !self.shared_lu.token_key.is_empty() {
            return reject(
                RejectKind::FailedPrecondition,
                "this shared LU already has users and keys; a backup is restored only into a new one \
                 (`nasctl cluster restore` on CHNs with empty data directories)",
            );
        }
        let Some(tables) = &c.tables else {
            return reject(RejectKind::InvalidArgument, "the restore carries no tables");
        };
        let mut restored = Tables::from_proto(tables.clone());
        restored.clients.clear();
        restored.file_locks.clear();
        for lock in restored.lu_locks.values_mut() {
            lock.lease_expiry_ms = 0;
        }
        restored.end_restored_jobs();
        for daemon in restored.daemons.values_mut() {
            daemon.heartbeat_ms = c.now_ms;
        }
        let mut touched: BTreeSet<RowKey> = self.all_rows().iter().map(Row::key).collect();
        touched.extend(restored.all_rows().iter().map(Row::key));
        *self = restored;
        Ok(Applied::rows(touched.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn backup() -> nas_proto::Tables {
        let mut t = with_array(3);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        register(&mut t, "CHN1", 1);
        t.users.insert(
            "alice".into(),
            User {
                name: "alice".into(),
                ..Default::default()
            },
        );
        t.shared_lu.token_key = vec![7; 32];
        t.clients.insert(
            "c1".into(),
            Client {
                client_id: "c1".into(),
                ..Default::default()
            },
        );
        t.file_locks.insert(
            ("home".into(), "/a".into()),
            FileLock {
                export: "home".into(),
                path: "/a".into(),
                ..Default::default()
            },
        );
        t.lu_locks.insert(
            1,
            LuLock {
                lu: 1,
                chn: "CHN1".into(),
                epoch: 4,
                lease_expiry_ms: u64::MAX,
            },
        );
        t.to_proto()
    }

    fn restore(tables: nas_proto::Tables) -> Command {
        cmd(Kind::RestoreTables(RestoreTables {
            tables: Some(tables),
            now_ms: 1234,
        }))
    }

    #[test]
    fn a_restore_brings_back_tables_without_sessions_file_locks_or_live_leases() {
        let mut t = Tables::default();
        let applied = t.apply(&restore(backup())).unwrap();
        assert_eq!(t.lus.len(), 1);
        assert_eq!(t.disks.len(), 3);
        assert!(t.users.contains_key("alice"));
        assert_eq!(t.shared_lu.token_key, vec![7; 32]);
        assert!(t.clients.is_empty());
        assert!(t.file_locks.is_empty());
        assert_eq!(t.lu_locks[&1].epoch, 4);
        assert_eq!(t.lu_locks[&1].lease_expiry_ms, 0);
        assert_eq!(t.daemons["CHN1"].heartbeat_ms, 1234);
        assert!(applied.touched.contains(&RowKey::User("alice".into())));
        assert!(applied.touched.contains(&RowKey::SharedLu));
    }

    #[test]
    fn a_restore_into_a_shared_lu_in_use_is_refused_and_changes_nothing() {
        let mut t = Tables::default();
        t.apply(&restore(backup())).unwrap();
        let before = t.to_proto();
        let e = t.apply(&restore(nas_proto::Tables::default())).unwrap_err();
        assert_eq!(e.kind, RejectKind::FailedPrecondition);
        assert_eq!(t.to_proto(), before);
    }
}
