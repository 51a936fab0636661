//! Outbound Raft RPCs of one group, over the node's shared peer transport.
//!
//! Errors are mapped so openraft reacts well: a peer we cannot connect to is `Unreachable`
//! (openraft backs off), a lost or late answer is a network error (it retries), and an error the
//! remote Raft returned travels back as a `RemoteError`. A snapshot is read (and so perhaps
//! packed) only for a target that answers.

use std::future::Future;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Vote};

use crate::transport::{CallError, PeerRequest, PeerResponse, Transport};
use crate::types::{GavelNode, NodeId, Snapshot, TypeConfig};

/// Creates a client per remote node for one group.
#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
    pub group: u32,
}

pub struct PeerClient {
    transport: Transport,
    group: u32,
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &GavelNode) -> PeerClient {
        self.transport.set_peer_addr(target, &node.peer_addr);
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
        }
    }
}

impl PeerClient {
    async fn send<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, GavelNode, E>> {
        let timeout = option.hard_ttl();
        match self
            .transport
            .call(self.target, self.group, request, timeout)
            .await
        {
            Ok(PeerResponse::Refused(reason)) => {
                Err(RPCError::Network(NetworkError::new(&Unexpected(reason))))
            }
            Ok(PeerResponse::Busy { in_flight_max }) => {
                let why = format!("node {} is busy ({in_flight_max} in flight)", self.target);
                Err(RPCError::Network(NetworkError::new(&Unexpected(why))))
            }
            Ok(response) => Ok(response),
            Err(e @ CallError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        response: &PeerResponse,
    ) -> RPCError<NodeId, GavelNode, E> {
        let what = format!(
            "node {} answered with an unexpected {response:?}",
            self.target
        );
        RPCError::Network(NetworkError::new(&Unexpected(what)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, GavelNode, RaftError<NodeId>>> {
        match self.send(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(Ok(response)) => Ok(response),
            PeerResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, GavelNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .send(PeerRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            PeerResponse::InstallSnapshot(Ok(response)) => Ok(response),
            PeerResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// openraft's chunked sending, once the target answers at all. Reading the snapshot packs a
    /// copy of the group's state when the stored one is outdated (seconds of a core for a big
    /// group), and openraft asks again after every failed send: for a follower that is down, a
    /// copy was packed again at every snapshot point until it came back (four of 40-150 MB in
    /// 30 s at one point per 2,000 entries).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        // A clock probe is the transport's cheapest round trip.
        match self
            .transport
            .probe_clock(self.target, option.hard_ttl())
            .await
        {
            Ok(_) => {}
            Err(e @ CallError::Unreachable { .. }) => {
                return Err(StreamingError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
        }
        Chunked::send_snapshot(self, vote, snapshot, cancel, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, GavelNode, RaftError<NodeId>>> {
        match self.send(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(Ok(response)) => Ok(response),
            PeerResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}
