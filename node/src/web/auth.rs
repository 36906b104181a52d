//! Who may see the web port: users with the viewer role or above, by a
//! login token (`Authorization: Bearer`, or the cookie the login form
//! sets) or a password (`Authorization: Basic`, as Prometheus's
//! `basic_auth` sends it). The same checks, throttling included, as the
//! Admin service's.
//!
//! It must never let a request through without a credential of a viewer.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use nas_proto::Role;

use super::Web;
use crate::access::{AccessError, Caller, Credential};

/// Name of the cookie that holds a login token.
const COOKIE: &str = "nas_token";
/// How long a login from the page lasts.
const PAGE_LOGIN: Duration = Duration::from_secs(12 * 3600);

/// How a refusal is answered.
#[derive(Clone, Copy)]
pub enum Refusal {
    /// 401 with a Basic challenge (Prometheus, curl).
    Challenge,
    /// A redirect to the login form (a browser opening the page).
    Login,
    /// A bare 401 (the page's own polling: its script sends the browser
    /// to the login form).
    Status,
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    pub user: String,
    pub password: String,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

async fn authenticate(web: &Web, headers: &HeaderMap, from: SocketAddr) -> Result<Caller, AccessError> {
    let source = Some(from.ip());
    let caller =
        match crate::service::authz::credential(headers)? {
            Some((token, None)) => web.access.authenticate(Credential::Token(&token), source).await?,
            Some((user, Some(password))) => {
                web.access
                    .authenticate(
                        Credential::Password {
                            user: &user,
                            password: &password,
                        },
                        source,
                    )
                    .await?
            }
            None => match cookie_token(headers) {
                Some(token) => web.access.authenticate(Credential::Token(&token), source).await?,
                None => return Err(AccessError::Unauthenticated(
                    "log in with a viewer's user name and password (Basic), or a token from `nasctl login` (Bearer)"
                        .into(),
                )),
            },
        };
    if caller.role < Role::Viewer {
        return Err(AccessError::PermissionDenied(format!(
            "user {} has no role on the Admin service; the status page and metrics need viewer or above \
             (an admin grants it with `nasctl role grant {} viewer`)",
            caller.user, caller.user
        )));
    }
    Ok(caller)
}

/// The caller, if a viewer; else the answer to send.
pub async fn viewer(web: &Web, headers: &HeaderMap, from: SocketAddr, refusal: Refusal) -> Result<Caller, Response> {
    let err = match authenticate(web, headers, from).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let status = match &err {
        AccessError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        AccessError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        AccessError::SharedLu(_) | AccessError::Hashing(_) => StatusCode::SERVICE_UNAVAILABLE,
        AccessError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
    };
    Err(match refusal {
        Refusal::Login if status == StatusCode::UNAUTHORIZED => Redirect::to("/login").into_response(),
        Refusal::Challenge if status == StatusCode::UNAUTHORIZED => (
            status,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"nas\""),
            )],
            format!("{err}\n"),
        )
            .into_response(),
        _ => (status, format!("{err}\n")).into_response(),
    })
}

/// Checks the form's password and role; returns the Set-Cookie value
/// holding a new login token.
pub async fn login(web: &Web, form: &LoginForm, from: SocketAddr) -> Result<String, String> {
    let (token, _, role) = web
        .access
        .login(&form.user, &form.password, PAGE_LOGIN, Some(from.ip()))
        .await
        .map_err(|e| e.to_string())?;
    if role < Role::Viewer {
        return Err(format!(
            "user {} has no role on the Admin service; the status page needs viewer or above",
            form.user
        ));
    }
    Ok(format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        PAGE_LOGIN.as_secs(),
        if web.tls { "; Secure" } else { "" }
    ))
}

pub fn cleared_cookie(tls: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if tls { "; Secure" } else { "" }
    )
}
