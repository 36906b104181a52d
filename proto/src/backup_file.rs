//! Copies of the shared LU in a backup location: the file format, writing
//! a copy durably, reading one back with its checksum checked, and keeping
//! the newest few.
//!
//! A copy is one file, `shared-lu-<index>.nasbak`:
//! `MAGIC` (8 bytes), format version (u32 LE), body length (u64 LE), the
//! body (a `SharedLuBackup` protobuf: the tables and the log position they
//! reflect), then the body's SHA-256 (32 bytes). A copy is written under a
//! temporary name, synced, renamed into place and the directory synced, so
//! a crash leaves the old copies and at most a stray temporary file.
//!
//! It must never delete a good copy before a newer one is durable and has
//! been read back whole, and never hand out a copy whose checksum fails.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::SharedLuBackup;

/// The first bytes of every copy.
pub const MAGIC: &[u8; 8] = b"NASSLUB1";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 32;
/// The ending of a copy's file name.
pub const SUFFIX: &str = ".nasbak";
/// The backup location's folder inside the disk-array directory.
pub const ARRAY_FOLDER: &str = "shared-lu-backup";
/// Good copies kept in a location; older ones are deleted once a newer one
/// is durable.
pub const KEEP: usize = 2;
/// A temporary file older than this was left by a writer that crashed.
const STALE_TEMP: Duration = Duration::from_secs(600);
/// Names of files being written; never a finished object.
pub const TEMP_PREFIX: &str = ".tmp-";

/// What is wrong with a backup location or a copy in it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not {what}: it does not start with {magic:?}")]
    NotABackup {
        path: PathBuf,
        what: &'static str,
        magic: String,
    },
    #[error("{path} was written in backup format {version}, newer than this nasd reads ({VERSION}); use a newer nasd")]
    Version { path: PathBuf, version: u32 },
    #[error("{path} is truncated: {have} of {want} bytes are there")]
    Truncated { path: PathBuf, have: u64, want: u64 },
    #[error("{path} is damaged: its contents do not match their SHA-256")]
    Checksum { path: PathBuf },
    #[error("{path} is damaged: {why}")]
    Undecodable { path: PathBuf, why: String },
    #[error("{dir} holds no shared LU backup")]
    Empty { dir: PathBuf },
    #[error("{dir} holds no good shared LU backup: {damage}")]
    NoGoodCopy { dir: PathBuf, damage: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A copy read back whole, with its checksum matching.
#[derive(Debug, Clone)]
pub struct Copy {
    /// Where it was read from (a label such as "upload" for bytes that
    /// came without a file).
    pub path: PathBuf,
    pub backup: SharedLuBackup,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// One file of a location, as `list` found it.
#[derive(Debug)]
pub struct Listed {
    pub path: PathBuf,
    pub size: u64,
    pub copy: Result<Copy, BackupError>,
}

/// The bytes of a copy of `backup`.
pub fn encode(backup: &SharedLuBackup) -> Vec<u8> {
    seal(MAGIC, &backup.encode_to_vec())
}

/// `body` framed as every backup file is: `magic`, format version, body
/// length, the body, and the body's SHA-256.
pub fn seal(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + TRAILER);
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&Sha256::digest(body));
    out
}

/// The body of a file `seal` framed with `magic` (`what` names such a file
/// in errors), with its length and checksum checked, and the checksum.
pub fn unseal<'a>(
    magic: &[u8; 8],
    what: &'static str,
    path: &Path,
    bytes: &'a [u8],
) -> Result<(&'a [u8], [u8; 32]), BackupError> {
    let path_buf = || path.to_path_buf();
    if bytes.len() < magic.len() || &bytes[..magic.len()] != magic {
        return Err(BackupError::NotABackup {
            path: path_buf(),
            what,
            magic: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let have = bytes.len() as u64;
    let truncated = |want| BackupError::Truncated {
        path: path_buf(),
        have,
        want,
    };
    let header = bytes.get(..HEADER).ok_or_else(|| truncated(HEADER as u64))?;
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(BackupError::Version {
            path: path_buf(),
            version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let body_len = u64::from_le_bytes(len);
    let want = body_len.saturating_add((HEADER + TRAILER) as u64);
    if have < want {
        return Err(truncated(want));
    }
    if have > want {
        return Err(BackupError::Undecodable {
            path: path_buf(),
            why: format!("{} bytes follow the end of the file", have - want),
        });
    }
    let body = &bytes[HEADER..HEADER + body_len as usize];
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&bytes[HEADER + body_len as usize..]);
    if Sha256::digest(body).as_slice() != sha256 {
        return Err(BackupError::Checksum { path: path_buf() });
    }
    Ok((body, sha256))
}

/// Reads a copy from `bytes`; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Copy, BackupError> {
    let path_buf = || path.to_path_buf();
    let (body, sha256) = unseal(MAGIC, "a shared LU backup", path, bytes)?;
    let have = bytes.len() as u64;
    let backup = SharedLuBackup::decode(body).map_err(|e| BackupError::Undecodable {
        path: path_buf(),
        why: e.to_string(),
    })?;
    if backup.tables.is_none() {
        return Err(BackupError::Undecodable {
            path: path_buf(),
            why: "it holds no tables".into(),
        });
    }
    Ok(Copy {
        path: path_buf(),
        backup,
        size: have,
        sha256,
    })
}

/// Reads and checks the copy in `path`.
pub fn read(path: &Path) -> Result<Copy, BackupError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    decode(path, &bytes)
}

/// The file name of the copy of log index `index`.
pub fn file_name(index: u64) -> String {
    format!("shared-lu-{index:020}{SUFFIX}")
}

/// Whether `name` is a copy's file name; zero-padded indexes make such
/// names sort like the indexes.
pub fn is_copy_name(name: &str) -> bool {
    name.starts_with("shared-lu-") && name.ends_with(SUFFIX)
}

/// Writes `bytes` as `dir/name` durably and whole or not at all: into a
/// temporary file (mode 0600: copies hold password hashes and keys) that
/// is synced, renamed into place, and the directory synced. `writer` goes
/// into the temporary name, so that writers at once never share one.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8], writer: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!("{TEMP_PREFIX}{writer}-{:016x}", rand::random::<u64>()));
    let path = dir.join(name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(path)
}

/// Writes a copy of `backup` into `dir` durably, reads it back, then
/// deletes all but the newest `KEEP` copies. `writer` names the CHN in the
/// temporary file, so that CHNs writing at once never share one.
pub fn write(dir: &Path, backup: &SharedLuBackup, writer: &str) -> Result<Copy, BackupError> {
    let name = file_name(backup.log_index);
    let path = write_file(dir, &name, &encode(backup), writer).map_err(io(&dir.join(&name)))?;
    let copy = read(&path)?;
    prune(dir)?;
    Ok(copy)
}

/// Copy files in `dir`, newest (highest log index) first.
fn copy_files(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if is_copy_name(&entry.file_name().to_string_lossy()) {
            files.push(entry.path());
        }
    }
    // Zero-padded indexes sort like numbers.
    files.sort_unstable_by(|a, b| b.cmp(a));
    Ok(files)
}

/// Deletes copies beyond the newest `KEEP` good ones, and temporary files
/// a crashed writer left. Damaged copies older than the kept ones go too.
fn prune(dir: &Path) -> Result<(), BackupError> {
    let mut good = 0;
    for path in copy_files(dir)? {
        if good >= KEEP {
            std::fs::remove_file(&path).map_err(io(&path))?;
        } else if read(&path).is_ok() {
            good += 1;
        }
    }
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > STALE_TEMP);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Every copy in `dir`, newest first, each read and checked.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    copy_files(dir)?
        .into_iter()
        .map(|path| {
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            let copy = read(&path);
            Ok(Listed { path, size, copy })
        })
        .collect()
}

/// The newest copy in `dir` that reads back whole.
pub fn newest_good(dir: &Path) -> Result<Copy, BackupError> {
    let listed = list(dir)?;
    if listed.is_empty() {
        return Err(BackupError::Empty { dir: dir.to_path_buf() });
    }
    let mut damage = Vec::new();
    for l in listed {
        match l.copy {
            Ok(c) => return Ok(c),
            Err(e) => damage.push(e.to_string()),
        }
    }
    Err(BackupError::NoGoodCopy {
        dir: dir.to_path_buf(),
        damage: damage.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SharedLuInfo, Tables, User};

    fn backup(index: u64) -> SharedLuBackup {
        SharedLuBackup {
            array_id: "ab".repeat(16),
            log_index: index,
            log_term: 3,
            taken_ms: 1_700_000_000_000 + index,
            taken_by: "CHN1".into(),
            tables: Some(Tables {
                users: vec![User {
                    name: format!("user{index}"),
                    ..Default::default()
                }],
                shared_lu: Some(SharedLuInfo {
                    initialized: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_copy_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), &backup(7), "CHN1").unwrap();
        let again = newest_good(dir.path()).unwrap();
        assert_eq!(again.backup, backup(7));
        assert_eq!(again.sha256, written.sha256);
        assert_eq!(again.path, dir.path().join("shared-lu-00000000000000000007.nasbak"));
    }

    #[test]
    fn only_the_newest_copies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for i in [5, 9, 7, 12] {
            write(dir.path(), &backup(i), "CHN1").unwrap();
        }
        let indexes: Vec<u64> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|l| l.copy.unwrap().backup.log_index)
            .collect();
        assert_eq!(indexes, [12, 9]);
    }

    #[test]
    fn a_damaged_newest_copy_is_skipped_and_kept_copies_count_only_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &backup(1), "CHN1").unwrap();
        let newest = write(dir.path(), &backup(2), "CHN1").unwrap();
        let mut bytes = std::fs::read(&newest.path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&newest.path, &bytes).unwrap();
        assert!(matches!(read(&newest.path), Err(BackupError::Checksum { .. })));
        assert_eq!(newest_good(dir.path()).unwrap().backup.log_index, 1);
        // A new copy must not push out the only good older one.
        write(dir.path(), &backup(3), "CHN1").unwrap();
        let good: Vec<u64> = list(dir.path())
            .unwrap()
            .into_iter()
            .filter_map(|l| l.copy.ok())
            .map(|c| c.backup.log_index)
            .collect();
        assert_eq!(good, [3, 1]);
    }

    #[test]
    fn truncated_foreign_and_future_files_are_named_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copy = write(dir.path(), &backup(4), "CHN1").unwrap();
        let bytes = std::fs::read(&copy.path).unwrap();
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let e = read(&cut).unwrap_err();
        assert!(matches!(e, BackupError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("cut"), "{e}");
        let other = dir.path().join("other");
        std::fs::write(&other, b"PK\x03\x04 a zip file").unwrap();
        assert!(matches!(read(&other), Err(BackupError::NotABackup { .. })));
        let mut future = bytes.clone();
        future[8] = 9;
        assert!(matches!(
            decode(Path::new("f"), &future),
            Err(BackupError::Version { version: 9, .. })
        ));
        assert!(matches!(
            decode(Path::new("tiny"), &bytes[..12]),
            Err(BackupError::Truncated { .. })
        ));
    }

    #[test]
    fn an_empty_or_missing_location_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(newest_good(dir.path()), Err(BackupError::Empty { .. })));
        assert!(matches!(
            newest_good(&dir.path().join("nothing")),
            Err(BackupError::Empty { .. })
        ));
    }

    #[test]
    fn copies_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let copy = write(dir.path(), &backup(1), "CHN1").unwrap();
        let mode = std::fs::metadata(&copy.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
