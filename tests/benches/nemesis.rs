//! The nemesis soak (not a test): long runs of each fault against a 3-CHN
//! cluster, every history checked for linearizability; the report goes in
//! docs/BENCHMARKS.md. The test suite runs each fault for a few seconds.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench nemesis`;
//! options after `--` (`-- --help` lists them). The partition fault needs
//! root (network namespaces).

use std::time::Duration;

use nas_tests::bench;
use nas_tests::nemesis::{self, Fault};
use nas_tests::TestCluster;

/// Long nemesis runs.
#[derive(clap::Parser)]
#[command(about = "Nemesis soak: clients read and write registers while CHNs are killed, paused and cut off")]
struct Args {
    /// Seconds per fault.
    #[arg(long, default_value_t = 90)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Faults, comma-separated: kill-leader, kill-minority, kill-all, pause-leader, partition-leader, drop-leader-to-follower.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-leader,kill-minority,kill-all,pause-leader,partition-leader,drop-leader-to-follower"
    )]
    faults: Vec<String>,
    /// Seed of the first run (the next runs add 1); random when not given.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let mut seed = a.seed.unwrap_or_else(nemesis::seed);
    let mut failed = 0;
    for name in &a.faults {
        let fault = Fault::parse(name).ok_or_else(|| anyhow::anyhow!("unknown fault {name}; see --help"))?;
        let mut c = if fault.needs_netns() {
            TestCluster::up_netns(3)?
        } else {
            TestCluster::up(3, &[])?
        };
        let report = nemesis::run(&mut c, fault, Duration::from_secs(a.seconds), a.clients, seed).await?;
        println!("{report}");
        if !report.passed() {
            failed += 1;
            eprintln!("{}", c.logs());
        }
        seed = seed.wrapping_add(1);
    }
    anyhow::ensure!(failed == 0, "{failed} run(s) found a violation");
    Ok(())
}
