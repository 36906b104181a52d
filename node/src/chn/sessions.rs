//! Client sessions, kept in the shared LU's client table so that any CHN
//! can check a token and a taking-over CHN can resume every session.
//!
//! A token is `CLIENT_ID.SECRET`; the table keeps only the secret's
//! SHA-256, so a copy of the shared LU opens no session. Stored replies
//! are keyed by the session (client id and a tag of its secret), never by
//! the client id alone: a later session with the same client id, whoever
//! opens it, never sees an earlier session's replies. A session lives until its expiry, and
//! while the client is heard of at least once per lease: each CHN collects
//! the clients it served and renews them (and their file locks) in one
//! command every quarter lease; the Raft leader ends the sessions whose
//! lease ran out, which releases their file locks.
//!
//! Owns authentication of file-service calls; must never keep a session
//! only in memory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nas_proto::command::Kind;
use nas_proto::*;
use sha2::{Digest, Sha256};

use crate::chn::Error;
use crate::rt::now_ms;
use crate::shared_lu::SharedLu;

/// A checked session.
#[derive(Debug, Clone)]
pub struct Session {
    pub client_id: String,
    /// Names this session's stored replies: unique to the session.
    pub replies: String,
    pub user: String,
    pub uid: u32,
    /// The export mounted, or "" before Mount.
    pub export: String,
    /// When the session ends whatever happens.
    pub expires_ms: u64,
}

struct Inner {
    shared: SharedLu,
    access: crate::access::Access,
    lease: Duration,
    ttl: Duration,
    /// Clients served since the last renewal.
    seen: Mutex<HashSet<String>>,
}

/// This CHN's view of the sessions; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

fn unauthenticated(msg: impl Into<String>) -> Error {
    Error::Unauthenticated(msg.into())
}

fn check_client_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "client id {id:?} is not allowed: use 1 to 64 of A-Z a-z 0-9 - _"
        )))
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the client table keeps of a session secret.
fn secret_hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

impl Session {
    /// The identity the session's file calls run as.
    pub fn caller(&self) -> crate::fs::Caller {
        crate::fs::Caller {
            uid: self.uid,
            user: self.user.clone(),
        }
    }
}

impl Sessions {
    /// The sessions of this CHN and the task that renews and expires them.
    pub fn new(
        shared: SharedLu,
        access: crate::access::Access,
        lease: Duration,
        ttl: Duration,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let s = Sessions {
            inner: Arc::new(Inner {
                shared,
                access,
                lease,
                ttl,
                seen: Mutex::new(HashSet::new()),
            }),
        };
        let bg = s.clone().background();
        (s, bg)
    }

    fn shared(&self) -> &SharedLu {
        &self.inner.shared
    }

    /// How long a session outlives the last time its client was heard of.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Checks the password (throttled per user and per `source` address)
    /// and records a new session.
    pub async fn open(
        &self,
        user: &str,
        password: &str,
        client_id: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<SessionReply, Error> {
        let client_id = if client_id.is_empty() {
            random_hex(8)
        } else {
            check_client_id(client_id)?;
            client_id.to_string()
        };
        self.shared().ensure_current().await?;
        let row = self.inner.access.check_password(user, password, source).await?;
        if let Some(other) = self.shared().client(&client_id) {
            if other.user != user {
                return Err(Error::AlreadyExists(format!(
                    "client id {client_id} belongs to another user's session; pick another client id"
                )));
            }
            // A client starting over: its old session and locks end first.
            let cmd = Kind::RemoveClient(RemoveClient {
                client_id: client_id.clone(),
            });
            let _ = self.shared().write(Command { kind: Some(cmd) }).await;
        }
        let now = now_ms();
        let secret = random_hex(16);
        let client = Client {
            client_id: client_id.clone(),
            session: secret_hash(&secret),
            user: user.to_string(),
            export: String::new(),
            last_seen_ms: now,
            state: vec![],
            expires_ms: now + self.inner.ttl.as_millis() as u64,
            lease_ms: self.inner.lease.as_millis() as u64,
            uid: row.uid,
        };
        let expires_ms = client.expires_ms;
        self.shared()
            .write(Command {
                kind: Some(Kind::UpsertClient(UpsertClient { client: Some(client) })),
            })
            .await?;
        Ok(SessionReply {
            token: format!("{client_id}.{secret}"),
            client_id,
            expires_ms,
            lease_ms: self.inner.lease.as_millis() as u64,
        })
    }

    /// The session a token names, if it is valid and alive.
    pub async fn check(&self, token: &str) -> Result<Session, Error> {
        let (id, secret) = token
            .split_once('.')
            .ok_or_else(|| unauthenticated("the session token is malformed; open a session with OpenSession"))?;
        let mut row = self.shared().client(id);
        if row.is_none() {
            // Opened a moment ago on another CHN: this copy may lag.
            self.shared().ensure_current().await?;
            row = self.shared().client(id);
        }
        let row =
            row.ok_or_else(|| unauthenticated(format!("session {id} has ended or never existed; open a new session")))?;
        if !same_secret(&row.session, &secret_hash(secret)) {
            return Err(unauthenticated(format!(
                "the token of session {id} is not valid; open a new session"
            )));
        }
        let now = now_ms();
        if row.expires_ms != 0 && row.expires_ms <= now {
            return Err(unauthenticated(format!("session {id} expired; open a new session")));
        }
        let renewing = self.lock_seen().contains(id);
        if !renewing && row.lease_ms != 0 && row.last_seen_ms.saturating_add(row.lease_ms) <= now {
            return Err(unauthenticated(format!(
                "session {id} was not heard of for {} ms and ended, with its file locks; open a new session",
                row.lease_ms
            )));
        }
        self.lock_seen().insert(id.to_string());
        Ok(Session {
            replies: format!("{}.{}", row.client_id, row.session.get(..16).unwrap_or_default()),
            client_id: row.client_id,
            user: row.user,
            uid: row.uid,
            export: row.export,
            expires_ms: row.expires_ms,
        })
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the session's user may use `export`.
    pub fn may_use(&self, s: &Session, export: &Export) -> Result<(), Error> {
        if !export.users.is_empty() && !export.users.contains(&s.user) {
            return Err(Error::PermissionDenied(format!(
                "user {} may not use export {}; its users are {}",
                s.user,
                export.name,
                export.users.join(", ")
            )));
        }
        Ok(())
    }

    /// Binds the session to `export`, if its user may use it.
    pub async fn mount(&self, s: &Session, export: &Export) -> Result<(), Error> {
        self.may_use(s, export)?;
        if s.export == export.name {
            return Ok(());
        }
        let mut row = self
            .shared()
            .client(&s.client_id)
            .ok_or_else(|| unauthenticated(format!("session {} has ended; open a new session", s.client_id)))?;
        row.export = export.name.clone();
        row.last_seen_ms = now_ms();
        // SharedLu::write returns once this CHN's copy shows the mount, so
        // the next call, which may come at once, finds it here.
        self.shared()
            .write(Command {
                kind: Some(Kind::UpsertClient(UpsertClient { client: Some(row) })),
            })
            .await?;
        Ok(())
    }

    /// Ends a session: its file locks are released.
    pub async fn close(&self, s: &Session) -> Result<(), Error> {
        self.lock_seen().remove(&s.client_id);
        let cmd = Kind::RemoveClient(RemoveClient {
            client_id: s.client_id.clone(),
        });
        self.shared().write(Command { kind: Some(cmd) }).await?;
        Ok(())
    }

    async fn background(self) {
        // At most a second: the renewals a CHN has gathered die with it, so
        // a client served by CHNs that keep failing over must still be
        // renewed by each of them well within its lease.
        let period = (self.inner.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids: Vec<String> = self.lock_seen().iter().cloned().collect();
            if !ids.is_empty() {
                let cmd = Kind::TouchClients(TouchClients {
                    client_ids: ids.clone(),
                    now_ms: now_ms(),
                });
                match self.shared().write(Command { kind: Some(cmd) }).await {
                    Ok(_) => {
                        let mut seen = self.lock_seen();
                        for id in &ids {
                            seen.remove(id);
                        }
                    }
                    Err(e) => tracing::debug!("sessions not renewed yet: {e}"),
                }
            }
            let leads = self.shared().leader().is_some_and(|(id, _)| id == self.shared().id);
            let any_due = self.shared().anything_lapsed(now_ms());
            if leads && any_due {
                let cmd = Kind::ExpireClients(ExpireClients { now_ms: now_ms() });
                match self.shared().write(Command { kind: Some(cmd) }).await {
                    Ok(r) if r.assigned > 0 => tracing::info!(ended = r.assigned, "client sessions ended by lease"),
                    Ok(_) => {}
                    Err(e) => tracing::debug!("sessions not expired yet: {e}"),
                }
            }
        }
    }
}
