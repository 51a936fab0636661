//! The command line: `gavel serve`, `gavel token`, `gavel cluster ...`, `gavel snapshot ...`,
//! `gavel bench ...`.
//! Owns flag parsing (clap), logging setup and exit codes; each command's work lives in the
//! part of the crate that owns it (`serve` in `crate::http::server`, the rest below).
//!
//! - `config.rs`: the flags of each command and their strict parsers; cross-flag checks.
//! - `tls.rs`: the TLS flags' checks and PEM files, and `--cacert` for the client commands.
//! - `cluster.rs`: `gavel cluster ...`, the operator's commands over `/cluster`.
//! - `snapshot.rs`: `gavel snapshot save|status|restore`, backups of a whole cluster.
//! - `bench/`: the load tools: `gavel bench viewers` (fan-out; its viewers run in worker
//!   processes of this binary) and `gavel bench bids` (bid throughput and latency, also against
//!   etcd for comparison).

pub mod bench;
pub mod cluster;
pub mod config;
pub(crate) mod runtime_lag;
pub mod snapshot;
pub mod tls;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
pub(crate) use gavel_cluster::lower_this_threads_priority;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "gavel",
    version,
    about = "Gavel: a real-time auction engine on Raft and sled"
)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a node: the HTTP API on --listen, Raft peers on --peer-listen.
    Serve(Box<config::ServeArgs>),
    /// Print a token signed with the node's secret, or with --private-key-file.
    Token(config::TokenArgs),
    /// Administer a cluster through any node: status, add, remove, transfer-leader.
    Cluster(cluster::ClusterArgs),
    /// Back a cluster up to a file, check a backup, restore a new cluster from one.
    Snapshot(snapshot::SnapshotArgs),
    /// Load tools: `gavel bench viewers` (live fan-out), `gavel bench bids` (bid load).
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses the command line, runs the command and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Commands::Serve(args) => {
            if let Err(message) = args.check() {
                Cli::command()
                    .error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
            run_server(*args)
        }
        Commands::Token(args) => token(args),
        Commands::Cluster(args) => cluster::run(args),
        Commands::Snapshot(args) => snapshot::run(args),
        Commands::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long stopping waits for a runtime's last blocking work (the consensus runtime's final
/// flush).
const RUNTIME_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name of the fan-out runtime's threads; `bench viewers` finds them by it.
pub(crate) const FANOUT_THREAD_NAME: &str = "gavel-fanout";

/// Three runtimes: HTTP, consensus (Raft, peer transport, state machine, timers) and
/// WebSocket fan-out. Tokio runs a runtime's ready tasks in turn with no priorities, so on one
/// shared runtime a node busy streaming to many viewers made its heartbeats and vote answers
/// wait behind them, past their timeouts (its groups lost their leaders), and its bids wait
/// seconds. Threads of their own let the kernel's scheduler favour the threads that sleep most
/// of the time (consensus, API requests) whenever they wake; `--fanout-nice` can lower the
/// fan-out threads' priority further.
fn run_server(args: config::ServeArgs) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.enable_all().thread_name("gavel").build()?;
    let consensus_threads = args.consensus_threads.map_or_else(
        || (std::thread::available_parallelism().map_or(1, usize::from) / 2).max(1),
        usize::from,
    );
    let consensus = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(consensus_threads)
        .enable_all()
        .thread_name("gavel-consensus")
        .build()?;
    let mut fanout = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.fanout_threads {
        fanout.worker_threads(usize::from(threads));
    }
    let fanout_nice = args.fanout_nice;
    let fanout = fanout
        .enable_all()
        .thread_name(FANOUT_THREAD_NAME)
        .on_thread_start(move || lower_this_threads_priority(fanout_nice))
        .build()?;
    runtime_lag::spawn(runtime.handle(), "http");
    runtime_lag::spawn(consensus.handle(), "consensus");
    runtime_lag::spawn(fanout.handle(), "fanout");
    let runtimes = crate::http::server::Runtimes {
        consensus: consensus.handle().clone(),
        fanout: fanout.handle().clone(),
    };
    let result = runtime.block_on(crate::http::server::serve(args, runtimes));
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "gavel serve failed");
    }
    // Viewers' sockets belong to the HTTP runtime's reactor: stop their tasks first.
    fanout.shutdown_timeout(RUNTIME_STOP_WAIT);
    drop(runtime);
    consensus.shutdown_timeout(RUNTIME_STOP_WAIT);
    result
}

/// `gavel token`: prints the token (the one line this command writes to stdout), signed with
/// `--private-key-file` when given, else with the node's HS256 secret.
fn token(args: config::TokenArgs) -> anyhow::Result<()> {
    use crate::http::auth::{load_secret, now_s, MintClaims, Minter};
    let minter = match &args.mint.private_key_file {
        Some(path) => Minter::from_private_key_file(path, args.mint.kid.clone())?,
        None => {
            let (secret, _) = load_secret(args.auth_secret_file.as_deref(), &args.data_dir, false)?;
            Minter::hs256(&secret)?
        }
    };
    let now_s = now_s();
    let token = minter.mint(&MintClaims {
        sub: &args.sub,
        roles: &args.roles,
        iat_s: now_s,
        exp_s: now_s.saturating_add(args.ttl),
        issuer: args.mint.issuer.as_deref(),
        audience: args.mint.audience.as_deref(),
    })?;
    println!("{token}");
    Ok(())
}

/// The log filter when RUST_LOG is unset: our own info, but only warnings from openraft, whose
/// info level logs every group's startup state at length.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// Logs go to stderr (stdout is for command output such as tokens), filtered by RUST_LOG.
fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only for a terminal: in a file or a journal the escape codes split what a
    // reader greps for (`group=2` is `group`, codes, `=`, codes, `2`).
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's niceness, field 19 of `/proc/thread-self/stat`.
    fn this_threads_niceness() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name (field 2) may hold spaces; it ends at the last ')'.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn fan_out_threads_run_at_the_niceness_asked_for_and_other_threads_do_not() {
        let (raised_by, fanout_niceness) = std::thread::spawn(|| {
            let before = this_threads_niceness();
            lower_this_threads_priority(7);
            (this_threads_niceness() - before, this_threads_niceness())
        })
        .join()
        .unwrap();
        assert_eq!(raised_by, 7);
        assert!(fanout_niceness >= 7);
        // Per thread, not per process: the test's own thread kept its niceness.
        assert_eq!(this_threads_niceness() + 7, fanout_niceness);
    }

    #[test]
    fn a_thread_already_nicer_keeps_its_niceness() {
        let niceness = std::thread::spawn(|| {
            lower_this_threads_priority(12);
            lower_this_threads_priority(7);
            this_threads_niceness()
        })
        .join()
        .unwrap();
        assert_eq!(niceness, 12, "never raises a thread's priority");
    }

    #[test]
    fn fan_out_niceness_is_0_to_19() {
        let serve = |nice: &str| Cli::try_parse_from(["gavel", "serve", "--fanout-nice", nice]);
        assert!(serve("0").is_ok());
        assert!(serve("19").is_ok());
        for bad in ["20", "-1", "ten", ""] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }
}
