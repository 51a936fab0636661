//! The harness: runs one scenario end to end and hands the history to the checkers.
//!
//! A run: start the nodes (each in its own namespace) and wait for every group to have a leader;
//! start the workload; let the nemesis alternate quiet spells and faults for the run's time;
//! heal everything and keep the workload going through a recovery window; stop the clients and
//! wait for every auction's deadline; wait until every replica applied the same log; read every
//! replica's final state; check; write the history, the summary and the timeline.

pub mod client;
pub mod lazyfs;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod recorder;
pub mod report;
pub mod scenario;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gavel_jepsen::checker::{check_all, Verdict};
use gavel_jepsen::history::{FinalState, History, Meta, ReplicaState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::client::Api;
use crate::harness::nemesis::Nemesis;
use crate::harness::net::Net;
use crate::harness::nodes::{NodeSettings, Nodes};
use crate::harness::recorder::{wall_ms, Recorder};
use crate::harness::scenario::Scenario;
use crate::harness::workload::{Tokens, Workload, WorkloadSettings};

pub type NodeId = u64;

/// How long after its end an auction must read `ended` once a quorum is up.
pub const END_SLA_MS: i64 = 5_000;
/// How long every group may take to elect leaders at start.
const LEADERS_WAIT: Duration = Duration::from_secs(30);
/// How long the replicas may take to apply the same log after the final heal.
const CONVERGE_WAIT: Duration = Duration::from_secs(45);
/// Final reads taken before the replicas' applied indexes are accepted as they are.
const FINAL_READS_MAX: u32 = 5;
/// The longest the run waits for the last auction's deadline after the clients stop.
const DEADLINE_WAIT_MAX: Duration = Duration::from_secs(45);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub bin: PathBuf,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub time: Duration,
    pub recovery: Duration,
    pub nodes: Option<usize>,
    pub groups: u32,
    pub snapshot_after_entries: u64,
    pub max_clock_offset_ms: i64,
    /// Pass `--max-clock-offset-ms` to the nodes (their binary knows the flag).
    pub pass_offset_flag: bool,
    pub bidders: usize,
}

pub struct RunReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub verdicts: Vec<Verdict>,
    pub summary: String,
    pub dir: PathBuf,
    /// Set when the harness itself could not complete the run.
    pub error: Option<String>,
}

impl RunReport {
    pub fn valid(&self) -> bool {
        self.error.is_none()
            && self
                .verdicts
                .iter()
                .all(|v| v.validity != gavel_jepsen::checker::Validity::Invalid)
    }
}

fn mint(bin: &Path, secret: &Path, sub: &str, roles: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["token", "--auth-secret-file"];
    let secret = secret.display().to_string();
    args.push(&secret);
    args.extend(["--sub", sub, "--ttl", "1d"]);
    for role in roles {
        args.extend(["--role", role]);
    }
    let output = std::process::Command::new(bin).args(&args).output()?;
    if !output.status.success() {
        bail!("gavel token: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .last()
        .map(str::to_string)
        .context("gavel token printed nothing")
}

fn mint_tokens(bin: &Path, secret: &Path, bidders: usize) -> anyhow::Result<Tokens> {
    let mut minted = Vec::new();
    for index in 0..bidders {
        let sub = format!("bidder-{index}");
        let token = mint(bin, secret, &sub, &["bidder"])?;
        minted.push((sub, token));
    }
    Ok(Tokens {
        creator: mint(bin, secret, "creator-1", &["creator"])?,
        admin: mint(bin, secret, "operator", &["admin"])?,
        viewer: mint(bin, secret, "watcher", &["viewer"])?,
        bidders: minted,
    })
}

fn write_secret(dir: &std::path::Path, seed: u64) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("secret");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect();
    std::fs::write(&path, secret)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Runs `scenario` on `net` (whose namespaces must exist) and checks it.
pub async fn run_scenario(
    scenario: &'static Scenario,
    options: &RunOptions,
    net: Net,
) -> (RunReport, Net) {
    let dir = options
        .out_dir
        .join(format!("{}-seed{}", scenario.name, options.seed));
    let mut report = RunReport {
        scenario: scenario.name,
        seed: options.seed,
        verdicts: Vec::new(),
        summary: String::new(),
        dir: dir.clone(),
        error: None,
    };
    let net = match prepare_dir(&dir) {
        Ok(()) => {
            let (outcome, net) = run_inner(scenario, options, net, &dir).await;
            match outcome {
                Ok((verdicts, summary)) => {
                    report.verdicts = verdicts;
                    report.summary = summary;
                }
                Err(e) => report.error = Some(format!("{e:#}")),
            }
            net
        }
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            net
        }
    };
    (report, net)
}

fn prepare_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).context("clear the run directory")?;
    }
    std::fs::create_dir_all(dir).context("create the run directory")
}

async fn run_inner(
    scenario: &'static Scenario,
    options: &RunOptions,
    mut net: Net,
    dir: &std::path::Path,
) -> (anyhow::Result<(Vec<Verdict>, String)>, Net) {
    let count = options.nodes.unwrap_or(scenario.nodes);
    let members: Vec<NodeId> = (1..=count as NodeId).collect();
    if members.iter().any(|m| !net.nodes().contains(m)) {
        let e = anyhow::anyhow!("the test network has too few nodes for {count}");
        return (Err(e), net);
    }
    if let Err(e) = net.heal() {
        return (Err(e), net);
    }
    let setup = || -> anyhow::Result<(Nodes, Tokens)> {
        let secret = write_secret(dir, options.seed)?;
        let tokens = mint_tokens(&options.bin, &secret, options.bidders)?;
        let nodes = Nodes::new(NodeSettings {
            bin: options.bin.clone(),
            run_dir: dir.to_path_buf(),
            secret_file: secret,
            groups: options.groups,
            snapshot_after_entries: options.snapshot_after_entries,
            initial: members.clone(),
            max_clock_offset_ms: options
                .pass_offset_flag
                .then_some(options.max_clock_offset_ms),
            propose_timeout_ms: 2_000,
            disk: scenario.disk,
        })?;
        Ok((nodes, tokens))
    };
    let (nodes, tokens) = match setup() {
        Ok(parts) => parts,
        Err(e) => return (Err(e), net),
    };
    let api = match Api::new() {
        Ok(api) => api,
        Err(e) => return (Err(e), net),
    };
    let recorder = Recorder::new();
    let mut nemesis = Nemesis::new(
        net,
        nodes,
        api.clone(),
        tokens.admin.clone(),
        recorder.clone(),
        options.max_clock_offset_ms,
    );
    let outcome = drive(scenario, options, &mut nemesis, api, recorder, tokens, dir).await;
    nemesis.nodes.kill_all();
    let Nemesis { net, .. } = nemesis;
    (outcome, net)
}

async fn drive(
    scenario: &'static Scenario,
    options: &RunOptions,
    nemesis: &mut Nemesis,
    api: Api,
    recorder: Recorder,
    tokens: Tokens,
    dir: &std::path::Path,
) -> anyhow::Result<(Vec<Verdict>, String)> {
    let members = nemesis.members().to_vec();
    let started_wall_ms = wall_ms();
    nemesis.nodes.start_all().await?;
    await_leaders(nemesis, options.groups).await?;
    eprintln!(
        "[{}] {} nodes up, every group has a leader; load for {:?} with faults",
        scenario.name,
        members.len(),
        options.time
    );
    let workload = Workload::start(
        api.clone(),
        recorder.clone(),
        tokens.clone(),
        members.clone(),
        WorkloadSettings {
            bidders: options.bidders,
            readers: 2,
            seed: options.seed,
            auction_ms: (6_000, 14_000),
            anti_sniping_s: 2,
        },
    )?;
    let load_started = Instant::now();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut faults_failed = Vec::new();
    schedule(
        scenario,
        options,
        nemesis,
        &mut rng,
        load_started,
        &mut faults_failed,
    )
    .await;
    nemesis.heal_all().await.context("final heal")?;
    eprintln!(
        "[{}] healed; recovery window {:?} ({} ops so far)",
        scenario.name,
        options.recovery,
        recorder.ops_so_far()
    );
    tokio::time::sleep(options.recovery).await;
    let latest_end = workload.latest_end_ms();
    let until_deadlines = (latest_end + END_SLA_MS + 1_000 - wall_ms()).max(0) as u64;
    let grace = Duration::from_millis(until_deadlines).min(DEADLINE_WAIT_MAX);
    workload.stop(grace + Duration::from_secs(2)).await;
    tokio::time::sleep(grace.saturating_sub(Duration::from_secs(2))).await;
    let members = nemesis.members().to_vec();
    let (final_state, converged) = settle_and_read(&api, &tokens, &members).await;
    let (ops, nemesis_events, streams) = recorder.take();
    let history = History {
        meta: Meta {
            scenario: scenario.name.to_string(),
            seed: options.seed,
            nodes: members.clone(),
            max_clock_offset_ms: options.max_clock_offset_ms,
            end_sla_ms: END_SLA_MS,
            started_wall_ms,
        },
        ops,
        nemesis: nemesis_events,
        streams,
        final_state,
    };
    std::fs::write(dir.join("history.jsonl"), history.to_json_lines())?;
    let checked = Instant::now();
    let mut verdicts = check_all(&history);
    verdicts.push(replica_checks(&nemesis.nodes));
    let check_time = checked.elapsed();
    let mut notes = faults_failed;
    if let Err(e) = converged {
        notes.push(format!("replicas did not converge: {e:#}"));
    }
    let summary = report::summary(&history, &verdicts, &nemesis.applied, &notes, check_time);
    std::fs::write(dir.join("summary.txt"), &summary)?;
    std::fs::write(dir.join("timeline.html"), report::timeline(&history))?;
    Ok((verdicts, summary))
}

/// What the nodes' own consistency checks found (they compare the replicas' state digests at
/// checkpoints every `CHECK_INTERVAL_MS`, `--consistency-check-interval-ms`): no fault of the
/// suite damages synced data, so a replica whose state differs from the majority's is a
/// finding, as is a check with no majority, even though the node stops and gets the group's
/// state back at its next start.
fn replica_checks(nodes: &nodes::Nodes) -> gavel_jepsen::checker::Verdict {
    use gavel_jepsen::checker::{Validity, Verdict};
    let mut problems = Vec::new();
    let mut agreed = 0;
    for node in 1..=crate::NODES_MAX {
        let Ok(log) = std::fs::read_to_string(nodes.log_path(node)) else {
            continue;
        };
        agreed += log.matches("replicas agree at the checkpoint").count();
        for line in log.lines().filter(|line| {
            line.contains("this replica's state differs")
                || line.contains("replicas' states differ")
        }) {
            if problems.len() < 20 {
                problems.push(format!("n{node}: {line}"));
            }
        }
    }
    Verdict {
        checker: "replica_checks",
        validity: match problems.is_empty() {
            true => Validity::Valid,
            false => Validity::Invalid,
        },
        problems,
        notes: vec![format!(
            "{agreed} checkpoint comparisons agreed (each node compares its digest of a group's \
             state with the other voters' at entries every {} ms of the group's time)",
            nodes::CHECK_INTERVAL_MS
        )],
    }
}

async fn schedule(
    scenario: &'static Scenario,
    options: &RunOptions,
    nemesis: &mut Nemesis,
    rng: &mut StdRng,
    load_started: Instant,
    faults_failed: &mut Vec<String>,
) {
    // Bounded: each pass takes at least a second, and the loop ends with the run's time.
    while load_started.elapsed() + Duration::from_secs(3) < options.time {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..=4_000))).await;
        let kind = scenario.faults[rng.gen_range(0..scenario.faults.len())];
        eprintln!("[{}] fault {}", scenario.name, kind.name());
        if let Err(e) = nemesis.start(kind, rng).await {
            faults_failed.push(format!("{} could not be applied: {e:#}", kind.name()));
            continue;
        }
        let hold = Duration::from_millis(rng.gen_range(4_000..=8_000));
        let left = options.time.saturating_sub(load_started.elapsed());
        tokio::time::sleep(hold.min(left)).await;
        if let Err(e) = nemesis.stop().await {
            faults_failed.push(format!("{} could not be undone: {e:#}", kind.name()));
        }
    }
    let left = options.time.saturating_sub(load_started.elapsed());
    tokio::time::sleep(left).await;
}

async fn await_leaders(nemesis: &Nemesis, groups: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + LEADERS_WAIT;
    'wait: while Instant::now() < deadline {
        for group in 0..groups {
            if nemesis.leader_of(group).await.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'wait;
            }
        }
        return Ok(());
    }
    bail!("not every group elected a leader within {LEADERS_WAIT:?}")
}

/// Waits until, in every group, every member reports the same applied index.
async fn await_converged(api: &Api, admin: &str, members: &[NodeId]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONVERGE_WAIT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match api.cluster_status(members[0], admin, false).await {
            Ok(status) => match applied_spread(&status, members) {
                None => return Ok(()),
                Some(why) => last = why,
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("{last}")
}

/// `None` when every group's replicas (all of `members`) applied the same index, else why not.
fn applied_spread(status: &serde_json::Value, members: &[NodeId]) -> Option<String> {
    let groups = status["groups"].as_array()?;
    for group in groups {
        let replicas = group["replicas"].as_array().cloned().unwrap_or_default();
        let applied: Vec<(u64, u64)> = replicas
            .iter()
            .filter_map(|r| Some((r["nodeId"].as_u64()?, r["appliedIndex"].as_u64()?)))
            .collect();
        let all_there = members.iter().all(|m| applied.iter().any(|(n, _)| n == m));
        let same = applied.windows(2).all(|w| w[0].1 == w[1].1);
        if !all_there || !same {
            return Some(format!("group {}: applied {applied:?}", group["id"]));
        }
    }
    None
}

/// Reads every replica once the replicas applied the same log. Entries may still arrive while
/// the replicas are read one after the other (a leader placement's blank entry, a deadline), so
/// a read whose replicas disagree on an applied index is taken again, a bounded number of times.
async fn settle_and_read(
    api: &Api,
    tokens: &Tokens,
    members: &[NodeId],
) -> (FinalState, anyhow::Result<()>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let converged = await_converged(api, &tokens.admin, members).await;
        let state = read_final(api, tokens, members).await;
        let indexes: std::collections::BTreeSet<Vec<u64>> = state
            .nodes
            .values()
            .map(|r| r.digests.values().map(|(applied, _)| *applied).collect())
            .collect();
        if indexes.len() <= 1 || attempt >= FINAL_READS_MAX {
            return (state, converged);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read_final(api: &Api, tokens: &Tokens, members: &[NodeId]) -> FinalState {
    let mut state = FinalState {
        wall_ms: wall_ms(),
        ..FinalState::default()
    };
    for &node in members {
        let replica = match read_replica(api, tokens, node).await {
            Ok(replica) => replica,
            Err(e) => ReplicaState {
                unreadable: Some(format!("{e:#}")),
                ..ReplicaState::default()
            },
        };
        state.nodes.insert(node, replica);
    }
    state
}

async fn read_replica(api: &Api, tokens: &Tokens, node: NodeId) -> anyhow::Result<ReplicaState> {
    let mut replica = ReplicaState::default();
    let status = api.cluster_status(node, &tokens.admin, true).await?;
    for group in status["groups"].as_array().into_iter().flatten() {
        let id = group["id"].as_u64().and_then(|g| u32::try_from(g).ok());
        let mine = group["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["nodeId"].as_u64() == Some(node));
        if let (Some(id), Some(mine)) = (id, mine) {
            let applied = mine["appliedIndex"].as_u64().unwrap_or(0);
            let digest = mine["digest"].as_u64().unwrap_or(0);
            replica.digests.insert(id, (applied, digest));
        }
    }
    for auction in api.all_auctions_local(node, &tokens.viewer).await? {
        let log = api.bid_log_local(node, &tokens.viewer, &auction.id).await?;
        replica.bid_logs.insert(auction.id.clone(), log);
        replica.auctions.insert(auction.id.clone(), auction);
    }
    Ok(replica)
}
