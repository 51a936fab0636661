//! The summary of a `gavel bench bids` run: built once from the tally, printed as text (for a
//! person) or as one JSON object (`--json`, for scripts such as `scripts/bench.sh`). The field
//! names are the same for Gavel and etcd; `unit` says whether a decision is a bid decision or
//! an etcd put.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::bids_load::Tally;
use super::bids_route::Via;
use super::bids_target::TargetKind;
use super::server_cpu::ServerCpu;

/// What the run was, as the user asked for it.
pub struct Shape {
    pub target: TargetKind,
    pub rate_per_s: Option<u32>,
    pub connections: u32,
    pub endpoints: Vec<String>,
    pub via: Via,
    pub routes: Option<BTreeMap<String, String>>,
    pub auctions: u32,
    pub hot: bool,
    pub groups_covered: Option<usize>,
    pub warmup_s: f64,
    pub duration_s: f64,
}

#[derive(Serialize)]
pub struct Summary {
    pub target: TargetKind,
    /// "decisions" (Gavel bids, accepted or rejected) or "puts" (etcd).
    pub unit: &'static str,
    /// "closed" or "open".
    #[serde(rename = "loop")]
    pub loop_kind: &'static str,
    pub rate_per_s: Option<u32>,
    pub connections: u32,
    pub endpoints: Vec<String>,
    /// `--via`, and with `leader` or `follower` the endpoint each auction's requests went to.
    pub via: Via,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<BTreeMap<String, String>>,
    pub auctions: u32,
    pub hot: bool,
    pub groups_covered: Option<usize>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// From the start of the measured window to its last answer.
    pub elapsed_s: f64,
    /// accepted + rejected + shed + errors.
    pub requests: u64,
    /// accepted + rejected.
    pub decisions: u64,
    pub decisions_per_s: f64,
    pub accepted: u64,
    pub rejected: u64,
    pub shed: u64,
    pub errors: u64,
    /// Open loop: requests due in the window that were never sent.
    pub unsent: u64,
    pub rejected_reasons: BTreeMap<String, u64>,
    pub error_kinds: BTreeMap<String, u64>,
    /// Of decisions, from the send time (closed loop) or the due time (open loop).
    pub latency_ms: Percentiles,
    /// Open loop: how late requests were sent after their due time (the tool's own timer and
    /// scheduling, or no free connection); included in `latency_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Percentiles>,
    /// What the watched server processes spent in the window (`--server-pids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<ServerCpu>,
}

#[derive(Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(histogram_us: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram_us.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Percentiles {
            p50: ms(histogram_us.value_at_quantile(0.5)),
            p90: ms(histogram_us.value_at_quantile(0.9)),
            p99: ms(histogram_us.value_at_quantile(0.99)),
            p999: ms(histogram_us.value_at_quantile(0.999)),
            max: ms(histogram_us.max()),
            mean: histogram_us.mean() / 1000.0,
        }
    }
}

impl Summary {
    pub fn new(shape: Shape, tally: &Tally) -> Summary {
        let elapsed_s = tally.elapsed.as_secs_f64();
        let decisions = tally.decisions();
        Summary {
            target: shape.target,
            unit: match shape.target {
                TargetKind::Gavel => "decisions",
                TargetKind::Etcd => "puts",
            },
            loop_kind: if shape.rate_per_s.is_some() {
                "open"
            } else {
                "closed"
            },
            rate_per_s: shape.rate_per_s,
            connections: shape.connections,
            endpoints: shape.endpoints,
            via: shape.via,
            routes: shape.routes,
            auctions: shape.auctions,
            hot: shape.hot,
            groups_covered: shape.groups_covered,
            warmup_s: shape.warmup_s,
            duration_s: shape.duration_s,
            elapsed_s,
            requests: tally.requests(),
            decisions,
            decisions_per_s: if elapsed_s > 0.0 {
                decisions as f64 / elapsed_s
            } else {
                0.0
            },
            accepted: tally.accepted,
            rejected: tally.rejected_total(),
            shed: tally.shed,
            errors: tally.errors_total(),
            unsent: tally.unsent,
            rejected_reasons: tally.rejected.clone(),
            error_kinds: tally.errors.clone(),
            latency_ms: Percentiles::of(&tally.latency_us),
            send_lag_ms: shape
                .rate_per_s
                .map(|_| Percentiles::of(&tally.send_lag_us)),
            server_cpu: None,
        }
    }

    /// One line naming the shape, for the text summary and the plot's title.
    pub fn title(&self) -> String {
        let load = match self.rate_per_s {
            Some(rate) => format!(
                "open loop {rate}/s (at most {} in flight)",
                self.connections
            ),
            None => format!("closed loop, {} connections", self.connections),
        };
        let auctions = if self.hot {
            "1 hot auction".to_owned()
        } else {
            format!("{} auctions", self.auctions)
        };
        let target = match self.target {
            TargetKind::Gavel => "gavel",
            TargetKind::Etcd => "etcd",
        };
        let via = match self.via {
            Via::Any => "",
            Via::Leader => " (each auction's leader)",
            Via::Follower => " (a member not leading each auction)",
        };
        format!(
            "{target}, {load}, {} endpoint(s){via}, {auctions}",
            self.endpoints.len()
        )
    }

    pub fn print_text(&self) {
        let l = &self.latency_ms;
        let from = if self.rate_per_s.is_some() {
            "from the due time"
        } else {
            "from the send time"
        };
        println!("gavel bench bids: {}", self.title());
        if let Some(groups) = self.groups_covered {
            println!("  auctions span {groups} Raft group(s)");
        }
        println!(
            "  {}/s      {:.0} ({} {} in {:.2} s after {:.1} s warm-up)",
            self.unit,
            self.decisions_per_s,
            self.decisions,
            self.unit,
            self.elapsed_s,
            self.warmup_s
        );
        println!(
            "  outcomes     accepted {}  rejected {}{}  shed(503) {}  errors {}{}{}",
            self.accepted,
            self.rejected,
            kinds(&self.rejected_reasons),
            self.shed,
            self.errors,
            kinds(&self.error_kinds),
            if self.unsent > 0 {
                format!("  unsent {}", self.unsent)
            } else {
                String::new()
            }
        );
        println!(
            "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({from}, {})",
            l.p50, l.p90, l.p99, l.p999, l.max, self.unit
        );
        if let Some(lag) = &self.send_lag_ms {
            println!(
                "  sent late ms p50 {:.2}  p99 {:.2}  max {:.2}  (after the due time, counted in the latency)",
                lag.p50, lag.p99, lag.max
            );
        }
        if let Some(cpu) = &self.server_cpu {
            let unit = self.unit.trim_end_matches('s');
            println!(
                "  server CPU   {:.2} cores, {:.0} µs per {unit} (processes {:?})",
                cpu.cores, cpu.us_per_decision, cpu.pids
            );
        }
    }
}

fn kinds(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(" ({})", parts.join(", "))
}
