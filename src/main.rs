//! `gavel`: the Gavel binary. `gavel serve` runs a node (HTTP API over the multi-Raft engine);
//! `gavel token` mints a token signed with the node's secret or a private key; `gavel cluster` administers a
//! cluster through any node; `gavel bench viewers` measures live fan-out and `gavel bench bids`
//! bid throughput and latency.
//!
//! # Layout
//!
//! Three parts, each a folder:
//!
//! - `cli/`: the command line (clap), its flags and their checks, logging setup, exit codes;
//!   the operator's `gavel cluster ...` and the load tools `gavel bench ...`; `tls.rs` reads
//!   the TLS files of the flags.
//! - `http/`: the HTTP edge. `server.rs` (the axum application, layers, graceful shutdown),
//!   `api/` (one file per resource and the route table), `auth/` (roles, the `Principal`
//!   extractor, and tokens: HS256 and RS256/ES256/EdDSA checks, key files and their reload,
//!   minting), `json.rs` (the body extractor, exact money, RFC 3339 times,
//!   `Idempotency-Key`), `problem.rs` (the one mapping of errors to RFC 9457 problems),
//!   `cursor.rs`, `limits.rs`, `metrics.rs`, `cors.rs` (the two routes other origins may
//!   read: the SSE stream and the node list), `engine.rs` (the narrow engine interface the
//!   handlers use: the cluster node, or a fake in unit tests), `tls.rs` (the HTTPS listener)
//!   and `openapi.json` (the contract).
//! - `live/`: live updates: the per-node fan-out hub fed by the apply path, SSE and WebSocket
//!   viewers and their limits (plain-TCP WebSocket viewers written in passes by their auction's
//!   crowd), and `page/`, the live auction page embedded at build time.
//!
//! Architecture invariant: `src/` is the only place that knows HTTP and JSON. It decides no
//! auction rule itself: it validates input early for clear errors, proposes commands to the
//! node and renders the node's replies.

mod cli;
mod http;
mod live;

/// glibc's malloc spent about a quarter of a node's CPU under bid load (arena locking,
/// `malloc_consolidate`, mostly for sled's short-lived node copies); mimalloc's per-thread
/// free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    cli::main()
}

/// mimalloc asks for transparent huge pages, so the first touch of memory it got fresh from the
/// OS zeroes 2 MiB at a time. Measured in a VM, that made building a hot group's 12 MB snapshot
/// take 135-188 ms of CPU where the same code took 24 ms without huge pages (and a profile of
/// bid load had 6% of a node's samples zeroing huge pages). Affects this process only; a failure
/// (an old kernel) leaves huge pages on, which is slower, not wrong.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    let failed = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
    if failed {
        eprintln!(
            "note: could not turn off transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}
