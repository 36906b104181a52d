//! Benchmark (not a test): snapshots on a 3-CHN cluster on loopback.
//!
//! An export holding `--files` small files (10,000 by default) gets
//! snapshots while writers keep overwriting 4 KiB blocks of their own
//! files. Printed per run: how long the serving CHN took to commit the
//! snapshot and how long `CreateSnapshot` took end to end, beside one
//! durable create of a file (the cheapest durable change, as the
//! reference); and the writers' latency (p50, p99, max) in the seconds
//! around each snapshot, beside the same writers with no snapshot taken,
//! so that the pause a snapshot causes shows. Then the time to delete a
//! snapshot whose blocks the writers have since overwritten.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench snapshot`;
//! options after `--` (`-- --help` lists them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::nas_client::proto::{ListSnapshotsRequest, SnapshotRequest};
use ::nas_client::NasClient;
use nas_tests::bench::{self, median, ms, Latencies};
use nas_tests::TestCluster;

#[derive(clap::Parser, Debug)]
#[command(about = "Snapshot creation time and the write pause it causes")]
struct Args {
    /// Files in the export when the snapshots are taken.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Snapshots taken (each one run).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Concurrent writers during the runs.
    #[arg(long, default_value_t = 8)]
    writers: usize,
}

/// Writers that overwrite 4 KiB of their own file in a loop, recording
/// when each write started and how long it took.
async fn write_loop(nas: Arc<NasClient>, k: usize, stop: Arc<AtomicBool>) -> Vec<(Instant, Duration)> {
    let Ok(f) = nas.create(&format!("/w{k}"), 0o644, false, true).await else {
        return Vec::new();
    };
    let data = vec![k as u8; 4096];
    let mut out = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if nas.write(f.handle, (i % 64) * 4096, &data).await.is_err() {
            break;
        }
        out.push((t, t.elapsed()));
        i += 1;
    }
    out
}

fn summary(l: &Latencies) -> String {
    format!(
        "p50 {} ms, p99 {} ms, max {} ms",
        ms(l.at(0.5)),
        ms(l.at(0.99)),
        ms(l.at(1.0))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let c = TestCluster::up(3, &[])?;
    c.with_home("1G", &["5:1,2,3"], "CHN1", Some("CHN2"));
    let admin = Arc::new(c.client());
    let mut clients = Vec::new();
    for _ in 0..a.writers.max(16) {
        clients.push(Arc::new(c.nas("alice", "home").await?));
    }
    eprintln!("creating {} files ...", a.files);
    let per = a.files.div_ceil(16);
    let fill: Vec<_> = (0..16)
        .map(|k| {
            let nas = clients[k].clone();
            tokio::spawn(async move {
                nas.mkdir(&format!("/d{k}"), 0o755).await?;
                for i in 0..per {
                    let f = nas.create(&format!("/d{k}/f{i}"), 0o644, false, true).await?;
                    nas.write(f.handle, 0, &[1u8; 4096]).await?;
                }
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    for t in fill {
        t.await??;
    }
    let nas = clients[0].clone();
    let mut create_ref = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        nas.create(&format!("/ref{i}"), 0o644, true, false).await?;
        create_ref.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let create_ref = median(create_ref);

    let writers = clients[..a.writers].to_vec();
    let run = |snapshot: Option<String>| {
        let (writers, admin) = (writers.clone(), admin.clone());
        async move {
            let stop = Arc::new(AtomicBool::new(false));
            let tasks: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(k, nas)| tokio::spawn(write_loop(nas.clone(), k, stop.clone())))
                .collect();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let window = Instant::now();
            let took = match snapshot {
                Some(name) => {
                    let t = Instant::now();
                    let r = admin
                        .create_snapshot(SnapshotRequest {
                            export: "home".into(),
                            name,
                        })
                        .await?;
                    Some((Duration::from_micros(r.took_us), t.elapsed()))
                }
                None => None,
            };
            tokio::time::sleep(Duration::from_millis(1000)).await;
            stop.store(true, Ordering::Relaxed);
            let mut around = Vec::new();
            for t in tasks {
                for (at, lat) in t.await? {
                    if at + Duration::from_millis(500) >= window && at <= window + Duration::from_millis(1000) {
                        around.push(lat);
                    }
                }
            }
            Ok::<_, anyhow::Error>((took, Latencies::new(around, 1.5)))
        }
    };

    println!(
        "snapshots of an export with {} files (RAID 5 LU on 3 x 1 GiB disks, 3-CHN cluster on loopback, TLS), {} writers overwriting 4 KiB",
        a.files, a.writers
    );
    println!("reference: one durable file create, median of 20: {create_ref:.2} ms");
    let (mut commit, mut call, mut pause, mut base) = (vec![], vec![], vec![], vec![]);
    for r in 0..a.repeat {
        let (_, none) = run(None).await?;
        let (took, with) = run(Some(format!("s{r}"))).await?;
        let (server, client) = took.unwrap_or_default();
        eprintln!(
            "  run {r}: snapshot committed in {} ms on the CHN, {} ms end to end; writers around it: {}; without a snapshot: {}",
            ms(server),
            ms(client),
            summary(&with),
            summary(&none)
        );
        commit.push(server.as_secs_f64() * 1000.0);
        call.push(client.as_secs_f64() * 1000.0);
        pause.push(with.at(0.99).as_secs_f64() * 1000.0);
        base.push(none.at(0.99).as_secs_f64() * 1000.0);
    }
    println!(
        "snapshot create: median {:.2} ms on the CHN, {:.2} ms end to end (goal: under 50 ms); {:.1}x a durable create",
        median(commit.clone()),
        median(call),
        median(commit) / create_ref.max(1e-9)
    );
    println!(
        "writers' p99 around a snapshot: median {:.2} ms, without one {:.2} ms (goal: under 20 ms)",
        median(pause),
        median(base)
    );
    let t = Instant::now();
    admin
        .delete_snapshot(SnapshotRequest {
            export: "home".into(),
            name: "s0".into(),
        })
        .await?;
    let held = admin
        .list_snapshots(ListSnapshotsRequest { export: "home".into() })
        .await?
        .held_bytes;
    println!(
        "snapshot delete (oldest, after the writers overwrote its blocks): {} ms; snapshots still hold {} KiB",
        ms(t.elapsed()),
        held >> 10
    );
    Ok(())
}
