//! What a run prints and leaves behind: the summary (operations, ok/fail/info by kind, faults
//! applied, each checker's verdict, latency inside and outside faults) and a self-contained HTML
//! timeline (an SVG: one row per client worker, one bar per operation coloured by outcome, fault
//! windows shaded behind them).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use gavel_jepsen::checker::{Validity, Verdict};
use gavel_jepsen::history::{Call, History, NemesisPhase, Phase};

fn call_kind(call: &Call) -> &'static str {
    match call {
        Call::Create { .. } => "create",
        Call::Bid { .. } => "bid",
        Call::Read { local: true, .. } => "read-local",
        Call::Read { .. } => "read",
        Call::Control { .. } => "control",
    }
}

/// Fault windows as (start, stop) in ns; a fault never stopped lasts to the end.
fn fault_windows(history: &History) -> Vec<(u64, u64, String)> {
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut windows = Vec::new();
    for event in &history.nemesis {
        match event.phase {
            NemesisPhase::Start => {
                open.insert(event.fault.clone(), event.time_ns);
            }
            NemesisPhase::Stop => {
                if let Some(start) = open.remove(&event.fault) {
                    windows.push((start, event.time_ns, event.fault.clone()));
                }
            }
        }
    }
    windows.extend(
        open.into_iter()
            .map(|(fault, start)| (start, u64::MAX, fault)),
    );
    windows
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_line(label: &str, mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let ms = |v: u64| v as f64 / 1e6;
    format!(
        "  {label:<16} n={:<6} p50={:.1} ms  p99={:.1} ms  max={:.1} ms",
        ns.len(),
        ms(percentile(&ns, 0.5)),
        ms(percentile(&ns, 0.99)),
        ms(ns.last().copied().unwrap_or(0)),
    )
}

pub fn summary(
    history: &History,
    verdicts: &[Verdict],
    faults: &[String],
    notes: &[String],
    check_time: Duration,
) -> String {
    let mut out = String::new();
    let meta = &history.meta;
    let _ = writeln!(
        out,
        "scenario {} seed {} nodes {:?}",
        meta.scenario, meta.seed, meta.nodes
    );
    let operations = history.operations();
    let mut by_kind: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    let windows = fault_windows(history);
    let (mut in_fault, mut quiet) = (Vec::new(), Vec::new());
    for op in &operations {
        let counts = by_kind.entry(call_kind(&op.invoke.call)).or_default();
        match op.outcome() {
            Phase::Ok => counts[0] += 1,
            Phase::Fail => counts[1] += 1,
            _ => counts[2] += 1,
        }
        if let (Phase::Ok, Some(done)) = (op.outcome(), op.completion) {
            let start = op.invoke.time_ns;
            let latency = done.time_ns.saturating_sub(start);
            let faulted = windows
                .iter()
                .any(|(a, b, _)| start < *b && done.time_ns > *a);
            if faulted {
                in_fault.push(latency);
            } else {
                quiet.push(latency);
            }
        }
    }
    let _ = writeln!(out, "operations: {}", operations.len());
    for (kind, [ok, fail, info]) in &by_kind {
        let _ = writeln!(out, "  {kind:<12} ok {ok:<6} fail {fail:<6} info {info}");
    }
    let frames = history.streams.len();
    let viewers: std::collections::BTreeSet<u64> =
        history.streams.iter().map(|s| s.viewer).collect();
    let _ = writeln!(
        out,
        "stream events: {frames} over {} connections",
        viewers.len()
    );
    let _ = writeln!(out, "latency of ok operations:");
    let _ = writeln!(out, "{}", latency_line("outside faults", quiet));
    let _ = writeln!(out, "{}", latency_line("during faults", in_fault));
    let _ = writeln!(out, "faults applied: {}", faults.len());
    for fault in faults {
        let _ = writeln!(out, "  {fault}");
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "checkers ({} ms):", check_time.as_millis());
    for verdict in verdicts {
        let label = match verdict.validity {
            Validity::Valid => "valid",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "unknown",
        };
        let _ = writeln!(out, "  {:<16} {label}", verdict.checker);
        for note in &verdict.notes {
            let _ = writeln!(out, "      {note}");
        }
        for problem in &verdict.problems {
            let _ = writeln!(out, "      ! {problem}");
        }
    }
    out
}

const WIDTH_PX: f64 = 1600.0;
const ROW_PX: f64 = 14.0;

/// A self-contained HTML page with the run's timeline.
pub fn timeline(history: &History) -> String {
    let operations = history.operations();
    let end_ns = operations
        .iter()
        .filter_map(|o| o.completion.map(|c| c.time_ns))
        .chain(history.nemesis.iter().map(|n| n.time_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |ns: u64| ns.min(end_ns) as f64 / end_ns as f64 * WIDTH_PX;
    let workers: std::collections::BTreeSet<u64> = operations
        .iter()
        .map(|o| o.invoke.process / 1_000_000)
        .collect();
    let row: BTreeMap<u64, usize> = workers.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let height = (workers.len() as f64 + 2.0) * ROW_PX;
    let mut svg = String::new();
    for (start, stop, fault) in fault_windows(history) {
        let (a, b) = (x(start), x(stop));
        let _ = write!(
            svg,
            r##"<rect x="{a:.1}" y="0" width="{:.1}" height="{height:.0}" fill="#f4c7c3" opacity="0.5"><title>{fault}</title></rect><text x="{a:.1}" y="{:.0}" font-size="10">{fault}</text>"##,
            (b - a).max(1.0),
            height - 2.0
        );
    }
    for op in &operations {
        let color = match op.outcome() {
            Phase::Ok => "#2e7d32",
            Phase::Fail => "#c62828",
            _ => "#ef6c00",
        };
        let y = row[&(op.invoke.process / 1_000_000)] as f64 * ROW_PX;
        let done = op.completion.map_or(end_ns, |c| c.time_ns);
        let (a, b) = (x(op.invoke.time_ns), x(done));
        let _ = write!(
            svg,
            r#"<rect x="{a:.1}" y="{y:.0}" width="{:.1}" height="{:.0}" fill="{color}"><title>op {} {} on n{}: {:?}</title></rect>"#,
            (b - a).max(0.8),
            ROW_PX - 3.0,
            op.invoke.op_id,
            call_kind(&op.invoke.call),
            op.invoke.node,
            op.outcome(),
        );
    }
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>{} seed {}</title>
<h3>{} seed {}: {} operations over {:.1} s</h3>
<p>Rows: client workers (0 creator, 1 controller, 5+ readers, 10+ bidders). Green ok, red fail, orange info; shaded: faults (hover for details).</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{height:.0}">{svg}</svg>"#,
        history.meta.scenario,
        history.meta.seed,
        history.meta.scenario,
        history.meta.seed,
        operations.len(),
        end_ns as f64 / 1e9,
    )
}
