//! Write forwarding from a node that does not lead the group: per (group, leader), one task
//! sends the commands that queued while its calls were in flight to the leader in ONE peer
//! frame (`AppCall::ProposeBatch`), where the leader's proposer batches them further, and hands
//! each waiter its own answer. Up to `FORWARD_CALLS_IN_FLIGHT_MAX` calls are in flight per
//! (group, leader): with only one, a command arriving mid-call waited a whole commit round
//! before it was even sent, and measured slower than forwarding each command alone.
//!
//! Outcomes are those of forwarding each command alone: a call that was never sent (no
//! connection, a `Busy` or `Refused` peer) ends every command in it as retry or unavailable;
//! once sent, a lost answer is "unknown" for each command in it. A command that waited in the
//! queue over `QUEUED_WAIT_MS_MAX` while no call to the leader was answered for as long is not
//! sent but retried (the leader may be gone); if answers kept coming, the leader is only busy
//! and the command is sent, to be judged by the leader's own queue bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gavel_raft::transport::{CallError, PeerRequest, PeerResponse, Transport};
use gavel_rules::{Command, Reply};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::api::ProposeError;
use crate::peer_api::{decode_answer, encode_call, AppAnswer, AppCall, RemoteFailure};
use crate::proposer::{next_batch, PROPOSER_QUEUE_MAX, QUEUED_WAIT_MS_MAX};
use crate::raft_ops::Attempt;

const RETRY_AFTER_S: u32 = 1;
/// Forwarding calls in flight per (group, leader). With 4, a spike's forwarded writes queued
/// here behind calls waiting for commit and came back in up to twice the time of writes sent
/// to the leader directly (1,200 bidders on 3 nodes: p99 607-622 ms, 492-530 ms with 16).
/// Times 16 groups it is at most 256 calls to one leader, the application requests a peer
/// connection takes on at once; only a node leading every group, all of them busy, reaches
/// that, and a call past it is answered `Busy` (503), never stalled.
const FORWARD_CALLS_IN_FLIGHT_MAX: usize = 16;

struct Forwarded {
    command: Command,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Reply, Attempt>>,
}

/// This node's forwarders, one per (group, leader) it has forwarded to: at most groups x
/// nodes, each idle until used.
pub(crate) struct Forwarders {
    transport: Transport,
    stop: watch::Receiver<bool>,
    queues: Mutex<HashMap<(u32, u64), mpsc::Sender<Forwarded>>>,
}

impl Forwarders {
    pub fn new(transport: Transport, stop: watch::Receiver<bool>) -> Forwarders {
        Forwarders {
            transport,
            stop,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards `command` to `leader` within `timeout` (for the call, once sent).
    pub async fn forward(
        &self,
        leader: u64,
        group: u32,
        command: Command,
        timeout: Duration,
    ) -> Result<Reply, Attempt> {
        let queue = self.queue(leader, group, timeout);
        let (reply, answer) = oneshot::channel();
        let forwarded = Forwarded {
            command,
            queued_at: Instant::now(),
            reply,
        };
        if queue.try_send(forwarded).is_err() {
            metrics::counter!("gavel_writes_shed_total").increment(1);
            return Err(unavailable(format!(
                "too many writes waiting to be forwarded to node {leader}; not sent"
            )));
        }
        // The task answers every command it took; without an answer it failed mid-call.
        answer.await.unwrap_or_else(|_| {
            Err(Attempt::Final(ProposeError::Unknown(format!(
                "forwarding to node {leader} stopped before answering"
            ))))
        })
    }

    fn queue(&self, leader: u64, group: u32, timeout: Duration) -> mpsc::Sender<Forwarded> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(&(group, leader)).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, receiver) = mpsc::channel(PROPOSER_QUEUE_MAX);
        let link = Link {
            transport: self.transport.clone(),
            leader,
            group,
            timeout,
            answered_at: Arc::new(Mutex::new(None)),
        };
        // On the node's runtime, like the connections it writes to (`Transport::spawn`).
        self.transport.spawn(link.run(receiver, self.stop.clone()));
        queues.insert((group, leader), queue.clone());
        queue
    }
}

#[derive(Clone)]
struct Link {
    transport: Transport,
    leader: u64,
    group: u32,
    timeout: Duration,
    /// When the leader last answered a call of this link (any answer: it is alive).
    answered_at: Arc<Mutex<Option<Instant>>>,
}

impl Link {
    async fn run(self, mut queue: mpsc::Receiver<Forwarded>, mut stop: watch::Receiver<bool>) {
        let calls = Arc::new(Semaphore::new(FORWARD_CALLS_IN_FLIGHT_MAX));
        loop {
            // A free call slot first, so what queues meanwhile goes out in one frame.
            let Ok(slot) = calls.clone().acquire_owned().await else {
                break;
            };
            let Some(batch) = next_batch(&mut queue, &mut stop).await else {
                break;
            };
            let link = self.clone();
            tokio::spawn(async move {
                link.send(batch).await;
                drop(slot);
            });
        }
        queue.close();
        while let Ok(forwarded) = queue.try_recv() {
            let _ = forwarded
                .reply
                .send(Err(unavailable("the node is stopping".into())));
        }
    }

    async fn send(&self, batch: Vec<Forwarded>) {
        let now = Instant::now();
        let answered_at = *self.answered_at.lock().unwrap_or_else(|e| e.into_inner());
        let (stale, batch): (Vec<Forwarded>, Vec<Forwarded>) = batch
            .into_iter()
            .partition(|f| leader_silent_too_long(f.queued_at, now, answered_at));
        // Never sent, and the leader silent for as long: it may be gone. Retried like a
        // call that found no connection (on the new leader, within the write's attempts), not
        // shed. (Retrying when the leader was merely busy cost each such write a 500 ms wait
        // for a leader change that never came: the spike's p99 was over a second.)
        for forwarded in stale {
            let why = format!(
                "queued over {QUEUED_WAIT_MS_MAX} ms for node {}; not sent",
                self.leader
            );
            let _ = forwarded.reply.send(Err(Attempt::Retry(why)));
        }
        if batch.is_empty() {
            return;
        }
        let (commands, waiters): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|f| (f.command, f.reply)).unzip();
        match self.call(commands).await {
            Ok(answers) if answers.len() == waiters.len() => {
                for (waiter, answer) in waiters.into_iter().zip(answers) {
                    let outcome = answer.map(|reply| *reply).map_err(failure_attempt);
                    let _ = waiter.send(outcome);
                }
            }
            Ok(answers) => {
                let why = format!(
                    "node {} answered {} of {} forwarded writes",
                    self.leader,
                    answers.len(),
                    waiters.len()
                );
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

    /// One peer call carrying `commands`; the answers are in command order.
    async fn call(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Box<Reply>, RemoteFailure>>, Attempt> {
        let leader = self.leader;
        let request = encode_call(&AppCall::ProposeBatch(commands))
            .map_err(|e| Attempt::Final(ProposeError::Internal(e)))?;
        let response = self
            .transport
            .call(leader, self.group, PeerRequest::App(request), self.timeout)
            .await;
        if response.is_ok() {
            *self.answered_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        let unknown = |why: String| Attempt::Final(ProposeError::Unknown(why));
        match response {
            Ok(PeerResponse::App(bytes)) => match decode_answer(&bytes) {
                Ok(AppAnswer::ProposedBatch(answers)) => Ok(answers),
                // The leader had the writes and may have decided them: the outcome is unknown.
                Ok(other) => Err(unknown(format!(
                    "unexpected answer from node {leader}: {other:?}"
                ))),
                Err(e) => Err(unknown(format!(
                    "unreadable answer from node {leader}: {e}"
                ))),
            },
            // The peer refused before serving it (starting, stopping, no such group).
            Ok(PeerResponse::Refused(reason)) => Err(Attempt::Retry(reason)),
            // The leader's connection had no room for it: never proposed, and the leader is
            // loaded, so the client should back off rather than this node retry at once.
            Ok(PeerResponse::Busy { in_flight_max }) => {
                metrics::counter!("gavel_writes_shed_total").increment(1);
                Err(unavailable(format!(
                    "node {leader} has {in_flight_max} forwarded requests in flight; not proposed"
                )))
            }
            Ok(other) => Err(unknown(format!(
                "unexpected response from node {leader}: {}",
                other.name()
            ))),
            // Never sent: safe to try another leader.
            Err(e @ CallError::Unreachable { .. }) => Err(Attempt::Retry(e.to_string())),
            Err(e @ CallError::Encode { .. }) => {
                Err(Attempt::Final(ProposeError::Internal(e.to_string())))
            }
            // Sent, answer lost: the leader may have decided.
            Err(e) => Err(unknown(e.to_string())),
        }
    }
}

/// Whether a write queued at `queued_at` waited too long with no sign of the leader: over
/// `QUEUED_WAIT_MS_MAX`, and no call answered for as long. (A leader that stopped right
/// after answering, say a paused process, is silent from then on: its queued writes are
/// retried once that silence is long enough, not sent to it to time out as "unknown".)
fn leader_silent_too_long(queued_at: Instant, now: Instant, answered_at: Option<Instant>) -> bool {
    let wait_max = Duration::from_millis(QUEUED_WAIT_MS_MAX);
    now.saturating_duration_since(queued_at) > wait_max
        && answered_at.is_none_or(|answered| now.saturating_duration_since(answered) > wait_max)
}

fn unavailable(reason: String) -> Attempt {
    Attempt::Final(ProposeError::Unavailable {
        reason,
        retry_after_s: RETRY_AFTER_S,
    })
}

pub(crate) fn failure_attempt(failure: RemoteFailure) -> Attempt {
    match failure {
        RemoteFailure::NotLeader => Attempt::Retry("the leader moved while forwarding".into()),
        RemoteFailure::Unavailable(reason) => unavailable(reason),
        RemoteFailure::Unknown(reason) => Attempt::Final(ProposeError::Unknown(reason)),
        RemoteFailure::Refused(reason) => Attempt::Final(ProposeError::Internal(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_long_wait_through_a_long_silence_means_the_leader_may_be_gone() {
        let ms = |n: u64| Duration::from_millis(n);
        let queued = Instant::now();
        let long = queued + ms(QUEUED_WAIT_MS_MAX + 100);
        let short = queued + ms(QUEUED_WAIT_MS_MAX - 50);
        assert!(leader_silent_too_long(queued, long, None));
        assert!(leader_silent_too_long(queued, long, Some(queued - ms(10))));
        assert!(
            leader_silent_too_long(queued, long, Some(queued + ms(10))),
            "answered once after it queued, then silent for longer than the bound"
        );
        assert!(
            !leader_silent_too_long(queued, long, Some(long - ms(20))),
            "a busy leader that keeps answering is sent the write"
        );
        assert!(!leader_silent_too_long(queued, short, None));
    }
}
