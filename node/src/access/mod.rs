//! Who may call what: Admin credentials (login tokens and passwords),
//! roles, and the password checks of both the Admin and the file service.
//!
//! Owns authentication and authorization decisions; it never names a
//! gRPC status (the edge maps `AccessError`) and never writes a table
//! except through `SharedLu` commands.

pub mod passwords;
pub mod peer;
pub mod policy;
pub mod throttle;
pub mod tokens;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nas_proto::{labels, Role, User};

use crate::rt::now_ms;
use crate::shared_lu::SharedLu;
pub use passwords::{HashError, Passwords};
pub use policy::Need;

/// Default and longest lifetime of a login token.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("too many failed logins for {what}; retry in {} ms", retry_after.as_millis())]
    Throttled { what: String, retry_after: Duration },
    #[error(transparent)]
    Hashing(#[from] HashError),
    #[error(transparent)]
    SharedLu(#[from] crate::shared_lu::Error),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub role: Role,
}

/// A credential as a caller presented it.
pub enum Credential<'a> {
    Token(&'a str),
    Password { user: &'a str, password: &'a str },
}

/// The authority of one CHN; cheap to clone.
#[derive(Clone)]
pub struct Access {
    lu: SharedLu,
    passwords: Passwords,
    throttle: Arc<throttle::Throttle>,
}

fn denied() -> AccessError {
    // One answer for an unknown user and a wrong password, so that
    // probing does not reveal which user names exist.
    AccessError::Unauthenticated("user or password is wrong".into())
}

impl Access {
    pub fn new(lu: SharedLu, passwords: Passwords) -> Access {
        Access {
            lu,
            passwords,
            throttle: Arc::default(),
        }
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    /// The user row, from this CHN's copy or, if it lacks the user (added
    /// a moment ago elsewhere), after catching up with the leader.
    async fn user(&self, name: &str) -> Result<Option<User>, AccessError> {
        if let Some(u) = self.lu.user(name) {
            return Ok(Some(u));
        }
        self.lu.ensure_current().await?;
        Ok(self.lu.user(name))
    }

    /// Checks `user`'s password, throttling failures per user and per
    /// source address; returns the user's row.
    pub async fn check_password(
        &self,
        user: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<User, AccessError> {
        // No real user has a longer name; a made-up one must not grow the
        // throttle's memory.
        if user.is_empty() || user.len() > 64 {
            return Err(denied());
        }
        let user_key = format!("user {user}");
        let source_key = source.map(|a| format!("address {a}"));
        let keys: Vec<&str> = std::iter::once(user_key.as_str())
            .chain(source_key.as_deref())
            .collect();
        self.throttle
            .attempt(&keys, Instant::now())
            .map_err(|(what, retry_after)| AccessError::Throttled {
                what: what.to_string(),
                retry_after,
            })?;
        let row = self.user(user).await?.filter(|u| u.enabled);
        let good = self
            .passwords
            .verify(password, row.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        match row {
            Some(row) if good => {
                self.throttle.succeeded(&keys);
                Ok(row)
            }
            _ => Err(denied()),
        }
    }

    /// A login: a token for `user` valid `ttl` (default an hour, at most a day).
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        ttl: Duration,
        source: Option<IpAddr>,
    ) -> Result<(String, u64, Role), AccessError> {
        let row = self.check_password(user, password, source).await?;
        let ttl = if ttl.is_zero() {
            TOKEN_TTL
        } else {
            ttl.min(MAX_TOKEN_TTL)
        };
        let expires_ms = now_ms() + ttl.as_millis() as u64;
        let key = self.lu.read(|t| t.shared_lu.token_key.clone());
        let token = tokens::sign(&key, &row.name, expires_ms, &row.password_hash).ok_or_else(|| {
            AccessError::Unauthenticated("this cluster has no token key yet; bootstrap it first".into())
        })?;
        Ok((token, expires_ms, Role::try_from(row.role).unwrap_or(Role::None)))
    }

    /// Who presents `credential`.
    pub async fn authenticate(
        &self,
        credential: Credential<'_>,
        source: Option<IpAddr>,
    ) -> Result<Caller, AccessError> {
        let row = match credential {
            Credential::Password { user, password } => self.check_password(user, password, source).await?,
            Credential::Token(token) => {
                let bad =
                    || AccessError::Unauthenticated("the token is not valid; log in again (`nasctl login`)".into());
                let claim = tokens::parse(token).ok_or_else(bad)?;
                if claim.expires_ms <= now_ms() {
                    return Err(AccessError::Unauthenticated(
                        "the token has expired; log in again (`nasctl login`)".into(),
                    ));
                }
                let row = self.user(claim.user).await?.filter(|u| u.enabled).ok_or_else(bad)?;
                let key = self.lu.read(|t| t.shared_lu.token_key.clone());
                if !tokens::verify(&claim, &key, &row.password_hash) {
                    return Err(bad());
                }
                row
            }
        };
        Ok(Caller {
            role: Role::try_from(row.role).unwrap_or(Role::None),
            user: row.name,
        })
    }

    /// Whether `caller` may make the Admin call `method`.
    pub fn authorize(caller: &Caller, method: &str) -> Result<(), AccessError> {
        match policy::admin(method) {
            Some(Need::Open) => Ok(()),
            Some(Need::Role(needed)) if caller.role >= needed => Ok(()),
            Some(Need::Role(needed)) => Err(AccessError::PermissionDenied(format!(
                "{method} needs the {} role; user {} has {} (an admin grants roles with `nasctl role grant`)",
                labels::role(needed as i32),
                caller.user,
                labels::role(caller.role as i32)
            ))),
            None => Err(AccessError::PermissionDenied(format!(
                "{method} is not an Admin call anyone may make"
            ))),
        }
    }
}
