//! This CHN's web port (`--metrics-listen`): Prometheus metrics at
//! `/metrics` and the live status page at `/`, over HTTPS with the CHN's
//! own certificate (plain HTTP only when the CHN runs `--insecure`).
//!
//! Owns the HTTP listener and its routes. Everything it serves needs the
//! viewer role (see `auth`); it must never change the cluster and never
//! wait on the network to answer: pages and metrics come from this CHN's
//! copy of the tables.

mod auth;
mod gauges;
mod page;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::access::Access;
use crate::chn::failover::Failover;
use crate::shared_lu::SharedLu;

/// What the routes read.
#[derive(Clone)]
pub struct Web {
    pub lu: SharedLu,
    pub access: Access,
    pub failover: Failover,
    /// Whether this CHN reaches a majority (and why not).
    pub readiness: tokio::sync::watch::Receiver<crate::chn::readiness::Readiness>,
    pub metrics: PrometheusHandle,
    /// Whether the port speaks TLS (cookies are then marked Secure).
    pub tls: bool,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves on `listener` in a background task.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    web: Web,
) -> tokio::task::JoinHandle<()> {
    let app = routes(web).into_make_service_with_connect_info::<Peer>();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "serving metrics and the status page");
    }
    tokio::spawn(async move {
        let served = match tls {
            Some(config) => axum::serve(tls_listener(listener, config), app).await,
            None => axum::serve(listener, app).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics and status port stopped");
        }
    })
}

fn routes(web: Web) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_fragment))
        .route("/metrics", get(metrics))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/static/console.css", get(page::css))
        .route("/static/console.js", get(page::js))
        .layer(axum::middleware::map_response(console_headers))
        .with_state(web)
}

/// The page loads nothing from elsewhere, runs only its own script and
/// may not be framed (no clickjacking of an operator's session).
async fn console_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, header::HeaderValue::from_static(value));
    }
    resp
}

async fn metrics(State(web): State<Web>, ConnectInfo(Peer(from)): ConnectInfo<Peer>, headers: HeaderMap) -> Response {
    if let Err(refused) = auth::viewer(&web, &headers, from, auth::Refusal::Challenge).await {
        return refused;
    }
    let sources = gauges::Sources::new(web.lu.clone());
    let text = crate::telemetry::render(&web.metrics, || sources.collect());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn status_page(
    State(web): State<Web>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    match auth::viewer(&web, &headers, from, auth::Refusal::Login).await {
        Ok(caller) => Html(page::console(&view::gather(&web), &caller).into_string()).into_response(),
        Err(refused) => refused,
    }
}

async fn status_fragment(
    State(web): State<Web>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    match auth::viewer(&web, &headers, from, auth::Refusal::Status).await {
        Ok(_) => (
            [(header::CACHE_CONTROL, "no-store")],
            Html(page::live(&view::gather(&web)).into_string()),
        )
            .into_response(),
        Err(refused) => refused,
    }
}

async fn login_form() -> Response {
    Html(page::login(None).into_string()).into_response()
}

async fn login(
    State(web): State<Web>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    Form(form): Form<auth::LoginForm>,
) -> Response {
    match auth::login(&web, &form, from).await {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response(),
        Err(why) => (StatusCode::UNAUTHORIZED, Html(page::login(Some(&why)).into_string())).into_response(),
    }
}

async fn logout(State(web): State<Web>) -> Response {
    (
        [(header::SET_COOKIE, auth::cleared_cookie(web.tls))],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The address a request came from, on either kind of listener.
#[derive(Clone, Copy)]
pub struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Connections whose TLS handshake completed; each handshake runs in a
/// task of its own, so a slow or silent client holds up no other.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
}

fn tls_listener(listener: TcpListener, config: Arc<tokio_rustls::rustls::ServerConfig>) -> TlsListener {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, ready) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server dropped its end: stop accepting (and free the port).
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "metrics port: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, from)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, error = %e, "metrics port: TLS handshake failed"),
                    Err(_) => tracing::debug!(%from, "metrics port: TLS handshake timed out"),
                }
            });
        }
    });
    TlsListener { local, ready }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ends only once this end is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The web port's TLS settings: the CHN's certificate, no client
/// certificate asked for (browsers and Prometheus log in instead).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the --tls-cert file holds no readable PEM certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("the --tls-key file holds no readable PEM key")?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the --tls-cert and --tls-key files do not form a usable certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
