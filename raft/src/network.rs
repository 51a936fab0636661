//! Outbound Raft RPCs.
//!
//! This build has no peer transport yet: a node runs single-member groups, for which openraft
//! never sends an RPC. Should a group ever name a remote member (a data dir copied from a
//! multi-node cluster), every RPC fails as `Unreachable` with an explicit reason instead of
//! pretending to deliver; the groups then cannot reach quorum and the node reports not ready.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{GavelNode, NodeId, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("no peer transport in this build: cannot reach node {target} at {addr}")]
struct NoTransport {
    target: NodeId,
    addr: String,
}

/// Creates a client per remote node; see the module comment.
#[derive(Clone, Default)]
pub struct Network;

pub struct PeerClient {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, GavelNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport {
            target: self.target,
            addr: self.addr.clone(),
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &GavelNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.peer_addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, GavelNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, GavelNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, GavelNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
