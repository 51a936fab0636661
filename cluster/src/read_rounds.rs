//! Read-index rounds on a group's leader, shared by the reads that wait for them.
//!
//! Why: in openraft 0.9 every `ensure_linearizable` call sends its own heartbeat to each
//! follower and waits for a quorum of answers, so each linearizable read cost a round of peer
//! messages on every voter, and a read load multiplied the heartbeats. Here one round runs at a
//! time per group and answers every read that was waiting when it started; reads that arrive
//! during a round wait for the next one.
//!
//! What it must not change: linearizability. A read's index must come from a leadership check
//! that began after the read arrived, so that every write acknowledged before the read is at or
//! below the index. A round takes only the waiters already queued when it starts (`recv_many`
//! before the check), never one that arrives during it.
//!
//! Serves this node's own reads of groups it leads (`read_path`) and the read-index calls of
//! other nodes' followers (`inbound`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::Group;
use tokio::sync::{mpsc, oneshot, watch};

use crate::peer_api::RemoteFailure;
use crate::raft_ops::read_index_local;

/// Reads waiting for one group's next round; past it a read waits for room (the HTTP
/// in-flight bound and the peer transport's bound keep the waiting finite).
const READS_WAITING_MAX: usize = 4_096;
/// How long one round may take to confirm the quorum before its reads answer "unavailable".
const READ_ROUND_TIMEOUT: Duration = Duration::from_millis(5_000);

pub(crate) type ReadWaiter = oneshot::Sender<Result<u64, RemoteFailure>>;

pub(crate) fn queue() -> (mpsc::Sender<ReadWaiter>, mpsc::Receiver<ReadWaiter>) {
    mpsc::channel(READS_WAITING_MAX)
}

/// What a read gets when the node stops before its round answers it.
fn stopping() -> RemoteFailure {
    RemoteFailure::Unavailable("the node is stopping".into())
}

/// Waits for the next round of `rounds` and returns its read index.
pub(crate) async fn read_index(rounds: &mpsc::Sender<ReadWaiter>) -> Result<u64, RemoteFailure> {
    let (waiter, answer) = oneshot::channel();
    rounds.send(waiter).await.map_err(|_| stopping())?;
    answer.await.map_err(|_| stopping())?
}

/// The rounds of one group until the node stops; then every read still waiting is answered
/// "unavailable".
pub(crate) async fn run_read_rounds(
    group: Arc<Group>,
    waiting: mpsc::Receiver<ReadWaiter>,
    stop: watch::Receiver<bool>,
) {
    let check = move || {
        let group = group.clone();
        async move { read_index_local(&group, READ_ROUND_TIMEOUT).await }
    };
    run_rounds(check, waiting, stop).await;
}

/// One `check` at a time, each answering every read queued when it began.
async fn run_rounds<F, Fut>(
    mut check: F,
    mut waiting: mpsc::Receiver<ReadWaiter>,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, RemoteFailure>>,
{
    let mut round = Vec::new();
    loop {
        tokio::select! {
            // A stopping node starts no more checks, even with reads waiting.
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            taken = waiting.recv_many(&mut round, READS_WAITING_MAX) => {
                if taken == 0 {
                    break;
                }
            }
        }
        metrics::histogram!("gavel_reads_per_read_index").record(round.len() as f64);
        let index = check().await;
        for waiter in round.drain(..) {
            let _ = waiter.send(index.clone());
        }
    }
    waiting.close();
    while let Ok(waiter) = waiting.try_recv() {
        let _ = waiter.send(Err(stopping()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A check that counts the checks begun and answers with that count once the test lets it
    /// finish, so an answer names the check it came from.
    struct FakeChecks {
        begun: Arc<AtomicU64>,
        release: Arc<tokio::sync::Semaphore>,
    }

    impl FakeChecks {
        fn new() -> FakeChecks {
            FakeChecks {
                begun: Arc::new(AtomicU64::new(0)),
                release: Arc::new(tokio::sync::Semaphore::new(0)),
            }
        }

        fn check(
            &self,
        ) -> impl FnMut() -> futures::future::BoxFuture<'static, Result<u64, RemoteFailure>>
        {
            let begun = self.begun.clone();
            let release = self.release.clone();
            move || {
                let number = begun.fetch_add(1, Ordering::SeqCst) + 1;
                let release = release.clone();
                Box::pin(async move {
                    release.acquire().await.expect("open").forget();
                    Ok(number)
                })
            }
        }

        async fn await_begun(&self, checks: u64) {
            let begun = async {
                while self.begun.load(Ordering::SeqCst) < checks {
                    tokio::task::yield_now().await;
                }
            };
            within(&format!("check {checks} to begin"), begun).await;
        }
    }

    /// A wait that fails the test after `TEST_WAIT` rather than hanging it.
    async fn within<T>(what: &str, wait: impl Future<Output = T>) -> T {
        tokio::time::timeout(TEST_WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("waited {TEST_WAIT:?} for {what}"))
    }

    const TEST_WAIT: Duration = Duration::from_secs(5);

    /// Waits until `reads` reads are queued for the next round.
    async fn await_queued(rounds: &mpsc::Sender<ReadWaiter>, reads: usize) {
        let queued = async {
            while READS_WAITING_MAX - rounds.capacity() < reads {
                tokio::task::yield_now().await;
            }
        };
        within(&format!("{reads} reads queued"), queued).await;
    }

    fn spawn_read(
        rounds: &mpsc::Sender<ReadWaiter>,
    ) -> tokio::task::JoinHandle<Result<u64, RemoteFailure>> {
        let rounds = rounds.clone();
        tokio::spawn(async move { read_index(&rounds).await })
    }

    #[tokio::test]
    async fn a_read_gets_an_index_from_a_check_begun_after_it_arrived_and_waiting_reads_share_one()
    {
        let checks = FakeChecks::new();
        let (rounds, waiting) = queue();
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(run_rounds(checks.check(), waiting, stop_rx));

        let first = spawn_read(&rounds);
        checks.await_begun(1).await;
        // These arrive while check 1 runs: it began before them, so they must wait for check 2.
        let later: Vec<_> = (0..5).map(|_| spawn_read(&rounds)).collect();
        await_queued(&rounds, later.len()).await;
        checks.release.add_permits(1);
        assert_eq!(within("the first read", first).await.unwrap(), Ok(1));
        checks.await_begun(2).await;
        checks.release.add_permits(1);
        for read in later {
            assert_eq!(
                read.await.unwrap(),
                Ok(2),
                "a read answered by a check begun before it"
            );
        }
        // The five waiting reads shared one check.
        assert_eq!(checks.begun.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn reads_waiting_when_the_node_stops_are_answered_unavailable() {
        let checks = FakeChecks::new();
        let (rounds, waiting) = queue();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_rounds(checks.check(), waiting, stop_rx));
        let first = spawn_read(&rounds);
        checks.await_begun(1).await;
        let waiting_read = spawn_read(&rounds);
        await_queued(&rounds, 1).await;
        stop.send(true).unwrap();
        // The check in flight still answers its read; the one waiting gets "unavailable".
        checks.release.add_permits(1);
        assert_eq!(first.await.unwrap(), Ok(1));
        assert!(matches!(
            waiting_read.await.unwrap(),
            Err(RemoteFailure::Unavailable(_))
        ));
        task.await.unwrap();
        assert!(matches!(
            read_index(&rounds).await,
            Err(RemoteFailure::Unavailable(_))
        ));
    }
}
