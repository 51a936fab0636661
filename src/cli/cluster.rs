//! `gavel cluster ...`: the operator's commands, each one HTTP call to any node's `/cluster`
//! endpoints. A command exits 0 only when the node answered that the change is committed; it
//! prints what it did, or the problem's detail and a non-zero exit code.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Membership changes wait for learners to catch up (by log or snapshot): give them time.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(300);
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Any node's client address (http:// or https://).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub endpoint: String,
    /// An admin token (or set GAVEL_TOKEN).
    #[arg(long, global = true, env = "GAVEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// endpoint (a private CA).
    #[arg(long, global = true, env = "GAVEL_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show nodes and, per Raft group, leader, term, members and replica progress.
    Status {
        /// Also each replica's state digest (equal at equal applied indexes means identical
        /// replicas). Every node reads its whole state for it: seconds on a big one.
        #[arg(long)]
        digests: bool,
    },
    /// Add a node to every group: learner first, promoted to voter once caught up.
    Add {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        #[arg(long, value_parser = crate::cli::config::parse_advertised_addr)]
        client_addr: String,
        #[arg(long, value_parser = crate::cli::config::parse_advertised_addr)]
        peer_addr: String,
        /// Keep it a fan-out-only learner (it serves reads and streams, never votes).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from every group.
    Remove {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
    /// Move a group's leadership to a node.
    TransferLeader {
        #[arg(long)]
        group: u32,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
    },
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let token = args
        .token
        .clone()
        .context("an admin token is needed: --token or GAVEL_TOKEN")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(&args, &token))
}

async fn execute(args: &ClusterArgs, token: &str) -> anyhow::Result<()> {
    let base = args.endpoint.trim_end_matches('/');
    let client = crate::cli::tls::http_client(args.cacert.as_deref())?
        .build()
        .context("cannot build the HTTP client")?;
    match &args.command {
        ClusterCommand::Status { digests } => {
            // Digests only when asked: they make every replica read its whole state.
            let request = client.get(format!("{base}/cluster?digests={digests}"));
            print_status(&send(request, token, STATUS_TIMEOUT).await?);
        }
        ClusterCommand::Add {
            id,
            client_addr,
            peer_addr,
            learner,
        } => {
            let body = json!({ "id": id, "clientAddr": client_addr, "peerAddr": peer_addr, "voter": !learner });
            let request = client.post(format!("{base}/cluster/nodes")).json(&body);
            let status = send(request, token, CHANGE_TIMEOUT).await?;
            let role = if *learner { "learner" } else { "voter" };
            println!("added node {id} to every group as a {role}");
            print_status(&status);
        }
        ClusterCommand::Remove { id } => {
            let request = client.delete(format!("{base}/cluster/nodes/{id}"));
            let status = send(request, token, CHANGE_TIMEOUT).await?;
            println!("removed node {id} from every group");
            print_status(&status);
        }
        ClusterCommand::TransferLeader { group, to } => {
            let request = client
                .post(format!("{base}/cluster/groups/{group}/transfer-leader"))
                .json(&json!({ "to": to }));
            send(request, token, CHANGE_TIMEOUT).await?;
            println!("node {to} now leads group {group}");
        }
    }
    Ok(())
}

/// Sends the request; a non-2xx answer becomes an error carrying the problem's detail.
async fn send(
    request: reqwest::RequestBuilder,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let response = request
        .bearer_auth(token)
        .timeout(timeout)
        .send()
        .await
        .context("the node did not answer")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = body["detail"]
            .as_str()
            .or(body["title"].as_str())
            .unwrap_or("no detail");
        bail!("the node answered {status}: {detail}");
    }
    Ok(body)
}

fn ids(value: &Value) -> String {
    let ids: Vec<String> = value
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        "-".into()
    } else {
        ids.join(",")
    }
}

fn print_status(status: &Value) {
    println!("answered by node {}", status["nodeId"]);
    println!("{:<6} {:<22} {:<22} reachable", "node", "client", "peer");
    for node in status["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<22} {:<22} {}",
            node["id"].to_string(),
            node["clientAddr"].as_str().unwrap_or(""),
            node["peerAddr"].as_str().unwrap_or(""),
            node["reachable"]
        );
    }
    println!(
        "{:<6} {:<7} {:<6} {:<10} {:<10} replicas (node:last/committed/applied[#digest])",
        "group", "leader", "term", "voters", "learners"
    );
    for group in status["groups"].as_array().into_iter().flatten() {
        let replicas: Vec<String> = group["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let progress = format!(
                    "{}:{}/{}/{}",
                    r["nodeId"], r["lastLogIndex"], r["committedIndex"], r["appliedIndex"]
                );
                match r["digest"].as_u64() {
                    Some(digest) => format!("{progress}#{digest:016x}"),
                    None => progress,
                }
            })
            .collect();
        println!(
            "{:<6} {:<7} {:<6} {:<10} {:<10} {}",
            // `Value`'s Display ignores widths: pad its text instead.
            group["id"].to_string(),
            group["leader"].to_string(),
            group["term"].to_string(),
            ids(&group["voters"]),
            ids(&group["learners"]),
            replicas.join(" ")
        );
    }
}
