//! `gavel bench ...`: the load tools, each a separate client process of a running node (or of
//! one it starts for the run).
//!
//! - `viewers.rs`: `gavel bench viewers`, live fan-out over one or many nodes, with its
//!   WebSocket viewers in worker processes (`viewers_worker.rs`, which also reconnects them;
//!   `ws_client.rs` is its lean receive path for ws:// URLs).
//! - `bids.rs`: `gavel bench bids`, bid throughput and latency, closed or open loop, against
//!   Gavel or, for comparison, etcd; `bids_target.rs` is what one request is on each system,
//!   `bids_load.rs` the load loops and their recorder, `bids_report.rs` the summary, `plot.rs`
//!   the latency-over-time PNG.
//! - `own_node.rs`: the single node a tool starts when it is given no endpoint.
//! - `server_cpu.rs`: the CPU local server processes spend in a run's measured window.
//!
//! The tools know the HTTP API as any client does; they share no code with the server's
//! handlers, only the token signing in `crate::http::auth`.

mod bids;
mod bids_load;
mod bids_report;
mod bids_route;
mod bids_target;
mod own_node;
mod plot;
mod server_cpu;
mod viewers;
mod viewers_worker;
mod ws_client;

use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Hold N WebSocket viewers on one auction; report connect rate and bid-to-last-viewer latency.
    Viewers(viewers::ViewersArgs),
    /// One process's share of the viewers (started by `gavel bench viewers`).
    #[command(hide = true)]
    ViewersWorker(viewers_worker::WorkerArgs),
    /// Drive bids (or etcd puts) closed or open loop; report decisions/s, outcomes and latency.
    Bids(Box<bids::BidsArgs>),
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Viewers(args) => viewers::run(args),
        BenchCommand::ViewersWorker(args) => viewers_worker::run(args),
        BenchCommand::Bids(args) => bids::run(*args),
    }
}
