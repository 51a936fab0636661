//! The load loops of `gavel bench bids` and the recorder they share.
//!
//! Closed loop: each client sends its next request when its last one was answered; latency is
//! from send to answer. Open loop: requests are due at a fixed schedule (`start + i / rate`),
//! taken in order by a bounded set of clients; a request's latency is from the time it was due,
//! not from when a free client got to send it, so a system that falls behind is charged for
//! the queue it caused (coordinated omission corrected). A client wakes up to one timer tick
//! before its request is due and sends then: tokio's timer fires at whole milliseconds, after
//! the deadline, so waking at the due time sent requests 1.0-1.4 ms late at p50 (500 to
//! 12,000/s on 3 nodes), which the latency from the due time charged to the server. A request
//! sent early is timed from its send time; how late requests were sent is reported apart.
//!
//! Only requests due (open) or sent (closed) after the warm-up are recorded; the run stops
//! sending at its end, and answers still in flight are awaited for at most the request timeout.
//! The loops know `Plan::request` and the clock; what a request is belongs to `bids_target.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::bids_target::{Outcome, Plan};

/// The largest latency the histograms hold, in microseconds (longer ones are clamped to it).
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Points of the latency-over-time series, at most (the interval grows with the run).
pub const SERIES_POINTS_MAX: u32 = 400;
/// The shortest interval of the latency-over-time series.
const SERIES_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Distinct rejection reasons and error kinds kept by name; the rest are counted as "other".
const KINDS_MAX: usize = 16;
/// The open loop's clients wake this much before a request is due (see the module docs).
const TIMER_TICK: Duration = Duration::from_millis(1);
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// When the run starts, measures, and stops.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
    /// After this, nothing more is sent (open loop behind schedule) and nothing awaited.
    pub give_up: Instant,
}

impl Schedule {
    pub fn new(warmup: Duration, duration: Duration, timeout: Duration) -> Schedule {
        let start = Instant::now();
        let end = start + warmup + duration;
        Schedule {
            start,
            measure_from: start + warmup,
            end,
            give_up: end + timeout,
        }
    }
}

/// What the measured window saw.
pub struct Tally {
    /// Latencies of decisions (accepted or rejected), not of shed or failed requests.
    pub latency_us: Histogram<u64>,
    /// Per series interval: the latencies of decisions due or sent in it.
    pub series: Vec<Histogram<u64>>,
    /// Per series interval: decisions answered in it (from the window's start to the give-up
    /// time, so the drain after the end shows too).
    pub answered: Vec<u64>,
    pub series_interval: Duration,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub shed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Open loop: requests due in the window that were never sent (the run gave up on them).
    pub unsent: u64,
    /// Open loop: how late each request due in the window was sent (the tool's timer and
    /// scheduling, or no free connection while the server is behind). Part of the latency.
    pub send_lag_us: Histogram<u64>,
    /// From the start of the window to the last recorded answer.
    pub elapsed: Duration,
}

impl Tally {
    /// `drain` is how long after the end answers may still come (the request timeout).
    fn new(duration: Duration, drain: Duration) -> anyhow::Result<Tally> {
        let interval = (duration / SERIES_POINTS_MAX).max(SERIES_INTERVAL_MIN);
        let points = duration.as_nanos().div_ceil(interval.as_nanos()).max(1);
        let answered_points = (duration + drain).as_nanos().div_ceil(interval.as_nanos()) + 1;
        let series = (0..points)
            .map(|_| Histogram::new_with_bounds(1, LATENCY_US_MAX, 2))
            .collect::<Result<_, _>>()?;
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?,
            series,
            answered: vec![0; usize::try_from(answered_points)?],
            series_interval: interval,
            accepted: 0,
            rejected: BTreeMap::new(),
            shed: 0,
            errors: BTreeMap::new(),
            unsent: 0,
            send_lag_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 2)?,
            elapsed: Duration::ZERO,
        })
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn decisions(&self) -> u64 {
        self.accepted + self.rejected_total()
    }

    pub fn requests(&self) -> u64 {
        self.decisions() + self.shed + self.errors_total()
    }
}

fn count_kind(map: &mut BTreeMap<String, u64>, kind: String) {
    let key = if map.contains_key(&kind) || map.len() < KINDS_MAX {
        kind
    } else {
        "other".to_owned()
    };
    *map.entry(key).or_default() += 1;
}

/// Shared by every client: the tally (behind a lock held for a few counter updates per
/// request) and lock-free counters for the progress bar.
pub struct Recorder {
    schedule: Schedule,
    tally: Mutex<Tally>,
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Recorder {
    pub fn new(schedule: Schedule) -> anyhow::Result<Recorder> {
        let duration = schedule.end.duration_since(schedule.measure_from);
        let drain = schedule.give_up.duration_since(schedule.end);
        Ok(Recorder {
            schedule,
            tally: Mutex::new(Tally::new(duration, drain)?),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// One answer to a request sent (closed loop) or due (open loop) at `from` and sent at
    /// `sent`, timed from the earlier of the two: late, from its due time; early, from its send.
    fn record(&self, from: Instant, sent: Instant, outcome: Outcome) {
        let now = Instant::now();
        self.answered.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Shed | Outcome::Error(_)) {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if from < self.schedule.measure_from || from >= self.schedule.end {
            return;
        }
        let latency_us =
            u64::try_from(now.duration_since(from.min(sent)).as_micros()).unwrap_or(u64::MAX);
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally.elapsed = tally
            .elapsed
            .max(now.duration_since(self.schedule.measure_from));
        // Latency is of decisions: a shed or failed request is counted, not timed.
        match outcome {
            Outcome::Accepted => tally.accepted += 1,
            Outcome::Rejected(reason) => count_kind(&mut tally.rejected, reason),
            Outcome::Shed => {
                tally.shed += 1;
                return;
            }
            Outcome::Error(kind) => {
                count_kind(&mut tally.errors, kind);
                return;
            }
        }
        tally.latency_us.saturating_record(latency_us.max(1));
        let offset = from.duration_since(self.schedule.measure_from);
        let interval_ns = tally.series_interval.as_nanos();
        let index = (offset.as_nanos() / interval_ns) as usize;
        let last = tally.series.len() - 1;
        tally.series[index.min(last)].saturating_record(latency_us.max(1));
        let index =
            (now.duration_since(self.schedule.measure_from).as_nanos() / interval_ns) as usize;
        let last = tally.answered.len() - 1;
        tally.answered[index.min(last)] += 1;
    }

    /// Open loop: a request due at `due` was sent at `sent` (early counts as on time).
    fn record_send_lag(&self, due: Instant, sent: Instant) {
        if due < self.schedule.measure_from || due >= self.schedule.end {
            return;
        }
        let lag_us =
            u64::try_from(sent.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally.send_lag_us.saturating_record(lag_us.max(1));
    }

    pub fn into_tally(self) -> Tally {
        self.tally.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the clients send.
#[derive(Clone, Copy)]
pub enum Loop {
    /// Each client sends when its last request was answered; client `c` bids on auction `c`.
    Closed,
    /// Requests due every `1 / rate_per_s` s; request `i` bids on auction `i`.
    Open { rate_per_s: u32 },
}

/// Runs `clients` clients (one HTTP connection each) to the end of the schedule.
pub async fn run(
    plan: Arc<Plan>,
    recorder: Arc<Recorder>,
    clients: Vec<reqwest::Client>,
    mode: Loop,
    progress: indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let schedule = recorder.schedule;
    let next_due = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, http) in clients.into_iter().enumerate() {
        let (plan, recorder, next_due) = (plan.clone(), recorder.clone(), next_due.clone());
        tasks.spawn(async move {
            match mode {
                Loop::Closed => closed_client(&plan, &recorder, &http, index).await,
                Loop::Open { rate_per_s } => {
                    open_client(&plan, &recorder, &http, index, rate_per_s, &next_due).await
                }
            }
        });
    }
    let watch = tokio::spawn(show_progress(recorder.clone(), progress.clone()));
    // Every client stops sending by `give_up`, and the request timeout ends what is in flight;
    // the margin covers a client that is between the two.
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let margin = Duration::from_secs(5);
    if tokio::time::timeout_at(schedule.give_up + margin, all_done)
        .await
        .is_err()
    {
        tasks.abort_all();
        // Aborted tasks drop their handles only once joined.
        while tasks.join_next().await.is_some() {}
    }
    watch.abort();
    let _ = watch.await;
    progress.finish_and_clear();
    if let Loop::Open { rate_per_s } = mode {
        let sent = next_due.load(Ordering::Relaxed);
        let unsent = due_in_window(schedule, rate_per_s, sent);
        recorder
            .tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unsent = unsent;
    }
    Ok(())
}

async fn closed_client(plan: &Plan, recorder: &Recorder, http: &reqwest::Client, index: usize) {
    let end = recorder.schedule.end;
    loop {
        let sent = Instant::now();
        if sent >= end {
            return;
        }
        let outcome = plan.request(http, index, index).await;
        recorder.record(sent, sent, outcome);
    }
}

/// The time request `n` is due at `rate_per_s`.
fn due(schedule: Schedule, rate_per_s: u32, n: u64) -> Instant {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate_per_s.max(1));
    schedule.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Requests due inside the measured window that were not taken by a client: `taken` is how
/// many request numbers were handed out (0..taken), some possibly past the end.
fn due_in_window(schedule: Schedule, rate_per_s: u32, taken: u64) -> u64 {
    let rate = u128::from(rate_per_s.max(1));
    // First n due at or after t: ceil(t * rate).
    let first_at = |t: Duration| u64::try_from((t.as_nanos() * rate).div_ceil(1_000_000_000));
    let from = first_at(schedule.measure_from - schedule.start).unwrap_or(u64::MAX);
    let to = first_at(schedule.end - schedule.start).unwrap_or(u64::MAX);
    to.saturating_sub(taken.max(from))
}

async fn open_client(
    plan: &Plan,
    recorder: &Recorder,
    http: &reqwest::Client,
    index: usize,
    rate_per_s: u32,
    next_due: &AtomicU64,
) {
    let schedule = recorder.schedule;
    loop {
        // Checked before a number is taken, so a number taken is a request sent.
        if Instant::now() >= schedule.give_up {
            return;
        }
        let n = next_due.fetch_add(1, Ordering::Relaxed);
        let due_at = due(schedule, rate_per_s, n);
        if due_at >= schedule.end {
            return;
        }
        tokio::time::sleep_until(due_at.checked_sub(TIMER_TICK).unwrap_or(due_at)).await;
        let sent = Instant::now();
        recorder.record_send_lag(due_at, sent);
        let auction = usize::try_from(n).unwrap_or(usize::MAX);
        let outcome = plan.request(http, index, auction).await;
        recorder.record(due_at, sent, outcome);
    }
}

async fn show_progress(recorder: Arc<Recorder>, bar: indicatif::ProgressBar) {
    let schedule = recorder.schedule;
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let answered = recorder.answered.load(Ordering::Relaxed);
        let failed = recorder.failed.load(Ordering::Relaxed);
        let per_s = (answered - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, answered);
        let phase = if now < schedule.measure_from {
            "warm-up"
        } else if now < schedule.end {
            "measuring"
        } else {
            "draining"
        };
        let elapsed_ms = now.duration_since(schedule.start).as_millis();
        bar.set_position(u64::try_from(elapsed_ms).unwrap_or(u64::MAX));
        bar.set_message(format!(
            "{phase}: {answered} answered, {per_s:.0}/s, {failed} shed or failed"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_due_in_the_window_that_were_not_taken_are_unsent() {
        let start = Instant::now();
        let schedule = Schedule {
            start,
            measure_from: start + Duration::from_secs(2),
            end: start + Duration::from_secs(12),
            give_up: start + Duration::from_secs(22),
        };
        // 100/s: numbers 200..1200 are due in the window.
        assert_eq!(due_in_window(schedule, 100, 1200), 0);
        assert_eq!(due_in_window(schedule, 100, 5000), 0);
        assert_eq!(due_in_window(schedule, 100, 1100), 100);
        assert_eq!(due_in_window(schedule, 100, 10), 1000);
        assert_eq!(due(schedule, 100, 250), start + Duration::from_millis(2500));
    }

    /// A request sent late is timed from its due time (the queue it waited in counts); one
    /// sent early, from its send (the server had it from then). Only lateness is a send lag.
    #[test]
    fn latency_runs_from_the_earlier_of_due_and_send_and_lag_counts_only_lateness() {
        let ms = Duration::from_millis;
        let timed = |sent_after_due: i64| {
            let schedule = Schedule::new(Duration::ZERO, Duration::from_secs(60), ms(1));
            let due = schedule.measure_from + ms(250);
            let sent = if sent_after_due >= 0 {
                due + ms(sent_after_due.unsigned_abs())
            } else {
                due - ms(sent_after_due.unsigned_abs())
            };
            std::thread::sleep(ms(300));
            let recorder = Recorder::new(schedule).unwrap();
            recorder.record_send_lag(due, sent);
            recorder.record(due, sent, Outcome::Accepted);
            let tally = recorder.into_tally();
            (tally.latency_us.max(), tally.send_lag_us.max())
        };
        // Sent 40 ms late, answered at least 50 ms after the due time.
        let (latency_us, lag_us) = timed(40);
        assert!(latency_us >= 50_000, "{latency_us}");
        assert!((40_000..41_000).contains(&lag_us), "{lag_us}");
        // Sent 200 ms early, answered at least 250 ms after the send.
        let (latency_us, lag_us) = timed(-200);
        assert!(latency_us >= 250_000, "{latency_us}");
        assert_eq!(lag_us, 1, "early is on time");
    }

    #[test]
    fn kinds_beyond_the_bound_are_other() {
        let mut map = BTreeMap::new();
        for n in 0..KINDS_MAX + 5 {
            count_kind(&mut map, n.to_string());
        }
        count_kind(&mut map, "0".to_owned());
        assert_eq!(map.len(), KINDS_MAX + 1);
        assert_eq!(map["other"], 5);
        assert_eq!(map["0"], 2);
    }
}
