//! Starts one CHN: opens the shared LU, serves Nas, Admin, Raft, health
//! and reflection on one port, writes heartbeats, and shuts down cleanly on a signal.
//!
//! Owns process wiring only; it must never hold business logic.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Server;

use crate::config::{Config, Tls};
use crate::service::{admin::AdminService, nas::NasService, raft::RaftService};
use crate::shared_lu::SharedLu;
use nas_proto::transport::{TlsFiles, Transport};
use nas_proto::{admin_server::AdminServer, nas_server::NasServer, raft_server::RaftServer};

/// Largest message a CHN accepts (snapshots of the tables travel whole).
const MAX_MESSAGE: usize = 64 << 20;

/// Listens on `addr`. A restarted CHN may find its port briefly taken (a
/// connection of its previous life, or an outgoing connection that got the
/// port as its source port): it retries for a few seconds before giving up.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => {
                tracing::warn!(%addr, "address in use; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot listen on {addr}, port {} (tried for 5 s); is another program using it?",
                        addr.port()
                    )
                })
            }
        }
    }
}

/// Resolves with the reason once the Raft core has stopped by itself (a
/// fatal storage error, a panic): a CHN without its Raft core is a zombie
/// that must not go on answering.
async fn raft_stopped(lu: SharedLu) -> String {
    let mut metrics = lu.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "its metrics channel closed".into();
        }
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The server's TLS settings, the transport its own calls to other
/// CHNs use (presenting the same certificate), and the web port's.
type WebTls = Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>;
fn tls(cfg: &Tls) -> anyhow::Result<(Option<tonic::transport::ServerTlsConfig>, Transport, WebTls)> {
    let Tls::Files { cert, key, ca } = cfg else {
        tracing::warn!(
            "serving plaintext (--insecure): passwords, tokens and file data cross the network readable, \
             and anyone who reaches this port can call the Raft service; for debugging only"
        );
        return Ok((None, Transport::Insecure, None));
    };
    nas_proto::transport::prefer_aes128();
    let (cert, key, ca) = (
        read_pem("certificate", cert)?,
        read_pem("key", key)?,
        read_pem("CA certificate", ca)?,
    );
    let web = crate::web::tls_config(&cert, &key)?;
    let server = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert, &key))
        .client_ca_root(tonic::transport::Certificate::from_pem(&ca))
        // Clients of the file and Admin services need no certificate;
        // the Raft service refuses callers without a CHN's.
        .client_auth_optional(true);
    let transport = Transport::Tls(TlsFiles {
        ca,
        identity: Some((cert, key)),
    });
    Ok((Some(server), transport, Some(web)))
}

/// Runs the CHN until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create data directory {}", cfg.data.display()))?;
    if let Some(array) = &cfg.array {
        std::fs::create_dir_all(array).with_context(|| format!("cannot create array directory {}", array.display()))?;
    }
    let addr: SocketAddr = tokio::net::lookup_host(&cfg.listen)
        .await
        .with_context(|| format!("cannot resolve --listen {}", cfg.listen))?
        .next()
        .with_context(|| format!("--listen {} resolves to no address", cfg.listen))?;
    let (server_tls, transport, web_tls) = tls(&cfg.tls)?;
    let listener = bind(addr).await?;
    // Bound at start, so that a taken port stops nasd at once, named.
    let web_port = match cfg.metrics_listen {
        Some(a) => Some((
            bind(a).await.context("--metrics-listen (metrics and status page)")?,
            crate::telemetry::install()?,
        )),
        None => None,
    };

    let lu = SharedLu::start(
        cfg.node_id,
        cfg.name.clone(),
        cfg.advertise.clone(),
        &cfg.data,
        &cfg.raft,
        crate::shared_lu::network::Peers::new(transport),
    )
    .await?;
    let version = env!("CARGO_PKG_VERSION").to_string();

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(nas_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("cannot build the gRPC reflection service")?;
    // Liveness ("") is SERVING while the process runs; each service is
    // SERVING only while this CHN is ready for it (chn::readiness).
    health.set_not_serving::<AdminServer<AdminService>>().await;

    let heartbeat = tokio::spawn(crate::chn::heartbeat::report_loop(
        lu.clone(),
        cfg.daemon_interval,
        version.clone(),
    ));
    tracing::info!(name = %cfg.name, node_id = cfg.node_id, %addr, data = %cfg.data.display(), "CHN serving");

    let (events, events_task) = crate::chn::events::Events::new(lu.clone(), cfg.events.clone());
    let events_task = tokio::spawn(events_task);
    let (host, host_task) = crate::chn::lu_host::LuHost::new(
        lu.clone(),
        cfg.array.clone(),
        cfg.lu_lease,
        cfg.maintenance,
        events.clone(),
    );
    let host_task = tokio::spawn(host_task);
    let access = crate::access::Access::new(lu.clone(), crate::access::Passwords::new()?);
    let (auditor, audit_task) = crate::chn::audit::Auditor::new(lu.clone(), cfg.audit);
    let audit_task = tokio::spawn(audit_task);
    let (sessions, sessions_task) =
        crate::chn::sessions::Sessions::new(lu.clone(), access.clone(), cfg.session_lease, cfg.session_ttl);
    let sessions_task = tokio::spawn(sessions_task);
    let (backup, backup_task) =
        crate::chn::state_backup::StateBackup::new(lu.clone(), cfg.array.clone(), cfg.shared_lu_backup_every);
    let backup_task = tokio::spawn(backup_task);
    let exports = crate::chn::exports::Exports::new(lu.clone(), host.clone());
    let failover = crate::chn::failover::Failover::new(
        lu.clone(),
        host.clone(),
        exports.clone(),
        cfg.failover.clone(),
        events.clone(),
    );
    let failover_task = tokio::spawn(failover.clone().run());
    let (export_backups, schedule_task) = crate::chn::export_backup::ExportBackups::new(lu.clone(), exports.clone());
    let (mut readiness, judge_task) = crate::chn::readiness::watch(lu.clone(), exports.clone(), host.clone());
    let watch_task = {
        let failover = failover.clone();
        let ready = readiness.clone();
        tokio::spawn(crate::chn::events::watch::run(
            events.clone(),
            lu.clone(),
            move || ready.borrow().admin.is_none(),
            move |t| failover.monitor().all(t),
        ))
    };
    let web_task = web_port.map(|(listener, metrics)| {
        crate::web::serve(
            listener,
            web_tls.clone(),
            crate::web::Web {
                lu: lu.clone(),
                access: access.clone(),
                failover: failover.clone(),
                readiness: readiness.clone(),
                metrics,
                tls: web_tls.is_some(),
            },
        )
    });
    let judge_task = tokio::spawn(judge_task);
    let schedule_task = tokio::spawn(schedule_task);
    let nas = NasServer::new(NasService {
        shared: lu.clone(),
        sessions,
        exports: exports.clone(),
        handles: Default::default(),
        auditor: auditor.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    health.set_not_serving::<NasServer<NasService>>().await;
    let admin = AdminServer::new(AdminService {
        lu: lu.clone(),
        access: access.clone(),
        host: host.clone(),
        failover,
        backup,
        exports: exports.clone(),
        export_backups,
        version,
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let admin = crate::service::authz::Gated::new(admin, access, auditor.clone());
    let raft = RaftServer::new(RaftService {
        lu: lu.clone(),
        mutual_tls: server_tls.is_some(),
    })
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    // Server::tcp_nodelay only applies to listeners tonic binds itself;
    // without it, Nagle plus delayed ACKs add 40 ms to small replies.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    // A stopped Raft core ends the server like a signal does, but the CHN
    // reports NOT_SERVING first and `run` fails, so that nasd exits with
    // an error and a supervisor restarts it.
    let (fatal_tx, mut fatal_rx) = tokio::sync::watch::channel(None::<String>);
    let watch_raft = {
        let (lu, health) = (lu.clone(), health.clone());
        tokio::spawn(async move {
            let why = raft_stopped(lu).await;
            tracing::error!(reason = %why, "the Raft core stopped; this CHN stops serving and exits");
            health.set_not_serving::<NasServer<NasService>>().await;
            health.set_not_serving::<AdminServer<AdminService>>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = fatal_tx.send(Some(why));
        })
    };
    let report_readiness = {
        let (health, fatal) = (health.clone(), fatal_rx.clone());
        tokio::spawn(async move {
            loop {
                let now = readiness.borrow_and_update().clone();
                if fatal.borrow().is_some() {
                    return;
                }
                set_health::<AdminServer<AdminService>>(&health, now.admin.is_none()).await;
                set_health::<NasServer<NasService>>(&health, now.nas.is_none()).await;
                if readiness.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let shutdown = {
        let mut fatal = fatal_rx.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = fatal.wait_for(|f| f.is_some()) => {}
            }
        }
    };
    let mut builder = Server::builder();
    if let Some(t) = server_tls {
        builder = builder
            .tls_config(t)
            .context("cannot set up TLS with --tls-cert/--tls-key/--tls-ca")?;
    }
    let served = builder
        .tcp_nodelay(true)
        // File data streams in 1 MiB messages: h2's 64 KiB defaults would
        // stall every stream on window updates.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .max_frame_size(1 << 20)
        // Cancelled calls are routine here (Raft RPCs that timed out while a
        // peer was away, client calls abandoned for a new owner); h2's
        // rapid-reset guard (20) would close the connection on a peer.
        .http2_max_pending_accept_reset_streams(Some(4096))
        // Bounds what one connection can hold open at once; messages are
        // bounded by MAX_MESSAGE.
        .max_concurrent_streams(Some(1024))
        .layer(tower::util::MapResponseLayer::new(
            crate::service::status::undecodable_is_invalid_argument,
        ))
        .layer(tower::util::option_layer(
            cfg.metrics_listen
                .map(|_| crate::service::call_metrics::GrpcMetricsLayer),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(nas)
        .add_service(admin)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;

    watch_raft.abort();
    report_readiness.abort();
    judge_task.abort();
    audit_task.abort();
    watch_task.abort();
    events_task.abort();
    if let Some(t) = web_task {
        t.abort();
    }
    // What the last quarter second recorded.
    let last = async { tokio::join!(auditor.flush(), events.flush()) };
    if tokio::time::timeout(std::time::Duration::from_secs(2), last)
        .await
        .is_err()
    {
        tracing::warn!("the last audit records and events could not be appended before stopping");
    }
    // A clean stop leaves clean LUs: nothing to resync at the next open,
    // and a disk missing by then costs nothing.
    exports.unmount_all().await;
    host.close_all().await;
    heartbeat.abort();
    host_task.abort();
    sessions_task.abort();
    failover_task.abort();
    backup_task.abort();
    schedule_task.abort();
    if let Err(e) = lu.raft.shutdown().await {
        tracing::warn!(error = %e, "Raft did not shut down cleanly");
    }
    served.context("gRPC server failed")?;
    if let Some(why) = fatal_rx.borrow_and_update().clone() {
        anyhow::bail!(
            "the Raft core stopped ({why}); restart this CHN (if it fails again, re-seed it: see the README, Security)"
        );
    }
    tracing::info!(name = %cfg.name, "CHN stopped");
    Ok(())
}

async fn set_health<S: tonic::server::NamedService>(health: &tonic_health::server::HealthReporter, ready: bool) {
    if ready {
        health.set_serving::<S>().await;
    } else {
        health.set_not_serving::<S>().await;
    }
}
