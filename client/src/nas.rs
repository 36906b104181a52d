//! The file-service client: a session on one export, following the export
//! to whichever CHN serves it.
//!
//! Every call that changes files gets a sequence number once and keeps it
//! through every retry, so the CHN applies it at most once and a retry
//! returns the first reply. Retries happen on UNAVAILABLE (and on a
//! connection that broke mid-call), with backoff, after finding the owner
//! again: from the `x-nas-owner` answer of a CHN that does not serve the
//! export, or from the service table. Other statuses are answers and go
//! back to the caller unchanged.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use nas_proto::nas_client::NasClient as NasGrpc;
use nas_proto::Bytes;
use nas_proto::*;
use std::io::Write;

use futures::StreamExt;

use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::Cluster;

/// Bytes per message of a streamed write.
pub const CHUNK: usize = 1 << 20;
/// Bytes per write call: the unit that is acknowledged (and retried) whole.
pub const CALL_BYTES: usize = 16 << 20;
/// Write calls a `put_file` keeps in flight.
const PUT_DEPTH: usize = 4;
/// Largest message either side accepts.
const MAX_MESSAGE: usize = 64 << 20;
/// Metadata key naming the CHN address that serves an export.
const OWNER_KEY: &str = "x-nas-owner";

/// How a client connects and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stable identity of this client; random when `None`.
    pub client_id: Option<String>,
    /// How long a call keeps retrying while the export is unreachable
    /// (during a failover, say) before it gives up with UNAVAILABLE.
    pub retry_for: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_id: None,
            retry_for: Duration::from_secs(30),
        }
    }
}

struct Conn {
    addr: String,
    grpc: NasGrpc<Channel>,
}

struct Inner {
    cluster: Cluster,
    export: String,
    token: String,
    client_id: String,
    conn: Mutex<Conn>,
    next_seq: AtomicU64,
    /// Sequence numbers sent and not yet answered.
    outstanding: Mutex<BTreeSet<u64>>,
    retry_for: Duration,
}

/// A session on one export. Cheap to share: every method takes `&self`,
/// and calls from several tasks run concurrently.
pub struct NasClient {
    inner: Arc<Inner>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Drop for NasClient {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn channel(cluster: &Cluster, addr: &str) -> Result<NasGrpc<Channel>, Status> {
    let ep = cluster
        .transport()
        .endpoint(addr)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(1 << 20);
    Ok(NasGrpc::new(crate::keepalive(ep).connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Whether a status means "try again, maybe elsewhere".
fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Cancelled => true,
        // A connection that broke mid-call (the CHN died) surfaces as an
        // h2 error; the CHN never answers Unknown itself.
        Code::Unknown => true,
        _ => crate::broken_connection(s),
    }
}

/// A table lookup that gives up after a moment: a CHN that is paused
/// accepts the call and never answers, so the next one is asked instead.
async fn quick<T>(f: impl Future<Output = Result<Response<T>, Status>>) -> Result<Response<T>, Status> {
    tokio::time::timeout(Duration::from_millis(500), f)
        .await
        .unwrap_or_else(|_| Err(Status::unavailable("no answer within 500 ms")))
}

/// The CHN serving `export` and its address, as the service table says:
/// from the contacted CHN's copy when `local`, else linearizably.
pub async fn export_owner(cluster: &Cluster, export: &str, local: bool) -> Result<(String, String), Status> {
    let req = || ListRequest { local };
    let exports = cluster
        .admin(|mut a| quick(async move { a.list_exports(req()).await }))
        .await?;
    let row = exports
        .exports
        .iter()
        .find(|e| e.name == export)
        .ok_or_else(|| Status::not_found(format!("export {export} does not exist; see `nasctl export list`")))?;
    let chns = cluster
        .admin(|mut a| quick(async move { a.list_chns(req()).await }))
        .await?;
    let addr = chns
        .chns
        .iter()
        .find(|c| c.chn == row.owner_chn)
        .map(|c| c.address.clone())
        .ok_or_else(|| {
            Status::unavailable(format!(
                "CHN {} serving export {export} is not installed",
                row.owner_chn
            ))
        })?;
    Ok((row.owner_chn.clone(), addr))
}

/// Where the service table says `export` is served, asked through the
/// file service (any CHN's copy will do: a stale answer only costs a
/// retry). Tries each CHN in turn, a moment each.
async fn locate(cluster: &Cluster, token: &str, export: &str) -> Result<String, Status> {
    let mut last = Status::unavailable("no CHN address to ask");
    for addr in cluster.addrs() {
        let req = MountRequest {
            token: token.into(),
            export: export.into(),
        };
        match quick(async { channel(cluster, addr)?.locate(req).await }).await {
            Ok(r) => return Ok(r.into_inner().address),
            Err(s) if retryable(&s) => last = s,
            Err(s) => return Err(s),
        }
    }
    Err(last)
}

/// Opens a session on whichever CHN answers first (sessions live in the
/// shared LU, so any CHN can open one).
async fn open_session(cluster: &Cluster, req: OpenSessionRequest, retry_for: Duration) -> Result<SessionReply, Status> {
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut last = Status::unavailable("no CHN address to ask");
        for addr in cluster.addrs() {
            let req = req.clone();
            let attempt = async { channel(cluster, addr)?.open_session(req).await };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if retryable(&s) => last = s,
                Ok(Err(s)) => return Err(s),
                Err(_) => last = Status::unavailable(format!("{addr} did not answer within 5 s")),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl NasClient {
    /// Opens a session as `user` and mounts `export`, wherever it is served.
    pub async fn connect(
        cluster: Cluster,
        user: &str,
        password: &str,
        export: &str,
        opts: Options,
    ) -> Result<NasClient, Status> {
        let deadline = tokio::time::Instant::now() + opts.retry_for;
        let mut backoff = Duration::from_millis(50);
        let open = OpenSessionRequest {
            user: user.into(),
            password: password.into(),
            client_id: opts.client_id.clone().unwrap_or_default(),
        };
        let session = open_session(&cluster, open, opts.retry_for).await?;
        let mut addr = locate(&cluster, &session.token, export).await?;
        loop {
            let mut grpc = channel(&cluster, &addr)?;
            let mount = MountRequest {
                token: session.token.clone(),
                export: export.into(),
            };
            match grpc.mount(mount).await {
                Ok(_) => {
                    let s = session;
                    let inner = Arc::new(Inner {
                        cluster,
                        export: export.into(),
                        token: s.token,
                        client_id: s.client_id,
                        conn: Mutex::new(Conn { addr, grpc }),
                        next_seq: AtomicU64::new(1),
                        outstanding: Mutex::new(BTreeSet::new()),
                        retry_for: opts.retry_for,
                    });
                    let every = Duration::from_millis(s.lease_ms.max(300) / 3);
                    let keepalive = tokio::spawn(keep_alive(Arc::downgrade(&inner), every));
                    return Ok(NasClient { inner, keepalive });
                }
                Err(s) if retryable(&s) && tokio::time::Instant::now() < deadline => {
                    addr = match s.metadata().get(OWNER_KEY).and_then(|v| v.to_str().ok()) {
                        Some(a) if !a.is_empty() => a.to_string(),
                        _ => locate(&cluster, &session.token, export).await.unwrap_or(addr),
                    };
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(s) if retryable(&s) => {
                    return Err(Status::unavailable(format!(
                        "export {export} did not answer at {addr} for {} s ({}); check its CHN with `nasctl cluster status`",
                        opts.retry_for.as_secs(),
                        s.message()
                    )))
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// This client's id, under which the cluster records its session.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The session token (for calling the `Nas` service directly).
    pub fn token(&self) -> &str {
        &self.inner.token
    }

    /// The address of the CHN currently serving the export.
    pub fn serving_addr(&self) -> String {
        lock(&self.inner.conn).addr.clone()
    }

    /// Runs one call with retries; `seq` is 0 for calls that change nothing.
    async fn call<T, F, Fut>(&self, seq: u64, mut f: F) -> Result<T, Status>
    where
        F: FnMut(NasGrpc<Channel>, Call) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.retry_for;
        let mut backoff = Duration::from_millis(20);
        let result = loop {
            let grpc = lock(&inner.conn).grpc.clone();
            let call = Call {
                token: inner.token.clone(),
                seq,
                acked: self.acked(),
            };
            let attempt = tokio::select! {
                r = f(grpc, call) => r,
                moved = self.owner_moved() => Err(moved),
            };
            match attempt {
                Ok(r) => break Ok(r.into_inner()),
                Err(s) if retryable(&s) && tokio::time::Instant::now() < deadline => {
                    self.follow(&s).await;
                    tokio::time::sleep(backoff).await;
                    // Short: during a failover the new owner serves within
                    // a lease, and each retry is one cheap call.
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err(s) if retryable(&s) => break Err(self.gave_up(&s)),
                Err(s) => break Err(s),
            }
        };
        if seq != 0 {
            lock(&inner.outstanding).remove(&seq);
        }
        result
    }

    /// Resolves (with an UNAVAILABLE naming the new owner) once the service
    /// table says another CHN serves the export; pends forever otherwise.
    /// A call to a CHN that was paused or cut off hangs rather than fails:
    /// this lets it go to the new owner with the same sequence number,
    /// which is safe because the old owner is fenced before anyone takes
    /// the export over.
    async fn owner_moved(&self) -> Status {
        // Most calls answer well within this; only slow ones poll.
        tokio::time::sleep(Duration::from_millis(250)).await;
        loop {
            let here = self.serving_addr();
            if let Ok(addr) = locate(&self.inner.cluster, &self.inner.token, &self.inner.export).await {
                if addr != here {
                    let mut s = Status::unavailable(format!("export {} moved to {addr}", self.inner.export));
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(OWNER_KEY, v);
                    }
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// UNAVAILABLE after the retry budget is spent: says which CHN did not
    /// answer and what to check.
    fn gave_up(&self, s: &Status) -> Status {
        Status::unavailable(format!(
            "export {} did not answer at {} for {} s ({}); check its CHN with `nasctl cluster status`",
            self.inner.export,
            self.serving_addr(),
            self.inner.retry_for.as_secs(),
            s.message()
        ))
    }

    /// A new sequence number, outstanding until its call ends.
    fn seq(&self) -> u64 {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.outstanding).insert(seq);
        seq
    }

    /// Every call below this number has been answered.
    fn acked(&self) -> u64 {
        let next = self.inner.next_seq.load(Ordering::Relaxed);
        lock(&self.inner.outstanding).first().copied().unwrap_or(next)
    }

    /// Points the connection at whoever serves the export now.
    async fn follow(&self, s: &Status) {
        let named = s
            .metadata()
            .get(OWNER_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        let addr = match named {
            Some(a) => Some(a),
            None => locate(&self.inner.cluster, &self.inner.token, &self.inner.export)
                .await
                .ok(),
        };
        let Some(addr) = addr else { return };
        let mut conn = lock(&self.inner.conn);
        if conn.addr != addr {
            if let Ok(grpc) = channel(&self.inner.cluster, &addr) {
                *conn = Conn { addr, grpc };
            }
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileAttr, Status> {
        self.call(0, |mut g, call| async move {
            g.stat(FsPathRequest {
                call: Some(call),
                path: path.into(),
            })
            .await
        })
        .await
    }

    pub async fn stat_handle(&self, handle: u64) -> Result<FileAttr, Status> {
        self.call(0, |mut g, call| async move {
            g.stat_handle(HandleRequest {
                call: Some(call),
                handle,
            })
            .await
        })
        .await
    }

    /// Opens an existing file for reading.
    pub async fn open(&self, path: &str) -> Result<FileAttr, Status> {
        self.call(0, |mut g, call| async move {
            g.open(FsPathRequest {
                call: Some(call),
                path: path.into(),
            })
            .await
        })
        .await
    }

    /// Creates a file (mode 0 = 0644), or opens an existing one for writing.
    pub async fn create(&self, path: &str, mode: u32, exclusive: bool, truncate: bool) -> Result<FileAttr, Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.create(CreateRequest {
                call: Some(call),
                path: path.into(),
                mode,
                exclusive,
                truncate,
            })
            .await
        })
        .await
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<FileAttr, Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.mkdir(MkdirRequest {
                call: Some(call),
                path: path.into(),
                mode,
            })
            .await
        })
        .await
    }

    /// Writes `data` at `offset`, in calls of [`CALL_BYTES`] streamed in
    /// chunks of [`CHUNK`]; returns the file's size after the last call.
    pub async fn write(&self, handle: u64, offset: u64, data: &[u8]) -> Result<u64, Status> {
        let mut size = 0;
        for (i, part) in data.chunks(CALL_BYTES).enumerate() {
            let at = offset + (i * CALL_BYTES) as u64;
            size = self.write_call(handle, at, Bytes::copy_from_slice(part)).await?;
        }
        if data.is_empty() {
            size = self.stat_handle(handle).await?.size;
        }
        Ok(size)
    }

    /// One write call: acknowledged, and retried, as a whole.
    async fn write_call(&self, handle: u64, offset: u64, data: Bytes) -> Result<u64, Status> {
        let seq = self.seq();
        let reply = self
            .call(seq, |mut g, call| {
                let mut msgs: Vec<WriteChunk> = (0..data.len().div_ceil(CHUNK))
                    .map(|i| WriteChunk {
                        call: None,
                        handle,
                        offset: offset + (i * CHUNK) as u64,
                        data: data.slice(i * CHUNK..((i + 1) * CHUNK).min(data.len())),
                        total: 0,
                    })
                    .collect();
                if let Some(first) = msgs.first_mut() {
                    first.call = Some(call);
                    first.total = data.len() as u64;
                }
                async move { g.write(tokio_stream::iter(msgs)).await }
            })
            .await?;
        Ok(reply.size)
    }

    /// Reads up to `len` bytes from `offset` (fewer at the end of the file).
    pub async fn read(&self, handle: u64, offset: u64, len: u64) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        self.read_into(handle, offset, len, |piece| {
            out.extend_from_slice(&piece);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Streams a range of a file into `sink`, piece by piece. After a
    /// failover the read goes on from where it broke off.
    pub async fn read_into<F>(&self, handle: u64, offset: u64, len: u64, mut sink: F) -> Result<u64, Status>
    where
        F: FnMut(Bytes) -> Result<(), Status>,
    {
        let (mut at, end) = (offset, offset.saturating_add(len));
        let deadline = || tokio::time::Instant::now() + self.inner.retry_for;
        let mut give_up = deadline();
        let mut backoff = Duration::from_millis(20);
        while at < end {
            let mut g = lock(&self.inner.conn).grpc.clone();
            let req = ReadRequest {
                call: Some(Call {
                    token: self.inner.token.clone(),
                    ..Call::default()
                }),
                handle,
                offset: at,
                length: end - at,
            };
            let before = at;
            let attempt = async {
                let mut stream = g.read(req).await?.into_inner();
                while let Some(piece) = stream.message().await? {
                    let n = piece.data.len() as u64;
                    at += n;
                    sink(piece.data)?;
                    if n == 0 {
                        break;
                    }
                }
                Ok::<bool, Status>(true)
            };
            match attempt.await {
                Ok(_) => return Ok(at - offset),
                Err(s) if retryable(&s) && tokio::time::Instant::now() < give_up => {
                    if at > before {
                        give_up = deadline();
                    }
                    self.follow(&s).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(s) if retryable(&s) => return Err(self.gave_up(&s)),
                Err(s) => return Err(s),
            }
        }
        Ok(at - offset)
    }

    pub async fn truncate(&self, handle: u64, size: u64) -> Result<FileAttr, Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.truncate(TruncateRequest {
                call: Some(call),
                handle,
                size,
            })
            .await
        })
        .await
    }

    pub async fn unlink(&self, path: &str) -> Result<(), Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.unlink(FsPathRequest {
                call: Some(call),
                path: path.into(),
            })
            .await
        })
        .await
        .map(|_| ())
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.rmdir(FsPathRequest {
                call: Some(call),
                path: path.into(),
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// Moves `from` to `to` atomically, replacing what is at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<FileAttr, Status> {
        let seq = self.seq();
        self.call(seq, |mut g, call| async move {
            g.rename(RenameRequest {
                call: Some(call),
                from: from.into(),
                to: to.into(),
            })
            .await
        })
        .await
    }

    /// Every entry of a directory, page by page.
    pub async fn list(&self, path: &str) -> Result<Vec<FileAttr>, Status> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .call(0, |mut g, call| {
                    let req = ReadDirRequest {
                        call: Some(call),
                        path: path.into(),
                        after: after.clone(),
                        limit: 0,
                    };
                    async move { g.read_dir(req).await }
                })
                .await?;
            all.extend(page.entries);
            if page.next.is_empty() {
                return Ok(all);
            }
            after = page.next;
        }
    }

    /// Makes everything written to the file durable on the disks.
    pub async fn fsync(&self, handle: u64) -> Result<(), Status> {
        self.call(0, |mut g, call| async move {
            g.fsync(HandleRequest {
                call: Some(call),
                handle,
            })
            .await
        })
        .await
        .map(|_| ())
    }

    pub async fn statfs(&self) -> Result<StatFsReply, Status> {
        self.call(0, |mut g, _| async move {
            g.stat_fs(SessionRequest {
                token: self.inner.token.clone(),
            })
            .await
        })
        .await
    }

    /// Takes a file lock held by this session, waiting up to `wait` for a
    /// conflicting one to go.
    pub async fn lock(&self, path: &str, shared: bool, wait: Duration) -> Result<(), Status> {
        self.call(0, |mut g, call| async move {
            g.lock(FileLockRequest {
                call: Some(call),
                path: path.into(),
                shared,
                wait_ms: wait.as_millis() as u64,
            })
            .await
        })
        .await
        .map(|_| ())
    }

    pub async fn unlock(&self, path: &str) -> Result<(), Status> {
        self.call(0, |mut g, call| async move {
            g.unlock(FsPathRequest {
                call: Some(call),
                path: path.into(),
            })
            .await
        })
        .await
        .map(|_| ())
    }

    /// Ends the session: its locks are released.
    pub async fn close(self) -> Result<(), Status> {
        let token = &self.inner.token;
        self.call(0, |mut g, _| {
            let req = SessionRequest { token: token.clone() };
            async move { g.close_session(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Copies a local file to `remote` (created or emptied), calling
    /// `progress` with the bytes sent so far; returns the bytes copied.
    pub async fn put_file(
        &self,
        local: &Path,
        remote: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, PutGetError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| PutGetError::Local(format!("cannot open {}: {e}", local.display())))?;
        let attr = self.create(remote, 0, false, true).await?;
        // Several calls in flight: the CHN commits them together and the
        // network never waits for a flush.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut at = 0u64;
        let mut done = 0u64;
        loop {
            let mut buf = vec![0u8; CALL_BYTES];
            let n = read_full(&mut file, &mut buf)
                .await
                .map_err(|e| PutGetError::Local(format!("cannot read {}: {e}", local.display())))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let offset = at;
            at += n as u64;
            let data = Bytes::from(buf);
            in_flight.push(async move { self.write_call(attr.handle, offset, data).await.map(|_| n as u64) });
            if in_flight.len() >= PUT_DEPTH {
                if let Some(r) = in_flight.next().await {
                    done += r?;
                    progress(done);
                }
            }
        }
        while let Some(r) = in_flight.next().await {
            done += r?;
            progress(done);
        }
        Ok(at)
    }

    /// Copies `remote` into a local file, calling `progress` with the bytes
    /// received so far; returns the bytes copied.
    pub async fn get_file(
        &self,
        remote: &str,
        local: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, PutGetError> {
        let attr = self.open(remote).await?;
        let mut file = std::fs::File::create(local)
            .map_err(|e| PutGetError::Local(format!("cannot create {}: {e}", local.display())))?;
        // The local file is written on its own thread, so receiving the
        // next pieces and writing this one overlap.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for piece in rx {
                file.write_all(&piece)?;
            }
            Ok(())
        });
        let mut got = 0u64;
        let n = self
            .read_into(attr.handle, 0, attr.size, |piece| {
                got += piece.len() as u64;
                progress(got, attr.size);
                // A closed channel means the writer failed; its error is
                // reported below.
                tx.send(piece).map_err(|_| Status::aborted("local write failed"))
            })
            .await;
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| PutGetError::Local("the local writer thread failed".into()))?;
        written.map_err(|e| PutGetError::Local(format!("cannot write {}: {e}", local.display())))?;
        Ok(n?)
    }
}

/// Errors of copying between a local file and the export.
#[derive(Debug, thiserror::Error)]
pub enum PutGetError {
    #[error("{0}")]
    Local(String),
    #[error("{}", .0.message())]
    Remote(#[from] Status),
}

async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = file.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

async fn keep_alive(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut g = lock(&inner.conn).grpc.clone();
        let token = inner.token.clone();
        drop(inner);
        let _ = g.keep_alive(SessionRequest { token }).await;
    }
}
