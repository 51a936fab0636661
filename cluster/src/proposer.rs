//! Write batching on a group's leader: the commands that arrive while a proposal is in flight
//! are gathered into one Raft entry (`Proposal { stamp_ms, commands }`), and the state
//! machine's replies are split back to their waiters.
//!
//! Why: openraft 0.9's core takes client writes one at a time and waits for each append's
//! flush, so one entry per command made every bid pay the whole per-entry path (channel hops,
//! append, fsync callback, replication message, apply call).
//!
//! What it must not change: outcomes. A batch is proposed exactly as one write was
//! (`raft_ops::propose_local`), and every waiter gets its own reply or the batch's outcome
//! (unavailable: never proposed; unknown: maybe decided). A command that waited in the queue
//! longer than `QUEUED_WAIT_MS_MAX` is answered "unavailable" and never proposed.
//!
//! Knows nothing of forwarding or HTTP: `write_path` queues commands it admitted.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::{gather_ready, wall_clock_ms, Group, Proposal};
use gavel_rules::{Command, Reply};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::api::ProposeError;
use crate::node::Node;
use crate::raft_ops::{propose_local, Attempt};

/// Most commands in one Raft entry. A bid encodes to a few hundred bytes, so a full entry stays
/// far below the peer frame limit (16 MiB) whatever the ids.
pub const COMMANDS_PER_PROPOSAL_MAX: usize = 512;
/// Commands waiting for one group's proposer. Admission (`WRITES_QUEUED_PER_GROUP_MAX` client
/// writes) and the deadline loop (256 at once) keep the queue below it; a command finding it
/// full anyway is refused, never waited for.
pub const PROPOSER_QUEUE_MAX: usize = 1_024;
/// The longest a command waits in the queue before it is answered "unavailable" instead of
/// proposed: past it, queueing alone would break the 500 ms p99 bound.
pub const QUEUED_WAIT_MS_MAX: u64 = 250;
const RETRY_AFTER_S: u32 = 1;

/// One command waiting for its group's proposer.
pub(crate) struct Queued {
    pub command: Command,
    pub queued_at: Instant,
    pub reply: oneshot::Sender<Result<Reply, Attempt>>,
}

pub(crate) fn queue() -> (mpsc::Sender<Queued>, mpsc::Receiver<Queued>) {
    mpsc::channel(PROPOSER_QUEUE_MAX)
}

/// The proposer of one group: one proposal in flight at a time, the next one gathering
/// whatever arrived meanwhile. On stop, everything still queued is answered "unavailable".
pub(crate) async fn run_proposer(
    node: Arc<Node>,
    group_id: u32,
    mut queue: mpsc::Receiver<Queued>,
    mut stop: watch::Receiver<bool>,
) {
    let group = node.groups[group_id as usize].clone();
    loop {
        let Some(batch) = next_batch(&mut queue, &mut stop).await else {
            break;
        };
        propose_batch(&node, &group, batch).await;
    }
    queue.close();
    while let Ok(queued) = queue.try_recv() {
        let _ = queued
            .reply
            .send(Err(unavailable("the node is stopping".into())));
    }
}

fn unavailable(reason: String) -> Attempt {
    Attempt::Final(ProposeError::Unavailable {
        reason,
        retry_after_s: RETRY_AFTER_S,
    })
}

async fn propose_batch(node: &Node, group: &Arc<Group>, batch: Vec<Queued>) {
    let now = Instant::now();
    let wait_max = Duration::from_millis(QUEUED_WAIT_MS_MAX);
    let (stale, batch): (Vec<Queued>, Vec<Queued>) = batch
        .into_iter()
        .partition(|q| now.saturating_duration_since(q.queued_at) > wait_max);
    for queued in stale {
        metrics::counter!("gavel_writes_shed_total").increment(1);
        let why = format!(
            "queued over {QUEUED_WAIT_MS_MAX} ms in group {}; not proposed",
            group.id
        );
        let _ = queued.reply.send(Err(unavailable(why)));
    }
    if batch.is_empty() {
        return;
    }
    // The stamp is read here, so the clock is judged here too (see `clock_guard`).
    if let Some(problem) = node.clock.problem() {
        for queued in batch {
            let why = format!("node {} does not stamp writes: {problem}", node.node_id());
            let _ = queued.reply.send(Err(unavailable(why)));
        }
        return;
    }
    let (commands, waiters): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|q| (q.command, q.reply)).unzip();
    metrics::histogram!("gavel_commands_per_proposal").record(commands.len() as f64);
    let proposal = Proposal {
        stamp_ms: wall_clock_ms(),
        commands: commands.into(),
    };
    match propose_local(group, proposal, node.propose_timeout()).await {
        Ok(replies) if replies.len() == waiters.len() => {
            for (waiter, reply) in waiters.into_iter().zip(replies) {
                let _ = waiter.send(Ok(reply));
            }
        }
        Ok(replies) => {
            // Decided, but the replies cannot be told apart: the outcome is unknown to each.
            let why = format!("{} replies for {} commands", replies.len(), waiters.len());
            for waiter in waiters {
                let _ = waiter.send(Err(Attempt::Final(ProposeError::Unknown(why.clone()))));
            }
        }
        Err(attempt) => {
            for waiter in waiters {
                let _ = waiter.send(Err(attempt.clone()));
            }
        }
    }
}

/// Waits for the next queued item, then takes whatever else is queued, up to a proposal's
/// worth: what arrived while the previous batch was in flight, and what tasks ready to run
/// queue next (`gather_ready`), go out together.
/// `None` once the queue closed or the node stops.
pub(crate) async fn next_batch<T>(
    queue: &mut mpsc::Receiver<T>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<T>> {
    let mut batch = Vec::new();
    let received = tokio::select! {
        received = queue.recv_many(&mut batch, COMMANDS_PER_PROPOSAL_MAX) => received,
        _ = stop.changed() => 0,
    };
    if received == 0 {
        return None;
    }
    gather_ready(queue, &mut batch, COMMANDS_PER_PROPOSAL_MAX).await;
    Some(batch)
}
