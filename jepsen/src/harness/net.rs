//! The test network: one network namespace per node and one for the clients, joined by a bridge
//! that lives in a namespace of its own, so nothing of the run touches the host's network. Each
//! node is then a separate host to iptables (inside one namespace all loopback traffic shares a
//! source address, and partitions could not be expressed).
//!
//! Partitions are iptables DROP rules in the nodes' own namespaces, for both directions on both
//! sides. Clients are never cut off from nodes: the nemesis partitions the cluster, not the
//! clients (as Jepsen does), so the history shows what each side of a partition answers.
//!
//! Every namespace carries the run's prefix (`--namespace-prefix`, default `gjep-`); `cleanup_stale` removes what an earlier run left
//! (processes first, then namespaces), and `Net::teardown` removes what this run made. Deleting a
//! namespace deletes its veth ends and its iptables rules with it.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

use crate::harness::NodeId;

/// Every namespace of the suite starts with this, so a later run can find and remove leftovers.
/// Two suites on one machine need different prefixes (`--namespace-prefix`), or each one's
/// cleanup kills the other's nodes.
pub const DEFAULT_NAMESPACE_PREFIX: &str = "gjep-";
/// This run's prefix, set once from the command line before any namespace is touched.
static NAMESPACE_PREFIX: OnceLock<String> = OnceLock::new();
const NAMESPACE_PREFIX_LEN_MAX: usize = 32;
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

/// Sets this run's namespace prefix: lowercase letters, digits and `-`, starting with a letter.
pub fn set_namespace_prefix(prefix: &str) -> anyhow::Result<()> {
    let well_formed = prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.len() <= NAMESPACE_PREFIX_LEN_MAX
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed {
        bail!(
            "namespace prefix {prefix:?}: use 1-{NAMESPACE_PREFIX_LEN_MAX} lowercase letters, \
             digits or '-', starting with a letter"
        );
    }
    if NAMESPACE_PREFIX.get_or_init(|| prefix.to_owned()) != prefix {
        bail!("the namespace prefix is already set");
    }
    Ok(())
}

fn namespace_prefix() -> &'static str {
    NAMESPACE_PREFIX.get_or_init(|| DEFAULT_NAMESPACE_PREFIX.to_owned())
}

/// The source name of the tmpfs that holds a node's data dir in a scenario with a disk to fill
/// (`Nodes`), so that a later run finds and unmounts what a killed one left mounted.
pub fn disk_mount_source() -> String {
    format!("{}disk", namespace_prefix())
}

pub fn node_namespace(node: NodeId) -> String {
    format!("{}n{node}", namespace_prefix())
}

pub fn client_namespace() -> String {
    format!("{}clients", namespace_prefix())
}

fn switch_namespace() -> String {
    format!("{}switch", namespace_prefix())
}

/// Whether `name` is one of this run's namespaces: exactly the prefix and a name the suite
/// gives, so the default `gjep-` never matches another suite's `gjep-b-n1`.
fn is_suite_namespace(name: &str) -> bool {
    match name.strip_prefix(namespace_prefix()) {
        Some("clients" | "switch") => true,
        Some(rest) => rest
            .strip_prefix('n')
            .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit())),
        None => false,
    }
}

pub fn node_ip(node: NodeId) -> String {
    format!("{SUBNET}.{node}")
}

/// Kills every process left in a namespace of an earlier run, then deletes the namespaces and
/// unmounts its nodes' data-dir disks.
pub fn cleanup_stale() -> anyhow::Result<usize> {
    let listing = run("ip", &["netns", "list"])?;
    let mut removed = 0;
    for line in listing.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !is_suite_namespace(name) {
            continue;
        }
        kill_namespace_processes(name);
        run("ip", &["netns", "del", name])?;
        removed += 1;
    }
    unmount_stale_disks()?;
    Ok(removed)
}

/// Unmounts every data-dir disk (`disk_mount_source`) still mounted, lazily: a node of the run
/// that mounted it may still be on its way out.
fn unmount_stale_disks() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    let source = disk_mount_source();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        if let (Some(from), Some(target)) = (fields.next(), fields.next()) {
            if from == source {
                // /proc/self/mounts writes a space in a path as \040.
                run("umount", &["-l", &target.replace("\\040", " ")])?;
            }
        }
    }
    Ok(())
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
    // Made inside the switch's namespace, never in the host's, where the ports of two suites
    // running at once would share one name space.
    let port = format!("gjv{index}");
    in_ns(
        switch,
        "ip",
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_suites_own_names_count_as_its_namespaces() {
        assert!(is_suite_namespace("gjep-n1"));
        assert!(is_suite_namespace("gjep-n12"));
        assert!(is_suite_namespace("gjep-clients"));
        assert!(is_suite_namespace("gjep-switch"));
        assert!(!is_suite_namespace("gjep-b-n1"), "another suite's prefix");
        assert!(!is_suite_namespace("gjep-n"));
        assert!(!is_suite_namespace("gjep-nx"));
        assert!(!is_suite_namespace("other-n1"));
    }

    #[test]
    fn prefixes_are_checked() {
        for bad in [
            "",
            "1abc",
            "Upper-",
            "has space",
            "semi;colon",
            &"a".repeat(33),
        ] {
            assert!(set_namespace_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
