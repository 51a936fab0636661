//! How late each runtime runs a task that is ready: a probe per runtime sleeps a tenth of a
//! second and records how much later than asked it woke (`gavel_runtime_lag_seconds`).
//!
//! Every group of a node shares the consensus runtime's threads, so a task that holds one
//! (a long synchronous call) or a machine that has no CPU to give it stops all of them at
//! once: what a client sees as a whole-cluster stall. The warning says which of the two it was:
//! how long the probe's thread waited in the kernel's run queue (ready, no CPU free) during
//! the late sleep, from `/proc/thread-self/schedstat`; the rest of the lateness is the thread
//! busy with other tasks (or, rarely, the probe woken on another thread of the runtime).

use std::time::{Duration, Instant};

/// How often each probe wakes: a stall this long or longer is always seen.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Lateness worth a warning: far past the timer's millisecond and under the shortest election
/// timeout (600 ms), so a stall is named before it costs a group its leader.
const WARN_AFTER: Duration = Duration::from_millis(100);
/// At most one warning per runtime this often; the ones held back are counted in the next.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The lateness histogram, by runtime (`http`, `consensus`, `fanout`).
pub(crate) const RUNTIME_LAG_SECONDS: &str = "gavel_runtime_lag_seconds";

/// Starts the probe of the runtime `handle` belongs to, for the life of that runtime.
pub(crate) fn spawn(handle: &tokio::runtime::Handle, runtime: &'static str) {
    handle.spawn(probe(runtime));
}

async fn probe(runtime: &'static str) {
    let mut warnings = Warnings::default();
    loop {
        let before = RunQueueWait::now();
        let late = lateness(Instant::now() + PROBE_EVERY).await;
        // Looked up at each record, not once: the probe starts before the recorder is installed.
        metrics::histogram!(RUNTIME_LAG_SECONDS, "runtime" => runtime).record(late.as_secs_f64());
        if late < WARN_AFTER {
            continue;
        }
        let Some(late_probes) = warnings.late(Instant::now()) else {
            continue;
        };
        let waited_for_cpu_ms = match (before, RunQueueWait::now()) {
            (Some(before), Some(after)) if before.thread == after.thread => {
                Some(after.waited_ns.saturating_sub(before.waited_ns) / 1_000_000)
            }
            _ => None,
        };
        tracing::warn!(
            runtime,
            late_ms = late.as_millis() as u64,
            waited_for_cpu_ms,
            late_probes,
            "a runtime ran its ready tasks late: every task on it waited (waited_for_cpu_ms: \
             the thread was ready but the machine had no CPU for it; the rest it was busy \
             with a long task)"
        );
    }
}

/// Sleeps until `due` and returns how much later than that it woke.
async fn lateness(due: Instant) -> Duration {
    tokio::time::sleep_until(due.into()).await;
    Instant::now().saturating_duration_since(due)
}

/// Which late probes are warned of: one per `WARN_EVERY`, counting those held back.
#[derive(Default)]
struct Warnings {
    warned_at: Option<Instant>,
    late_unwarned: u64,
}

impl Warnings {
    /// A probe came late at `now`: how many late probes to warn of now (this one included),
    /// or `None` to stay quiet.
    fn late(&mut self, now: Instant) -> Option<u64> {
        self.late_unwarned += 1;
        if self
            .warned_at
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.late_unwarned))
    }
}

/// The calling thread's id and how long it has waited in the run queue, in nanoseconds.
struct RunQueueWait {
    thread: libc::pid_t,
    waited_ns: u64,
}

impl RunQueueWait {
    /// `None` where the kernel does not keep schedstat (not Linux, or built without it).
    fn now() -> Option<Self> {
        let line = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let (_, waited_ns) = schedstat_ns(&line)?;
        // SAFETY: gettid has no preconditions and cannot fail.
        let thread = unsafe { libc::gettid() };
        Some(Self { thread, waited_ns })
    }
}

/// The first two fields of a thread's `schedstat` (`/proc/PID/task/TID/schedstat`):
/// nanoseconds on a CPU, and nanoseconds runnable on a run queue.
pub(crate) fn schedstat_ns(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_held_by_a_long_task_wakes_the_probe_late_by_as_much() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let late = runtime.block_on(async {
            let probe = tokio::spawn(lateness(Instant::now() + Duration::from_millis(20)));
            // Holds the runtime's only thread well past the probe's time.
            std::thread::sleep(Duration::from_millis(300));
            probe.await.unwrap()
        });
        assert!(late >= Duration::from_millis(280), "late by {late:?}");
    }

    #[test]
    fn an_idle_runtime_wakes_the_probe_about_on_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Lateness counts from the time asked for, not from when the probe began to sleep: a
        // second's sleep on an idle runtime is not half a second late (the margin is for a
        // busy test machine).
        let late = runtime.block_on(lateness(Instant::now() + Duration::from_secs(1)));
        assert!(late < Duration::from_millis(500), "late by {late:?}");
    }

    #[test]
    fn warns_once_per_interval_and_counts_what_it_held_back() {
        let start = Instant::now();
        let mut warnings = Warnings::default();
        assert_eq!(warnings.late(start), Some(1));
        assert_eq!(warnings.late(start + Duration::from_secs(1)), None);
        assert_eq!(warnings.late(start + Duration::from_secs(9)), None);
        assert_eq!(warnings.late(start + WARN_EVERY), Some(3));
        assert_eq!(
            warnings.late(start + WARN_EVERY + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn reads_this_threads_run_queue_wait() {
        let Some(times) = RunQueueWait::now() else {
            // No schedstat here (not Linux): the warning then leaves the wait out.
            return;
        };
        // SAFETY: no preconditions.
        assert_eq!(times.thread, unsafe { libc::gettid() });
    }
}
