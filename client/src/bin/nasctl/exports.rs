//! `export`, `client` and `lock list`: the service table, client sessions
//! and the lock tables.

use clap::Subcommand;
use serde_json::{json, Value};

use ::nas_client::proto::labels::service_state;
use ::nas_client::proto::*;
use ::nas_client::Cluster;

use crate::output::{print_list, written, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum ExportCmd {
    /// Export LU N as NAME, served by --chn with --partner taking over.
    Create {
        name: String,
        #[arg(long)]
        lu: u32,
        #[arg(long)]
        chn: String,
        #[arg(long)]
        partner: Option<String>,
        /// Users allowed to mount it, comma-separated.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
    },
    /// The service table.
    List(ReadOpts),
    /// Check the file system of export NAME on the CHN serving it: every
    /// block of its data area must be free, used by a file, or held only
    /// by snapshots, exactly once (nothing leaked, nothing double-owned).
    Check { name: String },
}

#[derive(Subcommand)]
pub(crate) enum ClientCmd {
    /// Client sessions recorded in the shared LU.
    List(ReadOpts),
}

#[derive(Subcommand)]
pub(crate) enum LockCmd {
    /// The LU lock and file lock tables.
    List(ReadOpts),
}

pub(crate) async fn run(c: &Cluster, cmd: ExportCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ExportCmd::Create {
            name,
            lu,
            chn,
            partner,
            users,
        } => create(c, name, lu, chn, partner, users, json).await,
        ExportCmd::List(o) => list(c, o, json).await,
        ExportCmd::Check { name } => crate::snapshots::check(c, name, json).await,
    }
}

pub(crate) async fn run_client(c: &Cluster, cmd: ClientCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ClientCmd::List(o) => client_list(c, o, json).await,
    }
}

async fn create(
    c: &Cluster,
    name: String,
    lu: u32,
    chn: String,
    partner: Option<String>,
    users: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let req = CreateExportRequest {
        name: name.clone(),
        lu,
        owner_chn: chn,
        partner_chn: partner.unwrap_or_default(),
        users,
    };
    let r = c.create_export(req).await.map_err(status_err)?;
    written(json, &format!("export {name} created"), r);
    Ok(())
}

async fn list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_exports(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["export", "lu", "owner_chn", "partner_chn", "state", "users"]);
    for e in &r.exports {
        let partner = if e.partner_chn.is_empty() {
            Value::Null
        } else {
            json!(e.partner_chn)
        };
        t.row(vec![
            json!(e.name),
            json!(e.lu),
            json!(e.owner_chn),
            partner,
            json!(service_state(e.state)),
            json!(e.users),
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

async fn client_list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_clients(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["client_id", "session", "user", "export", "last_seen_ms"]);
    for cl in &r.clients {
        t.row(vec![
            json!(cl.client_id),
            json!(cl.session),
            json!(cl.user),
            json!(cl.export),
            json!(cl.last_seen_ms),
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

/// `lock list`: the LU lock and file lock tables.
pub(crate) async fn lock_list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_locks(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["kind", "target", "holder", "mode", "epoch", "lease_expiry_ms"]);
    for l in &r.lu_locks {
        let target = if l.lu == 0 {
            "SHARED".to_string()
        } else {
            format!("LU {}", l.lu)
        };
        t.row(vec![
            json!("lu"),
            json!(target),
            json!(l.chn),
            json!("exclusive"),
            json!(l.epoch),
            json!(l.lease_expiry_ms),
        ]);
    }
    for f in &r.file_locks {
        for h in &f.holders {
            let mode = if h.mode == LockMode::LockShared as i32 {
                "shared"
            } else {
                "exclusive"
            };
            t.row(vec![
                json!("file"),
                json!(format!("{}:{}", f.export, f.path)),
                json!(h.session),
                json!(mode),
                Value::Null,
                json!(h.lease_expiry_ms),
            ]);
        }
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}
