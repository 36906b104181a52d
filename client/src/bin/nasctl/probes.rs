//! `probe`: keyed registers in the shared LU, to check from the shell that
//! a write commits and that every CHN reads it back.

use clap::Subcommand;
use serde_json::json;

use ::nas_client::proto::WriteProbeRequest;
use ::nas_client::Cluster;

use crate::output::{print_list, written, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum ProbeCmd {
    /// Set probe KEY to VALUE (a replicated write like any other).
    Write {
        /// 1 to 64 of A-Z a-z 0-9 . _ -
        key: String,
        /// At most 1 KiB of text.
        value: String,
    },
    /// Every probe and its value (linearizable unless --local).
    List(ReadOpts),
}

pub(crate) async fn run(c: &Cluster, cmd: ProbeCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        ProbeCmd::Write { key, value } => write(c, key, value, json).await,
        ProbeCmd::List(o) => list(c, o, json).await,
    }
}

async fn write(c: &Cluster, key: String, value: String, json: bool) -> anyhow::Result<()> {
    let req = WriteProbeRequest {
        key: key.clone(),
        value: value.into_bytes(),
    };
    let r = c.write_probe(req).await.map_err(status_err)?;
    written(json, &format!("probe {key} written"), r);
    Ok(())
}

async fn list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_probes(o.local).await.map_err(status_err)?;
    let mut t = Table::new(&["key", "value"]);
    for p in &r.probes {
        t.row(vec![json!(p.key), json!(String::from_utf8_lossy(&p.value))]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}
