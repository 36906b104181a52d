//! The shared LU: one openraft group across all CHNs whose state machine is
//! the cluster's tables (disks, LUs, paths, locks, users, clients,
//! services, daemons).
//!
//! Owns the Raft type configuration and [`SharedLu`], the handle the
//! services use to write commands (forwarded to the leader when this CHN
//! does not lead) and to make reads linearizable. It must never hand a
//! caller a result that is not committed, and never block forever: every
//! wait on the group has a deadline.

// openraft's storage traits return its large `StorageError`; boxing it
// would only move the allocation.
#![allow(clippy::result_large_err)]

pub mod admission;
mod election_gate;
pub mod error;
pub mod log_store;
mod membership;
pub mod network;
mod reads;
pub mod sm_store;
pub mod tables;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

pub use error::{Error, RejectKind, Rejection};
use nas_proto::{raft_client::RaftClient, Command, CommandBatch, CommandResult, CommandResults, ReadIndexRequest};
use network::{Network, PeerError, Peers};
use sm_store::{StateMachineStore, StateReader};
use tokio::sync::{mpsc, oneshot};

/// A CHN as a Raft member: its name and the address of its gRPC port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChnNode {
    pub name: String,
    pub addr: String,
}

impl fmt::Display for ChnNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Raft types of the shared LU.
    pub TypeConfig:
        // Shared, not copied: the log, its writer and every AppendEntries
        // hold the same batch. It is encoded like the batch itself.
        D = std::sync::Arc<CommandBatch>,
        R = CommandResults,
        NodeId = u64,
        Node = ChnNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of the shared LU.
pub type Entry = openraft::Entry<TypeConfig>;
/// Raft member id of a CHN.
pub type NodeId = u64;
/// The Raft instance of the shared LU.
pub type Raft = openraft::Raft<TypeConfig>;

/// Timing and compaction settings of the group.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, for slightly lagging CHNs.
    pub keep_logs: u64,
    /// How long a write or a linearizable read may wait for a quorum.
    pub quorum_timeout: Duration,
}

/// Errors when starting the shared LU on this CHN.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the Raft log in {dir}: {source}")]
    Log { dir: String, source: std::io::Error },
    #[error("cannot open the state machine in {dir}: {source}")]
    State {
        dir: String,
        source: openraft::StorageError<NodeId>,
    },
    #[error("invalid Raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("cannot start Raft: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
}

/// This CHN's handle on the shared LU.
#[derive(Clone)]
pub struct SharedLu {
    pub raft: Raft,
    state: StateReader,
    pub peers: Peers,
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    quorum_timeout: Duration,
    proposals: mpsc::Sender<Proposal>,
    /// The term in which this process, leading, has committed an entry of
    /// its own (0: none yet). Until then it serves no read index.
    read_barrier: std::sync::Arc<ReadBarrier>,
}

/// What makes a leader's read index safe after any crash. openraft takes
/// the read index as the larger of the leader's first entry of its term
/// and its commit index; a leader that restarts into its own term (its
/// vote was committed) reuses that first entry, and its commit index is
/// only as new as the last hint that reached its log, so entries
/// acknowledged just before the crash can lie above both. One blank entry
/// committed by this process in its term puts the commit index past every
/// entry it had, at the cost of one round per leadership.
#[derive(Default)]
struct ReadBarrier {
    term: std::sync::atomic::AtomicU64,
    /// One barrier write at a time; the others wait for its outcome.
    writing: tokio::sync::Mutex<()>,
}

/// Most commands proposed in one Raft entry.
const MAX_BATCH: usize = 1024;
/// Raft entries proposed but not yet committed, at most. While they are in
/// flight, new commands queue up and form the next, larger batch. openraft
/// sends a follower everything appended since its last AppendEntries, so
/// more, smaller entries in flight cost little and keep the pipeline full
/// (docs/BENCHMARKS.md has the figures).
const MAX_IN_FLIGHT: usize = 8;

/// A command waiting to be proposed, and where its verdict goes.
struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResult, Redirect>>,
}

/// Turns a state machine verdict into the caller's result.
pub fn verdict(r: CommandResult) -> Result<CommandResult, Error> {
    match RejectKind::from_code(r.code) {
        None => Ok(r),
        Some(kind) => Err(Error::Rejected(Rejection {
            kind,
            message: r.message,
        })),
    }
}

fn no_quorum(what: &'static str, timeout: Duration) -> Error {
    Error::NoQuorum { what, timeout }
}

impl SharedLu {
    /// Opens the durable log and state in `data_dir` and starts Raft.
    pub async fn start(
        id: NodeId,
        name: String,
        addr: String,
        data_dir: &Path,
        s: &RaftSettings,
        peers: Peers,
    ) -> Result<SharedLu, StartError> {
        let dir = data_dir.display().to_string();
        let log = log_store::LogStore::open(data_dir, id).map_err(|source| StartError::Log {
            dir: dir.clone(),
            source,
        })?;
        let durability = log.durability();
        let sm = StateMachineStore::open(data_dir, durability.clone())
            .map_err(|source| StartError::State { dir, source })?;
        let state = sm.reader();
        let config = openraft::Config {
            cluster_name: "nas-shared-lu".into(),
            heartbeat_interval: s.heartbeat_ms,
            election_timeout_min: s.election_min_ms,
            election_timeout_max: s.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(s.snapshot_threshold),
            max_in_snapshot_log_to_keep: s.keep_logs,
            ..Default::default()
        }
        .validate()?;
        let network = Network::new(durability, peers.clone());
        let raft = Raft::new(id, std::sync::Arc::new(config), network, log, sm).await?;
        tokio::spawn(election_gate::run(raft.clone(), peers.clone(), id));
        let (proposals, queue) = mpsc::channel(MAX_BATCH * MAX_IN_FLIGHT);
        tokio::spawn(batch_proposals(raft.clone(), queue, id, s.quorum_timeout));
        Ok(SharedLu {
            raft,
            state,
            peers,
            id,
            name,
            addr,
            quorum_timeout: s.quorum_timeout,
            proposals,
            read_barrier: Default::default(),
        })
    }

    /// The leader's id and address as this CHN knows them.
    pub fn leader(&self) -> Option<(NodeId, ChnNode)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Resolves once this CHN knows a leader other than the one at `addr`.
    async fn leader_moves_from(&self, addr: &str) {
        let mut m = self.raft.metrics();
        loop {
            if self.leader().is_some_and(|(_, n)| n.addr != addr) {
                return;
            }
            if m.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn raft_client(&self, addr: &str) -> Result<RaftClient<tonic::transport::Channel>, Error> {
        let ch = self
            .peers
            .channel(addr)
            .map_err(|e| Error::Internal(format!("bad leader address {addr:?}: {e}")))?;
        Ok(RaftClient::new(ch))
    }

    /// Waits (up to the quorum timeout) until some CHN is known to lead.
    pub async fn await_leader(&self) -> Result<(NodeId, ChnNode), Error> {
        self.require_initialized().await?;
        let wait = self.raft.wait(Some(self.quorum_timeout));
        let _ = wait.metrics(|m| m.current_leader.is_some(), "leader known").await;
        self.leader()
            .ok_or_else(|| no_quorum("the shared LU", self.quorum_timeout))
    }

    /// Fails with FAILED_PRECONDITION while this CHN belongs to no shared LU.
    pub async fn require_initialized(&self) -> Result<(), Error> {
        if self.is_initialized().await? {
            return Ok(());
        }
        Err(Error::NotMember {
            name: self.name.clone(),
        })
    }

    /// Whether this CHN belongs to a shared LU (bootstrapped or joined).
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| Error::Unavailable(format!("shared LU stopped: {e}")))
    }

    /// Commits `cmd` through the leader, wherever it is, and returns the
    /// state machine's verdict as a result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, Error> {
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        loop {
            match self.write_here(cmd.clone()).await {
                Err(Redirect::To(node)) => {
                    let mut client = self.raft_client(&node.addr)?;
                    let forwarded = async {
                        tokio::select! {
                            r = client.forward(cmd) => r.map(|r| r.into_inner()).map_err(PeerError::from),
                            // A leader that is paused or cut off never
                            // answers; once another CHN leads, stop waiting.
                            _ = self.leader_moves_from(&node.addr) => Err(PeerError::Unreachable("another CHN leads now".into())),
                            _ = tokio::time::sleep_until(deadline) => Err(PeerError::Unreachable(format!(
                                "no answer within {} ms", self.quorum_timeout.as_millis()
                            ))),
                        }
                    };
                    let reply = forwarded.await.map_err(|e| match e {
                        PeerError::Unreachable(why) => Error::Unavailable(format!(
                            "leader {} could not be reached ({why}); the command may or may not have been applied",
                            node.name,
                        )),
                        PeerError::Failed(why) => Error::Internal(format!("leader {}: {why}", node.name)),
                    })?;
                    if reply.code == 0 && reply.log_index > 0 {
                        self.await_applied(reply.log_index, deadline).await;
                    }
                    return verdict(reply);
                }
                Err(Redirect::Unknown) if tokio::time::Instant::now() < deadline => {
                    self.await_leader().await?;
                }
                Err(Redirect::Unknown) => return Err(no_quorum("the write", self.quorum_timeout)),
                Err(Redirect::Failed(status)) => return Err(status),
                Ok(r) => return verdict(r),
            }
        }
    }

    /// Read your writes: a caller that wrote through this CHN must find the
    /// write in this CHN's tables once the call returns, but a follower
    /// applies a commit a moment after the leader answered. Waits for it
    /// (until `deadline`). Late is not wrong: the write is committed, and
    /// answering an error would invite a retry that applies it twice.
    async fn await_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let caught_up = self
            .raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "forwarded write")
            .await;
        if caught_up.is_err() {
            tracing::warn!(index, "a forwarded write was committed but is not applied here yet");
        }
    }

    /// Proposes `cmd` on this CHN only; used by the leader for forwarded
    /// commands, so that a command is never forwarded twice.
    pub async fn write_local(&self, cmd: Command) -> Result<CommandResult, Error> {
        match self.write_here(cmd).await {
            Ok(r) => Ok(r),
            Err(Redirect::To(node)) => Err(Error::Unavailable(format!(
                "this CHN no longer leads; the leader is now {} at {}: retry there",
                node.name, node.addr
            ))),
            Err(Redirect::Unknown) => Err(no_quorum("the write", self.quorum_timeout)),
            Err(Redirect::Failed(s)) => Err(s),
        }
    }

    async fn write_here(&self, cmd: Command) -> Result<CommandResult, Redirect> {
        let (reply, verdict) = oneshot::channel();
        let stopped = || {
            Redirect::Failed(Error::Unavailable(
                "this CHN is shutting down; retry on another CHN".into(),
            ))
        };
        self.proposals
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| stopped())?;
        verdict.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Returns once this CHN's tables include every write committed before
    /// the call (a linearizable read barrier; followers ask the leader).
    pub async fn ensure_current(&self) -> Result<(), Error> {
        let timeout = self.quorum_timeout;
        let index = match self.read_index_here().await? {
            Some(_) => return Ok(()),
            None => {
                let node = self.await_leader().await?.1;
                let mut client = self.raft_client(&node.addr)?;
                let reply = tokio::time::timeout(timeout, client.read_index(ReadIndexRequest {}))
                    .await
                    .map_err(|_| no_quorum("the read", timeout))?
                    .map_err(|e| {
                        let why = PeerError::from(e);
                        Error::Unavailable(format!("read index from leader {}: {why}; retry", node.name))
                    })?;
                reply.into_inner().index
            }
        };
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| Error::Unavailable("this CHN did not catch up with the leader in time; retry".into()))
    }

    /// Leader side of [`ensure_current`](Self::ensure_current) for a follower.
    pub async fn read_index(&self) -> Result<u64, Error> {
        match self.read_index_here().await? {
            Some(index) => Ok(index),
            None => Err(Error::Unavailable(
                "this CHN no longer leads; retry on the leader".into(),
            )),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the
    /// read index, retrying a quorum that is briefly short (slow
    /// heartbeats on a loaded machine) until the quorum timeout. `None`
    /// when another CHN leads.
    async fn read_index_here(&self) -> Result<Option<u64>, Error> {
        let deadline = tokio::time::Instant::now() + self.quorum_timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(no_quorum("the read", self.quorum_timeout)),
                Ok(Ok(log_id)) => {
                    let leading = self.raft.metrics().borrow().current_term;
                    if self.read_barrier.term.load(Ordering::Acquire) == leading {
                        return Ok(Some(log_id.map_or(0, |l| l.index)));
                    }
                    // The read index may be too low: commit an entry of
                    // this leadership first, then ask again.
                    if !self.commit_read_barrier(leading, deadline).await? {
                        return Ok(None);
                    }
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => return Ok(None),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))))
                    if tokio::time::Instant::now() + Duration::from_millis(50) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    return Err(no_quorum("the read", self.quorum_timeout))
                }
                Ok(Err(e)) => return Err(Error::Unavailable(format!("shared LU error: {e}"))),
            }
        }
    }

    /// Commits a blank entry in `term` on this CHN, the leader, so that its
    /// commit index covers every entry it holds. Returns false when it
    /// turns out not to lead.
    async fn commit_read_barrier(&self, term: u64, deadline: tokio::time::Instant) -> Result<bool, Error> {
        let _one = self.read_barrier.writing.lock().await;
        if self.read_barrier.term.load(Ordering::Acquire) == term {
            return Ok(true);
        }
        let blank = std::sync::Arc::new(CommandBatch { commands: Vec::new() });
        match tokio::time::timeout_at(deadline, self.raft.client_write(blank)).await {
            Err(_) => Err(no_quorum("the read", self.quorum_timeout)),
            Ok(Ok(resp)) => {
                // Committed in `term` by this process: everything before it is
                // committed too. A later term is for the next read to settle.
                if resp.log_id.leader_id.term == term {
                    self.read_barrier.term.store(term, Ordering::Release);
                }
                Ok(true)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Ok(false),
            Ok(Err(e)) => Err(Error::Unavailable(format!("shared LU error: {e}"))),
        }
    }

    /// Members of the group: voters and learners with their nodes.
    pub fn members(&self) -> (BTreeMap<NodeId, ChnNode>, std::collections::BTreeSet<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters = membership.voter_ids().collect();
        (nodes, voters)
    }
}

#[derive(Clone)]
enum Redirect {
    To(ChnNode),
    Unknown,
    Failed(Error),
}

/// Proposes queued commands in batches, one Raft entry per batch, with up
/// to `MAX_IN_FLIGHT` entries in flight: many concurrent writers share one
/// entry, one fsync per member and one replication round trip.
async fn batch_proposals(raft: Raft, mut queue: mpsc::Receiver<Proposal>, me: NodeId, timeout: Duration) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Waiting for a slot is what lets the next batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            crate::telemetry::batch(commands.len());
            let outcome = tokio::time::timeout(
                timeout,
                raft.client_write(std::sync::Arc::new(CommandBatch { commands })),
            )
            .await;
            drop(permit);
            let failure = match outcome {
                Ok(Ok(resp)) => {
                    let mut results = resp.data.results.into_iter();
                    for reply in replies {
                        let r = results
                            .next()
                            .ok_or_else(|| Redirect::Failed(Error::Internal("missing command result".into())));
                        let _ = reply.send(r);
                    }
                    return;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match f.leader_node {
                    Some(node) if f.leader_id != Some(me) => Redirect::To(node),
                    _ => Redirect::Unknown,
                },
                Ok(Err(e)) => Redirect::Failed(Error::Unavailable(format!("shared LU error: {e}"))),
                Err(_) => Redirect::Failed(Error::Unavailable(format!(
                    "the write was not committed within {} ms: a majority of CHNs may be unreachable; \
                     it may still be applied later, check before retrying",
                    timeout.as_millis()
                ))),
            };
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        });
    }
}

#[cfg(test)]
mod power_cut_tests;

#[cfg(test)]
mod storage_tests {
    use super::log_store::{Durability, LogStore};
    use super::sm_store::StateMachineStore;
    use super::{NodeId, TypeConfig};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            // Node id 0 is never a member: every append is synced before
            // it is reported, as the suite expects. The suite applies
            // entries it never appended, so the state machine does not
            // wait for the log.
            let log = LogStore::open(dir.path(), 0)
                .map_err(|e| openraft::StorageIOError::write(&std::io::Error::other(e)))?;
            let sm = StateMachineStore::open(dir.path(), Durability::always())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log and state machine storage.
    #[test]
    fn storage_passes_the_openraft_suite() -> Result<(), StorageError<NodeId>> {
        Suite::test_all(Builder)
    }
}
