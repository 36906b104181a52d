//! The Raft transport between CHNs, over the `Raft` gRPC service.
//!
//! Owns the client side: a cache of one HTTP/2 channel per peer address,
//! one AppendEntries stream per follower, and postcard encoding of
//! openraft's messages. It must never block a Raft task longer than the
//! deadline openraft gives for the call, and never match a reply to any
//! request but the one it answers: a stream that failed or timed out is
//! dropped, not reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use super::log_store::Durability;
use super::{ChnNode, NodeId, TypeConfig};
use nas_proto::transport::{BadAddress, Transport};
use nas_proto::{raft_client::RaftClient, RaftBytes};

/// Open channels to peers, keyed by address; shared by every Raft task
/// and by request forwarding. Over TLS each channel presents this CHN's
/// certificate (mutual TLS).
#[derive(Clone)]
pub struct Peers {
    transport: Transport,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub fn new(transport: Transport) -> Peers {
        Peers {
            transport,
            channels: Arc::default(),
        }
    }

    /// An endpoint for `addr`, for callers that need their own settings.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, BadAddress> {
        self.transport.endpoint(addr)
    }

    /// A (lazily connecting) channel to `addr`, reused across calls.
    pub fn channel(&self, addr: &str) -> Result<Channel, BadAddress> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .endpoint(addr)?
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Hands openraft one connection object per target.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
    durability: Durability,
}

impl Network {
    /// A transport that tells followers of a commit only once this CHN's
    /// log has synced the committed entries.
    pub fn new(durability: Durability, peers: Peers) -> Self {
        Network { peers, durability }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &ChnNode) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            appends: None,
            durability: self.durability.clone(),
        }
    }
}

/// Calls to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    peers: Peers,
    /// The open AppendEntries stream, if any.
    appends: Option<AppendStream>,
    durability: Durability,
}

/// An AppendEntries stream: requests go out one at a time, and the next
/// reply answers the request sent last.
struct AppendStream {
    requests: mpsc::Sender<RaftBytes>,
    replies: Streaming<RaftBytes>,
}

/// A call to another CHN that got no answer of its own making. The gRPC
/// edge (`service::status`) turns a transport status into one of these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The peer is down, away, or the call broke off: it may or may not
    /// have acted on the request.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an error.
    #[error("{0}")]
    Failed(String),
}

/// Unreachable (openraft backs off) for a peer that is down or away,
/// a network error otherwise.
fn rpc_error<E: std::error::Error>(e: PeerError) -> RpcErr<E> {
    match e {
        PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
        PeerError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn decode_reply<Resp, E>(target: NodeId, data: &[u8]) -> Result<Resp, RpcErr<E>>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let result: Result<Resp, RaftError<NodeId, E>> =
        postcard::from_bytes(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, ChnNode, RaftError<NodeId, E>>;

/// One method of the generated Raft client, as a plain function.
type RaftMethod =
    fn(RaftClient<Channel>, RaftBytes) -> futures::future::BoxFuture<'static, Result<RaftBytes, PeerError>>;

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, BadAddress> {
        Ok(RaftClient::new(self.peers.channel(&self.addr)?).max_decoding_message_size(64 << 20))
    }

    async fn call<Req, Resp, E>(&self, req: &Req, option: &RPCOption, method: RaftMethod) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply = tokio::time::timeout(option.hard_ttl(), method(client, RaftBytes { data }))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(rpc_error)?;
        decode_reply(self.target, &reply.data)
    }

    /// Sends one request on the AppendEntries stream (opening it first if
    /// needed) and waits for its reply.
    async fn exchange(&mut self, data: Vec<u8>) -> Result<RaftBytes, PeerError> {
        let stream = match &mut self.appends {
            Some(stream) => stream,
            None => {
                let client = self
                    .client()
                    .map_err(|e| PeerError::Unreachable(format!("bad peer address: {e}")))?;
                self.appends.insert(open_appends(client).await?)
            }
        };
        let closed = || PeerError::Unreachable("the AppendEntries stream closed".into());
        stream.requests.send(RaftBytes { data }).await.map_err(|_| closed())?;
        stream
            .replies
            .message()
            .await
            .map_err(PeerError::from)?
            .ok_or_else(closed)
    }
}

/// Opens an AppendEntries stream; returns once the follower has accepted it.
async fn open_appends(mut client: RaftClient<Channel>) -> Result<AppendStream, PeerError> {
    // One request at a time is all openraft sends on a stream.
    let (requests, queue) = mpsc::channel(1);
    let replies = client
        .append_entries(ReceiverStream::new(queue))
        .await
        .map_err(PeerError::from)?
        .into_inner();
    Ok(AppendStream { requests, replies })
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let data = postcard::to_allocvec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // A follower applies what the leader calls committed: only once it
        // is durable here as well (see log_store). Normally it has been
        // for a while, as the leader syncs while the followers do.
        let commit = rpc.leader_commit.map_or(0, |c| c.index);
        let sent = async {
            self.durability
                .synced(commit)
                .await
                .map_err(|why| PeerError::Failed(format!("this CHN's Raft log failed: {why}")))?;
            self.exchange(data).await
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), sent).await {
            Ok(Ok(reply)) => reply,
            failed => {
                // A reply may still be on its way: it must not be taken
                // for the answer to the next request.
                self.appends = None;
                return Err(match failed {
                    Ok(Err(e)) => rpc_error(e),
                    _ => RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                        "no AppendEntries reply within {} ms",
                        option.hard_ttl().as_millis()
                    )))),
                });
            }
        };
        decode_reply(self.target, &reply.data)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move {
                c.install_snapshot(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(PeerError::from)
            })
        })
        .await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move { c.vote(r).await.map(|r| r.into_inner()).map_err(PeerError::from) })
        })
        .await
    }
}
