//! The Raft transport between CHNs, over the `Raft` gRPC service.
//!
//! Owns the client side: a cache of one HTTP/2 channel per peer address,
//! and postcard encoding of openraft's messages. It must never block a
//! Raft task longer than the deadline openraft gives for the call.

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
use tonic::transport::{Channel, Endpoint};

use super::{ChnNode, NodeId, TypeConfig};
use nas_proto::{raft_client::RaftClient, RaftBytes};

/// Open channels to peers, keyed by address; shared by every Raft task
/// and by request forwarding.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// A (lazily connecting) channel to `addr`, reused across calls.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Hands openraft one connection object per target.
#[derive(Clone, Default)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &ChnNode) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Calls to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    peers: Peers,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, ChnNode, RaftError<NodeId, E>>;

/// One method of the generated Raft client, as a plain function.
type RaftMethod = fn(
    RaftClient<Channel>,
    RaftBytes,
) -> futures::future::BoxFuture<'static, Result<tonic::Response<RaftBytes>, tonic::Status>>;

impl Connection {
    async fn call<Req, Resp, E>(&self, req: &Req, option: &RPCOption, method: RaftMethod) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let channel = self
            .peers
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let client = RaftClient::new(channel).max_decoding_message_size(64 << 20);
        let reply = tokio::time::timeout(option.hard_ttl(), method(client, RaftBytes { data }))
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
            .map_err(|status| {
                if status.code() == tonic::Code::Unavailable {
                    RPCError::Unreachable(Unreachable::new(&status))
                } else {
                    RPCError::Network(NetworkError::new(&status))
                }
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move { c.append_entries(r).await })
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move { c.install_snapshot(r).await })
        })
        .await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, &option, |mut c, r| Box::pin(async move { c.vote(r).await }))
            .await
    }
}
