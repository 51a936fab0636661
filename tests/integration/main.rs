//! Every integration test of the `gavel` binary, as one test binary: each module here was a
//! test binary of its own, and building 32 of them (each compiling the harness and linking
//! tokio, reqwest and rustls) took about 170 s of compile time in a cold CI build. They drive real `gavel` processes over real
//! sockets through `common` (the harness) and `live_common` (viewers); nothing links the
//! server's code. Run one file's tests with `cargo test --test integration cluster_failover::`.
//!
//! The tests of one binary run in parallel threads (two on a 2-core machine, as before), so a
//! test may not change this process's environment or anything else global: a server takes its
//! settings as flags (`ServerOptions`).

mod common;
mod live_common;

mod advertise;
mod api_flow;
mod auth;
mod auth_keys;
mod backup;
mod bad_input;
mod bench_bids;
mod bids;
mod browser;
mod cluster_clock;
mod cluster_endpoints;
mod cluster_failover;
mod cluster_leadership;
mod cluster_membership;
mod cluster_pause;
mod cluster_replication;
mod cluster_restart;
mod concurrency;
mod control;
mod deadlines;
mod disk_full;
mod durability;
mod harness;
mod idempotency;
mod live_bench;
mod live_cluster;
mod live_limits;
mod live_reconnect;
mod live_slow;
mod live_streams;
mod ops;
mod rolling_restart;
mod security_tls;
mod state_divergence;
mod state_recovery;
