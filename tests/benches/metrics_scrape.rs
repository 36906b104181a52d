//! How long a scrape of a CHN's metrics (and a refresh of its status page)
//! takes with 10,000 client sessions open, beside the same CHN with none.
//!
//! Sessions are opened through the file service (one password check
//! each) with a long session lease, so that none lapses before the
//! scrapes; the scrapes use a Bearer token over one kept-alive HTTPS
//! connection, as Prometheus does.

use std::time::{Duration, Instant};

use ::nas_client::proto::nas_client::NasClient as NasGrpc;
use ::nas_client::proto::OpenSessionRequest;
use futures::StreamExt;
use nas_tests::bench::{self, median, ms};
use nas_tests::{ok, TestCluster};

#[derive(clap::Parser)]
#[command(about = "Scrape and status-page time of a CHN with many sessions, beside the same CHN with none")]
struct Args {
    /// Sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Scrapes timed per point.
    #[arg(long, default_value_t = 30)]
    scrapes: usize,
}

/// Times `n` GETs of `path` on CHN1's web port: (median, slowest), and the size.
async fn time_gets(
    c: &TestCluster,
    http: &reqwest::Client,
    path: &str,
    n: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let url = format!("{}{path}", c.node("CHN1").web);
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let resp = http.get(&url).bearer_auth(c.admin_token()).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        size = resp.bytes().await?.len();
        took.push(t.elapsed());
    }
    let slowest = took.iter().copied().max().unwrap_or_default();
    let mid = Duration::from_secs_f64(median(took.iter().map(Duration::as_secs_f64).collect()));
    Ok((mid, slowest, size))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a: Args = bench::args();
    let c = TestCluster::up(3, &["--session-lease-ms=3600000"])?;
    for args in [
        &["array", "init", "--disks", "3", "--size", "64M"][..],
        &["lu", "create", "--raid", "5", "--disks", "1,2,3"],
        &["user", "add", "alice"],
        &["export", "create", "home", "--lu", "1", "--chn", "CHN1"],
    ] {
        ok(c.nasctl(args));
    }
    let http = c.http()?;
    // Warm the connection and the recorder.
    time_gets(&c, &http, "metrics", 3).await?;
    let before = time_gets(&c, &http, "metrics", a.scrapes).await?;
    let page_before = time_gets(&c, &http, "status", a.scrapes).await?;

    let opened = Instant::now();
    let ch = c.channel("CHN1");
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(0..a.sessions)
        .map(|i| {
            let mut nas = NasGrpc::new(ch.clone());
            async move {
                // A busy CHN may answer UNAVAILABLE, and its login
                // throttle RESOURCE_EXHAUSTED: asked again, as clients do.
                let mut last = Ok(());
                for _ in 0..20 {
                    let open = nas.open_session(OpenSessionRequest {
                        user: "alice".into(),
                        password: "correct-horse".into(),
                        client_id: format!("scrape-bench-{i}"),
                    });
                    last = open.await.map(|_| ());
                    match &last {
                        Err(s) if s.code() == tonic::Code::Unavailable => {}
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(300)).await
                        }
                        _ => break,
                    }
                }
                last
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let open = results.iter().filter(|r| r.is_ok()).count();
    eprintln!("opened {open} of {} sessions in {:?}", a.sessions, opened.elapsed());
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("  e.g. {:?}: {}", e.code(), e.message());
    }
    let text = c.metrics_text(&http, "CHN1").await?;
    let gauge: f64 = text
        .lines()
        .filter(|l| l.starts_with("nas_sessions_open{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let after = time_gets(&c, &http, "metrics", a.scrapes).await?;
    let page_after = time_gets(&c, &http, "status", a.scrapes).await?;

    println!("\nCHN1 of a 3-CHN cluster on loopback, HTTPS with a Bearer token, one kept-alive connection, {} requests per point", a.scrapes);
    println!("  {:<28} {:>12} {:>12} {:>10}", "", "median ms", "slowest ms", "bytes");
    for (name, (mid, max, size)) in [
        ("/metrics, 0 sessions", before),
        (&*format!("/metrics, {open} sessions"), after),
        ("status page, 0 sessions", page_before),
        (&*format!("status page, {open} sessions"), page_after),
    ] {
        println!("  {name:<28} {:>12} {:>12} {size:>10}", ms(mid), ms(max));
    }
    println!("  nas_sessions_open as scraped: {gauge}");
    Ok(())
}
