//! Benchmark (not a test): failover time on a 3-CHN cluster, from the fault
//! to the first write acknowledged by the new owner, over many drills in a
//! row, with the number of acknowledged writes checked and lost.
//!
//! Each drill is `nasctl drill` (3 writers recording every acknowledged
//! write; the fault hits the CHN serving the export; then every
//! acknowledged write is read back). Faults: kill -9 (the killed CHN is
//! restarted after each drill), SIGSTOP for 2 s, and, as root, a partition
//! of a CHN in its own network namespace for 2 s.
//!
//! There is no HA NAS stack to run beside it on this machine; the
//! reference is what NFS-Ganesha's HA documentation states: about 20 s to
//! move the service, then a 90 s NFSv4 grace period.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench failover`;
//! options after `--` (`-- --help` lists them).

use std::process::Command;

use nas_tests::bench;
use nas_tests::{ok, TestCluster};

fn figures(v: &serde_json::Value, key: &str) -> Vec<u64> {
    let mut f: Vec<u64> = v["runs"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x[key].as_u64()).collect())
        .unwrap_or_default();
    f.sort_unstable();
    f
}

fn pct(sorted: &[u64], p: f64) -> String {
    bench::percentile(sorted, p).map_or("-".into(), |v| v.to_string())
}

/// Failover time over many drills.
#[derive(clap::Parser)]
#[command(about = "Failover time over many drills per fault, every acknowledged write checked")]
struct Args {
    /// Drills per fault.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Faults, comma-separated: kill (kill -9), pause (SIGSTOP 2 s), partition (root: a network namespace cut off 2 s).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    faults: Vec<String>,
    /// nasd's --lu-lease-ms (not for the partition cluster).
    #[arg(long)]
    lease_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let (runs, faults) = (a.runs, a.faults);
    let nasd_args: Vec<String> = a.lease_ms.map(|ms| format!("--lu-lease-ms={ms}")).into_iter().collect();
    let root = unsafe { libc::geteuid() } == 0;
    println!("failover time over {runs} drills per fault (3 CHNs, {}, detection: 3 failed 100 ms probes or a 1 s old heartbeat)", nasd_args.first().map_or("LU lease 500 ms, the default", String::as_str));
    println!(
        "{:<10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>5}",
        "fault", "det p50", "take50", "take99", "res p50", "res p99", "res max", "checked", "lost"
    );
    for fault in &faults {
        let c = if fault == "partition" {
            if !root {
                println!("{fault:<10} skipped: needs root for network namespaces");
                continue;
            }
            TestCluster::up_netns(3)?
        } else {
            TestCluster::up(3, &nasd_args.iter().map(String::as_str).collect::<Vec<_>>())?
        };
        c.with_exports();
        let v = c
            .drill(fault, &["--runs", &runs.to_string(), "--pause-ms", "2000"])
            .inspect_err(|_| {
                // Keep the evidence: the cluster folder goes with `c`.
                let kept = std::env::temp_dir().join("nas-failover-bench-failed");
                let _ = Command::new("cp").arg("-a").arg(c.dir()).arg(&kept).status();
                eprintln!("cluster folder copied to {}\n{}", kept.display(), c.logs());
            })?;
        let (det, take, res) = (
            figures(&v, "detected_ms"),
            figures(&v, "taken_over_ms"),
            figures(&v, "resumed_ms"),
        );
        println!(
            "{:<10} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>5}",
            fault,
            pct(&det, 0.5),
            pct(&take, 0.5),
            pct(&take, 0.99),
            pct(&res, 0.5),
            pct(&res, 0.99),
            res.last().map_or("-".into(), |m| m.to_string()),
            v["checked"],
            v["lost"]
        );
        let _ = ok(c.nasctl(&["failover", "status"]));
    }
    println!("reference (documented, not run here): NFS-Ganesha HA about 20000 ms to move the service, then a 90 s NFSv4 grace period");
    Ok(())
}
