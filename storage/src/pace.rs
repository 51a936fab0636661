//! Background work that takes at most a share of a core, however long it runs.
//!
//! A snapshot build copies, encodes, packs and writes a group's whole state: for a hot group
//! (about 130 MB unpacked) 0.5-1 s of a core in a burst. Niceness alone did not keep that from
//! the bids: in an open loop at 10,000 bids/s on two shared cores (80% of the peak), one such
//! build raised p99 from about 30 ms to about 150 ms while it ran, and three at once to 190-770
//! ms; running the build under `SCHED_IDLE` instead was no better (the cost is not only the CPU
//! it takes but the caches and memory bandwidth of a burst). Spread over a few seconds, the
//! same build no longer shows in the bids' latency.
//!
//! A thread marked with `pace_this_thread` rests after each `SLICE` of CPU it uses (its own CPU
//! time, not wall time: being preempted does not count as work) for `REST_PER_WORK` times as
//! long. The work calls `pace` between small steps (a record copied, a buffer packed, a MiB
//! written); on any other thread `pace` does nothing.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// CPU a paced thread uses before it rests.
const SLICE: Duration = Duration::from_millis(2);
/// How long a paced thread rests per unit of CPU it used, by default: at 3, it takes at most a
/// quarter of a core on average.
pub(crate) const REST_PER_WORK: u32 = 3;

#[derive(Clone, Copy)]
struct Pace {
    /// How long this thread rests per unit of CPU it used.
    rest_per_work: u32,
    /// The thread's CPU time when it last rested.
    cpu_at_rest: Duration,
    /// No `SLICE` of CPU can have been used before this instant, so `pace` does not read the
    /// thread's CPU time (a system call) before it.
    next_look: Instant,
}

thread_local! {
    static PACE: Cell<Option<Pace>> = const { Cell::new(None) };
}

/// From now on, the calling thread's `pace` calls rest as described above, `rest_per_work`
/// times as long as it worked (it then takes at most `1 / (1 + rest_per_work)` of a core).
pub(crate) fn pace_this_thread(rest_per_work: u32) {
    PACE.with(|pace| {
        pace.set(Some(Pace {
            rest_per_work,
            cpu_at_rest: thread_cpu_time(),
            next_look: Instant::now() + SLICE,
        }))
    });
}

/// On a paced thread, rests if the thread has used a `SLICE` of CPU since it last rested.
pub(crate) fn pace() {
    PACE.with(|cell| {
        let Some(mut pace) = cell.get() else {
            return;
        };
        let now = Instant::now();
        if now < pace.next_look {
            return;
        }
        let worked = thread_cpu_time().saturating_sub(pace.cpu_at_rest);
        if worked < SLICE {
            pace.next_look = now + (SLICE - worked);
        } else {
            std::thread::sleep(worked * pace.rest_per_work);
            pace.cpu_at_rest = thread_cpu_time();
            pace.next_look = Instant::now() + SLICE;
        }
        cell.set(Some(pace));
    });
}

/// A writer that paces before each write it passes on.
pub(crate) struct PacedWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for PacedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        pace();
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes only the `timespec` it is given, which lives until it
    // returns.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0;
    if failed {
        // Linux always has this clock; without it, pacing stops rather than the work.
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the calling thread has used `cpu` more CPU, calling `pace` as it goes.
    fn work_for(cpu: Duration) {
        let until = thread_cpu_time() + cpu;
        while thread_cpu_time() < until {
            for _ in 0..1_000 {
                std::hint::black_box(0u64);
            }
            pace();
        }
    }

    #[test]
    fn a_paced_thread_rests_as_many_times_what_it_works_as_it_was_told() {
        for rest_per_work in [REST_PER_WORK, 15] {
            let cpu = Duration::from_millis(40);
            let elapsed = std::thread::spawn(move || {
                pace_this_thread(rest_per_work);
                let began = Instant::now();
                work_for(cpu);
                began.elapsed()
            })
            .join()
            .unwrap();
            // Every slice of CPU but the last one's was followed by its rest; a slow or busy
            // machine only makes the work itself take longer.
            let rested_at_least = (cpu - 2 * SLICE) * rest_per_work;
            assert!(
                elapsed >= cpu + rested_at_least,
                "{elapsed:?} for {cpu:?} of work, resting {rest_per_work} times as long"
            );
        }
    }
}
