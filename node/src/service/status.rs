//! The one place where domain errors become gRPC statuses, and where a
//! peer's status becomes a domain error again.
//!
//! Owns the status code and metadata every error is answered with. Layers
//! below `service/` never name a status; nothing here decides anything but
//! how an error is spelled on the wire.

use nas_backup::archive::ArchiveError;
use nas_backup::TargetError;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::access::{AccessError, HashError};
use crate::array::ArrayError;
use crate::chn;
use crate::fs::FsError;
use crate::shared_lu::network::PeerError;
use crate::shared_lu::{self, RejectKind, Rejection};
use nas_proto::backup_file::BackupError;

/// Trailer naming the address of the CHN that serves an export, on an
/// UNAVAILABLE answer from a CHN that does not.
pub const OWNER_KEY: &str = "x-nas-owner";

impl From<Rejection> for Status {
    fn from(r: Rejection) -> Status {
        let code = match r.kind {
            RejectKind::InvalidArgument => Code::InvalidArgument,
            RejectKind::NotFound => Code::NotFound,
            RejectKind::AlreadyExists => Code::AlreadyExists,
            RejectKind::FailedPrecondition | RejectKind::LockHeld => Code::FailedPrecondition,
            RejectKind::SessionEnded => Code::Unauthenticated,
        };
        Status::new(code, r.message)
    }
}

impl From<AccessError> for Status {
    fn from(e: AccessError) -> Status {
        match e {
            AccessError::Unauthenticated(m) => Status::unauthenticated(m),
            AccessError::PermissionDenied(m) => Status::permission_denied(m),
            AccessError::Throttled { .. } | AccessError::Hashing(HashError::Busy) => {
                Status::resource_exhausted(e.to_string())
            }
            AccessError::Hashing(HashError::Internal(m)) => Status::internal(m),
            AccessError::SharedLu(e) => e.into(),
        }
    }
}

impl From<shared_lu::admission::Refused> for Status {
    fn from(r: shared_lu::admission::Refused) -> Status {
        match r {
            shared_lu::admission::Refused::Impostor { .. } => Status::permission_denied(r.to_string()),
            _ => Status::invalid_argument(r.to_string()),
        }
    }
}

impl From<shared_lu::Error> for Status {
    fn from(e: shared_lu::Error) -> Status {
        match e {
            shared_lu::Error::Rejected(r) => r.into(),
            shared_lu::Error::NotMember { .. } | shared_lu::Error::Membership { .. } | shared_lu::Error::LastVoter => {
                Status::failed_precondition(e.to_string())
            }
            shared_lu::Error::AlreadyMember { .. } => Status::already_exists(e.to_string()),
            shared_lu::Error::CatchUpTimeout { .. } => Status::deadline_exceeded(e.to_string()),
            shared_lu::Error::NoQuorum { .. } | shared_lu::Error::Unavailable(_) => Status::unavailable(e.to_string()),
            shared_lu::Error::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<ArrayError> for Status {
    fn from(e: ArrayError) -> Status {
        let msg = e.to_string();
        match e {
            ArrayError::OutOfRange { .. } => Status::out_of_range(msg),
            ArrayError::DiskExists { .. } => Status::already_exists(msg),
            ArrayError::DataLoss { .. }
            | ArrayError::Corrupted { .. }
            | ArrayError::Checksum { .. }
            | ArrayError::Corrupt(_) => Status::data_loss(msg),
            ArrayError::Io { .. } => Status::internal(msg),
            _ => Status::failed_precondition(msg),
        }
    }
}

impl From<FsError> for Status {
    fn from(e: FsError) -> Status {
        match e {
            FsError::InvalidArgument(m) => Status::invalid_argument(m),
            FsError::NotFound(m) => Status::not_found(m),
            FsError::AlreadyExists(m) => Status::already_exists(m),
            FsError::PermissionDenied(m) => Status::permission_denied(m),
            FsError::FailedPrecondition(m) => Status::failed_precondition(m),
            FsError::NoSpace(m) | FsError::MetadataFull(m) => Status::resource_exhausted(m),
            FsError::OutOfRange(m) => Status::out_of_range(m),
            // Nothing of the call was committed: the client may send it again.
            FsError::Io(m) => Status::unavailable(format!("{m}; nothing was changed, retry")),
            FsError::Interrupted(m) => Status::unavailable(m),
            FsError::Corrupt(m) => Status::data_loss(m),
        }
    }
}

/// What is wrong with a shared LU backup copy or its location.
fn backup_status(e: BackupError) -> Status {
    let msg = e.to_string();
    match e {
        BackupError::Io { .. } => Status::unavailable(msg),
        BackupError::Empty { .. } => Status::not_found(msg),
        BackupError::NotABackup { .. } => Status::invalid_argument(msg),
        BackupError::Version { .. } => Status::failed_precondition(msg),
        BackupError::Truncated { .. }
        | BackupError::Checksum { .. }
        | BackupError::Undecodable { .. }
        | BackupError::NoGoodCopy { .. } => Status::data_loss(msg),
    }
}

/// What is wrong with a backup target.
fn target_status(e: TargetError) -> Status {
    let msg = e.to_string();
    match e {
        TargetError::Invalid(_) => Status::invalid_argument(msg),
        TargetError::Unreachable { .. } | TargetError::Io { .. } | TargetError::Store { .. } => {
            Status::unavailable(msg)
        }
        TargetError::Denied { .. } => Status::permission_denied(msg),
        TargetError::NotFound { .. } => Status::not_found(msg),
        TargetError::Full { .. } => Status::resource_exhausted(msg),
    }
}

impl From<chn::Error> for Status {
    fn from(e: chn::Error) -> Status {
        use chn::Error as E;
        let msg = e.to_string();
        match e {
            E::SharedLu(e) => e.into(),
            E::Array(e) => e.into(),
            E::Access(e) => e.into(),
            E::Backup(e) => backup_status(e),
            E::Target(e) => target_status(e),
            E::Archive(ArchiveError::Manifest(e)) => backup_status(e),
            E::Archive(ArchiveError::Chunk { .. }) => Status::data_loss(msg),
            E::File(e) => e.into(),
            // A file system that cannot be mounted: a corrupt one is lost
            // data; a full one needs the operator; anything else may be a
            // passing I/O problem that the next attempt gets past.
            E::Mount { source, .. } => match source {
                FsError::Corrupt(_) => Status::data_loss(msg),
                FsError::NoSpace(_) => Status::failed_precondition(msg),
                _ => Status::unavailable(msg),
            },
            E::Elsewhere { message, addr } => {
                let mut s = Status::unavailable(message);
                if let Ok(v) = addr.parse::<MetadataValue<_>>() {
                    s.metadata_mut().insert(OWNER_KEY, v);
                }
                s
            }
            E::NotFound(m) => Status::not_found(m),
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::FailedPrecondition(m) => Status::failed_precondition(m),
            E::PermissionDenied(m) => Status::permission_denied(m),
            E::Unauthenticated(m) => Status::unauthenticated(m),
            E::Unavailable(m) => Status::unavailable(m),
            E::TimedOut(m) => Status::deadline_exceeded(m),
            E::Internal(m) => Status::internal(m),
        }
    }
}

/// A peer's answer, as the shared LU's transport sees it: a call that
/// broke off or found nobody is unreachable; anything else the peer said.
impl From<Status> for PeerError {
    fn from(s: Status) -> PeerError {
        match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                PeerError::Unreachable(s.message().to_string())
            }
            _ => PeerError::Failed(s.message().to_string()),
        }
    }
}

/// A request tonic could not decode (a string that is not UTF-8, a field
/// of the wrong wire type) is the caller's mistake, not this server's:
/// INVALID_ARGUMENT, where tonic answers INTERNAL.
pub fn undecodable_is_invalid_argument(resp: http::Response<Body>) -> http::Response<Body> {
    match Status::from_header_map(resp.headers()) {
        Some(s) if s.code() == tonic::Code::Internal && s.message().starts_with("failed to decode Protobuf message") => {
            Status::invalid_argument(format!(
                "the request is not a valid message ({}); string fields must be UTF-8 and every field of its declared type",
                s.message()
            ))
            .into_http()
        }
        _ => resp,
    }
}
