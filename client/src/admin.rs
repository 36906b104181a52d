//! The typed Admin client: one method per RPC of the `Admin` service,
//! each sent to any CHN with the retries of [`Cluster::admin`].
//!
//! Owns nothing but the mapping from method to RPC. It must never change
//! a request: what a method sends is what the caller built.

use nas_proto::*;
use tonic::Status;

use crate::Cluster;

/// `list reads (name -> Reply);` takes `local: bool` (answer from the
/// contacted CHN's copy, marked possibly stale, instead of a linearizable
/// read); `calls (name(Request) -> Reply);` takes the request message.
macro_rules! admin_methods {
    (
        list reads { $($(#[$ldoc:meta])* $list:ident -> $lreply:ty;)* }
        calls { $($(#[$doc:meta])* $name:ident($req:ty) -> $reply:ty;)* }
    ) => {
        impl Cluster {
            $(
                $(#[$ldoc])*
                pub async fn $list(&self, local: bool) -> Result<$lreply, Status> {
                    self.admin(|mut a| async move { a.$list(ListRequest { local }).await }).await
                }
            )*
            $(
                $(#[$doc])*
                pub async fn $name(&self, req: $req) -> Result<$reply, Status> {
                    self.admin(|mut a| {
                        let req = req.clone();
                        async move { a.$name(req).await }
                    })
                    .await
                }
            )*
        }
    };
}

admin_methods! {
    list reads {
        /// The paths from CHNs to the shared LU, its backup and data LUs.
        list_paths -> PathList;
        /// The installed CHNs (the daemon table).
        list_chns -> ChnList;
        /// The physical disks.
        list_disks -> DiskList;
        /// The LUs with their health and jobs.
        list_lus -> LuList;
        /// The users (password hashes are never sent).
        list_users -> UserList;
        /// The exports (the service table).
        list_exports -> ExportList;
        /// The client sessions (secrets are never sent).
        list_clients -> ClientList;
        /// LU locks and file locks.
        list_locks -> LockTables;
        /// The probes (keyed registers for end-to-end checks).
        list_probes -> ProbeList;
    }
    calls {
        /// Who the contacted CHN is, and whether it belongs to a shared LU.
        node_info(NodeInfoRequest) -> NodeInfoReply;
        /// Raft state and members, as the contacted CHN sees them.
        cluster_status(ClusterStatusRequest) -> ClusterStatusReply;
        /// Makes the contacted CHN the first member of a new shared LU,
        /// with its first admin.
        bootstrap(BootstrapRequest) -> ChnReply;
        /// Exchanges a password for a token.
        login(LoginRequest) -> LoginReply;
        /// Gives a user a role (ROLE_NONE takes it away).
        set_role(SetRoleRequest) -> WriteReply;
        /// A new password for a user (its tokens end).
        set_password(SetPasswordRequest) -> WriteReply;
        /// A page of the audit log.
        list_audit(AuditRequest) -> AuditList;
        /// A page of the event log.
        list_events(EventsRequest) -> EventList;
        init_shared_lu(InitSharedLuRequest) -> WriteReply;
        /// A copy of the shared LU in its backup location, written now.
        backup_shared_lu(BackupSharedLuRequest) -> BackupSharedLuReply;
        /// The copies in the shared LU's backup location.
        shared_lu_backup_status(SharedLuBackupStatusRequest) -> SharedLuBackupStatusReply;
        /// A snapshot of an export, taken on the CHN serving it.
        create_snapshot(SnapshotRequest) -> SnapshotReply;
        /// Deletes a snapshot; the remaining ones.
        delete_snapshot(SnapshotRequest) -> SnapshotList;
        /// An export's snapshots, oldest first.
        list_snapshots(ListSnapshotsRequest) -> SnapshotList;
        /// Checks that every block of an export is in exactly one place.
        check_export(CheckExportRequest) -> CheckExportReply;
        /// Starts a backup of an export on the CHN serving it.
        create_backup(CreateBackupRequest) -> BackupJobReply;
        /// The backups on a target, and the backup jobs and schedules.
        list_backups(ListBackupsRequest) -> BackupList;
        /// Reads back every chunk of a backup and checks it.
        verify_backup(VerifyBackupRequest) -> VerifyBackupReply;
        /// Starts restoring a backup into an export.
        restore_backup(RestoreBackupRequest) -> BackupJobReply;
        /// Deletes old backups of an export and the chunks no backup uses.
        prune_backups(PruneBackupsRequest) -> PruneBackupsReply;
        /// Sets or removes an export's backup schedule.
        schedule_backup(ScheduleBackupRequest) -> WriteReply;
        add_path(PathRequest) -> WriteReply;
        remove_path(PathRequest) -> WriteReply;
        /// Joins a started nasd to the shared LU (learner, then voter).
        install_chn(InstallChnRequest) -> ChnReply;
        remove_chn(RemoveChnRequest) -> WriteReply;
        init_array(InitArrayRequest) -> WriteReply;
        create_lu(CreateLuRequest) -> WriteReply;
        add_user(AddUserRequest) -> WriteReply;
        create_export(CreateExportRequest) -> WriteReply;
        break_file_lock(BreakFileLockRequest) -> WriteReply;
        fail_disk(DiskRequest) -> WriteReply;
        replace_disk(ReplaceDiskRequest) -> WriteReply;
        rebuild_lu(LuRequest) -> LuJobReply;
        scrub_lu(ScrubLuRequest) -> LuJobReply;
        /// Raw bytes of an LU, read on the CHN that serves it.
        read_lu(ReadLuRequest) -> ReadLuReply;
        /// Raw bytes written to an LU on the CHN that serves it.
        write_lu(WriteLuRequest) -> WriteReply;
        /// A planned move of an export (`failover takeover`, `giveback`).
        move_export(MoveExportRequest) -> MoveExportReply;
        failover_status(FailoverStatusRequest) -> FailoverStatusReply;
        /// Sets a probe's value (a replicated write like any other).
        write_probe(WriteProbeRequest) -> WriteReply;
    }
}
