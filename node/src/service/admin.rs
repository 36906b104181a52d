//! The `Admin` service: the management terminal's view of the shared LU.
//!
//! Owns request validation that needs no table (addresses, passwords),
//! password hashing, the CHN install/remove sequence and read consistency.
//! Table rules live in `shared_lu::tables`; this module must never change
//! a table except by committing a command.

use std::time::Duration;

use tonic::{Request, Response, Status};

use std::future::Future;
use std::sync::Arc;

use nas_proto::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::access::AccessError;
use crate::array::LuDevice;
use crate::chn::lu_host::{LuHost, Route};
use crate::rt::now_ms;
use crate::shared_lu::network::PeerError;
use crate::shared_lu::tables::{check_name, Tables};
use crate::shared_lu::{ChnNode, SharedLu};
use nas_proto::command::Kind;
use nas_proto::*;

/// How long to wait for a new CHN to answer who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The `Admin` service of one CHN.
pub struct AdminService {
    pub lu: SharedLu,
    pub access: crate::access::Access,
    pub host: LuHost,
    pub failover: crate::chn::failover::Failover,
    pub backup: crate::chn::state_backup::StateBackup,
    pub exports: crate::chn::exports::Exports,
    pub export_backups: crate::chn::export_backup::ExportBackups,
    pub version: String,
}

/// How long `ClusterStatus` waits to confirm its tables with the leader
/// before it answers from this CHN's copy, marked possibly stale.
const STATUS_READ_WAIT: Duration = Duration::from_millis(500);
/// Largest raw LU read or write in one call.
const MAX_RAW_IO: usize = 4 << 20;
/// Marks a call one CHN forwarded to the CHN holding an LU, so that it is
/// never forwarded again (two CHNs disagreeing about a lock must not loop).
const FORWARDED: &str = "x-nas-forwarded";

/// `msg` as a call from this CHN to another on behalf of the caller of
/// `from`, whose credential it carries (the other CHN checks it again).
fn forward<F, T>(from: &Request<F>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(credential) = from.metadata().get(crate::service::authz::AUTHORIZATION) {
        r.metadata_mut()
            .insert(crate::service::authz::AUTHORIZATION, credential.clone());
    }
    r
}

fn write_reply(r: CommandResult) -> WriteReply {
    WriteReply {
        log_index: r.log_index,
        assigned: r.assigned,
    }
}

fn reply(r: CommandResult) -> Response<WriteReply> {
    Response::new(write_reply(r))
}

/// Checks a `host:port` address.
fn check_addr(addr: &str) -> Result<(), Status> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "address {addr:?} is not HOST:PORT (for example 127.0.0.1:7002)"
        )))
    }
}

impl AdminService {
    /// The hash of a new password, once its length is checked.
    async fn new_password_hash(&self, password: &str) -> Result<String, Status> {
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(Status::invalid_argument("password must be 8 to 1024 characters long"));
        }
        Ok(self
            .access
            .passwords()
            .hash(password)
            .await
            .map_err(AccessError::from)?)
    }

    async fn write(&self, kind: Kind) -> Result<Response<WriteReply>, Status> {
        Ok(reply(self.lu.write(Command { kind: Some(kind) }).await?))
    }

    /// Reads the tables, linearizably unless the caller accepts stale data.
    async fn read<T>(&self, req: Request<ListRequest>, f: impl FnOnce(&Tables) -> T) -> Result<(T, bool), Status> {
        let local = req.into_inner().local;
        if !local {
            self.lu.ensure_current().await?;
        }
        Ok((self.lu.read(f), local))
    }

    /// An Admin client on the leader when another CHN leads, for the
    /// membership calls that only the leader may make.
    async fn leader_admin(&self) -> Result<Option<admin_client::AdminClient<tonic::transport::Channel>>, Status> {
        let leader = self.lu.await_leader().await?;
        if leader.0 == self.lu.id {
            return Ok(None);
        }
        let ch = self
            .lu
            .peers
            .channel(&leader.1.addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(admin_client::AdminClient::new(ch)))
    }

    /// An Admin client on the CHN serving `what` (an LU, an export),
    /// refusing a second hop.
    fn owner_admin<T>(
        &self,
        req: &Request<T>,
        chn: &str,
        addr: &str,
        what: &str,
    ) -> Result<admin_client::AdminClient<tonic::transport::Channel>, Status> {
        if req.metadata().contains_key(FORWARDED) {
            return Err(Status::unavailable(format!(
                "{what} is served by CHN {chn} ({addr}); send the call there"
            )));
        }
        let ch = self
            .lu
            .peers
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(admin_client::AdminClient::new(ch))
    }

    /// Creates the export a restore goes into, on the LU the request
    /// names, served here, with the backup's users that exist here.
    async fn create_export_for(&self, r: &RestoreBackupRequest) -> Result<(), Status> {
        if r.lu == 0 {
            return Err(Status::invalid_argument(format!(
                "export {} does not exist; give --lu N to create it on LU N, or restore into an existing export",
                r.export
            )));
        }
        let manifest = self.export_backups.manifest(&r.target, &r.backup, r.force).await?;
        let users = manifest
            .users
            .iter()
            .filter(|u| self.lu.user(&u.name).is_some())
            .map(|u| u.name.clone())
            .collect();
        let partner_chn = self
            .lu
            .read(|t| {
                t.daemons
                    .values()
                    .find(|d| d.chn != self.lu.name && d.state == ChnState::ChnInstalled as i32)
                    .map(|d| d.chn.clone())
            })
            .unwrap_or_default();
        self.write(Kind::CreateExport(CreateExport {
            export: Some(Export {
                name: r.export.clone(),
                lu: r.lu,
                owner_chn: self.lu.name.clone(),
                partner_chn,
                state: ServiceState::ServiceServing as i32,
                users,
                ..Export::default()
            }),
        }))
        .await?;
        Ok(())
    }

    /// Runs `here` if this CHN serves `lu` (opening it if nobody does),
    /// else sends the call on to the CHN that serves it with `there`.
    async fn on_lu_owner<Req, Resp, H, HF, T, TF>(
        &self,
        lu: u32,
        req: Request<Req>,
        here: H,
        there: T,
    ) -> Result<Response<Resp>, Status>
    where
        H: FnOnce(Arc<LuDevice>, Req) -> HF,
        HF: Future<Output = Result<Resp, Status>>,
        T: FnOnce(AdminClient<Channel>, Request<Req>) -> TF,
        TF: Future<Output = Result<Response<Resp>, Status>>,
    {
        match self.host.route(lu).await? {
            Route::Local(dev) => here(dev, req.into_inner()).await.map(Response::new),
            Route::Remote(chn, addr) => {
                let owner = self.owner_admin(&req, &chn, &addr, &format!("LU {lu}"))?;
                let fwd = forward(&req, ());
                there(owner, fwd.map(|()| req.into_inner())).await
            }
        }
    }

    /// Runs `here` on the mounted file system of `export` if this CHN
    /// serves it, else sends the call on to the CHN that does with `there`.
    async fn on_export_owner<Req, Resp, H, HF, T, TF>(
        &self,
        export: &str,
        req: Request<Req>,
        here: H,
        there: T,
    ) -> Result<Response<Resp>, Status>
    where
        H: FnOnce(Arc<crate::fs::Volume>, Req) -> HF,
        HF: Future<Output = Result<Resp, Status>>,
        T: FnOnce(AdminClient<Channel>, Request<Req>) -> TF,
        TF: Future<Output = Result<Response<Resp>, Status>>,
    {
        let row = self.exports.export(export).await?;
        if row.owner_chn != self.lu.name {
            let addr = self.lu.address_of(&row.owner_chn);
            let owner = self.owner_admin(&req, &row.owner_chn, &addr, &format!("export {export}"))?;
            let fwd = forward(&req, ());
            return there(owner, fwd.map(|()| req.into_inner())).await;
        }
        let vol = self.exports.volume(&row).await?;
        here(vol, req.into_inner()).await.map(Response::new)
    }

    /// The LU a disk belongs to (0 when none), from current tables.
    async fn disk_group(&self, disk: u32) -> Result<u32, Status> {
        self.lu.ensure_current().await?;
        self.lu
            .read(|t| t.disks.get(&disk).map(|d| d.raid_group))
            .ok_or_else(|| Status::not_found(format!("disk {disk} does not exist; see `nasctl disk list`")))
    }

    fn daemon_row(&self, name: &str) -> Option<Daemon> {
        self.lu.daemon(name)
    }

    async fn register(&self, name: &str, node_id: u64, address: &str, state: ChnState) -> Result<(), Status> {
        self.lu
            .write(Command {
                kind: Some(Kind::RegisterChn(RegisterChn {
                    chn: name.into(),
                    node_id,
                    address: address.into(),
                    state: state as i32,
                })),
            })
            .await?;
        Ok(())
    }

    /// `disk replace` on the CHN that serves the disk's LU.
    async fn replace_disk_here(&self, lu: u32, r: ReplaceDiskRequest) -> Result<WriteReply, Status> {
        let spare = if r.spare != 0 {
            r.spare
        } else {
            self.lu
                .read(|t| {
                    t.disks
                        .values()
                        .find(|d| d.raid_group == 0 && d.state == DiskState::DiskNotUsed as i32)
                        .map(|d| d.number)
                })
                .ok_or_else(|| Status::resource_exhausted("no NOT USED disk is left to replace it with"))?
        };
        let done = self
            .lu
            .write(Command {
                kind: Some(Kind::ReplaceDisk(ReplaceDisk { failed: r.disk, spare })),
            })
            .await?;
        self.host.adopt(lu).await?;
        Ok(write_reply(CommandResult {
            assigned: spare as u64,
            ..done
        }))
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn node_info(&self, _req: Request<NodeInfoRequest>) -> Result<Response<NodeInfoReply>, Status> {
        let m = self.lu.raft.metrics().borrow().clone();
        let initialized = self.lu.is_initialized().await?;
        Ok(Response::new(NodeInfoReply {
            node_id: self.lu.id,
            name: self.lu.name.clone(),
            address: self.lu.addr.clone(),
            raft_state: format!("{:?}", m.state),
            initialized,
            version: self.version.clone(),
        }))
    }

    async fn cluster_status(
        &self,
        _req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        // Linearizable when a quorum answers at once; a status must still
        // answer without one (that is when it matters), marked.
        let current = tokio::time::timeout(STATUS_READ_WAIT, self.lu.ensure_current())
            .await
            .is_ok_and(|r| r.is_ok());
        let m = self.lu.raft.metrics().borrow().clone();
        let (nodes, voters) = self.lu.members();
        let now = now_ms();
        let members = nodes
            .iter()
            .map(|(id, node)| {
                let heartbeat = self.lu.daemon(&node.name).map_or(0, |d| d.heartbeat_ms);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map_or(-1, |l| l.map_or(0, |l| l.index as i64));
                Member {
                    node_id: *id,
                    name: node.name.clone(),
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    heartbeat_age_ms: if heartbeat == 0 {
                        -1
                    } else {
                        now.saturating_sub(heartbeat) as i64
                    },
                    matched_index: matched,
                }
            })
            .collect();
        let leader_id = m.current_leader.unwrap_or(0);
        Ok(Response::new(ClusterStatusReply {
            answered_by: self.lu.name.clone(),
            leader_id,
            leader_name: nodes.get(&leader_id).map(|n| n.name.clone()).unwrap_or_default(),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            members,
            shared_lu: Some(self.lu.read(|t| SharedLuInfo {
                token_key: vec![],
                handle_key: vec![],
                ..t.shared_lu.clone()
            })),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            possibly_stale: !current,
        }))
    }

    async fn bootstrap(&self, req: Request<BootstrapRequest>) -> Result<Response<ChnReply>, Status> {
        let r = req.into_inner();
        check_name("user", &r.admin_user).map_err(Status::from)?;
        if self.lu.is_initialized().await? {
            return Err(Status::already_exists(
                "this CHN already belongs to a shared LU; nothing to bootstrap",
            ));
        }
        self.backup.refuse_bootstrap_over_backup()?;
        // Hashed first: a refused password must not leave a half-made cluster.
        let password_hash = self.new_password_hash(&r.admin_password).await?;
        self.lu.bootstrap().await?;
        self.register(&self.lu.name, self.lu.id, &self.lu.addr, ChnState::ChnInstalled)
            .await?;
        let key = || (0..32).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
        self.write(Kind::SetClusterKeys(SetClusterKeys {
            token_key: key(),
            handle_key: key(),
        }))
        .await?;
        let admin = User {
            name: r.admin_user,
            password_hash,
            enabled: true,
            role: Role::Admin as i32,
            ..Default::default()
        };
        self.write(Kind::AddUser(AddUser { user: Some(admin) })).await?;
        Ok(Response::new(ChnReply {
            chn: self.daemon_row(&self.lu.name),
        }))
    }

    async fn init_shared_lu(&self, req: Request<InitSharedLuRequest>) -> Result<Response<WriteReply>, Status> {
        let with_backup = req.into_inner().with_backup;
        self.write(Kind::InitSharedLu(InitSharedLu {
            with_backup,
            now_ms: now_ms(),
        }))
        .await
    }

    async fn backup_shared_lu(
        &self,
        req: Request<BackupSharedLuRequest>,
    ) -> Result<Response<BackupSharedLuReply>, Status> {
        let copy = self.backup.backup_now().await?;
        let image = if req.into_inner().include_image {
            let path = copy.path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::unavailable(format!("{}: {e}", copy.path.display())))?
        } else {
            Vec::new()
        };
        Ok(Response::new(BackupSharedLuReply {
            copy: Some(crate::service::backup_copies::copy(&copy)),
            image,
        }))
    }

    async fn shared_lu_backup_status(
        &self,
        req: Request<SharedLuBackupStatusRequest>,
    ) -> Result<Response<SharedLuBackupStatusReply>, Status> {
        // The leader writes the automatic copies: only it knows why the
        // last one failed.
        if let Some(mut leader) = self.leader_admin().await? {
            return leader.shared_lu_backup_status(forward(&req, *req.get_ref())).await;
        }
        let status = self.backup.status().await?;
        Ok(Response::new(crate::service::backup_copies::status(
            &self.lu.name,
            &status,
        )))
    }

    async fn restore_shared_lu(
        &self,
        req: Request<RestoreSharedLuRequest>,
    ) -> Result<Response<RestoreSharedLuReply>, Status> {
        let r = req.into_inner();
        let image = (!r.image.is_empty()).then_some(r.image);
        let restored = self.backup.restore(image, r.force).await?;
        Ok(Response::new(crate::service::backup_copies::restored(&restored)))
    }

    async fn create_snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotReply>, Status> {
        let export = req.get_ref().export.clone();
        self.on_export_owner(
            &export,
            req,
            |vol, r| crate::service::snapshots::create(vol, r.name),
            |mut owner, r| async move { owner.create_snapshot(r).await },
        )
        .await
    }

    async fn delete_snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotList>, Status> {
        let export = req.get_ref().export.clone();
        self.on_export_owner(
            &export,
            req,
            |vol, r| crate::service::snapshots::delete(vol, r.export, r.name),
            |mut owner, r| async move { owner.delete_snapshot(r).await },
        )
        .await
    }

    async fn list_snapshots(&self, req: Request<ListSnapshotsRequest>) -> Result<Response<SnapshotList>, Status> {
        let export = req.get_ref().export.clone();
        self.on_export_owner(
            &export,
            req,
            |vol, r| crate::service::snapshots::list(vol, r.export),
            |mut owner, r| async move { owner.list_snapshots(r).await },
        )
        .await
    }

    async fn check_export(&self, req: Request<CheckExportRequest>) -> Result<Response<CheckExportReply>, Status> {
        let export = req.get_ref().export.clone();
        self.on_export_owner(
            &export,
            req,
            |vol, _| crate::service::snapshots::check(vol),
            |mut owner, r| async move { owner.check_export(r).await },
        )
        .await
    }

    async fn create_backup(&self, req: Request<CreateBackupRequest>) -> Result<Response<BackupJobReply>, Status> {
        let export = req.get_ref().export.clone();
        self.on_export_owner(
            &export,
            req,
            |vol, r| async move {
                let (job, _) = self
                    .export_backups
                    .backup(vol, &r.export, &r.target, &r.snapshot, r.full, false)
                    .await?;
                Ok(BackupJobReply { job: Some(job) })
            },
            |mut owner, r| async move { owner.create_backup(r).await },
        )
        .await
    }

    async fn list_backups(&self, req: Request<ListBackupsRequest>) -> Result<Response<BackupList>, Status> {
        self.lu.ensure_current().await?;
        let r = req.into_inner();
        Ok(Response::new(self.export_backups.list(&r.target, &r.export).await?))
    }

    async fn verify_backup(&self, req: Request<VerifyBackupRequest>) -> Result<Response<VerifyBackupReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.export_backups.verify(&r.target, &r.backup).await?))
    }

    async fn restore_backup(&self, req: Request<RestoreBackupRequest>) -> Result<Response<BackupJobReply>, Status> {
        let r = req.get_ref().clone();
        self.lu.ensure_current().await?;
        if self.lu.export(&r.export).is_none() {
            self.create_export_for(&r).await?;
        }
        self.on_export_owner(
            &r.export,
            req,
            |vol, r| async move {
                let job = self
                    .export_backups
                    .restore(vol, &r.export, &r.target, &r.backup, &r.path, r.force)
                    .await?;
                Ok(BackupJobReply { job: Some(job) })
            },
            |mut owner, r| async move { owner.restore_backup(r).await },
        )
        .await
    }

    async fn prune_backups(&self, req: Request<PruneBackupsRequest>) -> Result<Response<PruneBackupsReply>, Status> {
        self.lu.ensure_current().await?;
        let r = req.into_inner();
        Ok(Response::new(
            self.export_backups.prune(&r.target, &r.export, r.keep).await?,
        ))
    }

    async fn schedule_backup(&self, req: Request<ScheduleBackupRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        if !r.remove {
            // Refused now rather than at every run.
            nas_backup::Target::parse(&r.target).map_err(crate::chn::Error::from)?;
        }
        let last = self
            .lu
            .read(|t| t.backup_schedules.get(&r.export).cloned())
            .unwrap_or_default();
        self.write(Kind::SetBackupSchedule(SetBackupSchedule {
            schedule: Some(BackupSchedule {
                export: r.export,
                every_s: r.every_s,
                target: r.target,
                keep: r.keep,
                ..last
            }),
            remove: r.remove,
        }))
        .await
    }

    async fn add_path(&self, req: Request<PathRequest>) -> Result<Response<WriteReply>, Status> {
        self.write(Kind::AddPath(AddPath {
            path: req.into_inner().path,
        }))
        .await
    }

    async fn remove_path(&self, req: Request<PathRequest>) -> Result<Response<WriteReply>, Status> {
        self.write(Kind::RemovePath(RemovePath {
            path: req.into_inner().path,
        }))
        .await
    }

    async fn list_paths(&self, req: Request<ListRequest>) -> Result<Response<PathList>, Status> {
        let (paths, possibly_stale) = self.read(req, |t| t.paths.values().cloned().collect()).await?;
        Ok(Response::new(PathList { paths, possibly_stale }))
    }

    async fn install_chn(&self, req: Request<InstallChnRequest>) -> Result<Response<ChnReply>, Status> {
        check_name("CHN", &req.get_ref().name).map_err(Status::from)?;
        check_addr(&req.get_ref().address)?;
        if let Some(mut leader) = self.leader_admin().await? {
            return leader.install_chn(forward(&req, req.get_ref().clone())).await;
        }
        let r = req.into_inner();
        let mut probe = admin_client::AdminClient::new(
            self.lu
                .peers
                .channel(&r.address)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
        let info = tokio::time::timeout(PROBE_TIMEOUT, probe.node_info(NodeInfoRequest {}))
            .await
            .map_err(|_| Status::unavailable(format!("nasd at {} did not answer in time; is it running?", r.address)))?
            .map_err(|s| {
                Status::unavailable(format!(
                    "cannot reach nasd at {}: {}; start it first (nasd --name {} --listen {})",
                    r.address,
                    s.message(),
                    r.name,
                    r.address
                ))
            })?
            .into_inner();
        if info.name != r.name {
            return Err(Status::invalid_argument(format!(
                "the nasd at {} is named {}, not {}; check the name and address",
                r.address, info.name, r.name
            )));
        }
        let (nodes, voters) = self.lu.members();
        if let Some(node) = nodes.get(&info.node_id) {
            if node.name != r.name {
                return Err(Status::already_exists(format!(
                    "node id {} already belongs to CHN {}; give the new CHN another --node-id",
                    info.node_id, node.name
                )));
            }
        } else if info.initialized {
            return Err(Status::failed_precondition(format!(
                "the nasd at {} already belongs to another shared LU; restart it with an empty --data directory",
                r.address
            )));
        }
        if let Some(other) = nodes.iter().find(|(id, n)| n.name == r.name && **id != info.node_id) {
            return Err(Status::already_exists(format!(
                "CHN {} is already installed as node {}",
                r.name, other.0
            )));
        }
        if !voters.contains(&info.node_id) {
            self.register(&r.name, info.node_id, &r.address, ChnState::ChnInstalling)
                .await?;
            let node = ChnNode {
                name: r.name.clone(),
                addr: r.address.clone(),
            };
            self.lu.add_voter(info.node_id, node).await?;
        }
        self.register(&r.name, info.node_id, &r.address, ChnState::ChnInstalled)
            .await?;
        Ok(Response::new(ChnReply {
            chn: self.daemon_row(&r.name),
        }))
    }

    async fn remove_chn(&self, req: Request<RemoveChnRequest>) -> Result<Response<WriteReply>, Status> {
        check_name("CHN", &req.get_ref().name).map_err(Status::from)?;
        if let Some(mut leader) = self.leader_admin().await? {
            return leader.remove_chn(forward(&req, req.get_ref().clone())).await;
        }
        let r = req.into_inner();
        self.lu.ensure_current().await?;
        let (nodes, _) = self.lu.members();
        let member = nodes.iter().find(|(_, n)| n.name == r.name).map(|(id, _)| *id);
        let mut result = WriteReply::default();
        if self.daemon_row(&r.name).is_some() {
            result = self
                .write(Kind::RemoveChn(RemoveChn { chn: r.name.clone() }))
                .await?
                .into_inner();
        } else if member.is_none() {
            return Err(Status::not_found(format!(
                "CHN {} is not installed; see `nasctl chn list`",
                r.name
            )));
        }
        if let Some(id) = member {
            result.log_index = self.lu.remove_member(id).await?;
        }
        Ok(Response::new(result))
    }

    async fn list_chns(&self, req: Request<ListRequest>) -> Result<Response<ChnList>, Status> {
        let (chns, possibly_stale) = self.read(req, |t| t.daemons.values().cloned().collect()).await?;
        Ok(Response::new(ChnList { chns, possibly_stale }))
    }

    async fn init_array(&self, req: Request<InitArrayRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        Ok(reply(self.host.init_array(r.disks, r.disk_capacity_bytes).await?))
    }

    async fn list_disks(&self, req: Request<ListRequest>) -> Result<Response<DiskList>, Status> {
        let (disks, possibly_stale) = self.read(req, |t| t.disks.values().cloned().collect()).await?;
        Ok(Response::new(DiskList { disks, possibly_stale }))
    }

    async fn create_lu(&self, req: Request<CreateLuRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        if r.disks.len() > crate::shared_lu::tables::MAX_DISKS as usize {
            return Err(Status::invalid_argument("too many disks in one LU"));
        }
        let cmd = CreateLu {
            raid: r.raid,
            disks: r.disks,
            stripe_unit_bytes: r.stripe_unit_bytes,
        };
        Ok(reply(self.host.create_lu(cmd).await?))
    }

    async fn list_lus(&self, req: Request<ListRequest>) -> Result<Response<LuList>, Status> {
        let (lus, possibly_stale) = self.read(req, |t| t.lus.values().cloned().collect()).await?;
        Ok(Response::new(LuList { lus, possibly_stale }))
    }

    async fn add_user(&self, req: Request<AddUserRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        check_name("user", &r.name).map_err(Status::from)?;
        let password_hash = self.new_password_hash(&r.password).await?;
        let user = User {
            name: r.name,
            password_hash,
            uid: r.uid,
            groups: r.groups,
            enabled: true,
            role: Role::None as i32,
        };
        self.write(Kind::AddUser(AddUser { user: Some(user) })).await
    }

    async fn set_password(&self, req: Request<SetPasswordRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        let password_hash = self.new_password_hash(&r.password).await?;
        self.write(Kind::SetPassword(SetPassword {
            user: r.user,
            password_hash,
        }))
        .await
    }

    async fn set_role(&self, req: Request<SetRoleRequest>) -> Result<Response<WriteReply>, Status> {
        let SetRoleRequest { user, role } = req.into_inner();
        self.write(Kind::SetRole(SetRole { user, role })).await
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let (token, expires_ms, role) = self
            .access
            .login(&r.user, &r.password, Duration::from_secs(r.ttl_s), source)
            .await?;
        Ok(Response::new(LoginReply {
            token,
            expires_ms,
            role: role as i32,
        }))
    }

    async fn list_users(&self, req: Request<ListRequest>) -> Result<Response<UserList>, Status> {
        let (users, possibly_stale) = self
            .read(req, |t| {
                // The hash never leaves the shared LU.
                t.users
                    .values()
                    .map(|u| User {
                        password_hash: String::new(),
                        ..u.clone()
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(UserList { users, possibly_stale }))
    }

    async fn create_export(&self, req: Request<CreateExportRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        let export = Export {
            name: r.name,
            lu: r.lu,
            owner_chn: r.owner_chn,
            partner_chn: r.partner_chn,
            state: ServiceState::ServiceServing as i32,
            users: r.users,
            ..Export::default()
        };
        self.write(Kind::CreateExport(CreateExport { export: Some(export) }))
            .await
    }

    async fn list_exports(&self, req: Request<ListRequest>) -> Result<Response<ExportList>, Status> {
        let (exports, possibly_stale) = self.read(req, |t| t.exports.values().cloned().collect()).await?;
        Ok(Response::new(ExportList {
            exports,
            possibly_stale,
        }))
    }

    async fn list_clients(&self, req: Request<ListRequest>) -> Result<Response<ClientList>, Status> {
        // The session secret is a password: never shown.
        let redact = |c: &Client| Client {
            session: String::new(),
            ..c.clone()
        };
        let (clients, possibly_stale) = self.read(req, |t| t.clients.values().map(redact).collect()).await?;
        Ok(Response::new(ClientList {
            clients,
            possibly_stale,
        }))
    }

    async fn write_probe(&self, req: Request<WriteProbeRequest>) -> Result<Response<WriteReply>, Status> {
        let WriteProbeRequest { key, value } = req.into_inner();
        self.write(Kind::WriteProbe(WriteProbe {
            probe: Some(Probe { key, value }),
        }))
        .await
    }

    async fn list_audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditList>, Status> {
        let r = req.into_inner();
        if !r.local {
            self.lu.ensure_current().await?;
        }
        let records = self
            .lu
            .read(|t| log_page(&t.audit, r.after_seq, r.since_ms, r.limit, |a| a.time_ms));
        Ok(Response::new(AuditList {
            records,
            possibly_stale: r.local,
        }))
    }

    async fn list_events(&self, req: Request<EventsRequest>) -> Result<Response<EventList>, Status> {
        let r = req.into_inner();
        if !r.local {
            self.lu.ensure_current().await?;
        }
        let events = self
            .lu
            .read(|t| log_page(&t.events, r.after_seq, r.since_ms, r.limit, |e| e.time_ms));
        Ok(Response::new(EventList {
            events,
            possibly_stale: r.local,
        }))
    }

    async fn list_probes(&self, req: Request<ListRequest>) -> Result<Response<ProbeList>, Status> {
        let (probes, possibly_stale) = self.read(req, |t| t.probes.values().cloned().collect()).await?;
        Ok(Response::new(ProbeList { probes, possibly_stale }))
    }

    async fn fail_disk(&self, req: Request<DiskRequest>) -> Result<Response<WriteReply>, Status> {
        let disk = req.get_ref().disk;
        let lu = self.disk_group(disk).await?;
        if lu == 0 {
            return Ok(reply(self.host.fail_disk(None, disk).await?));
        }
        self.on_lu_owner(
            lu,
            req,
            |dev, _| async move { Ok(write_reply(self.host.fail_disk(Some(dev), disk).await?)) },
            |mut owner, r| async move { owner.fail_disk(r).await },
        )
        .await
    }

    async fn replace_disk(&self, req: Request<ReplaceDiskRequest>) -> Result<Response<WriteReply>, Status> {
        let r = *req.get_ref();
        let lu = self.disk_group(r.disk).await?;
        if lu == 0 {
            return Err(Status::failed_precondition(format!(
                "disk {} is in no RAID group; only a FAILED member of an LU can be replaced",
                r.disk
            )));
        }
        self.on_lu_owner(
            lu,
            req,
            |_, r| self.replace_disk_here(lu, r),
            |mut owner, r| async move { owner.replace_disk(r).await },
        )
        .await
    }

    async fn rebuild_lu(&self, req: Request<LuRequest>) -> Result<Response<LuJobReply>, Status> {
        let lu = req.get_ref().lu;
        self.on_lu_owner(
            lu,
            req,
            |_, _| async move {
                let job = Some(self.host.start_job(lu, false, false)?);
                Ok(LuJobReply { lu, job })
            },
            |mut owner, r| async move { owner.rebuild_lu(r).await },
        )
        .await
    }

    async fn scrub_lu(&self, req: Request<ScrubLuRequest>) -> Result<Response<LuJobReply>, Status> {
        let ScrubLuRequest { lu, repair } = *req.get_ref();
        self.on_lu_owner(
            lu,
            req,
            |_, _| async move {
                let job = Some(self.host.start_job(lu, true, repair)?);
                Ok(LuJobReply { lu, job })
            },
            |mut owner, r| async move { owner.scrub_lu(r).await },
        )
        .await
    }

    async fn read_lu(&self, req: Request<ReadLuRequest>) -> Result<Response<ReadLuReply>, Status> {
        let ReadLuRequest { lu, offset, length } = *req.get_ref();
        if length as usize > MAX_RAW_IO {
            return Err(Status::invalid_argument(format!(
                "read at most {MAX_RAW_IO} bytes per call, {length} asked"
            )));
        }
        self.on_lu_owner(
            lu,
            req,
            |dev, _| async move {
                let data = LuHost::read(dev, offset, length as usize).await?;
                Ok(ReadLuReply { data })
            },
            |mut owner, r| async move { owner.read_lu(r).await },
        )
        .await
    }

    async fn write_lu(&self, req: Request<WriteLuRequest>) -> Result<Response<WriteReply>, Status> {
        let lu = req.get_ref().lu;
        if req.get_ref().data.len() > MAX_RAW_IO {
            return Err(Status::invalid_argument(format!(
                "write at most {MAX_RAW_IO} bytes per call"
            )));
        }
        self.on_lu_owner(
            lu,
            req,
            |dev, r| async move {
                LuHost::write(dev, r.offset, r.data, r.flush).await?;
                Ok(WriteReply::default())
            },
            |mut owner, r| async move { owner.write_lu(r).await },
        )
        .await
    }
    async fn move_export(&self, req: Request<MoveExportRequest>) -> Result<Response<MoveExportReply>, Status> {
        let started = std::time::Instant::now();
        self.lu.ensure_current().await?;
        let r = req.get_ref();
        let e = self.lu.export(&r.export).ok_or_else(|| {
            Status::not_found(format!("export {} does not exist; see `nasctl export list`", r.export))
        })?;
        let to = if r.to.is_empty() {
            e.home_chn.clone()
        } else {
            r.to.clone()
        };
        if to == e.owner_chn {
            return Err(Status::failed_precondition(format!(
                "export {} is already served by {to}",
                e.name
            )));
        }
        if e.owner_chn != self.lu.name {
            let addr = self.lu.address_of(&e.owner_chn);
            let mut owner = self.owner_admin(&req, &e.owner_chn, &addr, &format!("LU {}", e.lu))?;
            let fwd = MoveExportRequest {
                export: e.name.clone(),
                to,
            };
            return owner.move_export(forward(&req, fwd)).await.map_err(|s| match PeerError::from(s.clone()) {
                PeerError::Unreachable(why) => Status::unavailable(format!(
                    "{}, serving export {}, does not answer ({why}); if it has failed, failover moves the export by itself within the LU lease",
                    e.owner_chn, e.name,
                )),
                PeerError::Failed(_) => s,
            });
        }
        let reason = if r.to.is_empty() {
            "giveback"
        } else {
            "planned takeover"
        };
        let export = self.failover.move_here_to(&e, &to, reason).await?;
        Ok(Response::new(MoveExportReply {
            export: Some(export),
            took_ms: started.elapsed().as_millis() as u64,
        }))
    }

    async fn failover_status(
        &self,
        _req: Request<FailoverStatusRequest>,
    ) -> Result<Response<FailoverStatusReply>, Status> {
        // Current when a quorum answers; otherwise this CHN's copy, marked,
        // since the status matters most when things are failing.
        let possibly_stale = self.lu.ensure_current().await.is_err();
        let m = self.failover.monitor();
        let now = now_ms();
        let (exports, chns) = self.lu.read(|t| {
            let exports = t
                .exports
                .values()
                .map(|e| {
                    let lock = t.lu_locks.get(&e.lu).cloned();
                    ExportFailover {
                        lease_left_ms: lock.as_ref().map_or(0, |l| l.lease_expiry_ms.saturating_sub(now)),
                        lock,
                        next_taker: m.next_taker(t, &e.owner_chn, &e.partner_chn).unwrap_or_default(),
                        export: Some(e.clone()),
                    }
                })
                .collect();
            (exports, m.all(t))
        });
        let s = self.failover.settings();
        Ok(Response::new(FailoverStatusReply {
            answered_by: self.lu.name.clone(),
            chns,
            exports,
            detect_ms: s.detect.as_millis() as u64,
            lu_lease_ms: self.host.lease().as_millis() as u64,
            giveback_after_s: s.giveback_after.map_or(0, |d| d.as_secs()),
            possibly_stale,
        }))
    }

    async fn list_locks(&self, req: Request<ListRequest>) -> Result<Response<LockTables>, Status> {
        let ((lu_locks, file_locks), possibly_stale) = self
            .read(req, |t| {
                (
                    // A released lock keeps its row for the epoch only.
                    t.lu_locks.values().filter(|l| !l.chn.is_empty()).cloned().collect(),
                    t.file_locks.values().cloned().collect(),
                )
            })
            .await?;
        Ok(Response::new(LockTables {
            lu_locks,
            file_locks,
            possibly_stale,
        }))
    }

    async fn break_file_lock(&self, req: Request<BreakFileLockRequest>) -> Result<Response<WriteReply>, Status> {
        let r = req.into_inner();
        self.write(Kind::ReleaseFileLock(ReleaseFileLock {
            all_holders: r.session.is_empty(),
            export: r.export,
            path: r.path,
            session: r.session,
        }))
        .await
    }
}

/// Rows of a numbered log after `after_seq` and no older than `since_ms`,
/// oldest first, at most `limit` (1000 when 0, never above 10,000).
fn log_page<V: Clone>(
    log: &std::collections::BTreeMap<u64, V>,
    after_seq: u64,
    since_ms: u64,
    limit: u32,
    time_of: impl Fn(&V) -> u64,
) -> Vec<V> {
    let limit = if limit == 0 { 1000 } else { limit.min(10_000) } as usize;
    log.range(after_seq.saturating_add(1)..)
        .map(|(_, v)| v)
        .filter(|v| time_of(v) >= since_ms)
        .take(limit)
        .cloned()
        .collect()
}
