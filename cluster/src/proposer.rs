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
//! (unavailable: never proposed; unknown: maybe decided). A client write that waited in the
//! queue longer than `QUEUED_WAIT_MS_MAX` while the queue stands (the round before was late
//! too) is answered "unavailable" and never proposed; the time rule never sheds a deadline
//! entry (an auction's start or end).
//!
//! Between proposals the proposer lingers a moment (`PROPOSE_LINGER`) when writes are
//! concurrent, so that the next entry carries more of them: an entry costs every replica a round
//! of messages, wake-ups and syscalls whatever it carries, and below the peak, proposing again
//! at once spent the free CPU on entries of one or two bids. A lone client never waits, nor do
//! writes that arrive too slowly for a moment to gather more.
//!
//! Knows nothing of forwarding or HTTP: `write_path` queues commands it admitted.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::{gather_ready, wall_clock_ms, Group, Proposal};
use gavel_rules::{Command, Reply};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::api::ProposeError;
use crate::deadlines::DEADLINE_PROPOSALS_IN_FLIGHT_MAX;
use crate::membership::WRITES_QUEUED_PER_GROUP_MAX;
use crate::node::Node;
use crate::raft_ops::{propose_local, Attempt};

/// Most commands in one Raft entry. A bid encodes to a few hundred bytes, so a full entry stays
/// far below the peer frame limit (16 MiB) whatever the ids.
pub const COMMANDS_PER_PROPOSAL_MAX: usize = 512;
/// Commands waiting for one group's proposer. Admission (`WRITES_QUEUED_PER_GROUP_MAX` client
/// writes) and the deadline loop (`DEADLINE_PROPOSALS_IN_FLIGHT_MAX` at once) keep the queue
/// below it (checked below); a command finding it full anyway is refused, never waited for.
pub const PROPOSER_QUEUE_MAX: usize = 4_096;
const _: () = assert!(
    PROPOSER_QUEUE_MAX >= WRITES_QUEUED_PER_GROUP_MAX + DEADLINE_PROPOSALS_IN_FLIGHT_MAX,
    "the proposer's queue must hold every admitted write and every deadline in flight"
);
/// The longest a client write waits in the queue before it is answered "unavailable" instead of
/// proposed, once the queue stands (see `Rounds`): past it, queueing alone would break the
/// 500 ms p99 bound.
pub const QUEUED_WAIT_MS_MAX: u64 = 250;
/// How long a proposer waits before its next proposal while writes are concurrent (see
/// `lingers`). tokio's timers tick in whole milliseconds, so this is the shortest wait there is
/// (1-2 ms). On the 2-core benchmark machine (`docs/PERFORMANCE.md`, 2026-12-05 14:53) it
/// took a tenth or more off the CPU per decision with 96 clients and in the open loop at
/// 3,000/s, and one client's latency did not move; at a tenth of the peak p50 rose by 0.2-0.5
/// ms, until slow arrivals stopped it (`LINGER_RATE_MIN_PER_S`).
pub const PROPOSE_LINGER: Duration = Duration::from_millis(1);
/// Queued commands that make lingering pointless: the next entry is full enough without it.
const LINGER_QUEUED_MAX: usize = 64;
/// Writes a second a group must receive before its proposer lingers: below it, a millisecond
/// gathers on average under 0.6 more writes, so lingering only adds latency to save CPU that
/// is idle anyway. On the benchmark machine (`docs/PERFORMANCE.md`, 2026-12-05 16:40): at
/// 412 writes a second a group it took 0.2-0.4 ms off p50 (for 4-8% more CPU); from 823 on,
/// where lingering saves CPU at no latency, nothing changed.
const LINGER_RATE_MIN_PER_S: f64 = 600.0;
/// How much of the arrival rate's memory each proposal keeps (see `ArrivalRate`).
const ARRIVAL_RATE_KEEP: f64 = 0.8;
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
    let mut rounds = Rounds::default();
    let mut arrivals = ArrivalRate::default();
    let mut last_batch_len = 0;
    loop {
        if lingers(last_batch_len, queue.len(), arrivals.per_s()) {
            tokio::select! {
                _ = tokio::time::sleep(PROPOSE_LINGER) => {}
                _ = stop.changed() => break,
            }
        }
        let Some(batch) = next_batch(&mut queue, &mut stop).await else {
            break;
        };
        let now = Instant::now();
        last_batch_len = batch.len();
        arrivals.record(batch.len(), now);
        let (stale, batch) = rounds.split_stale(batch, now);
        shed(stale, group_id);
        if !batch.is_empty() {
            propose_batch(&node, &group, batch).await;
        }
    }
    queue.close();
    while let Ok(queued) = queue.try_recv() {
        let _ = queued
            .reply
            .send(Err(unavailable("the node is stopping".into())));
    }
}

/// Whether to wait `PROPOSE_LINGER` before the next proposal, given how many commands the last
/// one carried, how many are queued now and how fast they arrive. Writes are concurrent when
/// the last entry carried more than one, or when more arrived while it was in flight; a lone
/// sequential client does neither, so its next bid is proposed at once. Writes arriving too
/// slowly for a linger to gather more (`LINGER_RATE_MIN_PER_S`) go at once too, as does a queue
/// that already fills an entry well.
fn lingers(last_batch_len: usize, queued: usize, arrivals_per_s: f64) -> bool {
    let concurrent = last_batch_len > 1 || queued > 0;
    concurrent && arrivals_per_s >= LINGER_RATE_MIN_PER_S && queued < LINGER_QUEUED_MAX
}

/// The rate at which commands reach a proposer: commands taken over the time they took to
/// come, both summed with older proposals' weighing less each time (`ARRIVAL_RATE_KEEP`), so
/// that one quick pair of writes does not make a quiet group look busy.
#[derive(Default)]
struct ArrivalRate {
    commands: f64,
    seconds: f64,
    last_taken_at: Option<Instant>,
}

impl ArrivalRate {
    /// Notes that `commands` were taken from the queue at `now`.
    fn record(&mut self, commands: usize, now: Instant) {
        if let Some(last) = self.last_taken_at {
            let seconds = now.saturating_duration_since(last).as_secs_f64();
            self.commands = self.commands * ARRIVAL_RATE_KEEP + commands as f64;
            self.seconds = self.seconds * ARRIVAL_RATE_KEEP + seconds;
        }
        self.last_taken_at = Some(now);
    }

    fn per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.commands / self.seconds
        } else {
            0.0
        }
    }
}

fn unavailable(reason: String) -> Attempt {
    Attempt::Final(ProposeError::Unavailable {
        reason,
        retry_after_s: RETRY_AFTER_S,
    })
}

/// Whether the proposer's queue stands. A round is late when a command in it waited over
/// `QUEUED_WAIT_MS_MAX`. One late round is a single slow proposal (an fsync stall, a
/// leader's first entry): what queued behind it goes out in the next proposal, so shedding it
/// would refuse writes the group is about to take. Two late rounds in a row mean the group
/// does not keep up, and then what waited too long is shed.
#[derive(Default)]
struct Rounds {
    last_was_late: bool,
}

impl Rounds {
    /// Splits a batch into what to shed and what to propose, and notes whether it was late.
    fn split_stale<T: QueuedAt>(&mut self, batch: Vec<T>, now: Instant) -> (Vec<T>, Vec<T>) {
        let wait_max = Duration::from_millis(QUEUED_WAIT_MS_MAX);
        let waited_too_long = |q: &T| now.saturating_duration_since(q.queued_at()) > wait_max;
        let late = batch.iter().any(waited_too_long);
        let standing = late && self.last_was_late;
        self.last_was_late = late;
        if !standing {
            return (Vec::new(), batch);
        }
        batch
            .into_iter()
            .partition(|q| q.may_be_shed() && waited_too_long(q))
    }
}

trait QueuedAt {
    fn queued_at(&self) -> Instant;
    /// Whether the time rule may answer it "unavailable" instead of proposing it.
    fn may_be_shed(&self) -> bool;
}

impl QueuedAt for Queued {
    fn queued_at(&self) -> Instant {
        self.queued_at
    }

    /// A deadline entry (an auction's start or end) is never shed: shedding it would make the
    /// start or end late by the deadline loop's retry, and the loop bounds how many wait
    /// (`DEADLINE_PROPOSALS_IN_FLIGHT_MAX`).
    fn may_be_shed(&self) -> bool {
        !matches!(self.command, Command::Deadline { .. })
    }
}

fn shed(stale: Vec<Queued>, group_id: u32) {
    for queued in stale {
        metrics::counter!("gavel_writes_shed_total").increment(1);
        let why = format!("queued over {QUEUED_WAIT_MS_MAX} ms in group {group_id}; not proposed");
        let _ = queued.reply.send(Err(unavailable(why)));
    }
}

async fn propose_batch(node: &Node, group: &Arc<Group>, batch: Vec<Queued>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client write queued at this instant.
    impl QueuedAt for Instant {
        fn queued_at(&self) -> Instant {
            *self
        }

        fn may_be_shed(&self) -> bool {
            true
        }
    }

    /// A deadline entry (an auction's start or end) queued at this instant.
    #[derive(Debug, PartialEq)]
    struct DeadlineAt(Instant);

    impl QueuedAt for DeadlineAt {
        fn queued_at(&self) -> Instant {
            self.0
        }

        fn may_be_shed(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_standing_queue_never_sheds_an_auctions_end() {
        let start = Instant::now();
        let mut rounds = Rounds::default();
        let late = start + Duration::from_millis(QUEUED_WAIT_MS_MAX + 50);
        let _ = rounds.split_stale(vec![DeadlineAt(start)], late);
        let later = late + Duration::from_millis(QUEUED_WAIT_MS_MAX + 50);
        let (shed, proposed) = rounds.split_stale(vec![DeadlineAt(start)], later);
        assert!(
            shed.is_empty(),
            "a deadline is proposed however long it waited"
        );
        assert_eq!(proposed, vec![DeadlineAt(start)]);
        let stale_write = late;
        let (shed, _) = rounds.split_stale(vec![stale_write], later + Duration::from_millis(1));
        assert_eq!(
            shed,
            vec![stale_write],
            "the queue still stands for client writes"
        );
    }

    #[test]
    fn a_proposer_lingers_only_while_writes_are_concurrent_frequent_and_few() {
        let busy = LINGER_RATE_MIN_PER_S;
        assert!(!lingers(0, 0, busy), "nothing proposed yet, nothing queued");
        assert!(
            !lingers(1, 0, 10.0 * busy),
            "a lone sequential client's next bid goes at once, however fast it is"
        );
        assert!(
            lingers(1, 1, busy),
            "a write arrived while the last was in flight"
        );
        assert!(lingers(2, 0, busy), "the last entry carried two writes");
        assert!(
            !lingers(2, 1, busy * 0.9),
            "writes too rare for a linger to gather more"
        );
        assert!(lingers(40, LINGER_QUEUED_MAX - 1, busy));
        assert!(
            !lingers(40, LINGER_QUEUED_MAX, busy),
            "a queue that fills an entry well goes at once"
        );
        assert!(!lingers(
            COMMANDS_PER_PROPOSAL_MAX,
            PROPOSER_QUEUE_MAX,
            100.0 * busy
        ));
    }

    #[test]
    fn the_arrival_rate_follows_the_recent_proposals_and_forgets_the_old_ones() {
        let start = Instant::now();
        let mut rate = ArrivalRate::default();
        assert_eq!(rate.per_s(), 0.0, "nothing taken yet");
        rate.record(5, start);
        assert_eq!(rate.per_s(), 0.0, "one take has no interval");
        // Two writes every millisecond: 2,000 a second.
        let mut now = start;
        for _ in 0..10 {
            now += Duration::from_millis(1);
            rate.record(2, now);
        }
        assert!((rate.per_s() - 2_000.0).abs() < 1.0, "{}", rate.per_s());
        // Then one write every 10 ms: the rate falls towards 100 a second within a few takes.
        for _ in 0..20 {
            now += Duration::from_millis(10);
            rate.record(1, now);
        }
        assert!(rate.per_s() < 120.0, "{}", rate.per_s());
        // After a second of silence, one write does not make the group look busy.
        rate.record(1, now + Duration::from_secs(1));
        assert!(rate.per_s() < LINGER_RATE_MIN_PER_S, "{}", rate.per_s());
    }

    #[test]
    fn what_waited_behind_one_slow_proposal_is_proposed_and_a_standing_queue_is_shed() {
        let ms = |n: u64| Duration::from_millis(n);
        let start = Instant::now();
        let mut rounds = Rounds::default();
        let on_time = start + ms(10);
        let (shed, proposed) = rounds.split_stale(vec![start], on_time);
        assert!(shed.is_empty() && proposed.len() == 1);

        let after_a_slow_proposal = start + ms(QUEUED_WAIT_MS_MAX + 50);
        let (shed, proposed) = rounds.split_stale(vec![start, on_time], after_a_slow_proposal);
        assert!(shed.is_empty(), "one late round is a stall, not overload");
        assert_eq!(proposed.len(), 2);

        let fresh = after_a_slow_proposal + ms(QUEUED_WAIT_MS_MAX);
        let later = fresh + ms(100);
        let (shed, proposed) = rounds.split_stale(vec![after_a_slow_proposal, fresh], later);
        assert_eq!(
            shed,
            vec![after_a_slow_proposal],
            "the second late round in a row"
        );
        assert_eq!(proposed, vec![fresh]);

        let (shed, proposed) = rounds.split_stale(vec![later], later + ms(5));
        assert!(shed.is_empty() && proposed.len() == 1);
        let (shed, _) = rounds.split_stale(vec![later], later + ms(QUEUED_WAIT_MS_MAX + 1));
        assert!(shed.is_empty(), "an on-time round ends the standing queue");
    }
}
