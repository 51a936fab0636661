//! `gavel bench bids`: a load-generating client of Gavel's bid path (or, with `--target etcd`,
//! of etcd's puts, in the same shape), for before/after measurements of the write path.
//!
//! It owns the flags, their checks and the order of a run: start a node if given no endpoint,
//! prepare the target (`bids_target.rs`), drive it (`bids_load.rs`), report (`bids_report.rs`,
//! `plot.rs`). Every client has its own HTTP connection; clients are spread round-robin over
//! the endpoints. Everything is bounded: clients, rate, auctions, run time, request time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use super::bids_load::{self, Loop, Recorder, Schedule};
use super::bids_report::{Shape, Summary};
use super::bids_route::Via;
use super::bids_target::{Plan, TargetKind, Tokens};
use super::own_node::OwnNode;
use super::server_cpu::{self, ServerCpu};
use crate::http::auth::{load_secret, Secret};

/// Clients (connections), at most.
const CONNECTIONS_MAX: u32 = 10_000;
/// Clients of an open-loop run when `--connections` is not given: the bound on requests in
/// flight, far above what a healthy run needs (rate x latency), so the bound is not what is measured.
const OPEN_LOOP_CONNECTIONS_DEFAULT: u32 = 1024;
const CLOSED_LOOP_CONNECTIONS_DEFAULT: u32 = 32;
/// Open-loop requests per second, at most.
const RATE_PER_S_MAX: u32 = 1_000_000;
const AUCTIONS_MAX: u32 = 10_000;
const ENDPOINTS_MAX: usize = 64;
const DURATION_MAX: Duration = Duration::from_secs(3600);
const WARMUP_MAX: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// Files the process needs beyond one socket per client (runtime, stdio, the node it starts).
const FILES_SLACK: u64 = 64;

#[derive(Args, Debug, Clone)]
pub struct BidsArgs {
    /// What to drive: Gavel bids, or etcd puts through its v3 JSON gateway (`/v3/kv/put`).
    #[arg(long, value_enum, default_value_t = TargetKind::Gavel)]
    pub target: TargetKind,
    /// Base URLs, comma-separated (http://127.0.0.1:8081,https://10.0.0.2:8080). Clients are
    /// spread round-robin over them. Default (Gavel only): start a single node for the run.
    #[arg(long, value_delimiter = ',', value_parser = parse_endpoint)]
    pub endpoints: Vec<String>,
    /// Which member each request goes to: `any` spreads clients round-robin over --endpoints;
    /// `leader` sends each auction's requests to the endpoint that leads it (its Raft group's
    /// leader; etcd's leader), `follower` to one that does not, so that whether requests are
    /// forwarded is chosen, not left to where elections landed. Found once before the run.
    #[arg(long, value_enum, default_value_t = Via::Any)]
    pub via: Via,
    /// Clients, each with its own HTTP connection. Closed loop: each sends its next request when
    /// the last one is answered. Open loop: the bound on requests in flight. [default: 32, or
    /// 1024 with --rate]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub connections: Option<u32>,
    /// Open loop: send this many requests per second on a fixed schedule; latency counts from
    /// when each request was due. Without it: closed loop.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(RATE_PER_S_MAX)))]
    pub rate: Option<u32>,
    /// Auctions to create (etcd: keys), balanced over the Raft groups. Client c bids on auction
    /// c mod M (open loop: request i on auction i mod M).
    #[arg(long, default_value_t = 64, conflicts_with = "hot",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(AUCTIONS_MAX)))]
    pub auctions: u32,
    /// One hot auction: every client races on it, bidding the last price seen plus the increment.
    #[arg(long)]
    pub hot: bool,
    /// How long to measure (e.g. 20s, 500ms, 2m).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How long one request may take before it counts as an error (`timeout`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a latency-over-time PNG to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Raft groups of the node this tool starts; also how auctions are balanced on a node whose
    /// `/cluster` the tool cannot read (with --token).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub groups: u32,
    /// With --endpoints: the data dir whose auth secret signs the tokens (or GAVEL_AUTH_SECRET).
    #[arg(long, default_value = "./gavel-data")]
    pub data_dir: PathBuf,
    /// With --endpoints: a file holding the auth secret.
    #[arg(long)]
    pub auth_secret_file: Option<PathBuf>,
    /// Bid with this token instead of signing one per client (needs --creator-token; one bidder
    /// is subject to the per-bidder rate limit).
    #[arg(
        long,
        env = "GAVEL_BENCH_TOKEN",
        hide_env_values = true,
        requires = "creator_token"
    )]
    pub token: Option<String>,
    /// With --token: a token of another user with the creator role, to create the auctions.
    #[arg(long, env = "GAVEL_BENCH_CREATOR_TOKEN", hide_env_values = true)]
    pub creator_token: Option<String>,
    /// A PEM file of CA certificates to trust for https:// endpoints (a private CA).
    #[arg(long, env = "GAVEL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Process ids of the servers on this machine, comma-separated: report the CPU they spend
    /// in the measured window, per decision (Linux, `/proc`). Default: the node this tool
    /// starts, if it starts one.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
}

impl BidsArgs {
    fn connections(&self) -> u32 {
        self.connections.unwrap_or(if self.rate.is_some() {
            OPEN_LOOP_CONNECTIONS_DEFAULT
        } else {
            CLOSED_LOOP_CONNECTIONS_DEFAULT
        })
    }

    fn auctions(&self) -> u32 {
        if self.hot {
            1
        } else {
            self.auctions
        }
    }

    /// Checks across flags, with messages that say what to do.
    fn check(&self) -> Result<(), String> {
        if self.target == TargetKind::Etcd && self.endpoints.is_empty() {
            return Err(
                "--target etcd needs --endpoints (this tool starts only Gavel nodes)".into(),
            );
        }
        if self.target == TargetKind::Etcd && self.token.is_some() {
            return Err("--token is for Gavel; etcd is driven without auth".into());
        }
        if self.via == Via::Follower && self.endpoints.len() < 2 {
            return Err(
                "--via follower needs at least two --endpoints (one of them not the leader)".into(),
            );
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return Err(format!("at most {ENDPOINTS_MAX} --endpoints"));
        }
        if self.server_pids.len() > server_cpu::PIDS_MAX {
            return Err(format!("at most {} --server-pids", server_cpu::PIDS_MAX));
        }
        if let Err(e) = server_cpu::cpu_seconds(&self.server_pids) {
            return Err(format!("{e:#}"));
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return Err(format!(
                "--duration must be more than 0 and at most {DURATION_MAX:?}"
            ));
        }
        if self.warmup > WARMUP_MAX {
            return Err(format!("--warmup must be at most {WARMUP_MAX:?}"));
        }
        if self.timeout.is_zero() || self.timeout > REQUEST_TIMEOUT_MAX {
            return Err(format!(
                "--timeout must be more than 0 and at most {REQUEST_TIMEOUT_MAX:?}"
            ));
        }
        if let Some(path) = &self.plot {
            if path.extension().and_then(|e| e.to_str()) != Some("png") {
                return Err(format!(
                    "--plot {}: the file name must end in .png",
                    path.display()
                ));
            }
        }
        let files_needed = u64::from(self.connections()) + FILES_SLACK;
        match open_files_max() {
            Some(limit) if limit < files_needed => Err(format!(
                "{} connections need about {files_needed} open files, but this process may open \
                 {limit}: raise it (ulimit -n {files_needed}) or use fewer connections",
                self.connections()
            )),
            _ => Ok(()),
        }
    }
}

/// This process's soft limit on open files, from /proc (no libc needed).
fn open_files_max() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `http://host:port` (no trailing slash, no path): what a client puts its paths after.
fn parse_endpoint(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| format!("{text:?}: an endpoint is http(s)://HOST:PORT"))?;
    if rest.is_empty() || rest.contains('/') || rest.contains('?') {
        return Err(format!(
            "{text:?}: an endpoint is http(s)://HOST:PORT, without a path"
        ));
    }
    Ok(trimmed.to_owned())
}

/// `20s`, `500ms`, `2m`: a whole number and a unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let expected = || {
        format!("{text:?}: expected a whole number and a unit (ms, s, m), such as 20s, 1500ms, 2m")
    };
    let n: u64 = number.parse().map_err(|_| expected())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(expected()),
    };
    Ok(duration)
}

pub fn run(args: BidsArgs) -> anyhow::Result<()> {
    if let Err(message) = args.check() {
        bail!("{message}");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gavel-bench")
        .build()?
        .block_on(run_async(args))
}

async fn run_async(args: BidsArgs) -> anyhow::Result<()> {
    let connections = args.connections();
    let run_time = args.warmup + args.duration + args.timeout;
    let setup_http = crate::cli::tls::http_client(args.cacert.as_deref())?
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut own = None;
    let plan = match args.target {
        TargetKind::Etcd => {
            Plan::etcd(
                &setup_http,
                args.endpoints.clone(),
                args.auctions(),
                args.via,
            )
            .await?
        }
        TargetKind::Gavel => {
            let (endpoints, secret) = if args.endpoints.is_empty() {
                let extra = [
                    "--groups",
                    &args.groups.to_string(),
                    "--bid-rate-per-bidder",
                    "0",
                ]
                .map(str::to_owned);
                let node = OwnNode::start("bench-bids", &extra, &setup_http).await?;
                let found = (vec![node.base.clone()], Some(node.secret.clone()));
                own = Some(node);
                found
            } else {
                (args.endpoints.clone(), None)
            };
            let tokens = tokens(&args, secret, connections as usize, run_time)?;
            Plan::gavel(
                &setup_http,
                endpoints,
                tokens,
                args.auctions(),
                args.groups,
                run_time,
                args.via,
            )
            .await?
        }
    };
    let mut server_pids = args.server_pids.clone();
    if server_pids.is_empty() {
        server_pids.extend(own.as_ref().and_then(OwnNode::pid));
    }
    let summary = measure(&args, Arc::new(plan), connections, server_pids).await?;
    drop(own);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        summary.print_text();
    }
    if summary.decisions == 0 {
        bail!("no {} in the measured window", summary.unit);
    }
    Ok(())
}

fn tokens(
    args: &BidsArgs,
    secret: Option<Secret>,
    clients: usize,
    run: Duration,
) -> anyhow::Result<Tokens> {
    if let (Some(bidder), Some(creator)) = (&args.token, &args.creator_token) {
        return Ok(Tokens {
            creator: creator.clone(),
            bidders: vec![bidder.clone()],
            admin: None,
        });
    }
    let secret = match secret {
        Some(secret) => secret,
        None => load_secret(args.auth_secret_file.as_deref(), &args.data_dir, false)?.0,
    };
    Ok(Tokens::signed(&secret, clients, run))
}

/// Drives the plan and builds the summary (and the plot).
async fn measure(
    args: &BidsArgs,
    plan: Arc<Plan>,
    connections: u32,
    server_pids: Vec<u32>,
) -> anyhow::Result<Summary> {
    let clients = (0..connections)
        .map(|_| {
            let builder = crate::cli::tls::http_client(args.cacert.as_deref())?;
            builder
                .timeout(args.timeout)
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .build()
                .context("cannot build the HTTP clients")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mode = match args.rate {
        Some(rate_per_s) => Loop::Open { rate_per_s },
        None => Loop::Closed,
    };
    let progress = progress_bar(args.warmup + args.duration);
    let schedule = Schedule::new(args.warmup, args.duration, args.timeout);
    let server_cpu = (!server_pids.is_empty()).then(|| {
        let window =
            server_cpu::measure_window(server_pids.clone(), schedule.measure_from, schedule.end);
        tokio::spawn(window)
    });
    let recorder = Arc::new(Recorder::new(schedule)?);
    bids_load::run(plan.clone(), recorder.clone(), clients, mode, progress).await?;
    let recorder = Arc::into_inner(recorder).context("a client outlived the run")?;
    let tally = recorder.into_tally();
    let shape = Shape {
        target: args.target,
        rate_per_s: args.rate,
        connections,
        endpoints: plan.endpoints.clone(),
        via: args.via,
        routes: plan.routed_endpoints(),
        auctions: args.auctions(),
        hot: args.hot,
        groups_covered: plan.groups_covered,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
    };
    let mut summary = Summary::new(shape, &tally);
    if let Some(window) = server_cpu {
        let (cpu_s, wall) = window.await.context("the CPU sampler failed")??;
        let cores = cpu_s / wall.as_secs_f64().max(f64::MIN_POSITIVE);
        summary.server_cpu = Some(ServerCpu {
            pids: server_pids,
            cores,
            us_per_decision: if summary.decisions_per_s > 0.0 {
                cores * 1e6 / summary.decisions_per_s
            } else {
                0.0
            },
        });
    }
    if let Some(path) = &args.plot {
        super::plot::write(path, &summary.title(), summary.unit, &tally)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(summary)
}

/// The progress bar on stderr (drawn only when stderr is a terminal), in milliseconds of the run.
fn progress_bar(run: Duration) -> indicatif::ProgressBar {
    let total_ms = u64::try_from(run.as_millis()).unwrap_or(u64::MAX);
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total_ms),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4}/{duration} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn endpoints_are_http_host_port() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:8081/"),
            Ok("http://127.0.0.1:8081".to_owned())
        );
        assert_eq!(
            parse_endpoint("https://127.0.0.1:8081"),
            Ok("https://127.0.0.1:8081".to_owned())
        );
        assert!(parse_endpoint("127.0.0.1:8081").is_err());
        assert!(parse_endpoint("ftp://127.0.0.1:8081").is_err());
        assert!(parse_endpoint("http://127.0.0.1:8081/v3").is_err());
        assert!(parse_endpoint("http://").is_err());
    }
}
