//! The gate in front of the Admin service: every call is authenticated
//! from its `authorization` metadata and authorized against
//! `access::policy` before the handler runs. Every change, every login and
//! every refusal is recorded in the audit log with its arguments (secrets
//! left out) and its answer.
//!
//! Owns reading credentials off the wire; the decisions are `access`'s.
//! It must never let a call through that the policy does not name.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};

use base64::Engine;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use http_body_util::{BodyExt, Full};
use nas_proto::AuditRecord;

use crate::access::{Access, AccessError, Credential, Need};
use crate::chn::audit::Auditor;

/// Metadata entry that carries the credential.
pub const AUTHORIZATION: &str = "authorization";

/// `S` (an Admin server) behind the gate.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    access: Access,
    auditor: Auditor,
}

impl<S> Gated<S> {
    pub fn new(inner: S, access: Access, auditor: Auditor) -> Self {
        Gated { inner, access, auditor }
    }
}

/// Whether the call `method` is recorded whatever its answer: everything
/// but looking (viewer calls and NodeInfo are recorded only when refused)
/// and probe writes, which monitoring sends many times a second: recorded,
/// they would push every other record out of the bounded log.
fn audited(method: &str) -> bool {
    !matches!(
        crate::access::policy::admin(method),
        Some(Need::Role(nas_proto::Role::Viewer))
    ) && !matches!(method, "NodeInfo" | "WriteProbe")
}

/// The user a credential claims, for the audit log of a refusal.
fn claimed_user(headers: &http::HeaderMap) -> String {
    match credential(headers) {
        Ok(Some((user, Some(_)))) => user,
        Ok(Some((token, None))) => crate::access::tokens::parse(&token)
            .map(|c| c.user.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

/// The caller's address, as the connection reported it.
pub fn source<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()).or_else(|| {
        ext.get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
    })
}

pub(crate) fn credential(headers: &http::HeaderMap) -> Result<Option<(String, Option<String>)>, AccessError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        AccessError::Unauthenticated(
            "the authorization entry must be `Bearer TOKEN` or `Basic BASE64(USER:PASSWORD)`".into(),
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(Some((token.trim().to_string(), None)));
    }
    let basic = value.strip_prefix("Basic ").ok_or_else(bad)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_string(), Some(password.to_string()))))
}

async fn admit(
    access: &Access,
    method: &str,
    headers: &http::HeaderMap,
    from: Option<IpAddr>,
) -> Result<Option<crate::access::Caller>, AccessError> {
    if crate::access::policy::admin(method) == Some(Need::Open) {
        return Ok(None);
    }
    let caller = match credential(headers)? {
        None => {
            return Err(AccessError::Unauthenticated(format!(
                "{method} needs a credential: log in with `nasctl login`, or set NAS_ADMIN_USER and NAS_ADMIN_PASSWORD"
            )))
        }
        Some((token, None)) => access.authenticate(Credential::Token(&token), from).await?,
        Some((user, Some(password))) => {
            access
                .authenticate(
                    Credential::Password {
                        user: &user,
                        password: &password,
                    },
                    from,
                )
                .await?
        }
    };
    Access::authorize(&caller, method)?;
    Ok(Some(caller))
}

impl<S> Service<http::Request<Body>> for Gated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service answers this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (access, auditor) = (self.access.clone(), self.auditor.clone());
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let from = source(&req).map(|a| a.ip());
            let mut rec = AuditRecord {
                call: format!("Admin/{method}"),
                source: from.map(|a| a.to_string()).unwrap_or_default(),
                ..Default::default()
            };
            match admit(&access, &method, req.headers(), from).await {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        rec.role = nas_proto::labels::role(caller.role as i32).to_string();
                        rec.user = caller.user;
                    }
                    if !audited(&method) {
                        return inner.call(req).await;
                    }
                    let (parts, body) = req.into_parts();
                    let frame = match body.collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(e) => {
                            return Ok(Status::invalid_argument(format!("cannot read the request: {e}")).into_http())
                        }
                    };
                    rec.args = crate::service::audit_args::render("nas.v1.Admin", &method, &frame);
                    let req = http::Request::from_parts(parts, Body::new(Full::new(frame)));
                    let resp = inner.call(req).await?;
                    // An error answers with its status in the headers;
                    // success sends OK in the trailers.
                    if let Some(status) = Status::from_header_map(resp.headers()) {
                        rec.code = status.code() as i32;
                        rec.result = status.message().to_string();
                    }
                    auditor.record(rec);
                    Ok(resp)
                }
                Err(e) => {
                    let status = Status::from(e);
                    rec.user = claimed_user(req.headers());
                    rec.code = status.code() as i32;
                    rec.result = status.message().to_string();
                    auditor.record(rec);
                    Ok(status.into_http())
                }
            }
        })
    }
}
