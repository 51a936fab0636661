//! `gavel snapshot save|status|restore`: backing a cluster up to a file, checking a file, and
//! building a new cluster's data dirs from it (etcd's `snapshot save` / `snapshot restore`).
//!
//! `save` is a client of `GET /cluster/backup` like `gavel cluster` is of `/cluster`: it writes
//! the body to a temporary file beside FILE, verifies it completely, and only then renames it to
//! FILE, so a failed save never leaves a partial FILE. `status` and `restore` work offline on
//! the file (`gavel_cluster::backup`); this module parses flags and prints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gavel_cluster::backup::{self, BackupSummary, RestoreTarget};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::cli::config::{parse_initial_cluster, InitialCluster};

/// The longest a node may stay silent during a save: it may build a snapshot of a group
/// (bounded on the node at about 40 s) before sending that group.
const SAVE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a whole save may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long connecting to the node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a consistent backup of every group of a running cluster to FILE.
    Save(SaveArgs),
    /// Verify a backup file and print what it holds.
    Status(StatusArgs),
    /// Build one member's data dir of a new cluster from a backup file (run once per member).
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the backup (replaced only once the new one is complete and verified).
    pub file: PathBuf,
    /// Any node's client address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub endpoint: String,
    /// An admin token (or set GAVEL_TOKEN).
    #[arg(long, env = "GAVEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The backup file.
    pub file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file (verified completely before anything is written).
    pub file: PathBuf,
    /// The new member's data dir: must not exist, or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new member's node id.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Every member of the new cluster, as for `gavel serve`: "1=HOST:PEERPORT,2=...".
    #[arg(long, value_parser = parse_initial_cluster)]
    pub initial_cluster: InitialCluster,
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.command {
        SnapshotCommand::Save(args) => runtime.block_on(save(&args)),
        SnapshotCommand::Status(args) => {
            let summary = backup::inspect(&args.file)
                .with_context(|| format!("{} is not a usable backup", args.file.display()))?;
            if args.json {
                println!("{:#}", summary_json(&args.file, &summary));
            } else {
                print_summary(&args.file, &summary);
            }
            Ok(())
        }
        SnapshotCommand::Restore(args) => runtime.block_on(restore(&args)),
    }
}

async fn save(args: &SaveArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .context("an admin token is needed: --token or GAVEL_TOKEN")?;
    let partial = partial_path(&args.file)?;
    let started = Instant::now();
    let saved = tokio::time::timeout(SAVE_TIMEOUT, download(args, &token, &partial))
        .await
        .unwrap_or_else(|_| bail!("the save took longer than {SAVE_TIMEOUT:?}"))
        .and_then(|()| {
            backup::inspect(&partial).context("the node sent an incomplete or corrupt backup")
        })
        .and_then(|summary| {
            std::fs::rename(&partial, &args.file)
                .with_context(|| format!("cannot rename to {}", args.file.display()))?;
            sync_parent(&args.file)?;
            Ok(summary)
        });
    let summary = match saved {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    let totals = Totals::of(&summary);
    println!(
        "saved {}: {} groups, {} auctions, {} bids, {} bytes, sha256 {} in {} ms",
        args.file.display(),
        summary.header.groups,
        totals.auctions,
        totals.decisions,
        summary.file_bytes,
        hex(&summary.checksum),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// `FILE.partial-<pid>` beside FILE, so the final rename stays on one file system.
fn partial_path(file: &Path) -> anyhow::Result<PathBuf> {
    let name = file
        .file_name()
        .with_context(|| format!("{} names no file", file.display()))?;
    let mut partial = name.to_os_string();
    partial.push(format!(".partial-{}", std::process::id()));
    Ok(file.with_file_name(partial))
}

/// Streams `GET /cluster/backup` into `partial` and fsyncs it.
async fn download(args: &SaveArgs, token: &str, partial: &Path) -> anyhow::Result<()> {
    let base = args.endpoint.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let response = tokio::time::timeout(
        SAVE_IDLE_TIMEOUT,
        client
            .get(format!("{base}/cluster/backup"))
            .bearer_auth(token)
            .send(),
    )
    .await
    .context("the node did not answer in time")?
    .context("the node did not answer")?;
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = body["detail"]
            .as_str()
            .or(body["title"].as_str())
            .unwrap_or("no detail");
        bail!("the node answered {status}: {detail}");
    }
    let mut file = tokio::fs::File::create_new(partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut response = response;
    // Ends when the body does; each wait is bounded by the idle timeout.
    while let Some(chunk) = tokio::time::timeout(SAVE_IDLE_TIMEOUT, response.chunk())
        .await
        .context("the node stopped sending")?
        .context("the backup stream broke off")?
    {
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(())
}

async fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let target = RestoreTarget {
        data_dir: args.data_dir.clone(),
        node_id: args.node_id,
        initial_cluster: args.initial_cluster.0.clone(),
    };
    let summary = backup::restore(&args.file, &target)
        .await
        .with_context(|| format!("restore from {} refused", args.file.display()))?;
    let totals = Totals::of(&summary);
    println!(
        "restored node {} into {}: {} groups, {} auctions, {} bids, {} pending deadlines",
        args.node_id,
        args.data_dir.display(),
        summary.header.groups,
        totals.auctions,
        totals.decisions,
        totals.pending_deadlines
    );
    Ok(())
}

fn sync_parent(file: &Path) -> anyhow::Result<()> {
    let parent = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

/// Sums over every group.
#[derive(Default)]
struct Totals {
    auctions: u64,
    ended: u64,
    decisions: u64,
    accepted_bids: u64,
    pending_deadlines: u64,
    state_bytes: u64,
}

impl Totals {
    fn of(summary: &BackupSummary) -> Totals {
        let mut totals = Totals::default();
        for group in &summary.groups {
            totals.auctions += group.state.auctions;
            totals.ended += group.state.ended;
            totals.decisions += group.state.decisions;
            totals.accepted_bids += group.state.accepted_bids;
            totals.pending_deadlines += group.state.pending_deadlines;
            totals.state_bytes += group.state_bytes;
        }
        totals
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn time(ms: i64) -> String {
    crate::http::json::format_time(ms)
}

fn print_summary(file: &Path, summary: &BackupSummary) {
    let header = &summary.header;
    println!(
        "file      {} ({} bytes)",
        file.display(),
        summary.file_bytes
    );
    println!("sha256    {} (verified)", hex(&summary.checksum));
    println!(
        "format    {}, written by gavel {} on node {} at {}",
        summary.format_version,
        header.gavel_version,
        header.source_node,
        time(header.created_at_ms)
    );
    println!(
        "cluster   {} voters, {} groups",
        header.node_count, header.groups
    );
    println!(
        "{:<6} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>10}  next deadline",
        "group", "applied", "bytes", "auctions", "ended", "bids", "accepted", "deadlines"
    );
    for group in &summary.groups {
        let state = &group.state;
        println!(
            "{:<6} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>10}  {}",
            group.group,
            group.applied.index,
            group.state_bytes,
            state.auctions,
            state.ended,
            state.decisions,
            state.accepted_bids,
            state.pending_deadlines,
            state.next_deadline_ms.map_or("-".into(), time)
        );
    }
    let totals = Totals::of(summary);
    println!(
        "{:<6} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>10}",
        "total",
        "",
        totals.state_bytes,
        totals.auctions,
        totals.ended,
        totals.decisions,
        totals.accepted_bids,
        totals.pending_deadlines
    );
}

fn summary_json(file: &Path, summary: &BackupSummary) -> Value {
    let groups: Vec<Value> = summary
        .groups
        .iter()
        .map(|group| {
            let state = &group.state;
            json!({
                "group": group.group,
                "appliedIndex": group.applied.index,
                "appliedTerm": group.applied.term,
                "appliedLeader": group.applied.leader_node,
                "stateBytes": group.state_bytes,
                "auctions": state.auctions,
                "scheduled": state.scheduled,
                "active": state.active,
                "paused": state.paused,
                "ended": state.ended,
                "bids": state.decisions,
                "acceptedBids": state.accepted_bids,
                "idempotencyKeys": state.idempotency_keys,
                "pendingDeadlines": state.pending_deadlines,
                "nextDeadlineAt": state.next_deadline_ms.map(time),
            })
        })
        .collect();
    let totals = Totals::of(summary);
    json!({
        "file": file.display().to_string(),
        "fileBytes": summary.file_bytes,
        "sha256": hex(&summary.checksum),
        "formatVersion": summary.format_version,
        "gavelVersion": summary.header.gavel_version,
        "createdAt": time(summary.header.created_at_ms),
        "sourceNode": summary.header.source_node,
        "nodeCount": summary.header.node_count,
        "groupCount": summary.header.groups,
        "groups": groups,
        "totals": {
            "auctions": totals.auctions,
            "ended": totals.ended,
            "bids": totals.decisions,
            "acceptedBids": totals.accepted_bids,
            "pendingDeadlines": totals.pending_deadlines,
            "stateBytes": totals.state_bytes,
        },
    })
}
