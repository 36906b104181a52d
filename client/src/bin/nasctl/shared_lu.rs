//! `shared-lu` and `path`: the shared LU itself and the paths CHNs have to
//! it, its backup and data LUs.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use ::nas_client::proto::backup_file;

use ::nas_backup::Target;
use ::nas_client::proto::labels::path_target;
use ::nas_client::proto::{self, *};
use ::nas_client::{human_size, Cluster};

use crate::output::{print_list, written, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum SharedLuCmd {
    /// Initialize the shared LU (and its backup) on the logical level.
    Init {
        /// Do not initialize the backup.
        #[arg(long)]
        no_backup: bool,
    },
    /// Write a copy of the shared LU to its backup location on the disk
    /// array now; `backup status` lists the copies there.
    ///
    /// The leader also writes one after every snapshot and, when anything
    /// changed, every minute (nasd --shared-lu-backup-every-s); the newest
    /// two good copies are kept. `cluster restore` starts a new cluster
    /// from one after every CHN's data directory is lost.
    Backup(BackupArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    cmd: Option<BackupCmd>,
    /// Also save the copy to TARGET: a directory on this machine (another
    /// device, a mounted tape) or an S3-compatible store as
    /// s3://BUCKET/PREFIX (endpoint and credentials from AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION);
    /// `cluster restore --from TARGET` takes it back. It holds password
    /// hashes and the cluster's keys: keep it as safe as a key.
    #[arg(long, value_name = "TARGET")]
    to: Option<String>,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// The copies in the backup location: log index, age, size, whether
    /// each still matches its checksum.
    Status,
}

#[derive(Subcommand)]
pub(crate) enum PathCmd {
    /// Let CHN reach a target: `shared`, `backup` or `lu:N`.
    Add {
        chn: String,
        #[arg(long)]
        to: String,
    },
    /// Take a path away: `shared`, `backup` or `lu:N`.
    Remove {
        chn: String,
        #[arg(long)]
        to: String,
    },
    /// List the path table.
    List(ReadOpts),
}

pub(crate) async fn run_shared_lu(c: &Cluster, cmd: SharedLuCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SharedLuCmd::Init { no_backup } => init(c, no_backup, json).await,
        SharedLuCmd::Backup(BackupArgs {
            cmd: Some(BackupCmd::Status),
            ..
        }) => backup_status(c, json).await,
        SharedLuCmd::Backup(BackupArgs { cmd: None, to }) => backup(c, to, json).await,
    }
}

pub(crate) async fn run_path(c: &Cluster, cmd: PathCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        PathCmd::Add { chn, to } => change_path(c, chn, &to, true, json).await,
        PathCmd::Remove { chn, to } => change_path(c, chn, &to, false, json).await,
        PathCmd::List(o) => list(c, o, json).await,
    }
}

async fn init(c: &Cluster, no_backup: bool, json: bool) -> anyhow::Result<()> {
    let r = c
        .init_shared_lu(InitSharedLuRequest {
            with_backup: !no_backup,
        })
        .await
        .map_err(status_err)?;
    written(json, "shared LU initialized", r);
    Ok(())
}

/// `shared-lu backup [--to DIR]`.
async fn backup(c: &Cluster, to: Option<String>, json: bool) -> anyhow::Result<()> {
    let r = c
        .backup_shared_lu(BackupSharedLuRequest {
            include_image: to.is_some(),
        })
        .await
        .map_err(status_err)?;
    let copy = r.copy.unwrap_or_default();
    let saved = match &to {
        Some(spec) => {
            let target = Target::parse(spec)?;
            let checked = backup_file::decode(std::path::Path::new("the copy the CHN sent"), &r.image)?;
            let name = backup_file::file_name(checked.backup.log_index);
            Some(target.put(&name, r.image).await.with_context(|| {
                format!(
                    "the copy was written on the array, but not saved to {}",
                    target.location(&name)
                )
            })?)
        }
        None => None,
    };
    let saved_path = saved;
    if json {
        outln!("{}", json!({"copy": copy_json(&copy), "saved_to": saved_path}));
        return Ok(());
    }
    outln!(
        "shared LU backed up: log index {} (term {}), {}, sha256 {}",
        copy.log_index,
        copy.log_term,
        human_size(copy.size_bytes),
        short(&copy.sha256)
    );
    outln!("  on the disk array: {}", copy.file);
    if let Some(p) = saved_path {
        outln!("  saved here:        {p}");
    }
    Ok(())
}

fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}

fn copy_json(c: &SharedLuBackupCopy) -> serde_json::Value {
    json!({"file": c.file, "log_index": c.log_index, "log_term": c.log_term, "taken_ms": c.taken_ms,
           "taken_by": c.taken_by, "size_bytes": c.size_bytes, "sha256": c.sha256,
           "damage": (!c.damage.is_empty()).then_some(&c.damage), "array_id": c.array_id})
}

/// `shared-lu backup status`.
async fn backup_status(c: &Cluster, json: bool) -> anyhow::Result<()> {
    let s = c
        .shared_lu_backup_status(SharedLuBackupStatusRequest {})
        .await
        .map_err(status_err)?;
    if json {
        let copies: Vec<_> = s.copies.iter().map(copy_json).collect();
        outln!(
            "{}",
            json!({"answered_by": s.answered_by, "location": s.location, "every_s": s.every_s,
                   "backup_initialized": s.backup_initialized,
                   "last_error": (!s.last_error.is_empty()).then_some(&s.last_error), "copies": copies})
        );
        return Ok(());
    }
    outln!("location:  {} (as {} sees it)", s.location, s.answered_by);
    let every = match s.every_s {
        0 => "after every snapshot".to_string(),
        n => format!("after every snapshot and every {n} s when anything changed"),
    };
    outln!(
        "schedule:  {}",
        if s.backup_initialized {
            format!("the leader writes a copy {every}")
        } else {
            "none: the backup is not initialized (run `nasctl shared-lu init`)".into()
        }
    );
    if !s.last_error.is_empty() {
        outln!("last try:  FAILED on {}: {}", s.answered_by, s.last_error);
    }
    outln!();
    let now = ::nas_client::drill::now_ms();
    let mut t = Table::new(&[
        "log_index",
        "term",
        "age",
        "size",
        "sha256",
        "state",
        "taken_by",
        "file",
    ]);
    for copy in &s.copies {
        let good = copy.damage.is_empty();
        t.row(vec![
            if good { json!(copy.log_index) } else { json!(null) },
            if good { json!(copy.log_term) } else { json!(null) },
            if good {
                json!(age(now.saturating_sub(copy.taken_ms)))
            } else {
                json!(null)
            },
            json!(human_size(copy.size_bytes)),
            json!(short(&copy.sha256)),
            json!(if good {
                "ok".to_string()
            } else {
                format!("DAMAGED: {}", copy.damage)
            }),
            json!(copy.taken_by),
            json!(copy.file),
        ]);
    }
    t.print(false);
    if !s.copies.iter().any(|c| c.damage.is_empty()) {
        eprintln!("no good copy: run `nasctl shared-lu backup` now");
    }
    Ok(())
}

fn age(ms: u64) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

async fn list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_paths(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["chn", "target"]);
    for p in &r.paths {
        t.row(vec![json!(p.chn), json!(path_target(p))]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

/// `path add` and `path remove`.
async fn change_path(c: &Cluster, chn: String, to: &str, add: bool, json: bool) -> anyhow::Result<()> {
    let (target, lu) = parse_target(to)?;
    let req = PathRequest {
        path: Some(proto::Path {
            chn,
            target: target as i32,
            lu,
        }),
    };
    let r = if add {
        c.add_path(req).await
    } else {
        c.remove_path(req).await
    }
    .map_err(status_err)?;
    written(json, if add { "path added" } else { "path removed" }, r);
    Ok(())
}

fn parse_target(s: &str) -> anyhow::Result<(PathTarget, u32)> {
    match s {
        "shared" => Ok((PathTarget::PathSharedLu, 0)),
        "backup" => Ok((PathTarget::PathSharedLuBackup, 0)),
        _ => match s.strip_prefix("lu:").map(str::parse::<u32>) {
            Some(Ok(n)) if n > 0 => Ok((PathTarget::PathDataLu, n)),
            _ => bail!("--to {s:?} is not a target; use shared, backup or lu:N"),
        },
    }
}
