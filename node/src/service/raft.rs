//! Server side of the Raft transport, plus command forwarding and read
//! index for followers.
//!
//! Owns decoding of peer messages. A malformed message must get
//! INVALID_ARGUMENT and never reach openraft.

use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use crate::shared_lu::SharedLu;
use nas_proto::{raft_server, Command, CommandResult, RaftBytes, ReadIndexReply, ReadIndexRequest};

/// The `Raft` service of one CHN.
pub struct RaftService {
    pub lu: SharedLu,
}

fn decode<T: DeserializeOwned>(req: Request<RaftBytes>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "malformed Raft message: {e}; peers must run the same nasd version"
        ))
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftBytes>, Status> {
    postcard::to_allocvec(v)
        .map(|data| Response::new(RaftBytes { data }))
        .map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode(req)?;
        encode(&self.lu.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode(req)?;
        encode(&self.lu.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc = decode(req)?;
        encode(&self.lu.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<Command>) -> Result<Response<CommandResult>, Status> {
        self.lu.write_local(req.into_inner()).await.map(Response::new)
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        let index = self.lu.read_index().await?;
        Ok(Response::new(ReadIndexReply { index }))
    }
}
