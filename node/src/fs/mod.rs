//! The file system on a data LU: directories and files whose metadata
//! (names, inodes, extents, free space, and the stored replies that make
//! client calls exactly-once) lives in a redb database kept on the LU
//! itself, and whose file data lives in extents allocated from the rest of
//! the LU.
//!
//! Map: [`layout`] is the on-LU layout (superblock, metadata area, data
//! area); [`backend`] lets redb store its database in the metadata area;
//! [`alloc`] hands out and takes back data extents; [`tree`] applies the
//! changes and reads of the tree inside one transaction; [`volume`] is a
//! mounted file system: the writer thread that commits changes in groups,
//! and concurrent reads.
//!
//! Crash consistency comes from one rule: file data is written only into
//! blocks that no committed metadata references (fresh extents) or that the
//! file already owns (overwrite in place), and metadata commits after it.
//! A crash therefore leaves either the old tree or the new one, never a
//! file pointing at someone else's blocks.
//!
//! Nothing here knows of gRPC, sessions or the shared LU.

pub mod alloc;
pub mod backend;
pub mod handles;
pub mod layout;
pub mod snapshots;
#[cfg(test)]
mod tests;
pub mod tree;
pub mod volume;

use serde::{Deserialize, Serialize};

pub use volume::{Request, Volume};

/// Allocation unit of file data.
pub const BLOCK: u64 = 4096;
/// Largest file the file system holds.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Longest name of one directory entry, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest path, in bytes.
pub const MAX_PATH: usize = 4096;
/// Inode number of the root directory.
pub const ROOT: u64 = 1;
/// A run of zeros to write from (growing the database, zeroing a tail).
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// What can go wrong in the file system; every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Wrong kind of object, or a directory that is not empty.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NoSpace(String),
    /// The metadata area has no room for what the change would add.
    #[error("{0}")]
    MetadataFull(String),
    #[error("{0}")]
    OutOfRange(String),
    /// The LU failed an I/O; nothing of the failed call was committed.
    #[error("{0}")]
    Io(String),
    /// A call that must be sent again whole; nothing of it was kept.
    #[error("{0}")]
    Interrupted(String),
    /// The on-LU structures are not what this code wrote.
    #[error("{0}")]
    Corrupt(String),
}

impl FsError {
    pub(crate) fn db(e: impl std::fmt::Display) -> Self {
        let msg = e.to_string();
        if msg.contains("metadata area is full") {
            FsError::MetadataFull(metadata_full())
        } else {
            FsError::Io(format!("file system metadata: {msg}"))
        }
    }
}

/// What a caller is told when the metadata area has no room left.
pub(crate) fn metadata_full() -> String {
    "the file system's metadata area is full (it holds the names, attributes and block maps of files); \
     deletes still work: delete files or directories to make room, or move the data to a larger LU"
        .into()
}

impl From<crate::array::ArrayError> for FsError {
    fn from(e: crate::array::ArrayError) -> Self {
        use crate::array::ArrayError;
        match e {
            // Retrying reads the same lost bytes again, or the same failed LU.
            ArrayError::Corrupted { .. } | ArrayError::DataLoss { .. } | ArrayError::LuFailed { .. } => {
                FsError::Corrupt(e.to_string())
            }
            e => FsError::Io(e.to_string()),
        }
    }
}

/// Result of file-system calls.
pub type Result<T> = std::result::Result<T, FsError>;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
}

/// The identity a call runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub user: String,
}

/// Per-file metadata, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// User name of the owner when created.
    pub owner: String,
    pub size: u64,
    pub mtime_ms: u64,
    /// Parent directory (the root is its own parent).
    pub parent: u64,
    /// Name in the parent directory.
    pub name: String,
}

/// What `stat` shows: the inode plus where its data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub inode: Inode,
    /// LU byte address of the first data block, or 0 when none.
    pub head_address: u64,
    pub extents: u64,
    pub allocated_bytes: u64,
}

/// One directory entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Space of the file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub data_bytes: u64,
    pub free_bytes: u64,
    pub files: u64,
    /// Size of the metadata area, and how much of it the database spans.
    pub meta_bytes: u64,
    pub meta_used_bytes: u64,
    /// Blocks only snapshots hold (deleting every snapshot frees them).
    pub snapshot_bytes: u64,
}

/// An absolute path split into checked names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsPath(Vec<String>);

impl FsPath {
    /// Parses `/a/b/c`; refuses what could escape or confuse the tree.
    pub fn parse(path: &str) -> Result<Self> {
        if path.len() > MAX_PATH {
            return Err(FsError::InvalidArgument(format!(
                "path is {} bytes; the limit is {MAX_PATH}",
                path.len()
            )));
        }
        if !path.starts_with('/') {
            return Err(FsError::InvalidArgument(format!(
                "path {path:?} is not absolute; start it with /"
            )));
        }
        let names = path
            .split('/')
            .filter(|n| !n.is_empty())
            .map(|n| check_name(n).map(|()| n.to_string()))
            .collect::<Result<Vec<_>>>()?;
        Ok(FsPath(names))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent's path and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(FsPath, &str)> {
        let (last, parent) = self.0.split_last()?;
        Some((FsPath(parent.to_vec()), last))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &FsPath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl std::fmt::Display for FsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for n in &self.0 {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

/// Checks one directory-entry name.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(FsError::InvalidArgument("a name must not be empty".into()));
    }
    if name.len() > MAX_NAME {
        return Err(FsError::InvalidArgument(format!(
            "name {}... is {} bytes; the limit is {MAX_NAME}",
            name.chars().take(16).collect::<String>(),
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(FsError::InvalidArgument(format!(
            "{name:?} is not allowed in a path; give the path from the export root"
        )));
    }
    if name.contains('\0') || name.contains('/') {
        return Err(FsError::InvalidArgument(format!("name {name:?} contains NUL or '/'")));
    }
    Ok(())
}
