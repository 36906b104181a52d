//! The `nasd` binary: parse settings, set up logging, run one CHN until
//! SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use nasd::config::Settings;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // File data moves in 1 MiB buffers; glibc would map and unmap each one,
    // paying page faults on every message. Keep them on the heap instead.
    // SAFETY: mallopt only tunes the allocator and is safe at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and `docker logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Settings::parse().resolve()?;
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
