//! Snapshot calls of the Admin service as the serving CHN runs them: the
//! volume changes and reads, and their replies.

use std::sync::Arc;

use nas_proto::{CheckExportReply, SnapshotInfo, SnapshotList, SnapshotReply};
use tonic::Status;

use crate::fs::snapshots::{self, BlockCheck};
use crate::fs::volume::{Change, Outcome};
use crate::fs::{Caller, Request, Volume};

/// Operators act on snapshots as root of the file system.
fn operator() -> Caller {
    Caller {
        uid: 0,
        user: "root".into(),
    }
}

fn info(s: snapshots::SnapshotInfo) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        created_ms: s.created_ms,
        files: s.files,
        unique_bytes: s.unique_bytes,
    }
}

async fn change(vol: &Volume, change: Change) -> Result<Outcome, Status> {
    let req = Request {
        caller: operator(),
        change,
        call: None,
        durable: true,
        stream_since: None,
    };
    Ok(vol.change(req).await?)
}

async fn blocking<T: Send + 'static>(
    vol: Arc<Volume>,
    f: impl FnOnce(&Volume) -> crate::fs::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || f(&vol))
        .await
        .map_err(|e| Status::internal(format!("a file-system task failed: {e}")))?
        .map_err(Status::from)
}

pub async fn create(vol: Arc<Volume>, name: String) -> Result<SnapshotReply, Status> {
    let started = std::time::Instant::now();
    match change(&vol, Change::Snapshot { name }).await? {
        Outcome::Snapshot(s) => Ok(SnapshotReply {
            snapshot: Some(info(s)),
            took_us: started.elapsed().as_micros() as u64,
        }),
        other => Err(Status::internal(format!("a snapshot returned {other:?}"))),
    }
}

pub async fn list(vol: Arc<Volume>, export: String) -> Result<SnapshotList, Status> {
    let (all, space) = blocking(vol, |v| Ok((v.snapshots()?, v.space()?))).await?;
    Ok(SnapshotList {
        export,
        snapshots: all.into_iter().map(info).collect(),
        held_bytes: space.snapshot_bytes,
    })
}

pub async fn delete(vol: Arc<Volume>, export: String, name: String) -> Result<SnapshotList, Status> {
    change(&vol, Change::DeleteSnapshot { name }).await?;
    list(vol, export).await
}

pub async fn check(vol: Arc<Volume>) -> Result<CheckExportReply, Status> {
    let c: BlockCheck = blocking(vol, |v| v.check_blocks()).await?;
    Ok(CheckExportReply {
        data_bytes: c.data_bytes,
        free_bytes: c.free_bytes,
        live_bytes: c.live_bytes,
        held_bytes: c.held_bytes,
        leaked_bytes: c.leaked_bytes,
        double_owned_bytes: c.double_owned_bytes,
        problems: c.problems,
    })
}
