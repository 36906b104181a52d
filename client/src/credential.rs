//! Admin credentials on the client side: what a caller proves itself
//! with, and the interceptor that puts it in each call's `authorization`
//! metadata entry.
//!
//! Owns the wire spelling of a credential (`Bearer TOKEN`, `Basic
//! BASE64(USER:PASSWORD)`); it must never print or log one.

use base64::Engine;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// How Admin calls prove who makes them.
#[derive(Clone, Default)]
pub enum Credential {
    /// None: only the open calls (NodeInfo, Login, Bootstrap) succeed.
    #[default]
    None,
    /// A token from `Login` (`nasctl login`).
    Token(String),
    /// A user's password; `Cluster` exchanges it for a token on first use.
    Password { user: String, password: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => write!(f, "None"),
            Credential::Token(_) => write!(f, "Token(..)"),
            Credential::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
        }
    }
}

impl Credential {
    /// The metadata entry this credential sends as it is.
    pub fn authorization(&self) -> Authorization {
        match self {
            Credential::None => Authorization::none(),
            Credential::Token(t) => Authorization::bearer(t),
            Credential::Password { user, password } => {
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Authorization(format!("Basic {pair}").parse().ok())
            }
        }
    }
}

/// The `authorization` entry every call of a client carries.
#[derive(Clone, Default)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl Authorization {
    pub fn none() -> Authorization {
        Authorization(None)
    }

    pub fn bearer(token: &str) -> Authorization {
        Authorization(format!("Bearer {token}").parse().ok())
    }
}

impl Interceptor for Authorization {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
