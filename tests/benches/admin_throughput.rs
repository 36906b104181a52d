//! Benchmark (not a test): replicated admin commands per second and commit
//! latency on a 3-CHN cluster on loopback, at 1, 16 and 64 concurrent
//! clients, beside etcd (3 members on loopback) driven by the same load
//! generator in the same run.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench admin_throughput`;
//! options after `--` (`-- --help` lists them). etcd comes from Debian's
//! etcd-server package (`etcd` on PATH).

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::nas_client::proto::WriteProbeRequest;
use anyhow::Context;
use nas_tests::bench::{self, median_by, ms, Common, Latencies};
use nas_tests::etcd::{kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, StatusRequest};
use nas_tests::{wait_until, TestCluster};
use tonic::transport::{Channel, Endpoint};

/// Keys cycle through this many rows, so the tables stay small.
const KEYS: u64 = 1000;
/// Value size of every write, as in the etcd reference figures.
const VALUE_BYTES: usize = 100;
/// Connections the clients share, round robin (same for both systems).
const CONNECTIONS: usize = 8;

struct Stats {
    lat: Latencies,
    errors: u64,
}

/// Runs `clients` loops, one request in flight each, for `secs` after a
/// one-second warm-up, and measures every request.
async fn load<F, Fut>(clients: usize, secs: u64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut seq = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = call(c, seq).await;
                    seq += 1;
                    if t0 >= warm_until {
                        if ok {
                            lat.push(t0.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    Stats {
        lat: Latencies::new(all, secs as f64),
        errors,
    }
}

fn channels(addr: &str) -> anyhow::Result<Vec<Channel>> {
    (0..CONNECTIONS)
        .map(|_| {
            Ok(Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect_lazy())
        })
        .collect()
}

/// One system under load: how to send one write from client `c`.
type Target = Arc<dyn Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

async fn nasd_target(cluster: &TestCluster) -> anyhow::Result<Target> {
    let status = cluster.status("CHN1").await.context("cluster status")?;
    let leader = cluster.node(&status.leader_name).addr.clone();
    eprintln!(
        "nasd: {} CHNs, leader {} at {leader}",
        cluster.nodes.len(),
        status.leader_name
    );
    let token = cluster.admin_token();
    let admins: Arc<Vec<_>> = Arc::new(
        (0..CONNECTIONS)
            .map(|_| cluster.admin_with_token(&leader, &token))
            .collect(),
    );
    Ok(Arc::new(move |c, seq| {
        let mut admin = admins[c % CONNECTIONS].clone();
        Box::pin(async move {
            let req = WriteProbeRequest {
                key: format!("bench-{}", (c as u64 * 7919 + seq) % KEYS),
                value: vec![b'x'; VALUE_BYTES],
            };
            admin.write_probe(req).await.is_ok()
        })
    }))
}

/// Three etcd members on loopback, killed when dropped.
struct Etcd {
    children: Vec<Child>,
    client_addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_etcd(etcd: &Path) -> anyhow::Result<Etcd> {
    let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
        .collect();
    let mut children = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
        children.push(
            Command::new(etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "nas-bench"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start etcd")?,
        );
    }
    let client_addrs = ports.iter().map(|(c, _)| format!("127.0.0.1:{c}")).collect();
    Ok(Etcd {
        children,
        client_addrs,
        _dir: dir,
    })
}

async fn etcd_target(cluster: &Etcd) -> anyhow::Result<Target> {
    let leader = wait_until("an etcd leader", Duration::from_secs(30), || async {
        for addr in &cluster.client_addrs {
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            let s = MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .ok()?
                .into_inner();
            if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) {
                return Some((addr.clone(), s.version));
            }
        }
        None
    })
    .await?;
    eprintln!("etcd {}: 3 members, leader at {}", leader.1, leader.0);
    let chans = Arc::new(channels(&leader.0)?);
    Ok(Arc::new(move |c, seq| {
        let mut kv = KvClient::new(chans[c % CONNECTIONS].clone());
        Box::pin(async move {
            let key = format!("bench-{}", (c as u64 * 7919 + seq) % KEYS).into_bytes();
            kv.put(PutRequest {
                key,
                value: vec![b'x'; VALUE_BYTES],
            })
            .await
            .is_ok()
        })
    }))
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Replicated admin commands per second beside etcd.
#[derive(clap::Parser)]
#[command(about = "Replicated admin commands per second on a nasd cluster, beside etcd in the same run")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// nasd CHNs in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Measure nasd alone.
    #[arg(long)]
    no_etcd: bool,
}

fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let (secs, repeat, clients, with_etcd, nodes) =
        (a.common.seconds, a.common.repeat, a.common.clients, !a.no_etcd, a.nodes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The same cluster three times: as shipped (TLS, tokens, metrics
        // scraped every second), plaintext (--insecure) to show what
        // security costs, and without metrics (--no-web) to show what
        // they cost.
        let nas_cluster = TestCluster::up(nodes, &[])?;
        let nas = nasd_target(&nas_cluster).await?;
        let scraper = nas_cluster.keep_scraping(Duration::from_secs(1))?;
        let plain_cluster = TestCluster::up_insecure(nodes, &[])?;
        let plain = nasd_target(&plain_cluster).await?;
        let dark_cluster = TestCluster::up_without_web(nodes, &[])?;
        let dark = nasd_target(&dark_cluster).await?;
        let etcd_path = which("etcd").filter(|_| with_etcd);
        if with_etcd && etcd_path.is_none() {
            eprintln!("etcd not found on PATH (apt-get install etcd-server): printing nasd only");
        }
        let etcd_cluster = etcd_path.as_deref().map(start_etcd).transpose()?;
        let etcd = match &etcd_cluster {
            Some(e) => Some(etcd_target(e).await?),
            None => None,
        };
        let mut systems: Vec<(&str, Target)> = vec![("nasd", nas), ("plain", plain), ("nometrics", dark)];
        if let Some(e) = etcd {
            systems.push(("etcd", e));
        }
        println!(
            "\nReplicated writes, {nodes} nasd CHNs (TLS, tokens, metrics scraped every second; --insecure: plain; \
             --no-web: nometrics) and 3 etcd members (plaintext) on loopback, {VALUE_BYTES}-byte values, \
             median of {repeat} interleaved runs of {secs} s per point"
        );
        print!("{:>7}", "clients");
        for (name, _) in &systems {
            print!(" | {:>10} {:>7} {:>7}", format!("{name} op/s"), "p50 ms", "p99 ms");
        }
        println!(" | {:>11} {:>9} {:>15}", "nasd/plain", "nasd/etcd", "nasd/nometrics");
        for &n in &clients {
            let mut runs: Vec<Vec<Stats>> = systems.iter().map(|_| Vec::new()).collect();
            for _ in 0..repeat {
                eprint!("  {n} clients:");
                for (k, (name, t)) in systems.iter().enumerate() {
                    let t = t.clone();
                    let run = load(n, secs, move |c, s| t(c, s)).await;
                    eprint!(" {name} {:.0} op/s", run.lat.per_sec());
                    runs[k].push(run);
                }
                eprintln!();
            }
            let medians: Vec<Stats> = runs.into_iter().map(|r| median_by(r, |r| r.lat.per_sec())).collect();
            print!("{n:>7}");
            for m in &medians {
                print!(
                    " | {:>10.0} {:>7} {:>7}",
                    m.lat.per_sec(),
                    ms(m.lat.at(0.5)),
                    ms(m.lat.at(0.99))
                );
            }
            let ratio = |k: usize| {
                medians.get(k).map_or("-".to_string(), |o| {
                    format!("{:.2}", medians[0].lat.per_sec() / o.lat.per_sec().max(1.0))
                })
            };
            println!(" | {:>11} {:>9} {:>15}", ratio(1), ratio(3), ratio(2));
            let errors: u64 = medians.iter().map(|m| m.errors).sum();
            if errors > 0 {
                println!("        ({errors} failed requests not counted)");
            }
        }
        scraper.abort();
        let last = nas_cluster.status("CHN1").await.context("status after the run")?;
        eprintln!(
            "nasd: last applied index {}, snapshot at {}",
            last.last_applied, last.snapshot_index
        );
        Ok(())
    })
}
