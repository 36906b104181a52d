//! `nasctl drill`: a failover drill. Writers record every acknowledged
//! write while a fault (kill -9, pause, partition) hits a CHN; then every
//! acknowledged write is read back, and the report says how long detection
//! and the return of service took and how many writes were lost (there
//! must be none).
//!
//! Owns fault injection on the processes and links of a `cluster up`
//! folder, and the handshake with an outside injector (`--fault external`:
//! deploy/drill.sh kills a container). The bookkeeping is
//! `nas_client::drill`, shared with the tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use ::nas_client::drill::{self, Writers};
use ::nas_client::proto::FailoverStatusRequest;
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
    /// Another program injects the fault (deploy/drill.sh kills a container):
    /// the drill writes the CHN to hit into HANDSHAKE/fault.request and waits
    /// for HANDSHAKE/fault.done, which holds the fault's wall-clock time in ms
    /// since the epoch. Restarting the CHN is the other program's business.
    External,
}

impl Fault {
    /// As on the command line.
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::External => "external fault on",
        }
    }
}

#[derive(Args)]
pub struct DrillArgs {
    /// The `cluster up` folder (to find the CHN processes); needed for kill, pause and partition.
    #[arg(long, required_unless_present = "handshake")]
    dir: Option<PathBuf>,
    /// The folder shared with the program that injects an external fault.
    #[arg(long, required_if_eq("fault", "external"))]
    handshake: Option<PathBuf>,
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

/// Who injects the fault, and how.
enum Injector {
    /// Signals and links of the processes of a `cluster up` folder.
    Local {
        dir: PathBuf,
        layout: local_cluster::Layout,
    },
    /// Another program, through files in a shared folder.
    External { handshake: PathBuf },
}

impl Injector {
    fn new(a: &DrillArgs) -> anyhow::Result<Injector> {
        match (a.fault, &a.dir, &a.handshake) {
            (Fault::External, _, Some(h)) => {
                if a.runs > 1 {
                    bail!("--fault external runs one drill per call: the injector restarts the CHN in between");
                }
                std::fs::create_dir_all(h).with_context(|| format!("cannot create {}", h.display()))?;
                Ok(Injector::External { handshake: h.clone() })
            }
            (Fault::External, _, None) => bail!("--fault external needs --handshake DIR"),
            (_, Some(dir), _) => {
                let dir = dir
                    .canonicalize()
                    .with_context(|| format!("no cluster folder {}", dir.display()))?;
                let layout = local_cluster::load_layout(&dir)?;
                if a.fault == Fault::Partition && !layout.netns {
                    bail!("a partition needs each CHN in its own network namespace: start the cluster with `nasctl cluster up --netns --dir NEWDIR` (as root)");
                }
                Ok(Injector::Local { dir, layout })
            }
            (_, None, _) => {
                bail!("--fault kill, pause and partition act on a local cluster: give --dir (the `cluster up` folder)")
            }
        }
    }

    fn local_index(dir: &std::path::Path, layout: &local_cluster::Layout, chn: &str) -> anyhow::Result<usize> {
        layout
            .nodes
            .iter()
            .position(|x| x.name == chn)
            .with_context(|| format!("{chn} is not a CHN of {}", dir.display()))
    }

    fn signal(dir: &std::path::Path, chn: &str, sig: i32) -> anyhow::Result<()> {
        let pid = running_pid(dir, chn).with_context(|| format!("{chn} is not running under {}", dir.display()))?;
        // SAFETY: kill(2) on a nasd this folder's `cluster up` started (checked by running_pid).
        unsafe { libc::kill(pid, sig) };
        Ok(())
    }

    /// Hits `chn`; returns the fault's wall-clock time in ms.
    async fn inject(&self, fault: Fault, chn: &str) -> anyhow::Result<u64> {
        match self {
            Injector::Local { dir, layout } => {
                let index = Self::local_index(dir, layout, chn)?;
                let at = drill::now_ms();
                match fault {
                    Fault::Kill => Self::signal(dir, chn, libc::SIGKILL)?,
                    Fault::Pause => Self::signal(dir, chn, libc::SIGSTOP)?,
                    Fault::Partition => crate::netns::Net::for_dir(dir).cut(index, true)?,
                    Fault::External => unreachable!("an external fault has no local injector"),
                }
                Ok(at)
            }
            Injector::External { handshake } => {
                let done = handshake.join("fault.done");
                let _ = std::fs::remove_file(&done);
                // Written aside and renamed, so the injector never reads half a name.
                let request = handshake.join("fault.request");
                let partial = handshake.join("fault.request.tmp");
                std::fs::write(&partial, format!("{chn}\n"))
                    .and_then(|()| std::fs::rename(&partial, &request))
                    .with_context(|| format!("cannot write {}", request.display()))?;
                let limit = Duration::from_secs(60);
                if !wait(limit, || done.exists()).await {
                    bail!("nobody injected the fault: no {} within 60 s", done.display());
                }
                // The injector writes the file in one go, but it may not have
                // closed it yet when it first shows up.
                let mut text = String::new();
                wait(Duration::from_secs(1), || {
                    text = std::fs::read_to_string(&done).unwrap_or_default();
                    text.ends_with('\n')
                })
                .await;
                text.trim()
                    .parse()
                    .with_context(|| format!("{} holds `{}`, not a time in ms", done.display(), text.trim()))
            }
        }
    }

    /// Ends a pause or a partition.
    fn heal(&self, fault: Fault, chn: &str) -> anyhow::Result<()> {
        if let Injector::Local { dir, layout } = self {
            match fault {
                Fault::Pause => Self::signal(dir, chn, libc::SIGCONT)?,
                Fault::Partition => {
                    let index = Self::local_index(dir, layout, chn)?;
                    crate::netns::Net::for_dir(dir).cut(index, false)?
                }
                Fault::Kill | Fault::External => {}
            }
        }
        Ok(())
    }

    /// Restarts a killed CHN (a local one; an external injector does it itself).
    async fn restart(&self, fault: Fault, chn: &str) -> anyhow::Result<()> {
        if let (Injector::Local { dir, .. }, Fault::Kill) = (self, fault) {
            local_cluster::up(local_cluster::UpOptions {
                nodes: None,
                dir: dir.clone(),
                nasd: None,
                nasd_args: None,
                netns: false,
                insecure: false,
                no_web: false,
                json: false,
                quiet: true,
                restore: None,
            })
            .await
            .with_context(|| format!("restarting {chn}"))?;
        }
        Ok(())
    }
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

async fn one(c: &Cluster, login: &Login, a: &DrillArgs, injector: &Injector, n: usize) -> anyhow::Result<Run> {
    let (owner, owner_addr) = ::nas_client::nas::export_owner(c, &a.export, false)
        .await
        .map_err(crate::status_err)?;
    let chn = a.chn.clone().unwrap_or_else(|| owner.clone());
    let members = c.leader_status().await.map_err(crate::status_err)?.members;
    if !members.iter().any(|m| m.name == chn) {
        bail!("{chn} is not a CHN of this cluster (see `nasctl chn list`)");
    }
    let survivors: Vec<&str> = members
        .iter()
        .filter(|m| m.name != chn)
        .map(|m| m.address.as_str())
        .collect();
    let watcher = c.on(&survivors)?;
    // Connect before the fault, so that the first look after it is not late.
    let _ = watcher.admin_at(0).failover_status(FailoverStatusRequest {}).await;
    let client = Arc::new(session(c, login, &a.export, Duration::from_secs(60)).await?);
    let path = format!("/drill-{}-{n}", drill::now_ms());
    let w = Writers::start(client.clone(), &path, a.writers)
        .await
        .map_err(crate::status_err)?;
    if !wait(Duration::from_secs(30), || w.acked() >= 20).await {
        bail!("the writers did not get going: {:?}", w.errors());
    }
    let fault_ms = injector.inject(a.fault, &chn).await?;
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
    if matches!(a.fault, Fault::Pause | Fault::Partition) {
        let until = fault_ms + a.pause_ms;
        wait(Duration::from_millis(a.pause_ms), || drill::now_ms() >= until).await;
        injector.heal(a.fault, &chn)?;
    }
    let more = w.acked() + 20;
    wait(Duration::from_secs(30), || w.acked() >= more || !w.errors().is_empty()).await;
    let ledger = w.stop().await;
    let verdict = drill::check(&client, &path, &ledger).await.map_err(crate::status_err)?;
    injector.restart(a.fault, &chn).await?;
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
    let injector = Injector::new(&a)?;
    let mut runs = Vec::new();
    for n in 0..a.runs.max(1) {
        let r = one(c, login, &a, &injector, n).await?;
        if !json {
            outln!(
                "drill {}: {} {} -> served by {}: detected {}, taken over {}, clients served again {}; {} writes acknowledged, {} checked, {} lost, {} failed calls",
                n + 1,
                a.fault.name(),
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
