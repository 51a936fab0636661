//! Per-group Raft gauges for `/metrics`: commit lag (entries appended but not yet committed)
//! and apply lag (committed but not yet applied), leadership and term.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::Group;
use openraft::ServerState;
use tokio::sync::watch;

const METRICS_INTERVAL_MS: u64 = 1_000;

pub async fn run_metrics(groups: Vec<Arc<Group>>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(METRICS_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        for group in &groups {
            let metrics = group.raft.metrics().borrow().clone();
            let last_log = metrics.last_log_index.unwrap_or(0);
            let committed = group.committed_index.load(Ordering::Relaxed);
            let applied = metrics.last_applied.map_or(0, |id| id.index);
            let label = group.id.to_string();
            metrics::gauge!("gavel_raft_commit_lag_entries", "group" => label.clone())
                .set(last_log.saturating_sub(committed) as f64);
            metrics::gauge!("gavel_raft_apply_lag_entries", "group" => label.clone())
                .set(committed.saturating_sub(applied) as f64);
            metrics::gauge!("gavel_raft_term", "group" => label.clone())
                .set(metrics.current_term as f64);
            let leading = metrics.state == ServerState::Leader;
            metrics::gauge!("gavel_raft_is_leader", "group" => label).set(if leading {
                1.0
            } else {
                0.0
            });
        }
    }
}
