//! The test network: one network namespace per node and one for the clients, joined by a bridge
//! that lives in a namespace of its own, so nothing of the run touches the host's network. Each
//! node is then a separate host to iptables (inside one namespace all loopback traffic shares a
//! source address, and partitions could not be expressed).
//!
//! Partitions are iptables DROP rules in the nodes' own namespaces, for both directions on both
//! sides. Clients are never cut off from nodes: the nemesis partitions the cluster, not the
//! clients (as Jepsen does), so the history shows what each side of a partition answers.
//!
//! Every namespace carries the run's prefix; `cleanup_stale` removes what an earlier run left
//! (processes first, then namespaces), and `Net::teardown` removes what this run made. Deleting a
//! namespace deletes its veth ends and its iptables rules with it.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context};

use crate::harness::NodeId;

/// Every namespace of the suite starts with this, so a later run can find and remove leftovers.
pub const NAMESPACE_PREFIX: &str = "gjep-";
/// The subnet of the test network: node n is `10.77.0.n`, the clients are `10.77.0.100`.
const SUBNET: &str = "10.77.0";
const CLIENT_HOST: u8 = 100;

pub struct Net {
    nodes: Vec<NodeId>,
    /// Pairs of nodes that currently cannot talk (each pair stored once, lower id first).
    cut: BTreeSet<(NodeId, NodeId)>,
}

/// Runs `program args...`, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside namespace `ns`.
fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub fn node_namespace(node: NodeId) -> String {
    format!("{NAMESPACE_PREFIX}n{node}")
}

pub fn client_namespace() -> String {
    format!("{NAMESPACE_PREFIX}clients")
}

fn switch_namespace() -> String {
    format!("{NAMESPACE_PREFIX}switch")
}

pub fn node_ip(node: NodeId) -> String {
    format!("{SUBNET}.{node}")
}

/// Kills every process left in a namespace of an earlier run, then deletes the namespaces.
pub fn cleanup_stale() -> anyhow::Result<usize> {
    let listing = run("ip", &["netns", "list"])?;
    let mut removed = 0;
    for line in listing.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(NAMESPACE_PREFIX) {
            continue;
        }
        kill_namespace_processes(name);
        run("ip", &["netns", "del", name])?;
        removed += 1;
    }
    Ok(removed)
}

/// SIGCONT then SIGKILL to every process in `ns` (a stopped process must not outlive the run),
/// except the harness itself, which lives in the clients' namespace.
fn kill_namespace_processes(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&pid| pid != me)
    {
        // SAFETY: plain signal delivery to a pid we just listed; no memory is shared.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

impl Net {
    /// Builds the switch, one namespace per node and the clients' namespace.
    pub fn create(nodes: &[NodeId]) -> anyhow::Result<Net> {
        if let Some(bad) = nodes.iter().find(|&&n| n == 0 || n >= CLIENT_HOST as u64) {
            bail!("node id {bad} does not fit the test subnet (1-99)");
        }
        let switch = switch_namespace();
        run("ip", &["netns", "add", &switch])?;
        in_ns(&switch, "ip", &["link", "add", "br0", "type", "bridge"])?;
        in_ns(&switch, "ip", &["link", "set", "br0", "up"])?;
        let mut hosts: Vec<(String, String)> = nodes
            .iter()
            .map(|&n| (node_namespace(n), node_ip(n)))
            .collect();
        hosts.push((client_namespace(), format!("{SUBNET}.{CLIENT_HOST}")));
        for (index, (ns, ip)) in hosts.iter().enumerate() {
            attach_host(&switch, index, ns, ip)?;
        }
        Ok(Net {
            nodes: nodes.to_vec(),
            cut: BTreeSet::new(),
        })
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Makes every pair in `pairs` unable to talk, in both directions. Pairs already cut stay cut.
    pub fn cut(&mut self, pairs: &[(NodeId, NodeId)]) -> anyhow::Result<()> {
        for &(a, b) in pairs {
            let pair = (a.min(b), a.max(b));
            if a == b || !self.cut.insert(pair) {
                continue;
            }
            drop_between(a, b)?;
            drop_between(b, a)?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for &node in &self.nodes {
            in_ns(&node_namespace(node), "iptables", &["-F"])?;
        }
        self.cut.clear();
        Ok(())
    }

    /// Kills what runs in the namespaces and deletes them. Safe to call more than once.
    pub fn teardown(&self) {
        let mut names: Vec<String> = self.nodes.iter().map(|&n| node_namespace(n)).collect();
        names.push(client_namespace());
        names.push(switch_namespace());
        for ns in names {
            kill_namespace_processes(&ns);
            let _ = run("ip", &["netns", "del", &ns]);
        }
    }
}

/// Puts namespace `ns` on the switch with address `ip`: a veth pair, one end `eth0` in `ns`,
/// the other enslaved to the bridge.
fn attach_host(switch: &str, index: usize, ns: &str, ip: &str) -> anyhow::Result<()> {
    run("ip", &["netns", "add", ns])?;
    let port = format!("gjv{index}");
    run(
        "ip",
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    run("ip", &["link", "set", &port, "netns", switch])?;
    in_ns(switch, "ip", &["link", "set", &port, "master", "br0", "up"])?;
    in_ns(
        ns,
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"],
    )?;
    in_ns(ns, "ip", &["link", "set", "eth0", "up"])?;
    in_ns(ns, "ip", &["link", "set", "lo", "up"])?;
    Ok(())
}

/// In `from`'s namespace, drops everything to and from `to`.
fn drop_between(from: NodeId, to: NodeId) -> anyhow::Result<()> {
    let ns = node_namespace(from);
    let peer = node_ip(to);
    in_ns(&ns, "iptables", &["-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
    in_ns(
        &ns,
        "iptables",
        &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"],
    )?;
    Ok(())
}

/// Enters the clients' namespace with the calling thread. Call it before any other thread
/// exists: threads spawned afterwards (the async runtime's) inherit the namespace.
pub fn enter_client_namespace() -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{}", client_namespace());
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd; affects only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "cannot enter the clients' namespace: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
