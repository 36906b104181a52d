//! Server side of the Raft transport, plus command forwarding and read
//! index for followers.
//!
//! Owns decoding of peer messages. A malformed message, or one that
//! `shared_lu::admission` refuses, must get an error status and never
//! reach openraft.

use std::pin::Pin;

use futures::Stream;
use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::shared_lu::{admission, SharedLu};
use nas_proto::{raft_server, Command, CommandResult, RaftBytes, ReadIndexReply, ReadIndexRequest};

/// The `Raft` service of one CHN.
pub struct RaftService {
    pub lu: SharedLu,
    /// Whether callers present certificates (TLS): then only installed
    /// CHNs may call. Plaintext (`--insecure`) lets anyone in.
    pub mutual_tls: bool,
}

impl RaftService {
    /// The node id of the CHN making the call, as its certificate says
    /// (None in plaintext mode, or while this CHN knows no CHNs yet).
    fn sender<T>(&self, req: &Request<T>) -> Result<Option<u64>, Status> {
        if !self.mutual_tls {
            return Ok(None);
        }
        let certs = req.peer_certs().ok_or_else(|| {
            Status::permission_denied(
                "the Raft service answers only CHNs: present this cluster's CHN certificate (mutual TLS)",
            )
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::permission_denied("no client certificate was presented"))?;
        let installed: Vec<(String, u64)> = self
            .lu
            .read(|t| t.daemons.values().map(|d| (d.chn.clone(), d.node_id)).collect());
        Ok(crate::access::peer::identify(&installed, leaf)?)
    }
}

fn decode<T: DeserializeOwned>(msg: &RaftBytes) -> Result<T, Status> {
    postcard::from_bytes(&msg.data).map_err(|e| {
        Status::invalid_argument(format!(
            "malformed Raft message: {e}; peers must run the same nasd version"
        ))
    })
}

fn encode<T: Serialize>(v: &T) -> Result<RaftBytes, Status> {
    postcard::to_allocvec(v)
        .map(|data| RaftBytes { data })
        .map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))
}

/// The follower's side of one AppendEntries stream: each request in turn,
/// answered before the next is read (the leader sends one at a time). A
/// malformed request ends the stream with INVALID_ARGUMENT.
fn answer_appends(
    lu: SharedLu,
    sender: Option<u64>,
    inbound: Streaming<RaftBytes>,
) -> impl Stream<Item = Result<RaftBytes, Status>> {
    futures::stream::unfold(Some(inbound), move |inbound| {
        let lu = lu.clone();
        async move {
            let mut inbound = inbound?;
            // An error here is the leader going away; the stream just ends.
            let msg = inbound.message().await.ok()??;
            let rpc = decode(&msg).and_then(|rpc| {
                admission::append_request(&rpc, sender)?;
                Ok(rpc)
            });
            match rpc {
                Ok(rpc) => Some((encode(&lu.raft.append_entries(rpc).await), Some(inbound))),
                Err(status) => Some((Err(status), None)),
            }
        }
    })
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    type AppendEntriesStream = Pin<Box<dyn Stream<Item = Result<RaftBytes, Status>> + Send>>;

    async fn append_entries(
        &self,
        req: Request<Streaming<RaftBytes>>,
    ) -> Result<Response<Self::AppendEntriesStream>, Status> {
        let sender = self.sender(&req)?;
        Ok(Response::new(Box::pin(answer_appends(
            self.lu.clone(),
            sender,
            req.into_inner(),
        ))))
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let sender = self.sender(&req)?;
        let rpc = decode(req.get_ref())?;
        admission::vote_request(&rpc, sender)?;
        encode(&self.lu.raft.vote(rpc).await).map(Response::new)
    }

    async fn install_snapshot(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let sender = self.sender(&req)?;
        let rpc = decode(req.get_ref())?;
        admission::snapshot_request(&rpc, sender)?;
        encode(&self.lu.raft.install_snapshot(rpc).await).map(Response::new)
    }

    async fn forward(&self, req: Request<Command>) -> Result<Response<CommandResult>, Status> {
        self.sender(&req)?;
        Ok(Response::new(self.lu.write_local(req.into_inner()).await?))
    }

    async fn read_index(&self, req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        self.sender(&req)?;
        let index = self.lu.read_index().await?;
        Ok(Response::new(ReadIndexReply { index }))
    }
}
