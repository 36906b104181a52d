//! `nasctl failover`: planned takeover, giveback and the failover status
//! (who serves what, how partners look, how much lease is left).

use clap::Subcommand;
use serde_json::{json, Value};

use ::nas_client::proto::*;
use ::nas_client::Cluster;

use crate::output::{utc, Table};
use crate::status_err;

#[derive(Subcommand)]
pub enum FailoverCmd {
    /// Move EXPORT to CHN --to now (planned: calls in progress finish,
    /// clients follow without an error).
    Takeover {
        export: String,
        /// The CHN to serve the export from now on.
        #[arg(long)]
        to: String,
    },
    /// Move EXPORT back to its home CHN (the one it was created on).
    Giveback { export: String },
    /// Exports with their owner, home, partner, lock epoch and lease left;
    /// CHNs with heartbeat age and probe result, as one CHN sees them.
    Status,
}

pub async fn run(c: &Cluster, cmd: FailoverCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        FailoverCmd::Takeover { export, to } => moved(c, export, to, json).await,
        FailoverCmd::Giveback { export } => moved(c, export, String::new(), json).await,
        FailoverCmd::Status => status(c, json).await,
    }
}

async fn moved(c: &Cluster, export: String, to: String, json: bool) -> anyhow::Result<()> {
    let req = MoveExportRequest { export, to };
    let r = c.move_export(req).await.map_err(status_err)?;
    let e = r.export.unwrap_or_default();
    if json {
        outln!(
            "{}",
            json!({"export": e.name, "owner_chn": e.owner_chn, "home_chn": e.home_chn, "took_ms": r.took_ms})
        );
    } else {
        outln!(
            "export {} is now served by {} (moved in {} ms)",
            e.name,
            e.owner_chn,
            r.took_ms
        );
    }
    Ok(())
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        json!(s)
    }
}

async fn status(c: &Cluster, json: bool) -> anyhow::Result<()> {
    let r = c.failover_status(FailoverStatusRequest {}).await.map_err(status_err)?;
    let mut exports = Table::new(&[
        "export",
        "owner_chn",
        "home_chn",
        "partner_chn",
        "next_taker",
        "epoch",
        "lease_left_ms",
        "moved",
        "moved_from",
        "reason",
    ]);
    for x in &r.exports {
        let e = x.export.clone().unwrap_or_default();
        let moved = if e.moved_ms == 0 {
            Value::Null
        } else {
            json!(utc(e.moved_ms))
        };
        exports.row(vec![
            json!(e.name),
            json!(e.owner_chn),
            json!(e.home_chn),
            opt(&e.partner_chn),
            opt(&x.next_taker),
            json!(x.lock.as_ref().map_or(0, |l| l.epoch)),
            json!(x.lease_left_ms),
            moved,
            opt(&e.moved_from),
            opt(&e.move_reason),
        ]);
    }
    let mut chns = Table::new(&[
        "chn",
        "address",
        "heartbeat_age_ms",
        "probe_ok",
        "probe_failures",
        "failed",
    ]);
    for h in &r.chns {
        chns.row(vec![
            json!(h.chn),
            json!(h.address),
            json!(h.heartbeat_age_ms),
            json!(h.probe_ok),
            json!(h.probe_failures),
            json!(h.failed),
        ]);
    }
    if json {
        let v = json!({
            "answered_by": r.answered_by,
            "detect_ms": r.detect_ms,
            "lu_lease_ms": r.lu_lease_ms,
            "giveback_after_s": r.giveback_after_s,
            "possibly_stale": r.possibly_stale,
            "exports": exports.to_json(),
            "chns": chns.to_json(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    exports.print(false);
    outln!();
    chns.print(false);
    let giveback = if r.giveback_after_s == 0 {
        "off".to_string()
    } else {
        format!("after {} s", r.giveback_after_s)
    };
    outln!(
        "\nas seen by {}: a CHN counts as failed after {} ms without heartbeat or 3 failed probes; LU lease {} ms; automatic giveback {giveback}",
        r.answered_by,
        r.detect_ms,
        r.lu_lease_ms
    );
    if r.possibly_stale {
        eprintln!(
            "(no quorum: answered from {}'s copy of the tables; may be stale)",
            r.answered_by
        );
    }
    Ok(())
}
