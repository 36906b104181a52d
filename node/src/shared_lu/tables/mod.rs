//! The tables of the shared LU and the rules for changing them.
//!
//! Owns the in-memory copy of every table and the pure, deterministic
//! `apply` of one typed command; each family of tables has a file of its
//! own with its handlers and their tests. It must never do I/O, read
//! the clock or panic on any command: every replica applies the same log
//! and must reach the same tables, and an invalid command is answered with
//! a reason and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use nas_proto::{command::Kind, *};

mod audit;
mod backups;
mod chns;
mod clients;
mod events;
mod locks;
mod probes;
mod restore;
mod services;
mod storage;
mod users;

pub use super::error::{RejectKind, Rejection};
pub use audit::MAX_RECORDS_PER_COMMAND as MAX_AUDIT_RECORDS_PER_COMMAND;
pub use events::MAX_EVENTS_PER_COMMAND;

/// Smallest and largest physical disk the array accepts.
pub const MIN_DISK_BYTES: u64 = 1 << 20;
/// 64 TiB: far above any test array, far below overflow in capacity sums.
pub const MAX_DISK_BYTES: u64 = 64 << 40;
/// Most physical disks one array may hold.
pub const MAX_DISKS: u32 = 256;
/// Largest stripe unit (a degraded-write journal entry holds one chunk).
pub const MAX_STRIPE_UNIT: u64 = 1 << 20;
/// RAID 5 stripe unit used when a command gives none.
pub const DEFAULT_STRIPE_UNIT: u64 = 64 << 10;
/// First uid handed out when a user is added without one.
pub const FIRST_UID: u32 = 1000;

/// Declares every table once: its field in [`Tables`] and in the snapshot
/// message, its row type, its key type and how a row yields its key. From
/// this list come [`RowKey`] and [`Row`], the snapshot conversions and the
/// row-by-row access the state machine uses. Both enums are persisted with
/// their variants numbered in list order, the single shared-LU row at the
/// place `@shared_lu;` marks: a new table goes at the end, never earlier.
macro_rules! tables {
    (
        $($(#[$doc:meta])* $field:ident: $row:ident [$key:ty] by |$r:ident| $key_of:expr;)*
        @shared_lu;
        $($(#[$ldoc:meta])* $lfield:ident: $lrow:ident [$lkey:ty] by |$lr:ident| $lkey_of:expr;)*
    ) => {
        /// A key of one table row, used to persist exactly the rows a command touched.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        pub enum RowKey {
            $($row($key),)*
            SharedLu,
            $($lrow($lkey),)*
        }

        /// One row of any table, as persisted.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum Row {
            $($row($row),)*
            SharedLu(SharedLuInfo),
            $($lrow($lrow),)*
        }

        /// Every table of the shared LU.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Tables {
            $($(#[$doc])* pub $field: BTreeMap<$key, $row>,)*
            /// The shared LU's own settings: one row.
            pub shared_lu: SharedLuInfo,
            $($(#[$ldoc])* pub $lfield: BTreeMap<$lkey, $lrow>,)*
        }

        impl Row {
            /// The key under which this row is stored.
            pub fn key(&self) -> RowKey {
                match self {
                    $(Row::$row($r) => RowKey::$row($key_of),)*
                    Row::SharedLu(_) => RowKey::SharedLu,
                    $(Row::$lrow($lr) => RowKey::$lrow($lkey_of),)*
                }
            }
        }

        impl Tables {
            /// The whole state as one message, for snapshots.
            pub fn to_proto(&self) -> nas_proto::Tables {
                nas_proto::Tables {
                    $($field: self.$field.values().cloned().collect(),)*
                    shared_lu: Some(self.shared_lu.clone()),
                    $($lfield: self.$lfield.values().cloned().collect(),)*
                }
            }

            /// The current value of one row, or `None` when it was deleted.
            pub fn get_row(&self, key: &RowKey) -> Option<Row> {
                match key {
                    $(RowKey::$row(k) => self.$field.get(k).cloned().map(Row::$row),)*
                    RowKey::SharedLu => Some(Row::SharedLu(self.shared_lu.clone())),
                    $(RowKey::$lrow(k) => self.$lfield.get(k).cloned().map(Row::$lrow),)*
                }
            }

            /// Inserts or replaces one row (used when loading from disk).
            pub fn put_row(&mut self, row: Row) {
                match row {
                    $(Row::$row($r) => {
                        self.$field.insert($key_of, $r);
                    })*
                    Row::SharedLu(r) => self.shared_lu = r,
                    $(Row::$lrow($lr) => {
                        self.$lfield.insert($lkey_of, $lr);
                    })*
                }
            }
        }

        fn rows_of(t: nas_proto::Tables) -> Vec<Row> {
            let mut rows: Vec<Row> = Vec::new();
            $(rows.extend(t.$field.into_iter().map(Row::$row));)*
            rows.push(Row::SharedLu(t.shared_lu.unwrap_or_default()));
            $(rows.extend(t.$lfield.into_iter().map(Row::$lrow));)*
            rows
        }
    };
}

tables! {
    /// Physical disks by number.
    disks: Disk [u32] by |r| r.number;
    /// LUs by number.
    lus: Lu [u32] by |r| r.number;
    /// Paths from CHNs to the shared LU, its backup and data LUs.
    paths: Path [(String, i32, u32)] by |r| (r.chn.clone(), r.target, r.lu);
    /// LU locks by LU number.
    lu_locks: LuLock [u32] by |r| r.lu;
    /// File locks by (export, path).
    file_locks: FileLock [(String, String)] by |r| (r.export.clone(), r.path.clone());
    /// Users by name.
    users: User [String] by |r| r.name.clone();
    /// Client sessions by client id.
    clients: Client [String] by |r| r.client_id.clone();
    /// Exports (the service table) by name.
    exports: Export [String] by |r| r.name.clone();
    /// Installed CHNs (the daemon table) by name.
    daemons: Daemon [String] by |r| r.chn.clone();
    @shared_lu;
    /// Probes (keyed registers for end-to-end checks) by key.
    probes: Probe [String] by |r| r.key.clone();
    /// The audit log by sequence number.
    audit: AuditRecord [u64] by |r| r.seq;
    /// Export backups and restores, running or ended, by job id.
    backup_jobs: BackupJob [String] by |r| r.id.clone();
    /// Backup schedules by export.
    backup_schedules: BackupSchedule [String] by |r| r.export.clone();
    /// The event log by sequence number.
    events: Event [u64] by |r| r.seq;
}

fn reject<T>(kind: RejectKind, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        kind,
        message: message.into(),
    })
}

/// The successful outcome of one command.
#[derive(Debug, Default)]
pub struct Applied {
    /// Number assigned by the command (LU number, uid, lock epoch), or 0.
    pub assigned: u64,
    /// Rows that changed and must be persisted.
    pub touched: Vec<RowKey>,
}

impl Applied {
    fn rows(touched: Vec<RowKey>) -> Self {
        Applied { assigned: 0, touched }
    }
}

/// Checks a CHN, user or export name: 1 to 64 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
pub fn check_name(what: &str, name: &str) -> Result<(), Rejection> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        return reject(
            RejectKind::InvalidArgument,
            format!("{what} name is empty; give 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        );
    }
    if name.len() > 64 {
        return reject(
            RejectKind::InvalidArgument,
            format!("{what} name is {} characters long; the limit is 64", name.len()),
        );
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return reject(
            RejectKind::InvalidArgument,
            format!("{what} name {name:?} is not allowed; use A-Z a-z 0-9 . _ - and start with a letter or digit"),
        );
    }
    Ok(())
}

impl Tables {
    /// Applies one command, or explains why it cannot be applied. A
    /// rejected command leaves every table as it was.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, Rejection> {
        let Some(kind) = &cmd.kind else {
            return reject(RejectKind::InvalidArgument, "empty command: no operation was set");
        };
        match kind {
            Kind::InitSharedLu(c) => self.init_shared_lu(c),
            Kind::AddPath(c) => self.add_path(c.path.as_ref()),
            Kind::RemovePath(c) => self.remove_path(c.path.as_ref()),
            Kind::InitArray(c) => self.init_array(c),
            Kind::CreateLu(c) => self.create_lu(c),
            Kind::AddUser(c) => self.add_user(c.user.as_ref()),
            Kind::CreateExport(c) => self.create_export(c.export.as_ref()),
            Kind::RegisterChn(c) => self.register_chn(c),
            Kind::RemoveChn(c) => self.remove_chn(&c.chn),
            Kind::ReportDaemon(c) => self.report_daemon(c),
            Kind::UpsertClient(c) => self.upsert_client(c.client.as_ref()),
            Kind::RemoveClient(c) => self.remove_client(&c.client_id),
            Kind::AcquireLuLock(c) => self.acquire_lu_lock(c),
            Kind::ReleaseLuLock(c) => self.release_lu_lock(c),
            Kind::AcquireFileLock(c) => self.acquire_file_lock(c),
            Kind::ReleaseFileLock(c) => self.release_file_lock(c),
            Kind::SetDiskState(c) => self.set_disk_state(c),
            Kind::ReplaceDisk(c) => self.replace_disk(c),
            Kind::ReportLu(c) => self.report_lu(c),
            Kind::TouchClients(c) => self.touch_clients(c),
            Kind::ExpireClients(c) => self.expire_clients(c.now_ms),
            Kind::TakeOverExport(c) => self.take_over_export(c),
            Kind::HandOverExport(c) => self.hand_over_export(c),
            Kind::WriteProbe(c) => self.write_probe(c.probe.as_ref()),
            Kind::SetRole(c) => self.set_role(c),
            Kind::SetClusterKeys(c) => self.set_cluster_keys(c),
            Kind::AppendAudit(c) => self.append_audit(c),
            Kind::AppendEvents(c) => self.append_events(c),
            Kind::SetPassword(c) => self.set_password(c),
            Kind::RestoreTables(c) => self.restore(c),
            Kind::RecordBackupJob(c) => self.record_backup_job(c),
            Kind::SetBackupSchedule(c) => self.set_backup_schedule(c),
        }
    }
}

impl Tables {
    /// Rebuilds the tables from a snapshot message.
    pub fn from_proto(t: nas_proto::Tables) -> Tables {
        let mut out = Tables::default();
        for row in rows_of(t) {
            out.put_row(row);
        }
        out
    }

    /// Every row of every table.
    pub fn all_rows(&self) -> Vec<Row> {
        rows_of(self.to_proto())
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    /// Row keys and rows are persisted with postcard in redb: the list in
    /// `tables!` must keep each variant's number and field layout.
    #[test]
    fn row_keys_keep_their_stored_encoding() {
        let enc = |k: &RowKey| postcard::to_allocvec(k).unwrap();
        assert_eq!(enc(&RowKey::Disk(7)), [0, 7]);
        assert_eq!(
            enc(&RowKey::Path(("CHN1".into(), 1, 2))),
            [2, 4, b'C', b'H', b'N', b'1', 2, 2]
        );
        assert_eq!(
            enc(&RowKey::FileLock(("e".into(), "/p".into()))),
            [4, 1, b'e', 2, b'/', b'p']
        );
        assert_eq!(enc(&RowKey::Daemon("C".into())), [8, 1, b'C']);
        assert_eq!(enc(&RowKey::SharedLu), [9]);
        assert_eq!(enc(&RowKey::Probe("p".into())), [10, 1, b'p']);
    }

    #[test]
    fn snapshot_round_trip_keeps_every_table() {
        let mut t = with_array(3);
        t.apply(&lu(RaidLevel::Raid5, &[1, 2, 3])).unwrap();
        register(&mut t, "CHN1", 1);
        t.apply(&cmd(Kind::InitSharedLu(InitSharedLu {
            with_backup: true,
            now_ms: 5,
        })))
        .unwrap();
        t.apply(&cmd(Kind::WriteProbe(WriteProbe {
            probe: Some(Probe {
                key: "p".into(),
                value: b"v".to_vec(),
            }),
        })))
        .unwrap();
        assert_eq!(Tables::from_proto(t.to_proto()), t);
        assert_eq!(
            t.all_rows().len(),
            3 + 1 + 1 + 1 + 1,
            "disks, LU, CHN, probe and the shared LU row"
        );
    }

    fn any_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["CHN1", "CHN2", "alice", "", "home", "bad/name"]);
        let disks = prop::collection::vec(0u32..8, 0..5);
        prop_oneof![
            (0u32..8, prop::sample::select(vec![0u64, 10, 1 << 20, 64 << 20])).prop_map(|(disks, cap)| cmd(
                Kind::InitArray(InitArray {
                    disks,
                    disk_capacity_bytes: cap,
                    array_id: ARRAY_ID.into()
                })
            )),
            (prop::sample::select(vec![0i32, 1, 3, 5]), disks.clone()).prop_map(|(raid, disks)| {
                cmd(Kind::CreateLu(CreateLu {
                    raid,
                    disks,
                    stripe_unit_bytes: 0,
                }))
            }),
            (name.clone(), 0u64..4).prop_map(|(n, id)| cmd(Kind::RegisterChn(RegisterChn {
                chn: n.into(),
                node_id: id,
                address: "a:1".into(),
                state: 2
            }))),
            name.clone()
                .prop_map(|n| cmd(Kind::RemoveChn(RemoveChn { chn: n.into() }))),
            (name.clone(), 0u32..4, name.clone(), name.clone()).prop_map(|(n, lu, o, p)| cmd(Kind::CreateExport(
                CreateExport {
                    export: Some(Export {
                        name: n.into(),
                        lu,
                        owner_chn: o.into(),
                        partner_chn: p.into(),
                        ..Default::default()
                    })
                }
            ))),
            (name.clone(), 0u32..1002).prop_map(|(n, uid)| cmd(Kind::AddUser(AddUser {
                user: Some(User {
                    name: n.into(),
                    password_hash: hash(),
                    uid,
                    groups: vec![],
                    enabled: true,
                    role: 0,
                })
            }))),
            (0u32..3, name, 0u64..3000).prop_map(|(lu, chn, now)| cmd(Kind::AcquireLuLock(AcquireLuLock {
                lu,
                chn: chn.into(),
                lease_ms: 1000,
                now_ms: now
            }))),
            (0u32..8, prop::sample::select(vec![0i32, 1, 2, 3, 4, 9]))
                .prop_map(|(disk, state)| cmd(Kind::SetDiskState(SetDiskState { disk, state }))),
            (0u32..8, 0u32..8).prop_map(|(failed, spare)| cmd(Kind::ReplaceDisk(ReplaceDisk { failed, spare }))),
            (0u32..3, 0i32..6).prop_map(|(lu, health)| cmd(Kind::ReportLu(ReportLu {
                lu,
                health,
                ..Default::default()
            }))),
            Just(Command { kind: None }),
        ]
    }

    proptest! {
        /// Random command sequences: no panic, rejections change nothing,
        /// invariants always hold, and the snapshot form round-trips.
        #[test]
        fn random_commands_keep_the_tables_consistent(cmds in prop::collection::vec(any_command(), 1..60)) {
            let mut t = Tables::default();
            for c in &cmds {
                let before = t.clone();
                if t.apply(c).is_err() {
                    prop_assert_eq!(&t, &before);
                }
                check_invariants(&t);
            }
            prop_assert_eq!(Tables::from_proto(t.to_proto()), t);
        }
    }
}
