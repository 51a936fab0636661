//! The CPU that local server processes spend in a run's measured window, from `/proc/PID/stat`
//! (Linux): what a decision costs the servers, comparable across systems on one machine (the
//! load generator's own CPU is left out).

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;

use crate::cli::runtime_lag::schedstat_ns;

/// Server processes one run may watch, at most.
pub const PIDS_MAX: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct ServerCpu {
    pub pids: Vec<u32>,
    /// CPU seconds per second of the window, all the processes together.
    pub cores: f64,
    /// `cores` over the decisions per second of the run, in microseconds.
    pub us_per_decision: f64,
}

/// User and system CPU of all of `pids` so far, in seconds. Fails naming a process that is
/// gone or whose stat cannot be read.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    // SAFETY: sysconf reads a constant of the running system and has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_s <= 0 {
        bail!("cannot read the clock tick rate (sysconf _SC_CLK_TCK)");
    }
    let mut ticks = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path)
            .with_context(|| format!("--server-pids: no process {pid} to watch ({path})"))?;
        ticks += stat_cpu_ticks(&stat)
            .with_context(|| format!("--server-pids: {path} is not a process stat line"))?;
    }
    Ok(ticks as f64 / ticks_per_s as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is
/// in parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// How the threads of one process that carry one name spent their time so far: on a CPU, and
/// runnable but waiting for one (the kernel's per-thread `schedstat`, Linux). A thread that is
/// always runnable and still gets little CPU is starved: the machine, not its own work, sets
/// its pace.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThreadTimes {
    pub on_cpu_s: f64,
    pub waiting_s: f64,
}

/// [`ThreadTimes`] summed over the threads of `pid` named `thread_name`; threads that already
/// ended are not counted. Fails when the process is gone.
pub fn thread_times(pid: u32, thread_name: &str) -> anyhow::Result<ThreadTimes> {
    let tasks = format!("/proc/{pid}/task");
    let mut times = ThreadTimes::default();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("no process {pid} ({tasks})"))? {
        let dir = task?.path();
        // A thread may end between the listing and the reads: it no longer counts.
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if name.trim_end() != thread_name {
            continue;
        }
        let Ok(schedstat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let (on_cpu_ns, waiting_ns) = schedstat_ns(&schedstat)
            .with_context(|| format!("{} is not a schedstat line", dir.display()))?;
        times.on_cpu_s += on_cpu_ns as f64 / 1e9;
        times.waiting_s += waiting_ns as f64 / 1e9;
    }
    Ok(times)
}

/// CPU seconds the processes spent from `from` to `to`, and how long that was.
pub async fn measure_window(
    pids: Vec<u32>,
    from: Instant,
    to: Instant,
) -> anyhow::Result<(f64, Duration)> {
    tokio::time::sleep_until(from).await;
    let started = (cpu_seconds(&pids)?, Instant::now());
    tokio::time::sleep_until(to).await;
    let ended = (cpu_seconds(&pids)?, Instant::now());
    Ok((ended.0 - started.0, ended.1 - started.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_count_from_the_end_of_the_name() {
        let stat = "4242 (gavel (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("4242 (gavel) S 1"), None);
        assert_eq!(stat_cpu_ticks("no name here"), None);
    }

    #[test]
    fn schedstat_gives_time_on_a_cpu_then_time_waiting_for_one() {
        assert_eq!(schedstat_ns("1234567 89 12\n"), Some((1_234_567, 89)));
        assert_eq!(schedstat_ns("1234567"), None);
        assert_eq!(schedstat_ns("x 1 2"), None);
    }

    #[test]
    fn threads_are_found_by_name_and_their_time_counted() {
        // A thread of this process with a name of its own spins until the kernel counts it.
        let name = "cpu-test-spin";
        let spinner = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(|| {
                let until = std::time::Instant::now() + Duration::from_millis(50);
                let mut spins = 0u64;
                while std::time::Instant::now() < until {
                    spins = std::hint::black_box(spins + 1);
                }
                std::thread::sleep(Duration::from_secs(2));
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let me = std::process::id();
        let spun = thread_times(me, name).unwrap();
        assert!(spun.on_cpu_s >= 0.01, "{spun:?}");
        assert_eq!(
            thread_times(me, "no-such-thread").unwrap(),
            ThreadTimes::default()
        );
        assert!(thread_times(u32::MAX, name).is_err());
        spinner.join().unwrap();
    }

    #[test]
    fn this_process_uses_cpu_and_a_missing_one_is_named() {
        let me = std::process::id();
        let before = cpu_seconds(&[me]).unwrap();
        // Spin until the kernel has counted some of it (ticks are 10 ms), for 10 s at most.
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        let mut spins = 0u64;
        while cpu_seconds(&[me]).unwrap() <= before {
            assert!(std::time::Instant::now() < give_up, "no CPU counted");
            for _ in 0..100_000 {
                spins = std::hint::black_box(spins + 1);
            }
        }
        let error = cpu_seconds(&[me, u32::MAX]).unwrap_err().to_string();
        assert!(error.contains(&u32::MAX.to_string()), "{error}");
    }
}
