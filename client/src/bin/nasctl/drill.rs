//! `nasctl drill`: a failover drill on a local cluster. Writers record
//! every acknowledged write while a fault (kill -9, pause, partition) hits
//! a CHN; then every acknowledged write is read back, and the report says
//! how long detection and the return of service took and how many writes
//! were lost (there must be none).
//!
//! Owns fault injection on the processes and links of a `cluster up`
//! folder; the bookkeeping is `nas_client::drill`, shared with the tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use ::nas_client::drill::{self, Writers};
use ::nas_client::Cluster;

use crate::files::{session, Login};
use crate::local_cluster::{self, running_pid};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 the CHN; it is restarted after the check.
    Kill,
    /// SIGSTOP the CHN for --pause-ms (past its LU lease), then SIGCONT.
    Pause,
    /// Cut the CHN off the network for --pause-ms (needs `cluster up --netns`).
    Partition,
}

#[derive(Args)]
pub struct DrillArgs {
    /// The `cluster up` folder (to find the CHN processes).
    #[arg(long)]
    dir: PathBuf,
    /// The export the writers use.
    #[arg(long)]
    export: String,
    #[arg(long, value_enum, default_value = "kill")]
    fault: Fault,
    /// The CHN to hit [default: the one serving the export].
    #[arg(long)]
    chn: Option<String>,
    /// How long a pause or partition lasts, in ms (at least until service resumes).
    #[arg(long, default_value_t = 3000)]
    pause_ms: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Drills in a row (the report adds medians and p99).
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

/// One drill's figures.
struct Run {
    chn: String,
    detected_ms: Option<u64>,
    taken_over_ms: Option<u64>,
    resumed_ms: Option<u64>,
    new_owner: Option<String>,
    acked: usize,
    checked: usize,
    lost: Vec<String>,
    errors: Vec<String>,
}

fn signal(dir: &std::path::Path, chn: &str, sig: i32) -> anyhow::Result<()> {
    let pid = running_pid(dir, chn).with_context(|| format!("{chn} is not running under {}", dir.display()))?;
    // SAFETY: kill(2) on a nasd this folder's `cluster up` started (checked by running_pid).
    unsafe { libc::kill(pid, sig) };
    Ok(())
}

/// Waits for `cond` up to `limit`, polling.
async fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

async fn one(c: &Cluster, login: &Login, a: &DrillArgs, dir: &std::path::Path, n: usize) -> anyhow::Result<Run> {
    let layout = local_cluster::load_layout(dir)?;
    let (owner, owner_addr) = ::nas_client::nas::export_owner(c, &a.export, false)
        .await
        .map_err(crate::status_err)?;
    let chn = a.chn.clone().unwrap_or_else(|| owner.clone());
    let index = layout
        .nodes
        .iter()
        .position(|x| x.name == chn)
        .with_context(|| format!("{chn} is not a CHN of {}", dir.display()))?;
    if a.fault == Fault::Partition && !layout.netns {
        bail!("a partition needs each CHN in its own network namespace: start the cluster with `nasctl cluster up --netns --dir NEWDIR` (as root)");
    }
    let client = Arc::new(session(c, login, &a.export, Duration::from_secs(60)).await?);
    let path = format!("/drill-{}-{n}", drill::now_ms());
    let w = Writers::start(client.clone(), &path, a.writers)
        .await
        .map_err(crate::status_err)?;
    if !wait(Duration::from_secs(30), || w.acked() >= 20).await {
        bail!("the writers did not get going: {:?}", w.errors());
    }
    let fault_ms = drill::now_ms();
    let net = crate::netns::Net::for_dir(dir);
    match a.fault {
        Fault::Kill => signal(dir, &chn, libc::SIGKILL)?,
        Fault::Pause => signal(dir, &chn, libc::SIGSTOP)?,
        Fault::Partition => net.cut(index, true)?,
    }
    let survivors: Vec<&str> = layout
        .nodes
        .iter()
        .filter(|x| x.name != chn)
        .map(|x| x.addr.as_str())
        .collect();
    let watcher = Cluster::new(&survivors)?;
    let moves = chn == owner;
    let timeline = if moves {
        drill::watch_failover(&watcher, &a.export, &owner, fault_ms, Duration::from_secs(30)).await
    } else {
        drill::Timeline::default()
    };
    let acked_at_fault = w.acked();
    let resumed = if moves {
        wait(Duration::from_secs(30), || {
            w.first_ack_elsewhere(fault_ms, &owner_addr).is_some()
        })
        .await;
        w.first_ack_elsewhere(fault_ms, &owner_addr)
    } else {
        wait(Duration::from_secs(30), || w.acked() >= acked_at_fault + 20).await;
        w.first_ack_after(fault_ms)
    };
    if a.fault != Fault::Kill {
        let until = fault_ms + a.pause_ms;
        wait(Duration::from_millis(a.pause_ms), || drill::now_ms() >= until).await;
        match a.fault {
            Fault::Pause => signal(dir, &chn, libc::SIGCONT)?,
            _ => net.cut(index, false)?,
        }
    }
    let more = w.acked() + 20;
    wait(Duration::from_secs(30), || w.acked() >= more || !w.errors().is_empty()).await;
    let ledger = w.stop().await;
    let verdict = drill::check(&client, &path, &ledger).await.map_err(crate::status_err)?;
    if a.fault == Fault::Kill {
        local_cluster::up(local_cluster::UpOptions {
            nodes: None,
            dir: dir.to_path_buf(),
            nasd: None,
            nasd_args: None,
            netns: false,
            json: false,
            quiet: true,
        })
        .await
        .with_context(|| format!("restarting {chn}"))?;
    }
    Ok(Run {
        chn,
        detected_ms: timeline.detected_ms,
        taken_over_ms: timeline.taken_over_ms,
        resumed_ms: resumed.map(|r| r.at_ms.saturating_sub(fault_ms)),
        new_owner: timeline.new_owner,
        acked: ledger.acks.len(),
        checked: verdict.checked,
        lost: verdict.lost,
        errors: ledger.errors,
    })
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

pub async fn run(c: &Cluster, login: &Login, a: DrillArgs, json: bool) -> anyhow::Result<()> {
    let dir = a
        .dir
        .canonicalize()
        .with_context(|| format!("no cluster folder {}", a.dir.display()))?;
    let mut runs = Vec::new();
    for n in 0..a.runs.max(1) {
        let r = one(c, login, &a, &dir, n).await?;
        if !json {
            outln!(
                "drill {}: {:?} {} -> served by {}: detected {}, taken over {}, clients served again {}; {} writes acknowledged, {} checked, {} lost, {} failed calls",
                n + 1,
                a.fault,
                r.chn,
                r.new_owner.as_deref().unwrap_or("the same CHN"),
                ms(r.detected_ms),
                ms(r.taken_over_ms),
                ms(r.resumed_ms),
                r.acked,
                r.checked,
                r.lost.len(),
                r.errors.len()
            );
            for l in r.lost.iter().chain(&r.errors) {
                outln!("  {l}");
            }
        }
        runs.push(r);
    }
    let mut resumed: Vec<u64> = runs.iter().filter_map(|r| r.resumed_ms).collect();
    resumed.sort_unstable();
    let lost: usize = runs.iter().map(|r| r.lost.len()).sum();
    let errors: usize = runs.iter().map(|r| r.errors.len()).sum();
    let checked: usize = runs.iter().map(|r| r.checked).sum();
    if json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({"chn": r.chn, "new_owner": r.new_owner, "detected_ms": r.detected_ms,
                       "taken_over_ms": r.taken_over_ms, "resumed_ms": r.resumed_ms, "acked": r.acked,
                       "checked": r.checked, "lost": r.lost, "errors": r.errors})
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"fault": format!("{:?}", a.fault).to_lowercase(), "runs": list,
                "resumed_p50_ms": drill::percentile(&resumed, 0.5), "resumed_p99_ms": drill::percentile(&resumed, 0.99),
                "checked": checked, "lost": lost, "errors": errors}))
            .unwrap_or_default()
        );
    } else if runs.len() > 1 {
        outln!(
            "{} drills: clients served again after p50 {}, p99 {}, max {}; {checked} acknowledged writes checked, {lost} lost, {errors} failed calls",
            runs.len(),
            ms(drill::percentile(&resumed, 0.5)),
            ms(drill::percentile(&resumed, 0.99)),
            ms(resumed.last().copied())
        );
    }
    if lost > 0 || errors > 0 {
        bail!("the drill lost {lost} acknowledged writes and had {errors} failed calls");
    }
    Ok(())
}
