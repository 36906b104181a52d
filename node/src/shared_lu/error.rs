//! Why a shared-LU write or read did not succeed.
//!
//! Owns the typed refusals of the state machine ([`Rejection`]) and the
//! failures of the group around it ([`Error`]). It must never name a
//! transport's status type: `service::status` maps these for callers, and
//! the numbers a [`RejectKind`] travels as are the only encoding.

use std::time::Duration;

/// Why the state machine refused a command. Refusals travel between CHNs
/// in `CommandResult.code`; the numbers are those of the gRPC status a
/// caller eventually sees, except [`RejectKind::LockHeld`], which a CHN
/// renewing its LU lock must tell apart from every other precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// An LU lock is held by another CHN, or at another epoch: the caller
    /// has lost (or never had) the right to write that LU.
    LockHeld,
    /// The session a command names has ended.
    SessionEnded,
}

impl RejectKind {
    /// The number this refusal travels as in `CommandResult.code`.
    pub fn code(self) -> i32 {
        match self {
            RejectKind::InvalidArgument => 3,
            RejectKind::NotFound => 5,
            RejectKind::AlreadyExists => 6,
            RejectKind::FailedPrecondition => 9,
            RejectKind::LockHeld => 10,
            RejectKind::SessionEnded => 16,
        }
    }

    /// The refusal a `CommandResult.code` stands for; `None` for 0
    /// (applied). A number no version of the state machine sends is read
    /// as a failed precondition rather than dropped.
    pub fn from_code(code: i32) -> Option<RejectKind> {
        Some(match code {
            0 => return None,
            3 => RejectKind::InvalidArgument,
            5 => RejectKind::NotFound,
            6 => RejectKind::AlreadyExists,
            10 => RejectKind::LockHeld,
            16 => RejectKind::SessionEnded,
            _ => RejectKind::FailedPrecondition,
        })
    }
}

/// A command the state machine refused, with advice for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectKind,
    pub message: String,
}

/// Why a write or a linearizable read of the shared LU failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The command was committed and refused by the state machine: it
    /// changed nothing.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(
        "{what} got no quorum within {} ms: a majority of CHNs may be down or unreachable; retry when they are back",
        timeout.as_millis()
    )]
    NoQuorum { what: &'static str, timeout: Duration },
    #[error(
        "{name} is not part of a shared LU yet: bootstrap the first CHN with \
         `nasctl chn install NAME --addr ADDR --bootstrap`, then install this one"
    )]
    NotMember { name: String },
    #[error("{name} already belongs to an initialized shared LU; install further CHNs with `nasctl chn install`")]
    AlreadyMember { name: String },
    /// A change of the Raft membership was refused.
    #[error("{what} failed: {reason}")]
    Membership { what: &'static str, reason: String },
    #[error("the new CHN did not catch up within {secs} s; run chn install again")]
    CatchUpTimeout { secs: u64 },
    #[error("cannot remove the last voting CHN")]
    LastVoter,
    /// A transient failure (a leader change, a peer out of reach, this CHN
    /// shutting down): the message says whether the command may have been
    /// applied; retrying is the caller's move.
    #[error("{0}")]
    Unavailable(String),
    /// A peer answered with something this CHN cannot make sense of.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Whether the state machine refused the command with `kind`.
    pub fn is_rejected(&self, kind: RejectKind) -> bool {
        matches!(self, Error::Rejected(r) if r.kind == kind)
    }
}
