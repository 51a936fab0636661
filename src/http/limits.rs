//! Load limits at the edge: a bound on API requests in flight per node (excess is shed with a
//! 503 at once rather than queued) and a per-bidder token bucket on bid placement (429).
//!
//! Both hold only bounded state: the semaphore has a fixed number of permits and the bucket map
//! has a fixed capacity. They protect this node; they are not a cluster-wide quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::http::problem::ApiError;

/// The most bidders whose buckets are remembered at once.
pub const RATE_LIMITED_BIDDERS_MAX: usize = 100_000;
/// How long a client should wait after being shed for load, in seconds.
const OVERLOAD_RETRY_AFTER_S: u32 = 1;

/// Middleware state: permits for API requests in flight.
#[derive(Clone)]
pub struct InFlight(pub Arc<Semaphore>);

/// Middleware: answers 503 at once when `requests_in_flight_max` API requests are running.
pub async fn bound_in_flight(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    match in_flight.0.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            log_shed(&SHED_LOG, Instant::now());
            ApiError::Unavailable {
                detail: "this node is overloaded; retry shortly".into(),
                retry_after_s: OVERLOAD_RETRY_AFTER_S,
            }
            .into_response()
        }
    }
}

/// How often at most the in-flight bound's shedding is logged. A line per shed request made an
/// overload a flood of log lines as well (formatted and written while the node was short of
/// CPU); each line says how many were shed since the last one, and
/// `gavel_http_requests_total{status="503"}` counts them all.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When the in-flight bound's shedding was last logged, and how many requests it shed since.
#[derive(Default)]
struct ShedLog {
    last_logged: Option<Instant>,
    shed_since: u64,
}

static SHED_LOG: Mutex<ShedLog> = Mutex::new(ShedLog {
    last_logged: None,
    shed_since: 0,
});

/// Counts one shed request; logs the count when `SHED_LOG_INTERVAL` passed since the last line
/// (the first shed of a quiet spell is logged at once). Returns whether it logged.
fn log_shed(log: &Mutex<ShedLog>, now: Instant) -> bool {
    let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    log.shed_since += 1;
    if log
        .last_logged
        .is_some_and(|at| now.duration_since(at) < SHED_LOG_INTERVAL)
    {
        return false;
    }
    tracing::warn!(
        requests = log.shed_since,
        "shedding requests: too many requests in flight"
    );
    *log = ShedLog {
        last_logged: Some(now),
        shed_since: 0,
    };
    true
}

/// A token bucket per bidder: `rate_per_s` bids per second on average, bursts of `burst`.
pub struct BidRateLimiter {
    rate_per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl BidRateLimiter {
    /// `rate_per_s == 0` disables the limit.
    pub fn new(rate_per_s: u32, burst: u32) -> BidRateLimiter {
        BidRateLimiter {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `bidder` at `now`, or says how many seconds until one is free.
    pub fn check(&self, bidder: &str, now: Instant) -> Result<(), u32> {
        if self.rate_per_s <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update of a bucket: the map
        // is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(bidder) && buckets.len() >= RATE_LIMITED_BIDDERS_MAX {
            self.forget_idle(&mut buckets, now);
            if buckets.len() >= RATE_LIMITED_BIDDERS_MAX {
                return Err(1);
            }
        }
        let bucket = buckets.entry(bidder.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = ((1.0 - bucket.tokens) / self.rate_per_s).ceil();
            Err(wait_s.clamp(1.0, 3600.0) as u32)
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed_s = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed_s * self.rate_per_s).min(self.burst)
    }

    /// Drops buckets that are full again: forgetting them changes nothing.
    fn forget_idle(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, bucket| self.refilled(bucket, now) < self.burst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_limits_then_refills() {
        let limiter = BidRateLimiter::new(2, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("alice", start), Ok(()));
        }
        assert_eq!(limiter.check("alice", start), Err(1));
        assert_eq!(limiter.check("bob", start), Ok(()));
        assert_eq!(
            limiter.check("alice", start + Duration::from_millis(500)),
            Ok(())
        );
        assert!(limiter
            .check("alice", start + Duration::from_millis(500))
            .is_err());
    }

    #[test]
    fn shedding_is_logged_once_an_interval_with_the_count_since() {
        let log = Mutex::new(ShedLog::default());
        let start = Instant::now();
        assert!(log_shed(&log, start), "the first shed of a quiet spell");
        for i in 1..=99 {
            assert!(!log_shed(&log, start + Duration::from_millis(i * 10)));
        }
        assert_eq!(log.lock().unwrap().shed_since, 99);
        assert!(log_shed(&log, start + SHED_LOG_INTERVAL));
        assert_eq!(log.lock().unwrap().shed_since, 0);
    }

    #[test]
    fn zero_rate_disables() {
        let limiter = BidRateLimiter::new(0, 0);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(limiter.check("alice", now), Ok(()));
        }
        assert!(limiter.buckets.lock().unwrap().is_empty());
    }

    #[test]
    fn idle_buckets_are_forgotten_when_full() {
        let limiter = BidRateLimiter::new(1000, 1);
        let start = Instant::now();
        {
            let mut buckets = limiter.buckets.lock().unwrap();
            for i in 0..RATE_LIMITED_BIDDERS_MAX {
                buckets.insert(
                    format!("u{i}"),
                    Bucket {
                        tokens: 0.0,
                        updated: start,
                    },
                );
            }
        }
        assert_eq!(limiter.check("newcomer", start), Err(1));
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.check("newcomer", later), Ok(()));
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
