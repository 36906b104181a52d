//! Benchmark (not a test): the file service on a 3-CHN cluster on loopback.
//!
//! 1. A large file (1 GiB by default) written with `nas-client` (`put`) and
//!    read back (`get`), beside `cp` of the same data on the same file
//!    system in the same run, as a ratio (plain `cp`, and `cp` plus fsync,
//!    since every acknowledged NAS write is durable).
//! 2. Small files: create + 4 KiB write + close, per second, with 1, 16 and
//!    64 concurrent clients, beside the same loop on the local file system
//!    with an fsync per file (what "acknowledged is durable" costs there).
//!
//! Both on the cluster as shipped (TLS, tokens) and on the same cluster
//! started with `--insecure` (plaintext), interleaved, so that the cost of
//! TLS shows as a ratio. Every timed step starts after sync(2), so none
//! pays for the writeback of the one before.
//!
//! Run: `cargo build --release && cargo bench -p nas-tests --bench file_io`;
//! options after `--` (`-- --help` lists them).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::nas_client::NasClient;
use anyhow::Context;
use nas_tests::bench::{self, mb_s, median, median_by, ms, Common, Latencies};
use nas_tests::{ok, TestCluster};

/// Writes `bytes` of incompressible data to `path`.
fn make_source(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Writes back every dirty page first, so no step pays for the one before.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn cp(src: &Path, dst: &Path, fsync: bool) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_file(dst);
    settle();
    let t = Instant::now();
    let st = std::process::Command::new("cp").arg(src).arg(dst).status()?;
    anyhow::ensure!(st.success(), "cp failed");
    if fsync {
        std::fs::File::open(dst)?.sync_all()?;
    }
    let took = t.elapsed();
    std::fs::remove_file(dst)?;
    Ok(took)
}

/// Create + 4 KiB write + close through the file service.
async fn small_files_nas(clients: &[Arc<NasClient>], run: usize, secs: u64) -> Latencies {
    let end = Instant::now() + Duration::from_secs(secs);
    let data = Arc::new(vec![5u8; 4096]);
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(k, nas)| {
            let (nas, data) = (nas.clone(), data.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    let name = format!("/small/r{run}-c{k}-{i}");
                    let Ok(a) = nas.create(&name, 0o644, true, false).await else {
                        continue;
                    };
                    if nas.write(a.handle, 0, &data).await.is_ok() {
                        lat.push(t.elapsed());
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    Latencies::new(all, secs as f64)
}

/// The same loop on the local file system, fsync per file, one thread per client.
fn small_files_local(dir: &Path, clients: usize, secs: u64) -> Latencies {
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    let p = dir.join(format!("c{k}-{i}"));
                    let ok = std::fs::File::create(&p)
                        .and_then(|mut f| f.write_all(&[5u8; 4096]).and_then(|_| f.sync_all()))
                        .is_ok();
                    if ok {
                        lat.push(t.elapsed());
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    Latencies::new(all, secs as f64)
}

/// The file service beside `cp` and the local file system.
#[derive(clap::Parser)]
#[command(about = "The file service: a large file put and get beside cp, small files beside the local file system")]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Size of the large file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// RAID level of the exported LU: 1 or 5.
    #[arg(long, default_value_t = 5, value_parser = raid_level)]
    raid: u32,
}

fn raid_level(s: &str) -> Result<u32, String> {
    match s {
        "1" => Ok(1),
        "5" => Ok(5),
        _ => Err(format!("RAID {s} is not supported; use 1 or 5")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    ::nas_client::keep_message_buffers();
    let a: Args = bench::args();
    let (size_mib, repeat, secs, raid, client_counts) =
        (a.size_mib, a.common.repeat, a.common.seconds, a.raid, a.common.clients);
    let bytes = size_mib << 20;
    let tls = Side::up(Kind::Shipped, size_mib, raid).await.context("TLS cluster")?;
    let plain = Side::up(Kind::Plain, size_mib, raid)
        .await
        .context("plaintext cluster")?;
    // Without metrics, for the small files: what metrics cost.
    let dark = Side::up(Kind::NoMetrics, size_mib, raid)
        .await
        .context("cluster without metrics")?;
    let scraper = tls.c.keep_scraping(Duration::from_secs(1))?;
    let work = tls.c.dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let src = work.join("source.bin");
    make_source(&src, bytes)?;

    println!("file service on a 3-CHN cluster on loopback, RAID {raid} LU; same file system for cp");
    println!("TLS: as shipped; plain: the same cluster with --insecure");
    println!("large file: {size_mib} MiB, median of {repeat} interleaved runs");
    let (mut cp_plain, mut cp_sync) = (vec![], vec![]);
    let (mut put, mut get, mut put_plain, mut get_plain) = (vec![], vec![], vec![], vec![]);
    for r in 0..repeat {
        let dst = work.join("copy.bin");
        cp_plain.push(mb_s(bytes, cp(&src, &dst, false)?));
        cp_sync.push(mb_s(bytes, cp(&src, &dst, true)?));
        let (p, g) = tls.put_get(&src, &dst, r, bytes).await?;
        put.push(p);
        get.push(g);
        let (p, g) = plain.put_get(&src, &dst, r, bytes).await?;
        put_plain.push(p);
        get_plain.push(g);
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or_default();
        eprintln!(
            "  run {r}: cp {:.0}, cp+fsync {:.0}, put {:.0} (plain {:.0}), get {:.0} (plain {:.0}) MB/s",
            last(&cp_plain),
            last(&cp_sync),
            last(&put),
            last(&put_plain),
            last(&get),
            last(&get_plain)
        );
    }
    let (cp_plain, cp_sync) = (median(cp_plain), median(cp_sync));
    println!(
        "  {:<24} {:>10}  {:>12}  {:>14}  {:>10}",
        "", "MB/s", "vs cp", "vs cp+fsync", "TLS/plain"
    );
    println!("  {:<24} {:>10.0}", "cp", cp_plain);
    println!("  {:<24} {:>10.0}", "cp + fsync", cp_sync);
    for (name, v, p) in [
        ("nas-client put (write)", median(put), median(put_plain)),
        ("nas-client get (read)", median(get), median(get_plain)),
    ] {
        println!(
            "  {name:<24} {v:>10.0}  {:>12.2}  {:>14.2}  {:>10.2}",
            v / cp_plain,
            v / cp_sync,
            v / p.max(1e-9)
        );
        println!("  {:<24} {p:>10.0}", format!("  plain: {}", &name[11..]));
    }

    println!(
        "\nsmall files: create + 4 KiB write + close, {secs} s per point, median of {repeat} interleaved runs \
         (nas: as shipped, metrics scraped every second; no-metrics: --no-web)"
    );
    println!(
        "  {:>7}  {:>10} {:>8} {:>8}   {:>10} {:>8}   {:>10}   {:>12} {:>8} {:>8}   {:>9} {:>9} {:>11}",
        "clients",
        "nas ops/s",
        "p50 ms",
        "p99 ms",
        "plain",
        "p99 ms",
        "no-metrics",
        "local+fsync",
        "p50 ms",
        "p99 ms",
        "vs local",
        "TLS/plain",
        "metrics/off"
    );
    let max = client_counts.iter().copied().max().unwrap_or(1);
    let tls_sessions = tls.sessions(max).await?;
    let plain_sessions = plain.sessions(max).await?;
    let dark_sessions = dark.sessions(max).await?;
    for &n in &client_counts {
        let (mut ss, mut ps, mut ds, mut ls) = (vec![], vec![], vec![], vec![]);
        for r in 0..repeat as usize {
            let run = r * 1000 + n;
            let s = small_files_nas(&tls_sessions[..n], run, secs).await;
            let p = small_files_nas(&plain_sessions[..n], run, secs).await;
            let d = small_files_nas(&dark_sessions[..n], run, secs).await;
            let local_dir = work.join(format!("local-{n}-{r}"));
            std::fs::create_dir_all(&local_dir)?;
            let l = small_files_local(&local_dir, n, secs);
            std::fs::remove_dir_all(&local_dir)?;
            eprintln!(
                "  {n} clients, run {r}: nas {:.0}, plain {:.0}, no-metrics {:.0}, local {:.0} ops/s",
                s.per_sec(),
                p.per_sec(),
                d.per_sec(),
                l.per_sec()
            );
            ss.push(s);
            ps.push(p);
            ds.push(d);
            ls.push(l);
        }
        let by_rate = |v: Vec<Latencies>| median_by(v, Latencies::per_sec);
        let (s, p, d, l) = (by_rate(ss), by_rate(ps), by_rate(ds), by_rate(ls));
        println!(
            "  {n:>7}  {:>10.0} {:>8} {:>8}   {:>10.0} {:>8}   {:>10.0}   {:>12.0} {:>8} {:>8}   {:>9.2} {:>9.2} {:>11.2}",
            s.per_sec(),
            ms(s.at(0.5)),
            ms(s.at(0.99)),
            p.per_sec(),
            ms(p.at(0.99)),
            d.per_sec(),
            l.per_sec(),
            ms(l.at(0.5)),
            ms(l.at(0.99)),
            s.per_sec() / l.per_sec().max(1e-9),
            s.per_sec() / p.per_sec().max(1e-9),
            s.per_sec() / d.per_sec().max(1e-9)
        );
    }
    scraper.abort();
    Ok(())
}

/// One cluster with an export `home` for alice.
struct Side {
    c: TestCluster,
    nas: NasClient,
}

/// How a side's cluster runs.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// As shipped: TLS, metrics (scraped every second by the benchmark).
    Shipped,
    /// `--insecure`.
    Plain,
    /// TLS, `--no-web`.
    NoMetrics,
}

impl Side {
    async fn up(kind: Kind, size_mib: u64, raid: u32) -> anyhow::Result<Side> {
        let c = match kind {
            Kind::Shipped => TestCluster::up(3, &[])?,
            Kind::Plain => TestCluster::up_insecure(3, &[])?,
            Kind::NoMetrics => TestCluster::up_without_web(3, &[])?,
        };
        // Disks big enough for the file plus metadata and the small files
        // (the disk files are sparse: room costs nothing): up to about
        // 150,000 of them over the interleaved runs, and a 3 x 64 MiB
        // RAID 5 LU holds about 28,000.
        let disk_mib = if raid == 5 {
            size_mib * 6 / 10 + 1024
        } else {
            size_mib * 12 / 10 + 2048
        };
        let disk = format!("{disk_mib}M");
        let disks = if raid == 5 { "1,2,3" } else { "1,2" };
        for a in [
            &["array", "init", "--disks", "3", "--size", &disk][..],
            &["lu", "create", "--raid", &raid.to_string(), "--disks", disks],
            &["user", "add", "alice"],
            &["export", "create", "home", "--lu", "1", "--chn", "CHN1"],
        ] {
            ok(c.nasctl(a));
        }
        let nas = c.nas("alice", "home").await?;
        nas.mkdir("/small", 0o777).await?;
        Ok(Side { c, nas })
    }

    /// One put and get of `src`, in MB/s each.
    async fn put_get(&self, src: &Path, dst: &Path, run: u64, bytes: u64) -> anyhow::Result<(f64, f64)> {
        let remote = format!("/big-{run}");
        settle();
        let t = Instant::now();
        self.nas.put_file(src, &remote, |_| {}).await?;
        let put = mb_s(bytes, t.elapsed());
        settle();
        let t = Instant::now();
        self.nas.get_file(&remote, dst, |_, _| {}).await?;
        let get = mb_s(bytes, t.elapsed());
        std::fs::remove_file(dst)?;
        self.nas.unlink(&remote).await?;
        Ok((put, get))
    }

    async fn sessions(&self, n: usize) -> anyhow::Result<Vec<Arc<NasClient>>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(Arc::new(self.c.nas("alice", "home").await?));
        }
        Ok(v)
    }
}
