//! The Raft log and vote, durable in an append-only file.
//!
//! Owns `raft.log` under the CHN's data directory: a sequence of frames,
//! each one group of records (entries, the vote, the last purged log id,
//! the committed hint, truncations) with its length and a CRC32. One
//! writer thread appends whatever has queued up as one frame, with one
//! write and one `fdatasync`, and never writes a frame before the one
//! ahead of it is durable, so only the last frame can be torn. Every
//! live entry is also kept in memory: the log stays short, because
//! compaction purges it behind each snapshot, and the file is rewritten
//! with only the live state once dead records outweigh it.
//!
//! The leader's own fresh entries are reported flushed to openraft as soon
//! as they are queued, so that replicating them to the followers runs in
//! parallel with the leader's `fdatasync` instead of after it (openraft
//! 0.9 waits for the flush before it sends anything). Nothing may act on
//! such an entry until it is durable here too: [`Durability`] tells how far
//! the file is synced, the state machine waits for it before it applies an
//! entry, and the transport before it tells a follower a commit index. So
//! an entry is applied or acknowledged anywhere only once a majority has it
//! on disk: this leader and the follower whose acknowledgement committed it
//! (followers acknowledge only after their own `fdatasync`).
//!
//! Otherwise it must never report an append as flushed before its
//! `fdatasync` has returned, must keep writes in the order openraft issued
//! them, and must never serve an entry that a truncate removed. A torn last
//! frame (a crash in the middle of a write) is cut off at open: it was
//! never acknowledged. A damaged frame with good frames after it is not a
//! torn write: the CHN refuses to start rather than forget acknowledged
//! entries.
//!
//! Why a plain file rather than a database table: a B-tree commit rewrites
//! pages and syncs twice, which at one client in flight is most of the
//! commit latency, while a log needs one append and one `fdatasync`. A
//! `raft.redb` written by earlier versions is imported once at open.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{Entry, NodeId, TypeConfig};

const FILE: &str = "raft.log";
/// Most queued writes appended together.
const GROUP_MAX: usize = 512;
/// Bytes before each frame's body: its length, then its CRC32.
const FRAME: usize = 8;
/// Largest frame accepted on replay (a group of up to GROUP_MAX writes).
const FRAME_MAX: usize = 1 << 30;
/// Records per frame when the file is rewritten.
const REWRITE_FRAME_RECORDS: usize = 1024;
/// The file is rewritten when it is larger than this plus twice its live part.
const REWRITE_SLACK: u64 = 4 << 20;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// One record of the file.
#[derive(Clone, Serialize, Deserialize)]
enum Record {
    Entry(Entry),
    Vote(Vote<NodeId>),
    Purged(LogId<NodeId>),
    Committed(Option<LogId<NodeId>>),
    /// Entries from this index on are gone.
    Truncate(u64),
}

/// What the file holds once replayed.
#[derive(Clone, Default)]
struct Durable {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl Durable {
    /// The index of the last entry, or of the last purged one.
    fn last_index(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|p| p.index))
            .unwrap_or(0)
    }

    fn apply(&mut self, r: Record) {
        match r {
            Record::Entry(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Purged(id) => {
                self.entries.retain(|k, _| *k > id.index);
                self.purged = Some(id);
            }
            Record::Committed(c) => self.committed = c,
            Record::Truncate(from) => {
                self.entries.retain(|k, _| *k < from);
            }
        }
    }

    /// The records that rebuild this state on their own.
    fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let purged = self.purged.map(Record::Purged);
        let vote = self.vote.map(Record::Vote);
        let committed = Some(Record::Committed(self.committed));
        purged
            .into_iter()
            .chain(vote)
            .chain(committed)
            .chain(self.entries.values().cloned().map(Record::Entry))
    }
}

/// One write for the writer thread.
enum Write {
    Append {
        entries: Vec<Entry>,
        /// `None` when openraft was told already (the leader's own entries).
        done: Option<LogFlushed<TypeConfig>>,
    },
    /// A record that must be durable before `done` is told.
    Sync {
        record: Record,
        done: oneshot::Sender<Result<()>>,
    },
}

/// The latest committed index openraft reported, not yet in a frame. It
/// may be lost in a crash, so it is not worth an `fdatasync` or even a
/// wake-up of the writer: the writer takes it into its next frame.
type Hint = Arc<std::sync::Mutex<Option<Record>>>;

/// How far the log file is synced, as a log index, or why it never will be.
#[derive(Clone, Debug, PartialEq)]
enum Synced {
    Upto(u64),
    Failed(String),
}

/// Waits until this CHN's Raft log is durable up to an index. Cheap to clone.
#[derive(Clone)]
pub struct Durability {
    synced: watch::Receiver<Synced>,
}

impl Durability {
    /// Returns once every entry up to `index` is on disk here, or the
    /// reason it cannot be (the log writer failed).
    pub async fn synced(&self, index: u64) -> std::result::Result<(), String> {
        let mut synced = self.synced.clone();
        let reached = synced
            .wait_for(|s| !matches!(s, Synced::Upto(i) if *i < index))
            .await
            .map_err(|_| "the Raft log writer stopped".to_string())?;
        match &*reached {
            Synced::Upto(_) => Ok(()),
            Synced::Failed(why) => Err(why.clone()),
        }
    }

    /// A log that is always durable: for state machines tested alone.
    #[cfg(test)]
    pub fn always() -> Self {
        let (tx, synced) = watch::channel(Synced::Upto(u64::MAX));
        // The value never changes; the receiver keeps reading it.
        std::mem::forget(tx);
        Durability { synced }
    }
}

/// Log storage handle; cheap to clone (readers share everything).
#[derive(Clone)]
pub struct LogStore {
    /// This CHN's node id: entries it proposed as leader carry it.
    me: NodeId,
    synced: watch::Receiver<Synced>,
    /// The log as openraft sees it: appended entries (durable or on their
    /// way), less what was truncated or purged; the vote and marks.
    state: Arc<RwLock<Durable>>,
    writes: mpsc::Sender<Write>,
    hint: Hint,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

/// Appends one frame holding `records` to `out`.
fn frame<'a>(records: impl IntoIterator<Item = &'a Record>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    for r in records {
        let body = postcard::to_allocvec(r).map_err(std::io::Error::other)?;
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    let len = out.len() - start - FRAME;
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(w) as usize)
}

/// The records of the frame at `at` and where the next frame starts, or
/// `None` when no intact frame starts there.
fn frame_at(bytes: &[u8], at: usize) -> Option<(Vec<Record>, usize)> {
    let len = u32_at(bytes, at)?;
    let crc = u32_at(bytes, at + 4)? as u32;
    let end = at.checked_add(FRAME + len)?;
    if len == 0 || len > FRAME_MAX || end > bytes.len() {
        return None;
    }
    let body = &bytes[at + FRAME..end];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut records = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let n = u32_at(body, i)?;
        let r = body.get(i + 4..i + 4 + n)?;
        records.push(postcard::from_bytes(r).ok()?);
        i += 4 + n;
    }
    Some((records, end))
}

/// The end of every intact frame of `bytes`, with the highest entry index
/// the file holds once that frame is read (for tests that cut the file).
#[cfg(test)]
pub(super) fn frame_ends(bytes: &[u8]) -> Vec<(usize, u64)> {
    let mut state = Durable::default();
    let mut ends = Vec::new();
    let mut at = 0;
    while let Some((records, next)) = frame_at(bytes, at) {
        for r in records {
            state.apply(r);
        }
        ends.push((next, state.last_index()));
        at = next;
    }
    ends
}

/// Replays `bytes`: the state and the length of the intact prefix. Fails
/// when an intact frame follows a damaged one (damage, not a torn write).
fn replay(bytes: &[u8]) -> std::io::Result<(Durable, usize)> {
    let mut state = Durable::default();
    let mut at = 0;
    while let Some((records, next)) = frame_at(bytes, at) {
        for r in records {
            state.apply(r);
        }
        at = next;
    }
    if let Some(later) = (at + 1..bytes.len().saturating_sub(FRAME)).find(|o| frame_at(bytes, *o).is_some()) {
        return Err(std::io::Error::other(format!(
            "the Raft log is damaged at byte {at}, with intact records after it (byte {later}): it was not a torn write, \
             so acknowledged entries would be lost. Keep the file for analysis, then give this CHN an empty --data \
             and install it again (`nasctl chn remove`, `nasctl chn install`) to copy the log from the others"
        )));
    }
    Ok((state, at))
}

/// The vote a CHN restarts with. A leader reports its own entries to
/// openraft before they are synced, replicating them meanwhile, so a
/// `kill -9` can take an entry from the leader's log that a follower
/// already holds. Were the leader to restart as leader in its old term
/// (openraft resumes a committed vote of its own without an election), it
/// would write a different entry under the same log id, and the follower
/// would take its own copy for that entry. So a leader's vote comes back
/// as a candidate's: the CHN must win an election in a new term, whose
/// first entry overwrites whatever the old term left unsynced.
fn resumable(vote: Vote<NodeId>, me: NodeId) -> Vote<NodeId> {
    if vote.is_committed() && vote.leader_id().voted_for() == Some(me) {
        Vote::new(vote.leader_id().term, me)
    } else {
        vote
    }
}

/// Writes `state` alone into a new file and puts it in place of `path`.
fn rewrite(path: &Path, state: &Durable) -> std::io::Result<(File, u64)> {
    let mut buf = Vec::new();
    let records: Vec<Record> = state.records().collect();
    for chunk in records.chunks(REWRITE_FRAME_RECORDS) {
        frame(chunk, &mut buf)?;
    }
    let tmp = path.with_extension("log.new");
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let f = OpenOptions::new().append(true).open(path)?;
    Ok((f, buf.len() as u64))
}

/// The log of an older nasd, kept in redb, as a state to start from.
fn import_redb(path: &Path) -> std::io::Result<Durable> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    let err = |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", path.display()));
    let db = redb::Database::open(path).map_err(|e| err(&e))?;
    let tx = db.begin_read().map_err(|e| err(&e))?;
    let mut state = Durable::default();
    let meta = tx.open_table(META).map_err(|e| err(&e))?;
    let get = |key: &str| -> std::io::Result<Option<Vec<u8>>> {
        Ok(meta.get(key).map_err(|e| err(&e))?.map(|v| v.value().to_vec()))
    };
    if let Some(b) = get("vote")? {
        state.vote = Some(postcard::from_bytes(&b).map_err(|e| err(&e))?);
    }
    if let Some(b) = get("last_purged")? {
        state.purged = Some(postcard::from_bytes(&b).map_err(|e| err(&e))?);
    }
    if let Some(b) = get("committed")? {
        state.committed = postcard::from_bytes(&b).map_err(|e| err(&e))?;
    }
    let log = tx.open_table(LOG).map_err(|e| err(&e))?;
    for row in log.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let e: Entry = postcard::from_bytes(v.value()).map_err(|e| err(&e))?;
        state.entries.insert(k.value(), e);
    }
    Ok(state)
}

/// Holds `raft.lock` in `dir` exclusively for as long as the returned file
/// lives, so that a second nasd given the same data never writes the log.
fn lock_dir(dir: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("raft.lock"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
            "{} is in use by another nasd (its Raft log is locked): stop that one, or give this one its own --data",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

impl LogStore {
    /// Opens (or creates) `raft.log` in `dir` for the CHN with node id
    /// `me`, importing a `raft.redb` of an older nasd, and starts the
    /// writer thread.
    pub fn open(dir: &Path, me: NodeId) -> std::io::Result<Self> {
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE);
        let old = dir.join("raft.redb");
        if !path.exists() && old.exists() {
            let state = import_redb(&old)?;
            rewrite(&path, &state)?;
            std::fs::remove_file(&old)?;
            tracing::info!(
                entries = state.entries.len(),
                "imported the Raft log from raft.redb into raft.log"
            );
        }
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (mut state, valid) = replay(&bytes)?;
        state.vote = state.vote.map(|v| resumable(v, me));
        let (file, len) = if valid < bytes.len() {
            // Never acknowledged: the crash came before its fdatasync ended.
            tracing::warn!(
                cut = bytes.len() - valid,
                "cutting a torn write off the end of the Raft log"
            );
            rewrite(&path, &state)?
        } else {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if bytes.is_empty() {
                if let Some(d) = path.parent() {
                    File::open(d)?.sync_all()?;
                }
            }
            (f, valid as u64)
        };
        let live = state.clone();
        let (synced_tx, synced) = watch::channel(Synced::Upto(state.last_index()));
        let hint = Hint::default();
        let writer_hint = hint.clone();
        let (writes, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                Writer {
                    path,
                    file,
                    len,
                    state,
                    _lock: lock,
                    hint: writer_hint,
                    broken: None,
                    synced: synced_tx,
                }
                .run(&queue)
            })?;
        Ok(LogStore {
            me,
            synced,
            state: Arc::new(RwLock::new(live)),
            writes,
            hint,
        })
    }

    /// How far the log is synced, for the state machine and the transport.
    pub fn durability(&self) -> Durability {
        Durability {
            synced: self.synced.clone(),
        }
    }

    /// Whether `entries` are this CHN's own proposals as the leader of the
    /// term it voted for itself in, which is the only case in which an
    /// append may be reported before it is synced.
    fn proposed_here(&self, entries: &[Entry]) -> bool {
        let Some(vote) = self.read().vote else {
            return false;
        };
        let leader = vote.leader_id();
        vote.is_committed()
            && leader.voted_for() == Some(self.me)
            && entries
                .iter()
                .all(|e| e.log_id.leader_id.term == leader.term && e.log_id.leader_id.node_id == self.me)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Durable> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Durable> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a record and waits until it is durable.
    async fn sync(&self, record: Record) -> Result<()> {
        let (done, durable) = oneshot::channel();
        self.writes
            .send(Write::Sync { record, done })
            .map_err(|_| io_err("the log writer thread stopped"))?;
        durable.await.map_err(|_| io_err("the log writer thread stopped"))?
    }
}

/// The writer thread's side: the file and the durable state it holds.
struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// What the file holds, to rewrite it without its dead records.
    state: Durable,
    /// raft.lock, held while this writer may write.
    _lock: File,
    /// The latest committed hint, written with the next frame.
    hint: Hint,
    /// Set by a failed write or sync: what follows in the file is unknown
    /// (a partial record, pages the kernel dropped), so nothing more may be
    /// appended behind it and reported durable.
    broken: Option<String>,
    /// Published after every sync (or failure).
    synced: watch::Sender<Synced>,
}

impl Writer {
    /// Appends whatever has queued up, syncs once, then reports each write.
    fn run(mut self, queue: &mpsc::Receiver<Write>) {
        while let Some(group) = crate::group_commit::next_group(queue, GROUP_MAX) {
            let result = self.append(&group).map_err(|e| {
                tracing::error!(path = %self.path.display(), "cannot write the Raft log: {e}");
                e
            });
            self.synced.send_replace(match &result {
                Ok(()) => Synced::Upto(self.state.last_index()),
                Err(e) => Synced::Failed(format!("cannot write the Raft log: {e}")),
            });
            for w in group {
                match w {
                    Write::Append { done: None, .. } => {}
                    Write::Append { done: Some(done), .. } => done.log_io_completed(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| std::io::Error::other(e.to_string())),
                    ),
                    Write::Sync { done, .. } => {
                        let _ = done.send(result.as_ref().map(|_| ()).map_err(io_err));
                    }
                }
            }
        }
    }

    fn append(&mut self, group: &[Write]) -> std::io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(std::io::Error::other(format!(
                "the Raft log failed earlier ({why}); restart nasd, which replays it up to its last good record"
            )));
        }
        let started = std::time::Instant::now();
        let result = self.append_unchecked(group);
        metrics::histogram!(crate::telemetry::RAFT_LOG_APPEND).record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }

    fn append_unchecked(&mut self, group: &[Write]) -> std::io::Result<()> {
        let mut records = Vec::new();
        for w in group {
            match w {
                Write::Append { entries, .. } => records.extend(entries.iter().cloned().map(Record::Entry)),
                Write::Sync { record, .. } => records.push(record.clone()),
            }
        }
        // An empty frame would read as torn at replay.
        if records.is_empty() {
            return Ok(());
        }
        // An unsynced frame of its own could be torn behind a later synced
        // one: the hint rides along with this frame, unless it names an
        // entry that is not in the file yet (the leader learns a commit
        // before its own entry is synced), which would make a restarted
        // CHN apply entries it does not have. It then waits for a frame
        // that holds that entry.
        let last = records
            .iter()
            .filter_map(|r| match r {
                Record::Entry(e) => Some(e.log_id.index),
                _ => None,
            })
            .max()
            .unwrap_or(0)
            .max(self.state.last_index());
        let mut hint = self.hint.lock().unwrap_or_else(|p| p.into_inner());
        match hint.take() {
            Some(Record::Committed(Some(c))) if c.index > last => *hint = Some(Record::Committed(Some(c))),
            h => records.extend(h),
        }
        drop(hint);
        let mut buf = Vec::new();
        frame(&records, &mut buf)?;
        self.file.write_all(&buf)?;
        let synced = std::time::Instant::now();
        self.file.sync_data()?;
        metrics::histogram!(crate::telemetry::RAFT_LOG_FSYNC).record(synced.elapsed().as_secs_f64());
        self.len += buf.len() as u64;
        let purged = records.iter().any(|r| matches!(r, Record::Purged(_)));
        for r in records {
            self.state.apply(r);
        }
        if purged {
            self.maybe_rewrite()?;
        }
        Ok(())
    }

    /// After a purge: rewrites the file when dead records dominate it.
    fn maybe_rewrite(&mut self) -> std::io::Result<()> {
        let live: u64 = self
            .state
            .entries
            .values()
            .map(|e| postcard::to_allocvec(e).map_or(0, |b| b.len()) as u64 + FRAME as u64 + 2)
            .sum();
        if self.len > REWRITE_SLACK + 2 * live {
            let (file, len) = rewrite(&self.path, &self.state)?;
            self.file = file;
            self.len = len;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self.read().entries.range(start..end).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let s = self.read();
        Ok(LogState {
            last_purged_log_id: s.purged,
            last_log_id: s.entries.values().next_back().map(|e| e.log_id).or(s.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.sync(Record::Vote(*vote)).await?;
        self.write().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self.read().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        // A hint that lets a restarted CHN re-apply committed entries at
        // once; it rides along with the next synced write.
        self.write().committed = committed;
        metrics::gauge!(crate::telemetry::RAFT_COMMIT_INDEX).set(committed.map_or(0, |c| c.index) as f64);
        *self.hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(Record::Committed(committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self.read().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut s = self.write();
            for e in &entries {
                s.entries.insert(e.log_id.index, e.clone());
            }
        }
        // See the module doc: what waits for the leader's own sync.
        let (done, early) = match self.proposed_here(&entries) {
            true => (None, Some(callback)),
            false => (Some(callback), None),
        };
        self.writes
            .send(Write::Append { entries, done })
            .map_err(|_| io_err("the log writer thread stopped"))?;
        if let Some(callback) = early {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let from = log_id.index;
        self.write().entries.retain(|k, _| *k < from);
        self.sync(Record::Truncate(from)).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        {
            let mut s = self.write();
            s.entries.retain(|k, _| *k > log_id.index);
            s.purged = Some(log_id);
        }
        self.sync(Record::Purged(log_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    #[test]
    fn a_torn_last_frame_is_cut_and_damage_before_intact_frames_is_refused() {
        let mut buf = Vec::new();
        let first: Vec<Record> = (1..=3).map(|i| Record::Entry(entry(1, i))).collect();
        frame(&first, &mut buf).unwrap();
        frame(&[Record::Truncate(3)], &mut buf).unwrap();
        let whole = buf.len();
        frame(&[Record::Entry(entry(2, 3)), Record::Vote(Vote::new(2, 1))], &mut buf).unwrap();
        let (state, valid) = replay(&buf).unwrap();
        assert_eq!(valid, buf.len());
        assert_eq!(state.entries[&3].log_id.leader_id.term, 2);
        assert_eq!(state.vote, Some(Vote::new(2, 1)));
        // A crash in the middle of the last write: that frame is cut.
        let (state, valid) = replay(&buf[..buf.len() - 3]).unwrap();
        assert_eq!(valid, whole);
        assert_eq!(state.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(state.vote, None);
        // A flipped bit in the last frame: the same.
        let mut flipped = buf.clone();
        flipped[whole + FRAME + 2] ^= 1;
        assert_eq!(replay(&flipped).unwrap().1, whole);
        // A flipped bit in the first frame, with intact frames after it:
        // damage, and acknowledged entries would be lost. Refused.
        let mut damaged = buf.clone();
        damaged[FRAME + 2] ^= 1;
        let err = replay(&damaged).err().expect("refused");
        assert!(err.to_string().contains("damaged at byte 0"), "{err}");
    }

    #[test]
    fn an_old_raft_redb_is_imported_once() {
        use redb::TableDefinition;
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join("raft.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut log = tx.open_table(TableDefinition::<u64, &[u8]>::new("log")).unwrap();
                for i in 4..=6 {
                    log.insert(i, postcard::to_allocvec(&entry(2, i)).unwrap().as_slice())
                        .unwrap();
                }
                let mut meta = tx.open_table(TableDefinition::<&str, &[u8]>::new("meta")).unwrap();
                let vote = Vote::<NodeId>::new(2, 1);
                meta.insert("vote", postcard::to_allocvec(&vote).unwrap().as_slice())
                    .unwrap();
                let purged = entry(1, 3).log_id;
                meta.insert("last_purged", postcard::to_allocvec(&purged).unwrap().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut store = LogStore::open(dir.path(), 1).unwrap();
        assert!(!dir.path().join("raft.redb").exists(), "the old file stays behind");
        let (state, vote) =
            rt.block_on(async { (store.get_log_state().await.unwrap(), store.read_vote().await.unwrap()) });
        assert_eq!(state.last_purged_log_id, Some(entry(1, 3).log_id));
        assert_eq!(state.last_log_id, Some(entry(2, 6).log_id));
        assert_eq!(vote, Some(Vote::new(2, 1)));
        drop(store);
        // Opened again: the same log, from raft.log alone.
        let mut again = reopen(dir.path());
        let entries = rt.block_on(again.try_get_log_entries(0..100)).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
    }

    #[test]
    fn a_second_opener_of_the_same_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = LogStore::open(dir.path(), 1).unwrap();
        let second = LogStore::open(dir.path(), 1).err().expect("a second opener");
        assert!(second.to_string().contains("in use by another nasd"), "{second}");
        drop(first);
        reopen(dir.path());
    }

    /// Opens the log once the writer thread of a dropped handle has let go
    /// of the lock (it does so as soon as it sees the last handle gone).
    fn reopen(dir: &Path) -> LogStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match LogStore::open(dir, 1) {
                Ok(s) => return s,
                Err(e) => assert!(std::time::Instant::now() < deadline, "the lock was never released: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn purge_and_rewrite_keep_only_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut state = Durable::default();
        for i in 1..=10 {
            state.apply(Record::Entry(entry(1, i)));
        }
        state.apply(Record::Purged(entry(1, 6).log_id));
        state.apply(Record::Vote(Vote::new(3, 2)));
        rewrite(&path, &state).unwrap();
        let (again, valid) = replay(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(valid as u64, std::fs::metadata(&path).unwrap().len());
        assert_eq!(again.entries.keys().copied().collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        assert_eq!(again.purged, state.purged);
        assert_eq!(again.vote, state.vote);
    }

    /// Only a leader's fresh proposals skip the wait for their sync: the
    /// vote must be this CHN's own, committed, and of the entries' term.
    #[test]
    fn only_the_leaders_own_entries_are_reported_before_their_sync() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1).unwrap();
        assert!(!store.proposed_here(&[entry(2, 1)]), "no vote yet");
        rt.block_on(store.save_vote(&Vote::new(2, 1))).unwrap();
        assert!(
            !store.proposed_here(&[entry(2, 1)]),
            "a vote that is not committed is a candidate's"
        );
        rt.block_on(store.save_vote(&Vote::new_committed(2, 1))).unwrap();
        assert!(store.proposed_here(&[entry(2, 1), entry(2, 2)]));
        assert!(
            !store.proposed_here(&[entry(1, 1)]),
            "an older term's entry comes from a leader"
        );
        rt.block_on(store.save_vote(&Vote::new_committed(3, 2))).unwrap();
        assert!(
            !store.proposed_here(&[entry(3, 3)]),
            "CHN2 leads: these are a follower's appends"
        );
    }

    /// A leader's own vote comes back from a restart as a candidate's, so
    /// it cannot lead its old term again; any other vote is kept.
    #[test]
    fn a_leader_restarts_as_a_candidate_of_its_term() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1).unwrap();
        rt.block_on(store.save_vote(&Vote::new_committed(4, 1))).unwrap();
        drop(store);
        let mut again = reopen(dir.path());
        assert_eq!(rt.block_on(again.read_vote()).unwrap(), Some(Vote::new(4, 1)));
        rt.block_on(again.save_vote(&Vote::new_committed(5, 2))).unwrap();
        drop(again);
        let mut follower = reopen(dir.path());
        assert_eq!(
            rt.block_on(follower.read_vote()).unwrap(),
            Some(Vote::new_committed(5, 2)),
            "a follower keeps the leader it knew"
        );
    }

    /// A commit hint naming an entry the file does not hold yet (the leader
    /// learns of a commit before its own entry is synced) waits for a
    /// frame that holds it: a restarted CHN never applies entries it lacks.
    #[test]
    fn a_commit_hint_never_runs_ahead_of_the_entries_in_the_file() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path(), 1).unwrap();
        let durable = store.durability();
        assert!(durable.synced(0).now_or_never().is_some());
        assert!(durable.synced(1).now_or_never().is_none(), "nothing is written yet");
        rt.block_on(async {
            store.save_committed(Some(entry(1, 1).log_id)).await.unwrap();
            // This frame holds the vote (for CHN2: kept as it is across a
            // restart) but not entry 1.
            store.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        });
        drop(store);
        let mut again = reopen(dir.path());
        assert_eq!(rt.block_on(again.read_committed()).unwrap(), None);
        assert_eq!(rt.block_on(again.read_vote()).unwrap(), Some(Vote::new_committed(1, 2)));
    }
}
