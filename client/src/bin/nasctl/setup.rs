//! The setup sequence (docs/ARCHITECTURE.md), run from the management terminal
//! against CHNs that are already running: install the first CHN
//! (bootstrap), initialize the shared LU and its backup, define every CHN's
//! paths to them, install each next CHN; then, when asked, the disks, an
//! LU, a user and an export (`provision`).
//!
//! Used by `cluster up` (local processes) and `cluster setup` (containers,
//! other hosts). Every step first looks whether its result is there, so the
//! whole sequence can run again after a restart or a partial failure; it
//! must never change or remove anything that exists.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use ::nas_client::proto::{self, PathTarget};
use ::nas_client::Cluster;

/// One CHN: its name (CHN1, CHN5, ...) and the address the others dial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub addr: String,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    /// `NAME=HOST:PORT`, as in `cluster setup --chn CHN1=chn1:7000`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().split_once('=') {
            Some((name, addr)) if !name.is_empty() && addr.contains(':') => Ok(NodeSpec {
                name: name.trim().to_string(),
                addr: addr.trim().to_string(),
            }),
            _ => Err(format!("`{s}` is not NAME=HOST:PORT (e.g. CHN1=chn1:7000)")),
        }
    }
}

/// Polls `probe` every 100 ms until it yields a value or `timeout` passes;
/// the error names `what` and the probe's last complaint.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}: {last}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A write whose result may already be there counts as done.
fn ignore_exists(r: Result<impl Sized, tonic::Status>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(anyhow::anyhow!("{}", s.message())),
    }
}

/// Waits until every CHN of `nodes` (in `cluster`'s order) answers, and
/// says for each whether it already belongs to an initialized cluster.
/// `where_to_look` names what an operator should read when one does not.
pub async fn wait_answering(
    cluster: &Cluster,
    nodes: &[NodeSpec],
    timeout: Duration,
    where_to_look: impl Fn(&NodeSpec) -> String,
) -> anyhow::Result<Vec<bool>> {
    let mut initialized = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let info = wait_for(
            &format!("{} to answer at {} ({})", node.name, node.addr, where_to_look(node)),
            timeout,
            || {
                let mut c = cluster.admin_at(i);
                async move {
                    match c.node_info(proto::NodeInfoRequest {}).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) => Err(s.message().to_string()),
                    }
                }
            },
        )
        .await?;
        if info.name != node.name {
            bail!(
                "the CHN at {} calls itself {}, not {}; give each nasd the name it is installed under (--name / NASD_NAME)",
                node.addr,
                info.name,
                node.name
            );
        }
        initialized.push(info.initialized);
    }
    Ok(initialized)
}

/// Steps 1-4 of the setup sequence. `initialized[i]` is whether `nodes[i]`
/// already belongs to a cluster (from `wait_answering`); `nodes[0]` is the
/// one that bootstraps, with `admin` (user, password) as the first admin;
/// `cluster` must carry that admin's credential.
pub async fn install(
    cluster: &Cluster,
    nodes: &[NodeSpec],
    initialized: &[bool],
    admin: (&str, &str),
    quiet: bool,
) -> anyhow::Result<()> {
    let first = nodes.first().context("no CHN to install")?;
    if !initialized.iter().any(|i| *i) {
        if !quiet {
            eprintln!("installing {} (bootstrap) with first admin {} ...", first.name, admin.0);
        }
        let req = proto::BootstrapRequest {
            admin_user: admin.0.into(),
            admin_password: admin.1.into(),
        };
        ignore_exists(cluster.admin_at(0).bootstrap(req).await)?;
    }
    ignore_exists(
        cluster
            .init_shared_lu(proto::InitSharedLuRequest { with_backup: true })
            .await,
    )?;
    for node in nodes {
        for target in [PathTarget::PathSharedLu, PathTarget::PathSharedLuBackup] {
            let path = proto::Path {
                chn: node.name.clone(),
                target: target as i32,
                lu: 0,
            };
            ignore_exists(cluster.add_path(proto::PathRequest { path: Some(path) }).await)?;
        }
    }
    for node in &nodes[1..] {
        let status = cluster
            .cluster_status(proto::ClusterStatusRequest {})
            .await
            .map_err(crate::status_err)?;
        if status.members.iter().any(|m| m.name == node.name && m.voter) {
            continue;
        }
        if !quiet {
            eprintln!("installing {} ...", node.name);
        }
        let req = proto::InstallChnRequest {
            name: node.name.clone(),
            address: node.addr.clone(),
        };
        cluster
            .install_chn(req)
            .await
            .map_err(|s| anyhow::anyhow!("installing {} failed: {}", node.name, s.message()))?;
    }
    Ok(())
}

/// Where `cluster restore` takes the shared LU from.
pub enum RestoreFrom {
    /// The newest good copy in the backup location on the disk array, as
    /// the first CHN sees it.
    Array,
    /// A copy saved with `shared-lu backup --to`: a file, or a target (a
    /// directory or `s3://BUCKET/PREFIX`) whose newest good copy is taken.
    Saved(String),
}

/// What `cluster restore` asks for.
pub struct Restore {
    pub from: RestoreFrom,
    /// Restore a copy made for another disk array.
    pub force: bool,
}

/// Starts a new shared LU on `nodes[0]` from a backup (the disaster
/// restore), refusing when any CHN still belongs to one, and prints what
/// came back. `install` then joins the other CHNs.
pub async fn restore(
    cluster: &Cluster,
    nodes: &[NodeSpec],
    initialized: &[bool],
    r: &Restore,
    quiet: bool,
) -> anyhow::Result<proto::RestoreSharedLuReply> {
    if let Some(n) = nodes.iter().zip(initialized).find_map(|(n, i)| i.then_some(n)) {
        bail!(
            "{} at {} still belongs to a shared LU; a backup is restored only onto CHNs started with empty data \
             directories (stop every nasd, move its data directory away, start it again)",
            n.name,
            n.addr
        );
    }
    let first = nodes.first().context("no CHN to restore onto")?;
    let (image, source) = match &r.from {
        RestoreFrom::Array => (Vec::new(), "its backup location on the disk array".to_string()),
        RestoreFrom::Saved(spec) => newest_saved_copy(spec).await?,
    };
    if !quiet {
        eprintln!("restoring the shared LU on {} from {source} ...", first.name);
    }
    let reply = cluster
        .admin_at(0)
        .restore_shared_lu(proto::RestoreSharedLuRequest { image, force: r.force })
        .await
        .map_err(|s| anyhow::anyhow!("restoring on {} failed: {}", first.name, s.message()))?
        .into_inner();
    if !quiet {
        let from = reply.restored_from.clone().unwrap_or_default();
        eprintln!(
            "restored from {}: log index {} (term {}), written by {} at {} UTC.\n\
             Changes made after log index {} are not in it.\n\
             Back: {} disks, {} LUs, {} users, {} exports, {} CHNs; dropped: {} client sessions and {} file locks \
             (those clients log in again).",
            from.file,
            from.log_index,
            from.log_term,
            from.taken_by,
            crate::output::utc(from.taken_ms),
            from.log_index,
            reply.disks,
            reply.lus,
            reply.users,
            reply.exports,
            reply.chns,
            reply.sessions_dropped,
            reply.file_locks_dropped
        );
    }
    Ok(reply)
}

/// The bytes of the copy `spec` names (a file), or of the newest copy in
/// the target `spec` (a directory or an object store prefix) that reads
/// back whole, and where it is.
async fn newest_saved_copy(spec: &str) -> anyhow::Result<(Vec<u8>, String)> {
    use ::nas_backup::Target;
    let file = std::path::Path::new(spec);
    if file.is_file() {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read {spec}"))?;
        proto::backup_file::decode(file, &bytes)?;
        return Ok((bytes, spec.to_string()));
    }
    let target = Target::parse(spec)?;
    let mut names: Vec<String> = target
        .list()
        .await?
        .into_iter()
        .filter(|n| proto::backup_file::is_copy_name(n))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    if names.is_empty() {
        bail!("{spec} holds no shared LU backup (no shared-lu-*.nasbak)");
    }
    let mut damage = Vec::new();
    for name in names {
        let at = target.location(&name);
        let bytes = target.get(&name).await?;
        match proto::backup_file::decode(std::path::Path::new(&at), &bytes) {
            Ok(_) => return Ok((bytes, at)),
            Err(e) => damage.push(e.to_string()),
        }
    }
    bail!("{spec} holds no good shared LU backup: {}", damage.join("; "))
}

/// Waits until the leader sees `n` voters, each caught up and with a fresh
/// heartbeat (only the leader's view shows both), and returns its status.
pub async fn wait_healthy(cluster: &Cluster, n: usize, timeout: Duration) -> anyhow::Result<proto::ClusterStatusReply> {
    wait_for(
        "every CHN to be a voter with a fresh heartbeat",
        timeout,
        || async move {
            let s = cluster.leader_status().await.map_err(|s| s.message().to_string())?;
            let healthy = s.leader_id != 0
                && s.answered_by == s.leader_name
                && s.members.iter().filter(|m| m.voter).count() == n
                && s.members
                    .iter()
                    .all(|m| (0..5000).contains(&m.heartbeat_age_ms) && m.matched_index > 0);
            Ok(healthy.then_some(s))
        },
    )
    .await
}

/// What `provision` makes, each part optional.
#[derive(Debug, Default)]
pub struct Provision {
    /// Disks to define when the array holds none, and their size.
    pub disks: Option<(u32, u64)>,
    /// An LU of this RAID level on these disks, unless one uses exactly them.
    pub lu: Option<(u32, Vec<u32>)>,
    /// A user and the password it gets when it does not exist yet.
    pub user: Option<(String, String)>,
    /// An export of the LU above: name, owning CHN, partner CHN.
    pub export: Option<(String, String, String)>,
}

/// Makes what `p` asks for that is not there yet, and prints one line per
/// step (made, or already there). Never changes what exists: a user keeps
/// its password, an export its owner.
pub async fn provision(cluster: &Cluster, p: &Provision) -> anyhow::Result<()> {
    let err = crate::status_err;
    if let Some((disks, size)) = p.disks {
        let have = cluster.list_disks(false).await.map_err(err)?;
        if have.disks.is_empty() {
            cluster
                .init_array(proto::InitArrayRequest {
                    disks,
                    disk_capacity_bytes: size,
                })
                .await
                .map_err(err)?;
            eprintln!("array: {disks} disks of {}", ::nas_client::human_size(size));
        } else {
            eprintln!("array: {} disks already defined", have.disks.len());
        }
    }
    let mut lu_number = None;
    if let Some((raid, disks)) = &p.lu {
        let level = crate::storage::raid_level(*raid)?;
        let lus = cluster.list_lus(false).await.map_err(err)?;
        let mut wanted = disks.clone();
        wanted.sort_unstable();
        let existing = lus.lus.iter().find(|l| {
            let mut d = l.disks.clone();
            d.sort_unstable();
            d == wanted
        });
        lu_number = Some(match existing {
            Some(l) => {
                eprintln!("LU {}: already on disks {disks:?}", l.number);
                l.number
            }
            None => {
                let req = proto::CreateLuRequest {
                    raid: level as i32,
                    disks: disks.clone(),
                    stripe_unit_bytes: 0,
                };
                let r = cluster.create_lu(req).await.map_err(err)?;
                eprintln!("LU {}: RAID {raid} on disks {disks:?}", r.assigned);
                r.assigned as u32
            }
        });
    }
    if let Some((name, password)) = &p.user {
        let users = cluster.list_users(false).await.map_err(err)?;
        if users.users.iter().any(|u| &u.name == name) {
            eprintln!("user {name}: already there (password unchanged)");
        } else {
            let req = proto::AddUserRequest {
                name: name.clone(),
                password: password.clone(),
                uid: 0,
                groups: Vec::new(),
            };
            ignore_exists(cluster.add_user(req).await)?;
            eprintln!("user {name}: added");
        }
    }
    if let Some((name, owner, partner)) = &p.export {
        let exports = cluster.list_exports(false).await.map_err(err)?;
        if let Some(e) = exports.exports.iter().find(|e| &e.name == name) {
            eprintln!("export {name}: already there (served by {})", e.owner_chn);
        } else {
            let lu = lu_number.context("an export needs an LU: give --lu-disks (and --raid)")?;
            let req = proto::CreateExportRequest {
                name: name.clone(),
                lu,
                owner_chn: owner.clone(),
                partner_chn: partner.clone(),
                users: p.user.iter().map(|(u, _)| u.clone()).collect(),
            };
            ignore_exists(cluster.create_export(req).await)?;
            eprintln!("export {name}: LU {lu}, served by {owner}, partner {partner}");
        }
    }
    Ok(())
}
