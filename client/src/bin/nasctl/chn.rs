//! `chn`: installing, listing and removing CHNs.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{json, Value};

use ::nas_client::proto::labels::chn_state;
use ::nas_client::proto::*;
use ::nas_client::Cluster;

use crate::output::{print_list, written, Table};
use crate::{status_err, ReadOpts};

#[derive(Subcommand)]
pub(crate) enum ChnCmd {
    /// Install a CHN: bootstrap the shared LU on the first one, join the
    /// others (learner, then voter). The nasd at ADDR must be running.
    Install {
        name: String,
        #[arg(long)]
        addr: String,
        /// Bootstrap a new shared LU on this CHN (first CHN only).
        #[arg(long)]
        bootstrap: bool,
    },
    /// Installed CHNs and their daemon information.
    List(ReadOpts),
    /// Take a CHN out of the membership and the daemon table.
    Remove { name: String },
}

pub(crate) async fn run(c: &Cluster, cmd: ChnCmd, json: bool, retry: Duration) -> anyhow::Result<()> {
    match cmd {
        ChnCmd::Install { name, addr, bootstrap } => install(c, name, addr, bootstrap, json, retry).await,
        ChnCmd::List(o) => list(c, o, json).await,
        ChnCmd::Remove { name } => remove(c, name, json).await,
    }
}

async fn install(
    c: &Cluster,
    name: String,
    addr: String,
    bootstrap: bool,
    json: bool,
    retry: Duration,
) -> anyhow::Result<()> {
    let reply = if bootstrap {
        // Bootstrap must reach exactly that CHN, not any member.
        let one = c.on(&[addr.as_str()])?.with_retry_for(retry);
        let info = one.node_info(NodeInfoRequest {}).await.map_err(status_err)?;
        if info.name != name {
            bail!(
                "the nasd at {addr} is named {}, not {name}; check the name and address",
                info.name
            );
        }
        let (admin_user, admin_password) = crate::auth::first_admin()?;
        let req = BootstrapRequest {
            admin_user,
            admin_password,
        };
        one.bootstrap(req).await.map_err(status_err)?
    } else {
        let req = InstallChnRequest {
            name: name.clone(),
            address: addr,
        };
        c.install_chn(req).await.map_err(status_err)?
    };
    let chn = reply.chn.unwrap_or_default();
    if json {
        outln!("{}", chn_json(&chn));
    } else {
        outln!(
            "{} installed as node {} ({})",
            chn.chn,
            chn.node_id,
            chn_state(chn.state)
        );
    }
    Ok(())
}

async fn list(c: &Cluster, o: ReadOpts, json: bool) -> anyhow::Result<()> {
    let r = c.list_chns(o.local).await.map_err(status_err)?;
    let status = c.leader_status().await.map_err(status_err)?;
    let mut t = Table::new(&[
        "chn",
        "node_id",
        "address",
        "state",
        "raft_role",
        "voter",
        "heartbeat_age_ms",
        "load",
    ]);
    for d in &r.chns {
        let member = status.members.iter().find(|m| m.node_id == d.node_id);
        let age = member.map_or(Value::Null, |m| {
            if m.heartbeat_age_ms < 0 {
                Value::Null
            } else {
                json!(m.heartbeat_age_ms)
            }
        });
        t.row(vec![
            json!(d.chn),
            json!(d.node_id),
            json!(d.address),
            json!(chn_state(d.state)),
            json!(d.daemon_states.get("raft").cloned().unwrap_or_default()),
            json!(member.is_some_and(|m| m.voter)),
            age,
            json!(f64::from(d.load) / 100.0),
        ]);
    }
    print_list(&t, json, r.possibly_stale);
    Ok(())
}

async fn remove(c: &Cluster, name: String, json: bool) -> anyhow::Result<()> {
    let r = c
        .remove_chn(RemoveChnRequest { name: name.clone() })
        .await
        .map_err(status_err)?;
    written(json, &format!("{name} removed"), r);
    Ok(())
}

fn chn_json(d: &Daemon) -> Value {
    json!({"chn": d.chn, "node_id": d.node_id, "address": d.address, "state": chn_state(d.state)})
}
