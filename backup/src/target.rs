//! Where copies are kept outside the cluster: a directory (a mounted tape,
//! another storage device) or an S3-compatible object store
//! (`s3://bucket/prefix`, with the endpoint and credentials read from the
//! environment as AWS's own tools read them: `AWS_ENDPOINT_URL` or
//! `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_DEFAULT_REGION` or `AWS_REGION`).
//!
//! Names may hold `/` (`chunks/ab/abcd...`): folders in a directory,
//! key prefixes in a store.
//!
//! Owns naming and moving whole objects; it must never leave an object
//! half written under its final name (directories write a temporary file
//! and rename it; S3 puts are atomic).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

/// What went wrong with a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error("the object store at {endpoint} cannot be reached: {why}; check AWS_ENDPOINT_URL and that the store runs")]
    Unreachable { endpoint: String, why: String },
    #[error("the object store at {endpoint} refused the credentials: {why}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    Denied { endpoint: String, why: String },
    #[error("{what} does not exist")]
    NotFound { what: String },
    #[error("{location} is full: {why}; free space there or choose another target")]
    Full { location: String, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the object store at {endpoint}: {why}")]
    Store { endpoint: String, why: String },
}

/// One object of a target: its name below the target, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
}

/// A directory or an object store prefix.
pub enum Target {
    Dir(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        url: String,
        prefix: String,
        endpoint: String,
    },
}

impl Target {
    /// `s3://bucket[/prefix]`, or a directory path.
    pub fn parse(spec: &str) -> Result<Target, TargetError> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            return Ok(Target::Dir(PathBuf::from(spec)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(TargetError::Invalid(format!(
                "{spec:?} names no bucket; write s3://BUCKET/PREFIX"
            )));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| "AWS S3".to_string());
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        if builder.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
            builder = builder.with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()));
        }
        let store = builder
            .build()
            .map_err(|e| TargetError::Invalid(format!("{spec}: {e}")))?;
        Ok(Target::S3 {
            store: Arc::new(store),
            url: spec.trim_end_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
        })
    }

    /// Where `name` is (or would be), for messages.
    pub fn location(&self, name: &str) -> String {
        match self {
            Target::Dir(d) => d.join(name).display().to_string(),
            Target::S3 { url, .. } => format!("{url}/{name}"),
        }
    }

    fn key(prefix: &str, name: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{prefix}/{name}"))
        }
    }

    fn store_err(endpoint: &str, what: &str, e: object_store::Error) -> TargetError {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => TargetError::NotFound { what: what.to_string() },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => TargetError::Denied {
                endpoint: endpoint.to_string(),
                why: source.to_string(),
            },
            e => {
                let why = error_chain(&e);
                if why.contains("Connection refused") || why.contains("dns error") || why.contains("connect") {
                    TargetError::Unreachable {
                        endpoint: endpoint.to_string(),
                        why,
                    }
                } else if ["403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"]
                    .iter()
                    .any(|s| why.contains(s))
                {
                    TargetError::Denied {
                        endpoint: endpoint.to_string(),
                        why,
                    }
                } else {
                    TargetError::Store {
                        endpoint: endpoint.to_string(),
                        why,
                    }
                }
            }
        }
    }

    /// Stores `bytes` as `name`, whole or not at all; returns where.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<String, TargetError> {
        match self {
            Target::Dir(dir) => {
                let path = dir.join(name);
                blocking(move || {
                    let (Some(folder), Some(file)) = (path.parent(), path.file_name()) else {
                        return Err(TargetError::Invalid(format!("{} names no file", path.display())));
                    };
                    let writer = std::process::id().to_string();
                    nas_proto::backup_file::write_file(folder, &file.to_string_lossy(), &bytes, &writer)
                        .map(|p| p.display().to_string())
                        .map_err(|source| io_error(path, source))
                })
                .await
            }
            Target::S3 {
                store,
                prefix,
                endpoint,
                ..
            } => {
                let key = Self::key(prefix, name);
                store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(|e| Self::store_err(endpoint, &self.location(name), e))?;
                Ok(self.location(name))
            }
        }
    }

    /// The bytes of `name`.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>, TargetError> {
        match self {
            Target::Dir(dir) => {
                let path = dir.join(name);
                tokio::fs::read(&path).await.map_err(|source| match source.kind() {
                    std::io::ErrorKind::NotFound => TargetError::NotFound {
                        what: path.display().to_string(),
                    },
                    _ => io_error(path, source),
                })
            }
            Target::S3 {
                store,
                prefix,
                endpoint,
                ..
            } => {
                let got = store
                    .get(&Self::key(prefix, name))
                    .await
                    .map_err(|e| Self::store_err(endpoint, &self.location(name), e))?;
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|e| Self::store_err(endpoint, &self.location(name), e))?;
                Ok(bytes.to_vec())
            }
        }
    }

    /// The names of the objects (files) directly in the target.
    pub async fn list(&self) -> Result<Vec<String>, TargetError> {
        match self {
            Target::Dir(dir) => {
                let mut names = Vec::new();
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(source) => {
                        return Err(TargetError::Io {
                            path: dir.clone(),
                            source,
                        })
                    }
                };
                for entry in entries.flatten() {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                Ok(names)
            }
            Target::S3 {
                store,
                prefix,
                endpoint,
                url,
            } => {
                let base = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
                let listed = store
                    .list_with_delimiter(base.as_ref())
                    .await
                    .map_err(|e| Self::store_err(endpoint, url, e))?;
                Ok(listed
                    .objects
                    .into_iter()
                    .filter_map(|o| o.location.filename().map(str::to_string))
                    .collect())
            }
        }
    }
}

impl Target {
    /// Every object below folder `under` (`""` for all), at any depth.
    pub async fn list_under(&self, under: &str) -> Result<Vec<Object>, TargetError> {
        match self {
            Target::Dir(dir) => {
                let (dir, under) = (dir.clone(), under.to_string());
                blocking(move || walk(&dir, &under)).await
            }
            Target::S3 {
                store,
                prefix,
                endpoint,
                url,
            } => {
                use futures::TryStreamExt;
                let base = Self::key(prefix, under.trim_matches('/'));
                let strip = if prefix.is_empty() { 0 } else { prefix.len() + 1 };
                let listed: Vec<_> = store
                    .list(Some(&base))
                    .try_collect()
                    .await
                    .map_err(|e| Self::store_err(endpoint, url, e))?;
                Ok(listed
                    .into_iter()
                    .map(|o| Object {
                        name: o.location.as_ref().get(strip..).unwrap_or_default().to_string(),
                        size: o.size,
                    })
                    .collect())
            }
        }
    }

    /// Stores `bytes` as `name` without waiting for them to be durable:
    /// an object store's put is durable anyway; a directory gets a
    /// temporary file beside `name` that [`Target::commit_staged`] makes
    /// durable and renames into place. Until then `name` is absent, so a
    /// crash never leaves a torn object under its final name.
    pub async fn stage(&self, name: &str, bytes: Vec<u8>) -> Result<(), TargetError> {
        let Target::Dir(dir) = self else {
            return self.put(name, bytes).await.map(|_| ());
        };
        let path = staged_path(&dir.join(name));
        blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_error(parent.to_path_buf(), e))?;
            }
            std::fs::write(&path, &bytes).map_err(|e| io_error(path.clone(), e))
        })
        .await
    }

    /// Makes the objects `stage` wrote durable under their names: one
    /// sync of the directory's file system, the renames, and another sync.
    pub async fn commit_staged(&self, names: Vec<String>) -> Result<(), TargetError> {
        let Target::Dir(dir) = self else {
            return Ok(());
        };
        let dir = dir.clone();
        blocking(move || {
            sync_fs(&dir)?;
            for name in &names {
                let path = dir.join(name);
                std::fs::rename(staged_path(&path), &path).map_err(|e| io_error(path.clone(), e))?;
            }
            sync_fs(&dir)
        })
        .await
    }

    /// Deletes the temporary files below folder `under` that writers left
    /// more than `age` ago (a crash between `stage` and `commit_staged`);
    /// returns how many. Object stores have none.
    pub async fn sweep_temporaries(&self, under: &str, age: Duration) -> Result<usize, TargetError> {
        let Target::Dir(dir) = self else {
            return Ok(0);
        };
        let root = dir.join(under);
        blocking(move || {
            let mut swept = 0;
            let mut folders = vec![root];
            while let Some(folder) = folders.pop() {
                let Ok(entries) = std::fs::read_dir(&folder) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let Ok(meta) = entry.metadata() else { continue };
                    let old = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|e| e > age);
                    if meta.is_dir() {
                        folders.push(entry.path());
                    } else if old
                        && entry
                            .file_name()
                            .to_string_lossy()
                            .starts_with(nas_proto::backup_file::TEMP_PREFIX)
                    {
                        std::fs::remove_file(entry.path()).map_err(|e| io_error(entry.path(), e))?;
                        swept += 1;
                    }
                }
            }
            Ok(swept)
        })
        .await
    }

    /// Deletes `name`; one that is already gone is no error.
    pub async fn delete(&self, name: &str) -> Result<(), TargetError> {
        match self {
            Target::Dir(dir) => match tokio::fs::remove_file(dir.join(name)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(io_error(dir.join(name), source)),
            },
            Target::S3 {
                store,
                prefix,
                endpoint,
                ..
            } => match store.delete(&Self::key(prefix, name)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(Self::store_err(endpoint, &self.location(name), e)),
            },
        }
    }
}

/// Runs file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TargetError::Invalid(format!("a file-system task failed: {e}")))?
}

/// Where `stage` writes the object `path` before it is committed.
fn staged_path(path: &std::path::Path) -> PathBuf {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{}staged-{file}", nas_proto::backup_file::TEMP_PREFIX))
}

/// Flushes every written byte of the file system holding `dir`.
fn sync_fs(dir: &std::path::Path) -> Result<(), TargetError> {
    let f = std::fs::File::open(dir).map_err(|e| io_error(dir.to_path_buf(), e))?;
    rustix::fs::syncfs(&f).map_err(|e| io_error(dir.to_path_buf(), e.into()))
}

/// A full device is named as such: it is the one fault an operator fixes
/// by making room.
fn io_error(path: PathBuf, source: std::io::Error) -> TargetError {
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => TargetError::Full {
            location: path.display().to_string(),
            why: source.to_string(),
        },
        _ => TargetError::Io { path, source },
    }
}

/// The files below `dir/under`, named relative to `dir`; temporary files
/// of writes in progress are left out.
fn walk(dir: &std::path::Path, under: &str) -> Result<Vec<Object>, TargetError> {
    let mut out = Vec::new();
    let mut folders = vec![dir.join(under)];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(io_error(folder, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| io_error(folder.clone(), source))?;
            let meta = entry.metadata().map_err(|source| io_error(entry.path(), source))?;
            if meta.is_dir() {
                folders.push(entry.path());
            } else if !entry
                .file_name()
                .to_string_lossy()
                .starts_with(nas_proto::backup_file::TEMP_PREFIX)
            {
                let path = entry.path();
                let name = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                out.push(Object { name, size: meta.len() });
            }
        }
    }
    Ok(out)
}

/// Every source of an error, joined: object_store hides the cause (a
/// refused connection, an HTTP status) a few levels down.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_object_appears_under_its_name_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::Dir(dir.path().to_path_buf());
        t.stage("chunks/ab/abcd", b"data".to_vec()).await.unwrap();
        assert!(t.list_under("chunks").await.unwrap().is_empty(), "staged is not listed");
        t.commit_staged(vec!["chunks/ab/abcd".into()]).await.unwrap();
        let listed = t.list_under("chunks").await.unwrap();
        assert_eq!(
            listed,
            [Object {
                name: "chunks/ab/abcd".into(),
                size: 4
            }]
        );
        assert_eq!(t.get("chunks/ab/abcd").await.unwrap(), b"data");

        // A crash between the two leaves a temporary that a sweep removes.
        t.stage("chunks/cd/cdef", b"lost".to_vec()).await.unwrap();
        assert_eq!(
            t.sweep_temporaries("chunks", Duration::from_secs(3600)).await.unwrap(),
            0
        );
        assert_eq!(t.sweep_temporaries("chunks", Duration::ZERO).await.unwrap(), 1);
        t.delete("chunks/ab/abcd").await.unwrap();
        t.delete("chunks/ab/abcd").await.unwrap();
        assert!(t.list_under("").await.unwrap().is_empty());
    }
}
