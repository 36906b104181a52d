//! `snapshot` and `export check`: copy-on-write snapshots of an export's
//! files, and the check that every block is accounted for exactly once.

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;

use ::nas_client::proto::*;
use ::nas_client::{human_size, Cluster};

use crate::output::{utc, Table};
use crate::status_err;

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Take snapshot NAME of EXPORT: read-only, taken in milliseconds
    /// whatever the export's size, sharing every block with the live files
    /// until they change. Read it with the file commands as
    /// EXPORT@NAME:/path, e.g. `nasctl fs ls home@monday:/` or
    /// `nasctl fs get home@monday:/a.txt ./a.txt`.
    Create { export: String, name: String },
    /// The snapshots of EXPORT, oldest first, with what deleting each would free.
    List { export: String },
    /// Delete snapshot NAME of EXPORT, freeing the blocks only it held.
    Delete { export: String, name: String },
}

pub(crate) async fn run(c: &Cluster, cmd: SnapshotCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create { export, name } => create(c, export, name, json).await,
        SnapshotCmd::List { export } => {
            let r = c
                .list_snapshots(ListSnapshotsRequest { export })
                .await
                .map_err(status_err)?;
            print_list(&r, json);
            Ok(())
        }
        SnapshotCmd::Delete { export, name } => {
            let r = c
                .delete_snapshot(SnapshotRequest {
                    export: export.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(status_err)?;
            if json {
                outln!(
                    "{}",
                    json!({"export": export, "deleted": name, "held_bytes": r.held_bytes, "snapshots": table(&r, true).to_json()})
                );
            } else {
                outln!(
                    "snapshot {export}@{name} deleted; snapshots of {export} now hold {}",
                    human_size(r.held_bytes)
                );
            }
            Ok(())
        }
    }
}

async fn create(c: &Cluster, export: String, name: String, json: bool) -> anyhow::Result<()> {
    let r = c
        .create_snapshot(SnapshotRequest {
            export: export.clone(),
            name: name.clone(),
        })
        .await
        .map_err(status_err)?;
    let s = r.snapshot.unwrap_or_default();
    if json {
        outln!(
            "{}",
            json!({"export": export, "name": s.name, "created_ms": s.created_ms, "files": s.files, "took_us": r.took_us})
        );
    } else {
        outln!(
            "snapshot {export}@{name} taken: {} files, in {:.1} ms; read it as {export}@{name}:/",
            s.files,
            r.took_us as f64 / 1000.0
        );
    }
    Ok(())
}

fn print_list(r: &SnapshotList, json: bool) {
    table(r, json).print(json);
    if !json {
        outln!(
            "\nsnapshots of {} hold {} that no live file uses",
            r.export,
            human_size(r.held_bytes)
        );
    }
}

fn table(r: &SnapshotList, json: bool) -> Table {
    let mut t = Table::new(&["name", "created", "files", "unique_bytes"]);
    for s in &r.snapshots {
        t.row(vec![
            json!(s.name),
            if json {
                json!(s.created_ms)
            } else {
                json!(utc(s.created_ms))
            },
            json!(s.files),
            if json {
                json!(s.unique_bytes)
            } else {
                json!(human_size(s.unique_bytes))
            },
        ]);
    }
    t
}

/// `export check NAME`.
pub(crate) async fn check(c: &Cluster, export: String, json: bool) -> anyhow::Result<()> {
    let r = c
        .check_export(CheckExportRequest { export: export.clone() })
        .await
        .map_err(status_err)?;
    if json {
        outln!(
            "{}",
            json!({"export": export, "data_bytes": r.data_bytes, "free_bytes": r.free_bytes, "live_bytes": r.live_bytes,
                   "held_bytes": r.held_bytes, "leaked_bytes": r.leaked_bytes,
                   "double_owned_bytes": r.double_owned_bytes, "problems": r.problems})
        );
    } else {
        outln!(
            "export {export}: {} data area = {} free + {} in files + {} held only by snapshots",
            human_size(r.data_bytes),
            human_size(r.free_bytes),
            human_size(r.live_bytes),
            human_size(r.held_bytes)
        );
        for p in &r.problems {
            outln!("  PROBLEM: {p}");
        }
    }
    if !r.problems.is_empty() {
        bail!(
            "export {export} failed its block check ({} bytes leaked, {} double-owned)",
            r.leaked_bytes,
            r.double_owned_bytes
        );
    }
    if !json {
        outln!("every block is free, in use, or held by snapshots exactly once");
    }
    Ok(())
}
