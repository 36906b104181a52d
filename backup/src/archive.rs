//! An export backup on a target:
//!
//! - `chunks/HH/SHA256` — up to [`CHUNK`] bytes of file data, compressed
//!   with zstd, named by the SHA-256 of the uncompressed bytes (`HH` is the
//!   name's first two hex digits, so no folder grows too large). Every
//!   backup on the target that holds the same bytes uses the same chunk.
//! - `backups/ID.nasbackup` — the manifest: an `ExportBackup` message in
//!   the framing of every backup file (magic, version, length, SHA-256).
//!   It is written last, so a backup is listed only once all its chunks are
//!   on the target.
//!
//! Reading a chunk back checks its hash: a flipped bit or a truncated
//! object is named, never restored.

use std::path::Path;

use nas_proto::backup_file::{self, BackupError};
use nas_proto::ExportBackup;
use prost::Message;
use sha2::{Digest, Sha256};

/// Most file bytes one chunk holds; files are cut at multiples of it, so
/// an unchanged stretch of a changed file keeps its chunks.
pub const CHUNK: usize = 1 << 20;
/// Folder of the manifests, and the ending of their names.
pub const BACKUPS: &str = "backups";
pub const SUFFIX: &str = ".nasbackup";
/// Folder of the chunks.
pub const CHUNKS: &str = "chunks";
const MAGIC: &[u8; 8] = b"NASEXPB1";
/// zstd's default: compresses several hundred MB/s per core.
const LEVEL: i32 = 3;

/// What is wrong with a chunk or a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Manifest(#[from] BackupError),
    #[error("{location} is damaged: {why}; the backups that use it cannot be restored whole")]
    Chunk { location: String, why: String },
}

/// The SHA-256 of `data`, as chunks are named.
pub fn hash(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Where the chunk of `sha256` is kept, below the target.
pub fn chunk_name(sha256: &[u8]) -> String {
    let hex = hex::encode(sha256);
    format!("{CHUNKS}/{}/{hex}", &hex[..2.min(hex.len())])
}

/// The SHA-256 a chunk's name (as `chunk_name` made it) stands for.
pub fn chunk_hash(name: &str) -> Option<[u8; 32]> {
    let hex = name.rsplit('/').next()?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

/// The stored form of a chunk of `data`.
pub fn seal_chunk(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, LEVEL)
}

/// The data of a stored chunk, checked against the hash it is named by.
/// `location` names it in errors.
pub fn open_chunk(location: &str, sha256: &[u8], stored: &[u8], len: usize) -> Result<Vec<u8>, ArchiveError> {
    let damaged = |why: String| ArchiveError::Chunk {
        location: location.to_string(),
        why,
    };
    let data =
        zstd::bulk::decompress(stored, len.max(1)).map_err(|e| damaged(format!("it does not decompress ({e})")))?;
    if data.len() != len {
        return Err(damaged(format!(
            "it holds {} bytes where {len} were written",
            data.len()
        )));
    }
    if hash(&data).as_slice() != sha256 {
        return Err(damaged("its bytes do not match the SHA-256 it is named by".into()));
    }
    Ok(data)
}

/// Where the manifest of backup `id` is kept, below the target.
pub fn manifest_name(id: &str) -> String {
    format!("{BACKUPS}/{id}{SUFFIX}")
}

/// The backup id a manifest's name stands for.
pub fn manifest_id(name: &str) -> Option<&str> {
    name.strip_prefix(BACKUPS)?.strip_prefix('/')?.strip_suffix(SUFFIX)
}

/// The stored form of a manifest.
pub fn seal_manifest(backup: &ExportBackup) -> Vec<u8> {
    backup_file::seal(MAGIC, &backup.encode_to_vec())
}

/// A manifest read back, checked whole; `location` names it in errors.
pub fn open_manifest(location: &str, bytes: &[u8]) -> Result<ExportBackup, ArchiveError> {
    let path = Path::new(location);
    let (body, _) = backup_file::unseal(MAGIC, "an export backup manifest", path, bytes)?;
    ExportBackup::decode(body).map_err(|e| {
        ArchiveError::Manifest(BackupError::Undecodable {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_comes_back_only_whole_and_unchanged() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let sha = hash(&data);
        let stored = seal_chunk(&data).unwrap();
        assert!(stored.len() < data.len(), "repetitive data compresses");
        assert_eq!(open_chunk("c", &sha, &stored, data.len()).unwrap(), data);

        let mut flipped = stored.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let err = open_chunk("chunks/ab/x", &sha, &flipped, data.len()).unwrap_err();
        assert!(err.to_string().contains("chunks/ab/x is damaged"), "{err}");

        let cut = &stored[..stored.len() / 2];
        assert!(open_chunk("c", &sha, cut, data.len()).is_err());
        assert!(open_chunk("c", &hash(b"other"), &stored, data.len()).is_err());
    }

    #[test]
    fn names_map_back_to_what_they_name() {
        let sha = hash(b"x");
        let name = chunk_name(&sha);
        assert!(name.starts_with(&format!("chunks/{}/", &hex::encode(sha)[..2])));
        assert_eq!(chunk_hash(&name), Some(sha));
        assert_eq!(chunk_hash("chunks/ab/not-hex"), None);
        assert_eq!(manifest_id(&manifest_name("home-1")), Some("home-1"));
        assert_eq!(manifest_id("backups/x.tmp"), None);
    }

    #[test]
    fn a_truncated_or_foreign_manifest_is_refused_by_name() {
        let m = ExportBackup {
            id: "b1".into(),
            export: "home".into(),
            ..Default::default()
        };
        let bytes = seal_manifest(&m);
        assert_eq!(open_manifest("m", &bytes).unwrap(), m);
        let err = open_manifest("backups/b1.nasbackup", &bytes[..bytes.len() - 5]).unwrap_err();
        assert!(err.to_string().contains("backups/b1.nasbackup is truncated"), "{err}");
        let err = open_manifest("f", b"NASSLUB1........").unwrap_err();
        assert!(err.to_string().contains("not an export backup manifest"), "{err}");
    }
}
