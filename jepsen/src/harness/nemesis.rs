//! The nemesis: faults injected into the cluster, each with its own undo. A seeded schedule
//! alternates a quiet spell and a fault held for a while, drawn from the scenario's menu, and
//! ends with `heal_all`, which undoes whatever is still active.
//!
//! Faults: partitions (iptables in the nodes' namespaces: one node, the leader of a group, a
//! random majority/minority, a bridge, a majorities ring), kill -9 (one, a majority, all) and
//! restart, SIGSTOP/SIGCONT (a node or a leader), clock skew through libfaketime (ahead, behind,
//! the leader, a jump while running; each applied by restarting the node under its new offset),
//! membership (remove a node, possibly a leader, then wipe it and add it back), and a full disk
//! (a node's, or a leader's: a file takes its data dir's free space, so its next write fails
//! and it stops; undone by freeing the space and starting it again), and power cuts (a node,
//! a leader or every node at once: kill -9, and each one's lazy disk loses what it had not
//! synced; undone by a restart).

use std::time::Duration;

use anyhow::{anyhow, bail};
use gavel_jepsen::history::NemesisPhase;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use crate::harness::client::Api;
use crate::harness::net::Net;
use crate::harness::nodes::{client_addr, client_url, peer_addr, Nodes};
use crate::harness::recorder::Recorder;
use crate::harness::NodeId;

/// How long a membership change may take to commit.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    IsolateNode,
    IsolateLeader,
    MajorityMinority,
    Bridge,
    Ring,
    KillOne,
    KillMajority,
    KillAll,
    PauseNode,
    PauseLeader,
    SkewAhead,
    SkewBehind,
    SkewLeader,
    SkewJump,
    RemoveNode,
    RemoveLeader,
    FillDisk,
    FillLeaderDisk,
    PowerOffNode,
    PowerOffLeader,
    PowerOffAll,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IsolateNode => "partition-node",
            FaultKind::IsolateLeader => "partition-leader",
            FaultKind::MajorityMinority => "partition-majority",
            FaultKind::Bridge => "partition-bridge",
            FaultKind::Ring => "partition-ring",
            FaultKind::KillOne => "kill-one",
            FaultKind::KillMajority => "kill-majority",
            FaultKind::KillAll => "kill-all",
            FaultKind::PauseNode => "pause-node",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::SkewAhead => "skew-ahead",
            FaultKind::SkewBehind => "skew-behind",
            FaultKind::SkewLeader => "skew-leader",
            FaultKind::SkewJump => "skew-jump",
            FaultKind::RemoveNode => "membership-remove",
            FaultKind::RemoveLeader => "membership-remove-leader",
            FaultKind::FillDisk => "disk-full",
            FaultKind::FillLeaderDisk => "disk-full-leader",
            FaultKind::PowerOffNode => "power-off-node",
            FaultKind::PowerOffLeader => "power-off-leader",
            FaultKind::PowerOffAll => "power-off-all",
        }
    }
}

/// How to undo an active fault.
#[derive(Clone, Debug)]
enum Undo {
    Heal,
    Restart(Vec<NodeId>),
    Resume(Vec<NodeId>),
    Unskew(Vec<NodeId>),
    Rejoin(NodeId),
    FreeDisk(NodeId),
}

struct Active {
    kind: FaultKind,
    nodes: Vec<NodeId>,
    undo: Undo,
}

pub struct Nemesis {
    pub net: Net,
    pub nodes: Nodes,
    api: Api,
    admin: String,
    recorder: Recorder,
    members: Vec<NodeId>,
    groups: u32,
    /// Skews the schedule draws from, in ms: inside and well outside the configured bound.
    skews_ms: Vec<i64>,
    active: Option<Active>,
    pub applied: Vec<String>,
}

impl Nemesis {
    pub fn new(
        net: Net,
        nodes: Nodes,
        api: Api,
        admin: String,
        recorder: Recorder,
        max_clock_offset_ms: i64,
    ) -> Nemesis {
        let members = nodes.settings().initial.clone();
        let groups = nodes.settings().groups;
        let small = (max_clock_offset_ms / 2).max(1);
        let large = max_clock_offset_ms * 6;
        Nemesis {
            net,
            nodes,
            api,
            admin,
            recorder,
            members,
            groups,
            skews_ms: vec![small, -small, large, -large],
            active: None,
            applied: Vec::new(),
        }
    }

    /// The leader of `group` as the first answering node reports it.
    pub async fn leader_of(&self, group: u32) -> Option<NodeId> {
        for &node in &self.nodes.running() {
            if self.nodes.is_paused(node) {
                continue;
            }
            let Ok(status) = self.api.cluster_status(node, &self.admin, false).await else {
                continue;
            };
            let leader = status["groups"].as_array().and_then(|groups| {
                groups
                    .iter()
                    .find(|g| g["id"] == group)
                    .and_then(|g| g["leader"].as_u64())
            });
            if leader.is_some() {
                return leader;
            }
        }
        None
    }

    async fn some_leader(&self, rng: &mut StdRng) -> anyhow::Result<NodeId> {
        let group = rng.gen_range(0..self.groups);
        self.leader_of(group)
            .await
            .ok_or_else(|| anyhow!("group {group} has no known leader"))
    }

    fn pick(&self, rng: &mut StdRng) -> NodeId {
        self.members[rng.gen_range(0..self.members.len())]
    }

    /// Starts a fault of `kind`. Only one fault is active at a time.
    pub async fn start(&mut self, kind: FaultKind, rng: &mut StdRng) -> anyhow::Result<()> {
        if self.active.is_some() {
            self.stop().await?;
        }
        let (nodes, undo, detail) = self.inject(kind, rng).await?;
        self.recorder.nemesis(
            NemesisPhase::Start,
            kind.name(),
            detail.clone(),
            nodes.clone(),
        );
        self.applied.push(format!("{}: {detail}", kind.name()));
        self.active = Some(Active { kind, nodes, undo });
        Ok(())
    }

    async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
    ) -> anyhow::Result<(Vec<NodeId>, Undo, String)> {
        let mut members = self.members.clone();
        members.shuffle(rng);
        let majority = members.len() / 2 + 1;
        match kind {
            FaultKind::IsolateNode | FaultKind::IsolateLeader => {
                let node = if kind == FaultKind::IsolateLeader {
                    self.some_leader(rng).await?
                } else {
                    self.pick(rng)
                };
                let others: Vec<NodeId> = self
                    .members
                    .iter()
                    .copied()
                    .filter(|&n| n != node)
                    .collect();
                self.partition(&[node], &others)?;
                Ok((vec![node], Undo::Heal, format!("node {node} isolated")))
            }
            FaultKind::MajorityMinority => {
                let (big, small) = members.split_at(majority);
                self.partition(big, small)?;
                Ok((
                    small.to_vec(),
                    Undo::Heal,
                    format!("majority {big:?} | minority {small:?}"),
                ))
            }
            FaultKind::Bridge => {
                let bridge = members[0];
                let rest = &members[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                self.partition(left, right)?;
                Ok((
                    vec![bridge],
                    Undo::Heal,
                    format!("{left:?} | {right:?}, node {bridge} reaches both"),
                ))
            }
            FaultKind::Ring => {
                // Each node keeps its two ring neighbours: every node sees a majority (itself
                // and two others of five), but no two nodes see the same majority.
                let n = members.len();
                let mut cuts = Vec::new();
                for i in 0..n {
                    for j in (i + 1)..n {
                        let distance = (j - i).min(n - (j - i));
                        if distance > 1 {
                            cuts.push((members[i], members[j]));
                        }
                    }
                }
                self.net.cut(&cuts)?;
                Ok((members.clone(), Undo::Heal, format!("ring {members:?}")))
            }
            FaultKind::KillOne | FaultKind::KillMajority | FaultKind::KillAll => {
                let count = match kind {
                    FaultKind::KillOne => 1,
                    FaultKind::KillMajority => majority,
                    _ => members.len(),
                };
                let victims: Vec<NodeId> = members[..count].to_vec();
                for &node in &victims {
                    self.nodes.kill(node);
                }
                Ok((
                    victims.clone(),
                    Undo::Restart(victims.clone()),
                    format!("kill -9 {victims:?}"),
                ))
            }
            FaultKind::PauseNode | FaultKind::PauseLeader => {
                let node = if kind == FaultKind::PauseLeader {
                    self.some_leader(rng).await?
                } else {
                    self.pick(rng)
                };
                self.nodes.pause(node);
                Ok((
                    vec![node],
                    Undo::Resume(vec![node]),
                    format!("SIGSTOP {node}"),
                ))
            }
            FaultKind::SkewAhead | FaultKind::SkewBehind | FaultKind::SkewLeader => {
                let node = if kind == FaultKind::SkewLeader {
                    self.some_leader(rng).await?
                } else {
                    self.pick(rng)
                };
                let magnitude = self.skews_ms[rng.gen_range(0..self.skews_ms.len())].abs();
                let skew = match kind {
                    FaultKind::SkewAhead => magnitude,
                    FaultKind::SkewBehind => -magnitude,
                    _ => self.skews_ms[rng.gen_range(0..self.skews_ms.len())],
                };
                self.nodes.restart_skewed(node, skew).await?;
                Ok((
                    vec![node],
                    Undo::Unskew(vec![node]),
                    format!("node {node} clock {skew:+} ms"),
                ))
            }
            FaultKind::SkewJump => {
                // A running node's clock jumps: it restarts under a new offset, twice.
                let node = self.pick(rng);
                let first = self.skews_ms[rng.gen_range(0..self.skews_ms.len())];
                self.nodes.restart_skewed(node, first).await?;
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let second = -first;
                self.nodes.restart_skewed(node, second).await?;
                Ok((
                    vec![node],
                    Undo::Unskew(vec![node]),
                    format!("node {node} clock {first:+} ms then {second:+} ms"),
                ))
            }
            FaultKind::FillDisk | FaultKind::FillLeaderDisk => {
                let node = if kind == FaultKind::FillLeaderDisk {
                    self.some_leader(rng).await?
                } else {
                    self.pick(rng)
                };
                let bytes = self.nodes.fill_disk(node)?;
                Ok((
                    vec![node],
                    Undo::FreeDisk(node),
                    format!("node {node}'s disk filled ({bytes} bytes taken)"),
                ))
            }
            FaultKind::PowerOffNode | FaultKind::PowerOffLeader | FaultKind::PowerOffAll => {
                let victims = match kind {
                    FaultKind::PowerOffNode => vec![self.pick(rng)],
                    FaultKind::PowerOffLeader => vec![self.some_leader(rng).await?],
                    _ => members.clone(),
                };
                // Every victim goes down before any disk forgets: one cut, not a sequence.
                for &node in &victims {
                    self.nodes.kill(node);
                }
                let mut lost = Vec::new();
                for &node in &victims {
                    let cut = self.nodes.power_off(node, rng)?;
                    lost.push(format!("node {node}: {cut}"));
                }
                Ok((
                    victims.clone(),
                    Undo::Restart(victims),
                    format!(
                        "power cut (unsynced pages kept/written): {}",
                        lost.join("; ")
                    ),
                ))
            }
            FaultKind::RemoveNode | FaultKind::RemoveLeader => {
                let node = if kind == FaultKind::RemoveLeader {
                    self.some_leader(rng).await?
                } else {
                    self.pick(rng)
                };
                self.remove_member(node).await?;
                // An operator stops a removed node; it comes back empty, as a new member.
                self.nodes.kill(node);
                Ok((
                    vec![node],
                    Undo::Rejoin(node),
                    format!("node {node} removed"),
                ))
            }
        }
    }

    fn partition(&mut self, left: &[NodeId], right: &[NodeId]) -> anyhow::Result<()> {
        let mut pairs = Vec::new();
        for &a in left {
            for &b in right {
                pairs.push((a, b));
            }
        }
        self.net.cut(&pairs)
    }

    /// An admin call through any node but `avoid`, retried on the others.
    async fn admin_call(
        &self,
        avoid: NodeId,
        build: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<()> {
        let mut last = String::from("no node to ask");
        for &via in &self.nodes.running() {
            if via == avoid || self.nodes.is_paused(via) {
                continue;
            }
            let request = build(self.api.http(), client_url(via))
                .bearer_auth(&self.admin)
                .timeout(MEMBERSHIP_TIMEOUT);
            match request.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("node {via}: {} {}", r.status(), r.text().await?),
                Err(e) => last = format!("node {via}: {e}"),
            }
        }
        bail!("{last}")
    }

    async fn remove_member(&mut self, node: NodeId) -> anyhow::Result<()> {
        self.admin_call(node, |http, base| {
            http.delete(format!("{base}/cluster/nodes/{node}"))
        })
        .await?;
        self.members.retain(|&n| n != node);
        Ok(())
    }

    async fn add_member(&mut self, node: NodeId) -> anyhow::Result<()> {
        self.nodes.rejoin_empty(node).await?;
        let body = json!({
            "id": node,
            "clientAddr": client_addr(node),
            "peerAddr": peer_addr(node),
            "voter": true,
        });
        self.admin_call(node, |http, base| {
            http.post(format!("{base}/cluster/nodes")).json(&body)
        })
        .await?;
        self.members.push(node);
        self.members.sort_unstable();
        Ok(())
    }

    /// Undoes the active fault, if any.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(active) = self.active.take() else {
            return Ok(());
        };
        match &active.undo {
            Undo::Heal => self.net.heal()?,
            Undo::Restart(nodes) => {
                for &node in nodes {
                    self.nodes.restart(node).await?;
                }
            }
            Undo::Resume(nodes) => nodes.iter().for_each(|&n| self.nodes.resume(n)),
            Undo::Unskew(nodes) => {
                for &node in nodes {
                    self.nodes.restart_skewed(node, 0).await?;
                }
            }
            Undo::Rejoin(node) => self.add_member(*node).await?,
            Undo::FreeDisk(node) => {
                self.nodes.free_disk(*node)?;
                // It stopped when a write failed, or it will not now.
                self.nodes.restart(*node).await?;
            }
        }
        self.recorder.nemesis(
            NemesisPhase::Stop,
            active.kind.name(),
            format!("{:?} undone", active.undo),
            active.nodes,
        );
        Ok(())
    }

    /// Undoes the active fault and makes sure every node runs, unpaused, unskewed, connected.
    pub async fn heal_all(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.net.heal()?;
        for node in self.members.clone() {
            self.nodes.free_disk(node)?;
            self.nodes.resume(node);
            if self.nodes.skew_ms(node) != 0 {
                self.nodes.restart_skewed(node, 0).await?;
            }
            self.nodes.restart(node).await?;
        }
        Ok(())
    }

    pub fn members(&self) -> &[NodeId] {
        &self.members
    }
}
