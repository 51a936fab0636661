//! `gavel-jepsen`: runs Gavel clusters under faults, records histories and checks them.
//!
//! ```text
//! gavel-jepsen run --scenario partition-leader --seed 7 --time 60s
//! gavel-jepsen suite --ci --seed 1          # the short suite CI runs
//! gavel-jepsen suite --seed 3 --time 5m     # every scenario, long (a soak)
//! gavel-jepsen check runs/kill-seed7/history.jsonl
//! gavel-jepsen list | cleanup
//! ```
//!
//! Needs root (network namespaces, iptables) and libfaketime. The test network, every process
//! and every rule it made are removed at the end, on failure and on Ctrl-C.

mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gavel_jepsen::checker::{check_all, Validity};
use gavel_jepsen::history::History;

use crate::harness::net::{self, Net};
use crate::harness::scenario::{self, Scenario, SCENARIOS};
use crate::harness::{run_scenario, RunOptions, RunReport};

/// The most nodes a scenario uses; the test network always has this many hosts.
const NODES_MAX: u64 = 5;

#[derive(Parser)]
#[command(name = "gavel-jepsen", about = "Jepsen-style fault suite for Gavel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Seed for the schedule and the workload; the same seed gives the same plan.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the workload runs under faults (e.g. 60s, 5m), before the final heal.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    time: Duration,
    /// The workload keeps running this long after the final heal.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    recovery: Duration,
    /// The release `gavel` binary to test.
    #[arg(long, default_value = "target/release/gavel")]
    bin: PathBuf,
    /// Where runs write their history, summary, timeline and node logs.
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,
    /// The clock offset bound the nodes run with and punctuality is judged with.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=60_000))]
    max_clock_offset_ms: i64,
    /// Raft groups of the cluster.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    groups: u32,
    /// The nodes' `--snapshot-after-entries`. Small, so that a group snapshots and lets its
    /// log go every few seconds under the workload, and a node back from a kill, a pause or a
    /// partition is often too far behind for the log: the leader then packs a copy of the
    /// state and the node installs it, under faults (at the default 20,000 no run snapshots).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=100_000_000))]
    snapshot_after_entries: u64,
    /// Concurrent bidders.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=200))]
    bidders: u64,
    #[command(flatten)]
    namespaces: Namespaces,
}

#[derive(clap::Args, Clone)]
struct Namespaces {
    /// Prefix of the run's network namespaces. Two suites running on one machine at once need
    /// different ones: a run removes whatever namespaces with its prefix it finds.
    #[arg(long, env = "GAVEL_JEPSEN_NAMESPACE_PREFIX", default_value = net::DEFAULT_NAMESPACE_PREFIX)]
    namespace_prefix: String,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one scenario.
    Run {
        #[arg(long)]
        scenario: String,
        /// Nodes in the cluster (3 or 5); default: the scenario's own.
        #[arg(long, value_parser = clap::value_parser!(u64).range(3..=5))]
        nodes: Option<u64>,
        #[command(flatten)]
        common: Common,
    },
    /// Runs several scenarios one after the other, each with the same seed.
    Suite {
        /// The short suite for CI: partitions, skew, kill, membership and a full disk.
        #[arg(long, conflicts_with = "scenarios")]
        ci: bool,
        /// Comma-separated scenario names (default: all).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Checks a recorded history again.
    Check { history: PathBuf },
    /// Lists the scenarios.
    List,
    /// Removes namespaces and processes left by an interrupted run.
    Cleanup {
        #[command(flatten)]
        namespaces: Namespaces,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s or m"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if duration > Duration::from_secs(24 * 3600) {
        return Err("at most 24 hours".into());
    }
    Ok(duration)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            for s in SCENARIOS {
                println!("{:<20} {} nodes  {}", s.name, s.nodes, s.about);
            }
            Ok(true)
        }
        Command::Check { history } => check_file(&history),
        Command::Cleanup { namespaces } => net::set_namespace_prefix(&namespaces.namespace_prefix)
            .and_then(|()| net::cleanup_stale())
            .map(|n| {
                println!("removed {n} namespaces");
                true
            }),
        Command::Run {
            scenario,
            nodes,
            common,
        } => scenario::find(&scenario)
            .with_context(|| format!("unknown scenario {scenario:?}; see `gavel-jepsen list`"))
            .and_then(|s| run_all(vec![s], nodes.map(|n| n as usize), common)),
        Command::Suite {
            ci,
            scenarios,
            common,
        } => pick_suite(ci, &scenarios).and_then(|list| run_all(list, None, common)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gavel-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn pick_suite(ci: bool, names: &[String]) -> anyhow::Result<Vec<&'static Scenario>> {
    if ci {
        return scenario::CI_SUITE
            .iter()
            .map(|n| scenario::find(n).context("CI scenario missing"))
            .collect();
    }
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|n| scenario::find(n).with_context(|| format!("unknown scenario {n:?}")))
        .collect()
}

fn check_file(path: &PathBuf) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let history = History::from_json_lines(&text)?;
    let mut valid = true;
    for verdict in check_all(&history) {
        println!("{:<16} {:?}", verdict.checker, verdict.validity);
        for line in verdict.notes.iter().chain(verdict.problems.iter()) {
            println!("    {line}");
        }
        valid &= verdict.validity != Validity::Invalid;
    }
    Ok(valid)
}

/// Resolves with the signal's name once the run is asked to stop: Ctrl-C, a `kill` or
/// `timeout` (SIGTERM), or the terminal going away (SIGHUP). Each ends the run as Ctrl-C does,
/// through `CleanupGuard`; a SIGTERM left to its default action used to leave every node
/// running in its namespace.
async fn interrupted() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot catch SIGHUP")?;
    Ok(tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
        _ = hangup.recv() => "SIGHUP",
    })
}

/// Removes every namespace and process of the suite when dropped, also on panic.
struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Err(e) = net::cleanup_stale() {
            eprintln!("gavel-jepsen: cleanup: {e:#}");
        }
    }
}

fn run_all(
    scenarios: Vec<&'static Scenario>,
    nodes: Option<usize>,
    common: Common,
) -> anyhow::Result<bool> {
    net::set_namespace_prefix(&common.namespaces.namespace_prefix)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fault suite needs root (network namespaces and iptables)");
    }
    let bin = std::fs::canonicalize(&common.bin).with_context(|| {
        format!(
            "{} is missing: cargo build --release -p gavel",
            common.bin.display()
        )
    })?;
    let help = std::process::Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .context("cannot run gavel")?;
    let pass_offset_flag = String::from_utf8_lossy(&help.stdout).contains("--max-clock-offset-ms");
    std::fs::create_dir_all(&common.out)?;
    let out_dir = std::fs::canonicalize(&common.out)?;
    let stale = net::cleanup_stale()?;
    if stale > 0 {
        eprintln!("removed {stale} namespaces left by an earlier run");
    }
    let _guard = CleanupGuard;
    let all: Vec<u64> = (1..=NODES_MAX).collect();
    let net = Net::create(&all)?;
    // Before any thread exists: the runtime's threads inherit the clients' namespace.
    net::enter_client_namespace()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let options = RunOptions {
        bin,
        out_dir,
        seed: common.seed,
        time: common.time,
        recovery: common.recovery,
        nodes,
        groups: common.groups,
        snapshot_after_entries: common.snapshot_after_entries,
        max_clock_offset_ms: common.max_clock_offset_ms,
        pass_offset_flag,
        bidders: common.bidders as usize,
    };
    let reports = runtime.block_on(async {
        tokio::select! {
            reports = run_each(scenarios, &options, net) => Ok(reports),
            signal = interrupted() => Err(signal),
        }
    });
    drop(runtime);
    let reports = match reports {
        Ok(reports) => reports,
        Err(signal) => {
            eprintln!("interrupted ({}): cleaning up", signal?);
            return Ok(false);
        }
    };
    let mut valid = true;
    println!("\n==== results ====");
    for report in &reports {
        let verdict = if report.valid() { "valid" } else { "INVALID" };
        println!(
            "{:<20} seed {:<6} {verdict}  ({})",
            report.scenario,
            report.seed,
            report.dir.display()
        );
        if let Some(e) = &report.error {
            println!("    harness error: {e}");
        }
        valid &= report.valid();
    }
    Ok(valid)
}

async fn run_each(
    scenarios: Vec<&'static Scenario>,
    options: &RunOptions,
    mut net: Net,
) -> Vec<RunReport> {
    let mut reports = Vec::new();
    for scenario in scenarios {
        let (report, back) = run_scenario(scenario, options, net).await;
        net = back;
        println!("\n==== {} seed {} ====", report.scenario, report.seed);
        print!("{}", report.summary);
        if let Some(e) = &report.error {
            println!("harness error: {e}");
        }
        reports.push(report);
    }
    net.teardown();
    reports
}
