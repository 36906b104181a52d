//! Why a CHN could not do what a caller asked.
//!
//! Owns the one error type of the CHN layer. It must never name a gRPC
//! status: `service::status` maps each variant to one, and callers branch
//! on variants, never on status codes.

use crate::array::ArrayError;
use crate::fs::FsError;
use crate::shared_lu;

/// An error of the CHN layer, with advice for the caller in its message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    SharedLu(#[from] shared_lu::Error),
    #[error(transparent)]
    Array(#[from] ArrayError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error(transparent)]
    Backup(#[from] nas_proto::backup_file::BackupError),
    #[error(transparent)]
    Target(#[from] nas_backup::TargetError),
    #[error(transparent)]
    Archive(#[from] nas_backup::archive::ArchiveError),
    /// A file-system call of the CHN's own (a backup or restore) failed.
    #[error(transparent)]
    File(#[from] FsError),
    /// An export's file system could not be mounted here.
    #[error("export {export} cannot be mounted: {source}")]
    Mount { export: String, source: FsError },
    /// Another CHN serves this: the caller is to go to `addr`.
    #[error("{message}")]
    Elsewhere { message: String, addr: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The cluster is not in a state that allows the call; the message
    /// says what to do first.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid session: the caller is to open one.
    #[error("{0}")]
    Unauthenticated(String),
    /// Transient: a move, an open or a lease in progress; retry shortly.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    TimedOut(String),
    /// A task of this CHN failed where it should not have.
    #[error("{0}")]
    Internal(String),
}

impl From<shared_lu::Rejection> for Error {
    fn from(r: shared_lu::Rejection) -> Self {
        Error::SharedLu(r.into())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a task of this CHN failed: {e}"))
    }
}
