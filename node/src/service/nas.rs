//! The `Nas` service: the file service clients call.
//!
//! Each handler checks the session, finds the export's mounted file system
//! (or answers where it is served), and turns the request into a file
//! system read or change. Changes carry the client's (client id, sequence
//! number) into the file system, which stores the reply with the change.
//! File locks go to the shared LU's file lock table.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use nas_proto::command::Kind;
use nas_proto::nas_server::Nas;
use nas_proto::*;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::chn::exports::Exports;
use crate::chn::sessions::{Session, Sessions};
use crate::fs::handles::Handles;
use crate::fs::volume::{CallId, Change, Outcome};
use crate::fs::{Attr, Caller, FileKind, FsPath, Request as FsRequest, Volume, MAX_FILE_SIZE};
use crate::rt::now_ms;
use crate::shared_lu::{self, RejectKind, SharedLu};

/// Bytes per message of a read stream.
const READ_CHUNK: u64 = 1 << 20;
/// Longest a Lock call may wait for a conflicting lock.
const MAX_LOCK_WAIT: Duration = Duration::from_secs(300);
/// Largest directory page.
const MAX_PAGE: u32 = 1000;

pub struct NasService {
    pub shared: SharedLu,
    pub sessions: Sessions,
    pub exports: Exports,
    /// Each export's handle cipher, made on first use.
    pub handles: Mutex<HashMap<String, Arc<Handles>>>,
    /// Logins (sessions opened, or refused) go to the audit log.
    pub auditor: crate::chn::audit::Auditor,
}

/// Applies the chunks of a streamed write, one chunk ahead: the last one
/// commits durably with the reply, so a one-chunk write costs one commit;
/// earlier ones commit without a flush. `wrote_from` is the lowest offset
/// any applied piece wrote at.
async fn write_pieces(
    ctx: &Ctx,
    handle: u64,
    first: WriteChunk,
    stream: &mut Streaming<WriteChunk>,
    wrote_from: &mut Option<u64>,
) -> Result<u64, Status> {
    let mut pending = first;
    // Every piece is refused once the database was reopened after the
    // first: the pieces committed before it (not durable) are gone.
    let since = Some(ctx.vol.generation());
    let closed = ctx.vol.closed();
    tokio::pin!(closed);
    loop {
        // A client that stops sending must not hold up an unmount.
        let next = tokio::select! {
            next = stream.next() => next.transpose()?,
            () = &mut closed => return Err(moving()),
        };
        let offset = pending.offset;
        let bytes = pending.data.len() as u64;
        let change = Change::Write {
            ino: handle,
            offset,
            data: std::mem::take(&mut pending.data),
        };
        match next {
            None => {
                let last = FsRequest {
                    stream_since: since,
                    ..ctx.request(change)
                };
                let done = ctx.vol.change(last).await.map_err(Status::from)?;
                metrics::counter!(crate::telemetry::FILE_WRITTEN_BYTES).increment(bytes);
                *wrote_from = Some(wrote_from.map_or(offset, |w| w.min(offset)));
                return match done {
                    Outcome::Size(s) => Ok(s),
                    other => Err(Status::internal(format!("unexpected file-system reply {other:?}"))),
                };
            }
            Some(chunk) => {
                let piece = FsRequest {
                    call: None,
                    durable: false,
                    stream_since: since,
                    ..ctx.request(change)
                };
                ctx.vol.change(piece).await.map_err(Status::from)?;
                metrics::counter!(crate::telemetry::FILE_WRITTEN_BYTES).increment(bytes);
                *wrote_from = Some(wrote_from.map_or(offset, |w| w.min(offset)));
                pending = chunk;
            }
        }
    }
}

/// What a call cut off by a planned move answers.
fn moving() -> Status {
    Status::unavailable("the export is moving to another CHN; send the call again (to the new owner)")
}

/// A streamed write that failed part-way (no space left, a broken stream)
/// must not leave part of itself: when every piece applied lay at or past
/// the file's old end (a new file, an append: what `fs put` sends), the
/// file is cut back to its old size. Bytes a stream overwrote inside the
/// file cannot be put back; sending `total` has the space checked before
/// any byte is stored.
async fn undo_growth(ctx: &Ctx, handle: u64, size_before: u64, wrote_from: Option<u64>) {
    let Some(from) = wrote_from.filter(|&w| w >= size_before) else {
        return;
    };
    let undo = FsRequest {
        call: None,
        ..ctx.request(Change::Truncate {
            ino: handle,
            size: size_before,
        })
    };
    if let Err(e) = ctx.vol.change(undo).await {
        tracing::warn!(
            handle,
            from,
            "the part of a failed streamed write could not be removed: {e}"
        );
    }
}

fn file_attr(handles: &Handles, a: Attr) -> FileAttr {
    let i = a.inode;
    FileAttr {
        // 0: no handle (a listing without search permission).
        handle: if i.ino == 0 { 0 } else { handles.seal(i.ino) },
        name: i.name,
        r#type: match i.kind {
            FileKind::File => FileType::FileRegular,
            FileKind::Dir => FileType::FileDirectory,
        } as i32,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        owner: i.owner,
        size: i.size,
        mtime_ms: i.mtime_ms,
        head_address: a.head_address,
        extents: a.extents,
        allocated_bytes: a.allocated_bytes,
    }
}

fn path(p: &str) -> Result<FsPath, Status> {
    FsPath::parse(p).map_err(Status::from)
}

/// Everything a file call runs with.
struct Ctx {
    session: Session,
    vol: Arc<Volume>,
    handles: Arc<Handles>,
    caller: Caller,
    call: Option<CallId>,
}

impl Ctx {
    fn file_attr(&self, a: Attr) -> FileAttr {
        file_attr(&self.handles, a)
    }

    /// The inode a client's handle stands for.
    fn ino(&self, handle: u64) -> u64 {
        self.handles.open(handle)
    }

    fn request(&self, change: Change) -> FsRequest {
        FsRequest {
            caller: self.caller.clone(),
            change,
            call: self.call.clone(),
            durable: true,
            stream_since: None,
        }
    }

    async fn change(&self, change: Change) -> Result<Outcome, Status> {
        self.vol.change(self.request(change)).await.map_err(Status::from)
    }

    async fn attr(&self, change: Change) -> Result<Response<FileAttr>, Status> {
        match self.change(change).await? {
            Outcome::Attr(a) => Ok(Response::new(self.file_attr(a))),
            other => Err(Status::internal(format!("unexpected file-system reply {other:?}"))),
        }
    }

    async fn done(&self, change: Change) -> Result<Response<FsDone>, Status> {
        self.change(change).await?;
        Ok(Response::new(FsDone {}))
    }

    /// Runs a read of the volume off the runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Volume, &Caller) -> crate::fs::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let (vol, caller) = (self.vol.clone(), self.caller.clone());
        tokio::task::spawn_blocking(move || f(&vol, &caller))
            .await
            .map_err(|e| Status::internal(format!("read task failed: {e}")))?
            .map_err(Status::from)
    }
}

impl NasService {
    /// The handle cipher of `export`.
    fn handles(&self, export: &str) -> Arc<Handles> {
        let mut cache = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = cache.get(export) {
            return h.clone();
        }
        let key = self.shared.read(|t| t.shared_lu.handle_key.clone());
        let h = Arc::new(Handles::new(&key, export));
        // An empty key (a CHN that has not caught up with the keys yet)
        // must not be remembered.
        if !key.is_empty() {
            cache.insert(export.to_string(), h.clone());
        }
        h
    }

    /// Checks the session of `call` and finds its export's file system.
    /// `mutating` calls must carry a sequence number.
    async fn ctx(&self, call: Option<&Call>, mutating: bool) -> Result<Ctx, Status> {
        let call = call.ok_or_else(|| Status::unauthenticated("the call names no session; pass Call.token"))?;
        let mut session = self.sessions.check(&call.token).await?;
        if session.export.is_empty() {
            // Mounted a moment ago through the leader: this copy may lag.
            self.shared.ensure_current().await?;
            session = self.sessions.check(&call.token).await?;
        }
        if session.export.is_empty() {
            return Err(Status::failed_precondition(
                "the session has no export mounted; call Mount first",
            ));
        }
        let export = self.exports.export(&session.export).await?;
        let vol = self.exports.volume(&export).await?;
        let call_id = if mutating {
            if call.seq == 0 {
                return Err(Status::invalid_argument(
                    "a call that changes files needs a sequence number (Call.seq > 0)",
                ));
            }
            Some(CallId {
                client: session.replies.clone(),
                seq: call.seq,
                acked: call.acked,
            })
        } else {
            None
        };
        Ok(Ctx {
            handles: self.handles(&export.name),
            caller: session.caller(),
            session,
            vol,
            call: call_id,
        })
    }

    async fn lock_once(&self, ctx: &Ctx, p: &FsPath, shared: bool) -> Result<(), shared_lu::Error> {
        let mode = if shared {
            LockMode::LockShared
        } else {
            LockMode::LockExclusive
        };
        let cmd = Kind::AcquireFileLock(AcquireFileLock {
            export: ctx.session.export.clone(),
            path: p.to_string(),
            session: ctx.session.client_id.clone(),
            mode: mode as i32,
            lease_ms: self.sessions.lease().as_millis() as u64,
            now_ms: now_ms(),
        });
        self.shared.write(Command { kind: Some(cmd) }).await?;
        Ok(())
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Nas for NasService {
    async fn open_session(&self, req: Request<OpenSessionRequest>) -> Result<Response<SessionReply>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        if r.user.is_empty() {
            return Err(Status::invalid_argument("user is empty; give the user name"));
        }
        let opened = self
            .sessions
            .open(&r.user, &r.password, &r.client_id, source)
            .await
            .map_err(Status::from);
        let status = opened.as_ref().err();
        self.auditor.record(AuditRecord {
            user: r.user.clone(),
            source: source.map(|a| a.to_string()).unwrap_or_default(),
            call: "Nas/OpenSession".into(),
            args: format!("client_id: {:?}", r.client_id),
            code: status.map_or(0, |s| s.code() as i32),
            result: status.map(|s| s.message().to_string()).unwrap_or_default(),
            ..Default::default()
        });
        Ok(Response::new(opened?))
    }

    async fn locate(&self, req: Request<MountRequest>) -> Result<Response<LocateReply>, Status> {
        let r = req.into_inner();
        let s = self.sessions.check(&r.token).await?;
        let export = self.exports.export(&r.export).await?;
        self.sessions.may_use(&s, &export)?;
        let address = self
            .shared
            .daemon(&export.owner_chn)
            .map(|d| d.address)
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "CHN {} serving export {} is not installed",
                    export.owner_chn, export.name
                ))
            })?;
        Ok(Response::new(LocateReply {
            chn: export.owner_chn,
            address,
        }))
    }

    async fn keep_alive(&self, req: Request<SessionRequest>) -> Result<Response<KeepAliveReply>, Status> {
        let s = self.sessions.check(&req.into_inner().token).await?;
        Ok(Response::new(KeepAliveReply {
            expires_ms: s.expires_ms,
        }))
    }

    async fn close_session(&self, req: Request<SessionRequest>) -> Result<Response<FsDone>, Status> {
        let s = self.sessions.check(&req.into_inner().token).await?;
        if !s.export.is_empty() {
            // Replies are only kept for retries; a closed session retries nothing.
            if let Ok(export) = self.exports.export(&s.export).await {
                if let Ok(vol) = self.exports.volume(&export).await {
                    let forget = FsRequest {
                        caller: s.caller(),
                        change: Change::Forget {
                            client: s.replies.clone(),
                        },
                        call: None,
                        durable: false,
                        stream_since: None,
                    };
                    let _ = vol.change(forget).await;
                }
            }
        }
        self.sessions.close(&s).await?;
        Ok(Response::new(FsDone {}))
    }

    async fn mount(&self, req: Request<MountRequest>) -> Result<Response<MountReply>, Status> {
        let r = req.into_inner();
        let s = self.sessions.check(&r.token).await?;
        let export = self.exports.export(&r.export).await?;
        // Permission first: a user who may not use the export learns nothing
        // about where it is served.
        self.sessions.mount(&s, &export).await?;
        let vol = self.exports.volume(&export).await?;
        let caller = s.caller();
        let (root, space) = tokio::task::spawn_blocking(move || -> crate::fs::Result<_> {
            Ok((vol.stat(&caller, &FsPath::parse("/")?)?, vol.space()?))
        })
        .await
        .map_err(|e| Status::internal(format!("mount task failed: {e}")))?
        .map_err(Status::from)?;
        let root = file_attr(&self.handles(&export.name), root);
        Ok(Response::new(MountReply {
            export: export.name,
            chn: self.shared.name.clone(),
            root: Some(root),
            max_file_size: MAX_FILE_SIZE,
            data_bytes: space.data_bytes,
            free_bytes: space.free_bytes,
            files: space.files,
        }))
    }

    async fn stat_fs(&self, req: Request<SessionRequest>) -> Result<Response<StatFsReply>, Status> {
        let call = Call {
            token: req.into_inner().token,
            ..Call::default()
        };
        let ctx = self.ctx(Some(&call), false).await?;
        let s = ctx.read(|v, _| v.space()).await?;
        Ok(Response::new(StatFsReply {
            data_bytes: s.data_bytes,
            free_bytes: s.free_bytes,
            files: s.files,
            meta_bytes: s.meta_bytes,
            meta_used_bytes: s.meta_used_bytes,
            snapshot_bytes: s.snapshot_bytes,
        }))
    }

    async fn stat(&self, req: Request<FsPathRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let p = path(&r.path)?;
        ctx.read(move |v, c| v.stat(c, &p))
            .await
            .map(|a| Response::new(ctx.file_attr(a)))
    }

    async fn stat_handle(&self, req: Request<HandleRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let h = ctx.ino(r.handle);
        ctx.read(move |v, _| v.stat_handle(h))
            .await
            .map(|a| Response::new(ctx.file_attr(a)))
    }

    async fn open(&self, req: Request<FsPathRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let p = path(&r.path)?;
        ctx.read(move |v, c| v.open(c, &p))
            .await
            .map(|a| Response::new(ctx.file_attr(a)))
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        let mode = if r.mode == 0 { 0o644 } else { r.mode };
        ctx.attr(Change::Create {
            path: path(&r.path)?,
            mode,
            exclusive: r.exclusive,
            truncate: r.truncate,
        })
        .await
    }

    async fn mkdir(&self, req: Request<MkdirRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        let mode = if r.mode == 0 { 0o755 } else { r.mode };
        ctx.attr(Change::Mkdir {
            path: path(&r.path)?,
            mode,
        })
        .await
    }

    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let (handle, start, length) = (ctx.ino(r.handle), r.offset, r.length);
        // The first piece is read before answering, so a bad handle or
        // offset is the call's status rather than a broken stream.
        let first_len = length.min(READ_CHUNK);
        let first = ctx.read(move |v, c| v.read(c, handle, start, first_len)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut at = start + first.len() as u64;
        let mut left = length - first.len() as u64;
        let more = first.len() as u64 == first_len;
        tokio::spawn(async move {
            // A client that stops reading must not hold up an unmount.
            let closed = ctx.vol.closed();
            tokio::pin!(closed);
            let send = |chunk: Result<ReadChunk, Status>| {
                let tx = tx.clone();
                let bytes = chunk.as_ref().map_or(0, |c| c.data.len() as u64);
                async move {
                    let sent = tx.send(chunk).await.is_ok();
                    if sent {
                        metrics::counter!(crate::telemetry::FILE_READ_BYTES).increment(bytes);
                    }
                    sent
                }
            };
            let sent = tokio::select! {
                sent = send(Ok(ReadChunk { data: first.into() })) => sent,
                () = &mut closed => {
                    send(Err(moving())).await;
                    false
                }
            };
            if !sent || !more {
                return;
            }
            while left > 0 {
                let n = left.min(READ_CHUNK);
                let piece = ctx.read(move |v, c| v.read(c, handle, at, n)).await;
                let got = match piece {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let len = got.len() as u64;
                let sent = tokio::select! {
                    sent = send(Ok(ReadChunk { data: got.into() })) => sent,
                    () = &mut closed => {
                    send(Err(moving())).await;
                    false
                }
                };
                if !sent || len < n {
                    return;
                }
                at += len;
                left -= len;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn write(&self, req: Request<Streaming<WriteChunk>>) -> Result<Response<FileWriteReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the write stream is empty; send at least one chunk"))??;
        let ctx = self.ctx(first.call.as_ref(), true).await?;
        let handle = ctx.ino(first.handle);
        // A retry of a write that completed gets its reply, and its data
        // is not written a second time over later writes.
        if let Some(call) = &ctx.call {
            let (client, seq) = (call.client.clone(), call.seq);
            if let Some(Outcome::Size(size)) = ctx.read(move |v, _| v.stored_reply(&client, seq)).await? {
                return Ok(Response::new(FileWriteReply { size }));
            }
        }
        if first.total > 0 {
            let (ino, offset, total) = (handle, first.offset, first.total);
            ctx.read(move |v, _| v.check_fits(ino, offset, total)).await?;
        }
        let size_before = ctx.read(move |v, _| v.stat_handle(handle)).await?.inode.size;
        let mut wrote_from = None;
        match write_pieces(&ctx, handle, first, &mut stream, &mut wrote_from).await {
            Ok(size) => Ok(Response::new(FileWriteReply { size })),
            Err(e) => {
                undo_growth(&ctx, handle, size_before, wrote_from).await;
                Err(e)
            }
        }
    }

    async fn truncate(&self, req: Request<TruncateRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        ctx.attr(Change::Truncate {
            ino: ctx.ino(r.handle),
            size: r.size,
        })
        .await
    }

    async fn unlink(&self, req: Request<FsPathRequest>) -> Result<Response<FsDone>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        ctx.done(Change::Unlink { path: path(&r.path)? }).await
    }

    async fn rmdir(&self, req: Request<FsPathRequest>) -> Result<Response<FsDone>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        ctx.done(Change::Rmdir { path: path(&r.path)? }).await
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<FileAttr>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), true).await?;
        ctx.attr(Change::Rename {
            from: path(&r.from)?,
            to: path(&r.to)?,
        })
        .await
    }

    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Result<Response<ReadDirReply>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let p = path(&r.path)?;
        let limit = if r.limit == 0 { MAX_PAGE } else { r.limit.min(MAX_PAGE) } as usize;
        let after = r.after;
        let entries = ctx.read(move |v, c| v.list(c, &p, &after, limit)).await?;
        let next = if entries.len() == limit {
            entries.last().map(|e| e.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ReadDirReply {
            entries: entries.into_iter().map(|e| ctx.file_attr(e.attr)).collect(),
            next,
        }))
    }

    async fn fsync(&self, req: Request<HandleRequest>) -> Result<Response<FsDone>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        // A durable commit through the writer: the only way redb makes
        // earlier non-durable commits (streamed pieces) durable too.
        let sync = FsRequest {
            call: None,
            ..ctx.request(Change::Sync { ino: ctx.ino(r.handle) })
        };
        ctx.vol.change(sync).await.map_err(Status::from)?;
        Ok(Response::new(FsDone {}))
    }

    async fn lock(&self, req: Request<FileLockRequest>) -> Result<Response<FsDone>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let p = path(&r.path)?;
        let probe = p.clone();
        ctx.read(move |v, c| v.stat(c, &probe)).await?;
        let wait = Duration::from_millis(r.wait_ms).min(MAX_LOCK_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.lock_once(&ctx, &p, r.shared).await {
                Ok(()) => return Ok(Response::new(FsDone {})),
                // Held by another session: the one refusal that waiting can end.
                Err(e) if e.is_rejected(RejectKind::FailedPrecondition) && tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff.min(deadline - tokio::time::Instant::now())) => {}
                        () = ctx.vol.closed() => return Err(moving()),
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                }
                Err(e) if e.is_rejected(RejectKind::FailedPrecondition) && !wait.is_zero() => {
                    return Err(Status::deadline_exceeded(format!(
                        "{e} (waited {} ms); try again later",
                        wait.as_millis()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn unlock(&self, req: Request<FsPathRequest>) -> Result<Response<FsDone>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx(r.call.as_ref(), false).await?;
        let cmd = Kind::ReleaseFileLock(ReleaseFileLock {
            export: ctx.session.export.clone(),
            path: path(&r.path)?.to_string(),
            session: ctx.session.client_id.clone(),
            all_holders: false,
        });
        self.shared.write(Command { kind: Some(cmd) }).await?;
        Ok(Response::new(FsDone {}))
    }
}
