//! The `nasd` binary: parse settings, set up logging, run one CHN until
//! SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use nasd::config::{LogFormat, Settings};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: every admin command allocates a few
/// dozen small buffers on its way through HTTP/2, Raft and the tables, and
/// glibc's bookkeeping took about a tenth of the leader's CPU at 64 clients.
/// It serves the 1 MiB file-data buffers from its segments too, so the
/// `mallopt` tuning glibc needed (not to map and unmap each one) is gone;
/// the file benchmark's throughput stayed within its noise.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cfg = Settings::parse().resolve()?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")))
        .with_writer(std::io::stderr);
    match cfg.log_format {
        // Colour codes only for a person at a terminal, not in log files and `docker logs`.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let mut runtime = match cfg.worker_threads {
        // One thread needs no work stealing; and unlike a one-worker
        // multi-thread runtime it runs woken tasks in order, so the replies
        // of a committed batch are all queued on their connections before
        // any connection flushes: fewer, larger socket writes.
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(nasd::server::run(cfg, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}
