//! `shared-lu` and `path`: the shared LU itself and the paths CHNs have to
//! it, its backup and data LUs.

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use ::nas_client::proto::labels::path_target;
use ::nas_client::proto::{self, *};
use ::nas_client::Cluster;

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
