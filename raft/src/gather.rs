//! Batching without a timer: before a batch goes out (one fsync, one Raft entry, one forwarded
//! frame, one write to a peer connection), the tasks that are ready to run on the same runtime
//! run once, and what they queue joins the batch. Under load, others are usually about to
//! queue (other groups about to append, requests already read off their sockets); when nothing
//! else is ready, it does not wait at all, so an idle node answers as fast as before.

use tokio::sync::mpsc;

/// Rounds of yielding at most, so a steady stream cannot hold a batch back for ever.
const GATHER_ROUNDS_MAX: usize = 4;

/// Adds to `batch` (up to `max` items) what ready tasks queue on `queue` once they have run.
pub async fn gather_ready<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    for _ in 0..GATHER_ROUNDS_MAX {
        tokio::task::yield_now().await;
        let before = batch.len();
        while batch.len() < max {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if batch.len() == before {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn what_ready_tasks_queue_joins_the_batch() {
        let (sender, mut queue) = mpsc::channel(64);
        sender.send(0).await.unwrap();
        for item in 1..=5 {
            let sender = sender.clone();
            tokio::spawn(async move { sender.send(item).await.unwrap() });
        }
        let mut batch = Vec::new();
        queue.recv_many(&mut batch, 64).await;
        assert_eq!(batch, vec![0], "the spawned tasks have not run yet");
        gather_ready(&mut queue, &mut batch, 64).await;
        assert_eq!(batch, vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_batch_stays_within_its_bound_and_leaves_the_rest_queued() {
        let (sender, mut queue) = mpsc::channel(64);
        for item in 0..10 {
            sender.send(item).await.unwrap();
        }
        let mut batch = vec![100];
        gather_ready(&mut queue, &mut batch, 4).await;
        assert_eq!(batch, vec![100, 0, 1, 2]);
        assert_eq!(queue.try_recv().unwrap(), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_nothing_ready_it_returns_at_once() {
        let (_sender, mut queue) = mpsc::channel::<u32>(4);
        let mut batch = vec![1];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            gather_ready(&mut queue, &mut batch, 8),
        )
        .await
        .expect("an open, empty queue does not make it wait");
        assert_eq!(batch, vec![1]);
    }
}
