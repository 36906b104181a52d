//! `nasctl fs ...`, `nasctl lock EXPORT:/path` and `nasctl unlock`: the
//! file service from the shell, through `nas_client::NasClient`.
//!
//! Owns argument parsing and printing for file commands; every call goes
//! through the client library, which follows the export across failovers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use ::nas_client::nas::{Options, PutGetError};
use ::nas_client::proto::{BreakFileLockRequest, FileAttr, FileType};
use ::nas_client::{human_size, Cluster, NasClient};

use crate::output::{utc, Table};
use crate::status_err;

/// Where file commands log in: `--user` (or $NAS_USER) and $NAS_PASSWORD
/// (asked for without echo when unset).
#[derive(Args, Clone)]
pub struct Login {
    /// User of the file service.
    #[arg(long, env = "NAS_USER", global = true)]
    pub user: Option<String>,
}

#[derive(Subcommand)]
pub enum FsCmd {
    /// Copy a local file into an export: `fs put ./big.iso home:/isos/big.iso`.
    Put { local: PathBuf, remote: String },
    /// Copy a file out of an export: `fs get home:/isos/big.iso ./big.iso`.
    Get { remote: String, local: PathBuf },
    /// List a directory (`home:/` for the root).
    Ls { remote: String },
    /// Metadata of a file or directory: name, head address, size, owner, update time, mode, extents.
    Stat { remote: String },
    /// Remove a file, or an empty directory.
    Rm { remote: String },
    /// Make a directory.
    Mkdir {
        remote: String,
        /// Permission bits, octal.
        #[arg(long, default_value = "755")]
        mode: String,
    },
    /// Move or rename within an export, atomically: `fs mv home:/a home:/b`.
    Mv { from: String, to: String },
    /// Size and free space of an export's file system.
    Df { export: String },
}

/// `lock EXPORT:/path`: take a file lock and hold it until Ctrl-C.
#[derive(Args)]
pub struct TakeLock {
    /// The file to lock, as EXPORT:/path.
    pub target: String,
    /// A shared (read) lock instead of an exclusive one.
    #[arg(long)]
    pub shared: bool,
    /// Seconds to wait for a conflicting lock to go (0 answers at once).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    /// Release after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub hold: Option<u64>,
}

/// Splits `EXPORT:/path`; `EXPORT@SNAPSHOT:/path` names the path in a
/// snapshot, which the file service reads under `/.snapshot/SNAPSHOT`.
pub fn split_target(t: &str) -> anyhow::Result<(String, String)> {
    let (export, path) = t
        .split_once(':')
        .ok_or_else(|| anyhow!("{t:?} names no export; write EXPORT:/path, e.g. home:/docs/a.txt"))?;
    let (export, snapshot) = match export.split_once('@') {
        Some((e, "")) => bail!("{t:?} names no snapshot after @; write {e}@NAME:/path"),
        Some((e, s)) => (e, Some(s)),
        None => (export, None),
    };
    if export.is_empty() {
        bail!("{t:?} names no export; write EXPORT:/path");
    }
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        bail!("{t:?}: the path must start with /, e.g. {export}:/{path}");
    }
    let path = match snapshot {
        Some(s) => format!("/.snapshot/{s}{}", path.trim_end_matches('/')),
        None => path.to_string(),
    };
    Ok((export.to_string(), path))
}

fn password(user: &str) -> anyhow::Result<String> {
    if let Some(p) = crate::auth::env("NAS_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password(format!("password for {user}: "))
        .context("cannot read a password from the terminal; set NAS_PASSWORD instead")
}

pub async fn session(c: &Cluster, login: &Login, export: &str, retry: Duration) -> anyhow::Result<NasClient> {
    let Some(user) = &login.user else {
        bail!("file commands need a user: pass --user NAME or set NAS_USER (add one with `nasctl user add`)");
    };
    let pw = password(user)?;
    let cluster = c.on(c.addrs())?.with_retry_for(retry);
    let opts = Options {
        retry_for: retry,
        ..Options::default()
    };
    NasClient::connect(cluster, user, &pw, export, opts)
        .await
        .map_err(status_err)
}

fn kind(a: &FileAttr) -> &'static str {
    if a.r#type == FileType::FileDirectory as i32 {
        "dir"
    } else {
        "file"
    }
}

fn attr_row(a: &FileAttr) -> Vec<Value> {
    vec![
        json!(a.name),
        json!(kind(a)),
        json!(a.size),
        json!(format!("{:o}", a.mode)),
        json!(a.owner),
        json!(utc(a.mtime_ms)),
        json!(a.mtime_ms),
    ]
}

fn progress_bar(total: u64, json: bool) -> indicatif::ProgressBar {
    if json || total < (8 << 20) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn copy_err(e: PutGetError) -> anyhow::Error {
    match e {
        PutGetError::Local(m) => anyhow!(m),
        PutGetError::Remote(s) => status_err(s),
    }
}

/// Reports a finished copy: bytes, time and rate.
fn copied(json: bool, what: &str, bytes: u64, took: Duration) {
    if json {
        outln!("{}", json!({"bytes": bytes, "seconds": took.as_secs_f64()}));
    } else {
        let rate = human_size((bytes as f64 / took.as_secs_f64().max(1e-6)) as u64);
        outln!(
            "{what}: {} in {:.2} s ({rate}/s)",
            human_size(bytes),
            took.as_secs_f64()
        );
    }
}

impl FsCmd {
    /// The export the command works on.
    fn export(&self) -> anyhow::Result<String> {
        match self {
            FsCmd::Put { remote, .. }
            | FsCmd::Get { remote, .. }
            | FsCmd::Ls { remote }
            | FsCmd::Stat { remote }
            | FsCmd::Rm { remote }
            | FsCmd::Mkdir { remote, .. } => Ok(split_target(remote)?.0),
            FsCmd::Mv { from, .. } => Ok(split_target(from)?.0),
            FsCmd::Df { export } => Ok(export.trim_end_matches(':').to_string()),
        }
    }
}

/// Runs one `fs` command in a session that is closed afterwards, also when
/// the command fails (so its row leaves the client table at once).
pub async fn run_fs(c: &Cluster, login: &Login, cmd: FsCmd, json: bool, retry: Duration) -> anyhow::Result<()> {
    if let FsCmd::Put { local, .. } = &cmd {
        // A missing local file is found before logging in.
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    }
    let nas = session(c, login, &cmd.export()?, retry).await?;
    let result = fs_command(&nas, cmd, json).await;
    let _ = nas.close().await;
    result
}

async fn fs_command(nas: &NasClient, cmd: FsCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        FsCmd::Put { local, remote } => {
            let (_, path) = split_target(&remote)?;
            let total = std::fs::metadata(&local)
                .with_context(|| format!("cannot read {}", local.display()))?
                .len();
            let bar = progress_bar(total, json);
            let start = Instant::now();
            let n = nas
                .put_file(&local, &path, |done| bar.set_position(done))
                .await
                .map_err(copy_err)?;
            bar.finish_and_clear();
            copied(
                json,
                &format!("put {} -> {remote}", local.display()),
                n,
                start.elapsed(),
            );
        }
        FsCmd::Get { remote, local } => {
            let (_, path) = split_target(&remote)?;
            let size = nas.stat(&path).await.map_err(status_err)?.size;
            let bar = progress_bar(size, json);
            let start = Instant::now();
            let n = nas
                .get_file(&path, &local, |done, _| bar.set_position(done))
                .await
                .map_err(copy_err)?;
            bar.finish_and_clear();
            copied(
                json,
                &format!("get {remote} -> {}", local.display()),
                n,
                start.elapsed(),
            );
        }
        FsCmd::Ls { remote } => {
            let (_, path) = split_target(&remote)?;
            let entries = nas.list(&path).await.map_err(status_err)?;
            let mut t = Table::new(&["name", "type", "size", "mode", "owner", "mtime", "mtime_ms"]);
            for e in &entries {
                t.row(attr_row(e));
            }
            t.print(json);
        }
        FsCmd::Stat { remote } => {
            let (_, path) = split_target(&remote)?;
            let a = nas.stat(&path).await.map_err(status_err)?;
            let fields = [
                (
                    "name",
                    json!(if a.name.is_empty() { "/".into() } else { a.name.clone() }),
                ),
                ("path", json!(path)),
                ("type", json!(kind(&a))),
                ("handle", json!(a.handle)),
                ("head_address", json!(a.head_address)),
                ("size", json!(a.size)),
                ("owner", json!(a.owner)),
                ("uid", json!(a.uid)),
                ("gid", json!(a.gid)),
                ("mode", json!(format!("{:o}", a.mode))),
                ("mtime", json!(utc(a.mtime_ms))),
                ("mtime_ms", json!(a.mtime_ms)),
                ("extents", json!(a.extents)),
                ("allocated_bytes", json!(a.allocated_bytes)),
            ];
            if json {
                let obj: serde_json::Map<String, Value> =
                    fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                outln!("{}", Value::Object(obj));
            } else {
                for (k, v) in fields {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    outln!("{k:>16}  {v}");
                }
            }
        }
        FsCmd::Rm { remote } => {
            let (_, path) = split_target(&remote)?;
            let a = nas.stat(&path).await.map_err(status_err)?;
            if a.r#type == FileType::FileDirectory as i32 {
                nas.rmdir(&path).await.map_err(status_err)?;
            } else {
                nas.unlink(&path).await.map_err(status_err)?;
            }
            done(json, &format!("removed {remote}"));
        }
        FsCmd::Mkdir { remote, mode } => {
            let (_, path) = split_target(&remote)?;
            let mode = u32::from_str_radix(&mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| anyhow!("--mode {mode} is not octal permission bits like 755"))?;
            nas.mkdir(&path, mode).await.map_err(status_err)?;
            done(json, &format!("made {remote}"));
        }
        FsCmd::Mv { from, to } => {
            let (export, from_path) = split_target(&from)?;
            let (to_export, to_path) = split_target(&to)?;
            if to_export != export {
                bail!("{from} and {to} are on different exports; copy with get and put instead");
            }
            nas.rename(&from_path, &to_path).await.map_err(status_err)?;
            done(json, &format!("moved {from} -> {to}"));
        }
        FsCmd::Df { export } => {
            let export = export.trim_end_matches(':').to_string();
            let s = nas.statfs().await.map_err(status_err)?;
            let mut t = Table::new(&[
                "export",
                "data_bytes",
                "free_bytes",
                "used_pct",
                "files",
                "meta_bytes",
                "meta_used_bytes",
                "snapshot_bytes",
            ]);
            let used = s.data_bytes.saturating_sub(s.free_bytes) as f64 * 100.0 / s.data_bytes.max(1) as f64;
            t.row(vec![
                json!(export),
                json!(s.data_bytes),
                json!(s.free_bytes),
                json!(format!("{used:.1}")),
                json!(s.files),
                json!(s.meta_bytes),
                json!(s.meta_used_bytes),
                json!(s.snapshot_bytes),
            ]);
            t.print(json);
        }
    }
    Ok(())
}

fn done(json: bool, what: &str) {
    if json {
        outln!("{}", json!({"ok": true}));
    } else {
        outln!("{what}");
    }
}

/// `lock EXPORT:/path`: takes the lock, holds it, releases it.
pub async fn take_lock(c: &Cluster, login: &Login, a: TakeLock, json: bool, retry: Duration) -> anyhow::Result<()> {
    let (export, path) = split_target(&a.target)?;
    let nas = session(c, login, &export, retry).await?;
    nas.lock(&path, a.shared, Duration::from_secs(a.wait))
        .await
        .map_err(status_err)?;
    let mode = if a.shared { "shared" } else { "exclusive" };
    if json {
        outln!(
            "{}",
            json!({"locked": a.target, "mode": mode, "session": nas.client_id()})
        );
    } else {
        match a.hold {
            Some(s) => outln!(
                "locked {} ({mode}) as session {}; releasing in {s} s",
                a.target,
                nas.client_id()
            ),
            None => outln!(
                "locked {} ({mode}) as session {}; press Ctrl-C to release",
                a.target,
                nas.client_id()
            ),
        }
    }
    match a.hold {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => {
            tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        }
    }
    nas.unlock(&path).await.map_err(status_err)?;
    let _ = nas.close().await;
    if !json {
        outln!("released {}", a.target);
    }
    Ok(())
}

/// `unlock EXPORT:/path [--session ID]`: breaks a file lock as operator.
pub async fn break_lock(c: &Cluster, target: &str, session: Option<String>, json: bool) -> anyhow::Result<()> {
    let (export, path) = split_target(target)?;
    let req = BreakFileLockRequest {
        export,
        path,
        session: session.clone().unwrap_or_default(),
    };
    let r = c.break_file_lock(req).await.map_err(status_err)?;
    crate::output::written(
        json,
        &match session {
            Some(s) => format!("released session {s}'s lock on {target}"),
            None => format!("released every lock on {target}"),
        },
        r,
    );
    Ok(())
}
