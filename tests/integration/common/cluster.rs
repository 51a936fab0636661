//! The multi-node harness: N real `gavel serve` processes on loopback forming one replicated
//! cluster, driven over real sockets exactly as clients and operators would.
//!
//! It owns the processes of a cluster (ports, data dirs, `--initial-cluster`, `--join`, and per
//! node SIGKILL, SIGTERM, SIGSTOP, SIGCONT and restart on the same data dir), the `/cluster`
//! view (leaders, convergence of applied indexes and state digests), the `gavel cluster` CLI,
//! and a ledger of acknowledged bids that is checked against every replica's history.
//! Like the single-node harness it knows nothing of the server's internals, with two exceptions:
//! which group holds an auction (`gavel_cluster::group_of`, a stable hash pinned by a unit
//! test), and the nodes' logs, which a test may search for evidence of how something happened
//! (a snapshot install). When a test fails, or with `GAVEL_TEST_PRINT_LOGS` set, every node's
//! log is printed. A cluster may give each node a loopback address of its own, extra flags
//! (TLS files) and HTTPS (the harness then trusts the given CA).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;

use super::*;

/// Raft groups of every test cluster.
pub const CLUSTER_GROUPS: u32 = 4;
/// How long a (debug-build) node may take to answer `/readyz` (or `/healthz` for `--join`).
const NODE_READY_TIMEOUT_MS: u64 = 60_000;
/// How long one readiness or health probe may take (a slow one is simply retried).
const PROBE_TIMEOUT_MS: u64 = 500;
/// Attempts to form a cluster when a chosen port was taken meanwhile.
const CLUSTER_SPAWN_ATTEMPTS_MAX: u32 = 3;
/// Ports are chosen below the kernel's ephemeral range (32768 and up on Linux), so that no
/// outgoing connection takes a stopped node's port before it restarts.
const PORT_MIN: u16 = 20_000;
const PORT_MAX: u16 = 32_000;
/// Upper bound of one `GET /cluster` (it asks every peer, each within 1.5 s).
const STATUS_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Upper bound of one write attempt: the node's propose timeout (5 s) plus forwarding margin.
pub const WRITE_ATTEMPT_TIMEOUT_MS: u64 = 8_000;
/// How long the tests give replicas to converge after a fault heals. Generous: the machine is
/// shared and the build is unoptimized.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `gavel cluster ...` command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// The most of each node's log printed when a test fails, in bytes.
const NODE_LOG_PRINT_BYTES_MAX: usize = 24 * 1024;
/// The most creates tried to land an auction in a given group.
const CREATES_PER_GROUP_MAX: usize = 64;

/// How a cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Initial members, ids 1..=nodes.
    pub nodes: u64,
    pub groups: u32,
    /// `--snapshot-after-entries` on every node when set.
    pub snapshot_after_entries: Option<u64>,
    /// Extra environment of one node's process, on every start (e.g. libfaketime's, to run it
    /// under a skewed clock); change it between runs with [`Cluster::set_node_env`].
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// Nodes `start` waits for on `/healthz` only, because the test expects them unready.
    pub unready: BTreeSet<u64>,
    /// Node `n` listens on 127.0.0.`n` instead of 127.0.0.1, so that each node has an address
    /// of its own (e.g. the IP SAN of its certificate).
    pub loopback_ip_per_node: bool,
    /// Extra flags of one node's `gavel serve`, on every start (e.g. TLS files).
    pub node_args: BTreeMap<u64, Vec<String>>,
    /// The nodes serve HTTPS with certificates from this CA (PEM): the harness then speaks
    /// `https://` and trusts it.
    pub https_ca: Option<PathBuf>,
    /// Where nodes listen and what addresses they announce.
    pub advertise: Advertise,
    /// The test asserts timing bounds: it runs alone (see `common::machine`).
    pub whole_machine: bool,
}

/// How the nodes of a cluster bind and announce their addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Advertise {
    /// Bind and announce 127.0.0.1.
    #[default]
    Loopback,
    /// Bind every interface (0.0.0.0) and announce 127.0.0.(id + 1), with
    /// `--advertise-client-url` and `--advertise-peer-addr`.
    Flags,
    /// Like `Flags`, through `GAVEL_ADVERTISE_CLIENT_URL` and `GAVEL_ADVERTISE_PEER_ADDR`.
    Env,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 3,
            groups: CLUSTER_GROUPS,
            snapshot_after_entries: None,
            node_env: BTreeMap::new(),
            unready: BTreeSet::new(),
            loopback_ip_per_node: false,
            node_args: BTreeMap::new(),
            https_ca: None,
            advertise: Advertise::Loopback,
            whole_machine: false,
        }
    }
}

/// One `gavel serve` process of a cluster (running, stopped or dead).
pub struct Member {
    pub id: u64,
    /// The address others reach this node at: 127.0.0.1, 127.0.0.`id` with one loopback
    /// address per node, or 127.0.0.(id + 1) when it binds every interface and advertises.
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    dir: PathBuf,
    join: bool,
    child: Option<Child>,
    paused: bool,
    api: Api,
}

impl Member {
    /// The client address others reach this node at (announced in `/cluster`).
    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// The peer address others reach this node at (announced, and in `--initial-cluster`).
    pub fn peer_addr(&self) -> String {
        format!("{}:{}", self.host, self.peer_port)
    }

    /// `--listen` and `--peer-listen`: every interface when the node advertises.
    fn listen_addrs(&self, advertise: Advertise) -> (String, String) {
        match advertise {
            Advertise::Loopback => (self.client_addr(), self.peer_addr()),
            Advertise::Flags | Advertise::Env => (
                format!("0.0.0.0:{}", self.client_port),
                format!("0.0.0.0:{}", self.peer_port),
            ),
        }
    }

    /// The advertising flags, or environment, of `advertise`.
    fn advertise(&self, advertise: Advertise, command: &mut Command) {
        let url = format!("http://{}", self.client_addr());
        match advertise {
            Advertise::Loopback => {}
            Advertise::Flags => {
                command
                    .arg("--advertise-client-url")
                    .arg(url)
                    .arg("--advertise-peer-addr")
                    .arg(self.peer_addr());
            }
            Advertise::Env => {
                command
                    .env("GAVEL_ADVERTISE_CLIENT_URL", url)
                    .env("GAVEL_ADVERTISE_PEER_ADDR", self.peer_addr());
            }
        }
    }

    pub fn api(&self) -> Api {
        self.api.clone()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Appends a harness note, stamped like the node's own log lines.
    fn append_to_log(&self, text: &str) {
        use std::io::Write;
        let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let text = text.replace("=== harness:", &format!("=== {stamp} harness:"));
        if let Ok(mut file) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let _ = file.write_all(text.as_bytes());
        }
    }

    /// The whole log of every run of this node, without terminal colour codes.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let mut from = log.len().saturating_sub(NODE_LOG_PRINT_BYTES_MAX);
        while !log.is_char_boundary(from) {
            from += 1;
        }
        log[from..].to_owned()
    }

    fn spawn(&mut self, config: &ClusterConfig, initial_cluster: &str) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the node log");
        let log_err = log.try_clone().expect("clone the node log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gavel"));
        let (listen, peer_listen) = self.listen_addrs(config.advertise);
        command
            .arg("serve")
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--listen")
            .arg(listen)
            .arg("--peer-listen")
            .arg(peer_listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--groups")
            .arg(config.groups.to_string());
        if self.join {
            command.arg("--join");
        } else {
            command.arg("--initial-cluster").arg(initial_cluster);
        }
        if let Some(entries) = config.snapshot_after_entries {
            command
                .arg("--snapshot-after-entries")
                .arg(entries.to_string());
        }
        command.args(config.node_args.get(&self.id).into_iter().flatten());
        command
            .env("GAVEL_AUTH_SECRET", SECRET)
            .env("NO_COLOR", "1")
            .env_remove("GAVEL_TOKEN")
            .env_remove("GAVEL_ADVERTISE_CLIENT_URL")
            .env_remove("GAVEL_ADVERTISE_PEER_ADDR")
            .envs(config.node_env.get(&self.id).into_iter().flatten().cloned())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // After the removals above, which would undo it.
        self.advertise(config.advertise, &mut command);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        // Never leave an orphan node behind if the test process dies without running Drop.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.append_to_log(&format!(
            "\n=== harness: starting node {} (client {}, peer {}{}) ===\n",
            self.id,
            self.client_addr(),
            self.peer_addr(),
            if self.join { ", --join" } else { "" }
        ));
        self.child = Some(command.spawn().expect("spawn the gavel binary"));
        self.paused = false;
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the node is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill -{signal} {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.paused = false;
            self.append_to_log("\n=== harness: killed with SIGKILL ===\n");
        }
    }

    /// Whether the process has exited (and reaps it).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("poll the node process")?;
        self.child = None;
        self.append_to_log(&format!("\n=== harness: the node exited: {status} ===\n"));
        Some(status)
    }
}

/// A running cluster. Every process is killed (SIGKILL) when it is dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub config: ClusterConfig,
    initial_cluster: String,
    members: BTreeMap<u64, Member>,
    http: reqwest::Client,
    admin: String,
    /// Released after `Drop` killed the processes.
    _machine: MachineHold,
}

impl Cluster {
    /// Starts `config.nodes` nodes with one `--initial-cluster` and waits until every one
    /// answers `/readyz` with 200.
    pub async fn start(config: ClusterConfig) -> Cluster {
        Cluster::start_prepared(config, |_, _, _| {}).await
    }

    /// Like [`Cluster::start`], but first runs `prepare(id, data dir, --initial-cluster)` for
    /// every member (e.g. `gavel snapshot restore` building its data dir); again on each
    /// attempt, which uses new ports and new dirs.
    pub async fn start_prepared(
        config: ClusterConfig,
        prepare: impl Fn(u64, &std::path::Path, &str),
    ) -> Cluster {
        let machine = if config.whole_machine {
            take_whole_machine()
        } else {
            share_machine()
        };
        let dir = tempfile::Builder::new()
            .prefix("gavel-cluster-it-")
            .tempdir()
            .expect("create a temporary directory");
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(30_000))
            .pool_max_idle_per_host(64);
        if let Some(ca) = &config.https_ca {
            let pem = std::fs::read(ca).expect("read the test CA");
            let ca = reqwest::Certificate::from_pem(&pem).expect("the test CA is PEM");
            http = http.add_root_certificate(ca);
        }
        let http = http.build().expect("build the HTTP client");
        let mut cluster = Cluster {
            dir,
            config,
            initial_cluster: String::new(),
            members: BTreeMap::new(),
            http,
            admin: token("cluster-admin", &["admin"]),
            _machine: machine,
        };
        for attempt in 0..CLUSTER_SPAWN_ATTEMPTS_MAX {
            cluster.place_initial_members(attempt);
            let ids = cluster.ids();
            for id in &ids {
                prepare(
                    *id,
                    &cluster.member(*id).data_dir(),
                    &cluster.initial_cluster,
                );
            }
            for id in &ids {
                let member = cluster.members.get_mut(id).expect("member");
                member.spawn(&cluster.config, &cluster.initial_cluster);
            }
            let (unready, ready): (Vec<u64>, Vec<u64>) = ids
                .iter()
                .partition(|id| cluster.config.unready.contains(id));
            let started = match cluster.await_ready(&ready, "/readyz").await {
                Ok(()) => cluster.await_ready(&unready, "/healthz").await,
                Err(id) => Err(id),
            };
            match started {
                Ok(()) => return cluster,
                Err(id) => {
                    eprintln!("node {id} exited before the cluster was ready (attempt {attempt}); retrying on new ports");
                    for id in &ids {
                        cluster.members.get_mut(id).expect("member").kill9();
                    }
                }
            }
        }
        panic!(
            "the cluster did not form in {CLUSTER_SPAWN_ATTEMPTS_MAX} attempts; logs:\n{}",
            cluster.all_logs()
        );
    }

    fn place_initial_members(&mut self, attempt: u32) {
        self.members.clear();
        let mut initial = Vec::new();
        for id in 1..=self.config.nodes {
            let member = self.new_member(id, false, attempt);
            initial.push(format!("{id}={}", member.peer_addr()));
            self.members.insert(id, member);
        }
        self.initial_cluster = initial.join(",");
    }

    fn new_member(&self, id: u64, join: bool, attempt: u32) -> Member {
        let dir = self.dir.path().join(format!("n{id}-a{attempt}"));
        std::fs::create_dir_all(&dir).expect("create the node dir");
        let client_port = pick_port();
        let peer_port = pick_port();
        let host = match self.config.advertise {
            Advertise::Loopback if self.config.loopback_ip_per_node => format!("127.0.0.{id}"),
            Advertise::Loopback => "127.0.0.1".to_owned(),
            Advertise::Flags | Advertise::Env => format!("127.0.0.{}", id + 1),
        };
        let scheme = if self.config.https_ca.is_some() {
            "https"
        } else {
            "http"
        };
        Member {
            id,
            host: host.clone(),
            client_port,
            peer_port,
            dir,
            join,
            child: None,
            paused: false,
            api: Api {
                base_url: format!("{scheme}://{host}:{client_port}"),
                http: self.http.clone(),
            },
        }
    }

    /// Polls `path` on every node of `ids` until each answers 200. `Err(id)` when a node's
    /// process exits first; panics (with the logs) at the deadline.
    async fn await_ready(&mut self, ids: &[u64], path: &str) -> Result<(), u64> {
        let deadline = Instant::now() + Duration::from_millis(NODE_READY_TIMEOUT_MS);
        let mut waiting: BTreeSet<u64> = ids.iter().copied().collect();
        while !waiting.is_empty() {
            for id in waiting.clone() {
                let member = self.members.get_mut(&id).expect("member");
                if member.child.is_none() || member.exited().is_some() {
                    return Err(id);
                }
                let probe = self
                    .http
                    .get(member.api.url(path))
                    .timeout(Duration::from_millis(PROBE_TIMEOUT_MS))
                    .send()
                    .await;
                if matches!(&probe, Ok(r) if r.status() == 200) {
                    waiting.remove(&id);
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes {waiting:?} did not answer {path} with 200 within {NODE_READY_TIMEOUT_MS} ms; logs:\n{}",
                self.all_logs()
            );
            if !waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Members and processes

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    pub fn member(&self, id: u64) -> &Member {
        self.members
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        self.members
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn api(&self, id: u64) -> Api {
        self.member(id).api()
    }

    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// Starts an empty node with `--join` (it bootstraps nothing) and waits for `/healthz`.
    pub async fn start_joiner(&mut self, id: u64) -> &Member {
        assert!(!self.members.contains_key(&id), "node {id} already exists");
        let mut member = self.new_member(id, true, 0);
        member.spawn(&self.config, "");
        self.members.insert(id, member);
        if let Err(id) = self.await_ready(&[id], "/healthz").await {
            panic!(
                "joining node {id} exited at start; logs:\n{}",
                self.all_logs()
            );
        }
        self.member(id)
    }

    /// SIGKILL: the node gets no chance to flush anything.
    pub fn kill9(&mut self, id: u64) {
        self.member_mut(id).kill9();
    }

    /// Starts a stopped node again on its data dir and ports, without waiting for it: for a
    /// node the test expects to stop by itself ([`Cluster::await_exit`]).
    pub fn spawn_again(&mut self, id: u64) {
        let config = self.config.clone();
        let initial = self.initial_cluster.clone();
        let member = self.member_mut(id);
        assert!(!member.is_running(), "stop node {id} before starting it");
        member.spawn(&config, &initial);
    }

    /// Waits (bounded) for node `id` to exit by itself; returns its exit status.
    pub async fn await_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.member_mut(id).exited() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {id} did not exit within {timeout:?}; logs:\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// SIGTERM, then waits (bounded) for the process to exit; returns its exit status.
    pub async fn terminate(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let member = self.member_mut(id);
        member.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.member_mut(id).exited() {
                return status;
            }
            if Instant::now() >= deadline {
                self.member_mut(id).kill9();
                panic!(
                    "node {id} did not exit within {timeout:?} of SIGTERM; logs:\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// SIGSTOP: the process freezes with its sockets open, like a node in a long GC pause.
    pub fn pause(&mut self, id: u64) {
        let member = self.member_mut(id);
        member.signal(libc::SIGSTOP);
        member.paused = true;
        member.append_to_log("\n=== harness: SIGSTOP ===\n");
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, id: u64) {
        let member = self.member_mut(id);
        member.signal(libc::SIGCONT);
        member.paused = false;
        member.append_to_log("\n=== harness: SIGCONT ===\n");
    }

    /// Replaces the extra environment `id` runs with from its next start on.
    pub fn set_node_env(&mut self, id: u64, env: Vec<(String, String)>) {
        self.config.node_env.insert(id, env);
    }

    /// Restarts stopped nodes on their data dirs and ports, all at once (a lone node of a dead
    /// cluster cannot become ready), and waits until every one answers `/readyz` with 200.
    pub async fn restart(&mut self, ids: &[u64]) {
        for &id in ids {
            let config = self.config.clone();
            let initial = self.initial_cluster.clone();
            let member = self.member_mut(id);
            assert!(!member.is_running(), "stop node {id} before restarting it");
            member.spawn(&config, &initial);
        }
        if let Err(id) = self.await_ready(ids, "/readyz").await {
            panic!(
                "node {id} exited while restarting; logs:\n{}",
                self.all_logs()
            );
        }
    }

    /// The ids of nodes whose process runs and is not stopped.
    pub fn live_ids(&self) -> Vec<u64> {
        self.members
            .values()
            .filter(|m| m.is_running() && !m.is_paused())
            .map(|m| m.id)
            .collect()
    }

    /// Every node's log (the end of it), for failure messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for member in self.members.values() {
            out.push_str(&format!(
                "----- node {} log ({}) -----\n{}\n",
                member.id,
                member.log_path().display(),
                member.log_tail()
            ));
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // The /cluster view

    /// `GET /cluster` on node `via`, `None` when it does not answer 200 in time.
    pub async fn try_status(&self, via: u64) -> Option<Value> {
        let request = self
            .api(via)
            .request(Method::GET, "/cluster", Some(&self.admin))
            .timeout(Duration::from_millis(STATUS_REQUEST_TIMEOUT_MS));
        let resp = try_send(request).await.ok()?;
        (resp.status == 200).then(|| resp.json())
    }

    /// `GET /cluster` on node `via`, which must answer 200 with the documented shape.
    pub async fn status(&self, via: u64) -> Value {
        let status = self
            .api(via)
            .get("/cluster", &self.admin)
            .await
            .expect_json(200)
            .json();
        assert_status_shape(&status);
        status
    }

    /// Polls `/cluster` on `via` until every group has a leader and, for every node of
    /// `members`, a replica whose applied index and state digest equal the others'. Returns the
    /// converged status; panics with the last status and the logs at the deadline.
    pub async fn await_converged(&self, via: u64, members: &[u64], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(status) = self.try_status(via).await {
                if convergence_gap(&status, members, self.config.groups).is_none() {
                    assert_status_shape(&status);
                    return status;
                }
                last = status;
            }
            if Instant::now() >= deadline {
                let gap = convergence_gap(&last, members, self.config.groups);
                panic!(
                    "replicas {members:?} did not converge within {timeout:?} (seen from node {via}): {gap:?}\nlast /cluster: {last:#}\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)).await;
        }
    }

    /// Polls `/cluster` on `via` until `group` has a leader satisfying `accept`; returns
    /// (leader, term).
    pub async fn await_leader(
        &self,
        via: u64,
        group: u32,
        timeout: Duration,
        accept: impl Fn(u64, u64) -> bool,
    ) -> (u64, u64) {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(status) = self.try_status(via).await {
                let view = group_view(&status, group);
                if let (Some(leader), Some(term)) = (view["leader"].as_u64(), view["term"].as_u64())
                {
                    if accept(leader, term) {
                        return (leader, term);
                    }
                }
                last = status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "group {group} had no acceptable leader within {timeout:?} (seen from node {via}); last /cluster: {last:#}\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Polls `/cluster` on `node` until, in every group, its replica has applied at least what
    /// the group's replicas had committed when the wait began: a restarted node caught up.
    pub async fn await_caught_up(&self, node: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut target: Option<BTreeMap<u32, u64>> = None;
        let mut last = Value::Null;
        loop {
            if let Some(status) = self.try_status(node).await {
                let target = target.get_or_insert_with(|| committed_by_group(&status));
                let behind = target.iter().find(|(group, committed)| {
                    let replicas = group_view(&status, **group)["replicas"].clone();
                    let applied = replicas
                        .as_array()
                        .and_then(|r| r.iter().find(|r| r["nodeId"] == node).cloned())
                        .and_then(|r| r["appliedIndex"].as_u64());
                    applied.is_none_or(|applied| applied < **committed)
                });
                if behind.is_none() {
                    return;
                }
                last = status;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not catch up within {timeout:?}; last /cluster: {last:#}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)).await;
        }
    }

    /// Polls `/cluster` on `via` until every group is led by its preferred voter (the
    /// `(g mod n)`-th of its `n` voters in id order, where leader placement puts it).
    pub async fn await_preferred_leaders(&self, via: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(status) = self.try_status(via).await {
                let misplaced = (0..self.config.groups).find(|&group| {
                    let (voters, _) = members_of(&status, group);
                    let preferred = voters.get(group as usize % voters.len().max(1)).copied();
                    group_view(&status, group)["leader"].as_u64() != preferred
                });
                if misplaced.is_none() {
                    return;
                }
                last = status;
            }
            assert!(
                Instant::now() < deadline,
                "group leaders did not settle on their preferred voters within {timeout:?}; last /cluster: {last:#}\n{}",
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)).await;
        }
    }

    /// Polls `/cluster` on each node of `via` until every group there has exactly `voters`
    /// and `learners` and no other node is listed; returns the last status of each. A node
    /// learns a committed membership change when it is replicated to it, so a node outside
    /// the quorum that committed it may show it a moment later.
    pub async fn await_members(
        &self,
        via: &[u64],
        voters: &[u64],
        learners: &[u64],
        timeout: Duration,
    ) -> Vec<Value> {
        let mut statuses = Vec::new();
        let expected: BTreeSet<u64> = voters.iter().chain(learners).copied().collect();
        for &node in via {
            let deadline = Instant::now() + timeout;
            let status = loop {
                let status = self.status(node).await;
                let listed: BTreeSet<u64> = status["nodes"]
                    .as_array()
                    .expect("nodes")
                    .iter()
                    .map(|n| n["id"].as_u64().expect("node id"))
                    .collect();
                let groups_match = (0..self.config.groups)
                    .all(|g| members_of(&status, g) == (voters.to_vec(), learners.to_vec()));
                if groups_match && listed == expected {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {node} does not show voters {voters:?} and learners {learners:?} within {timeout:?}: {status:#}\n{}",
                    self.all_logs()
                );
                tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            };
            statuses.push(status);
        }
        statuses
    }

    // -----------------------------------------------------------------------------------------
    // The CLI

    /// Runs `gavel cluster <args> --endpoint <node via> --token <admin>`.
    pub async fn cli(&self, via: u64, args: &[&str]) -> Output {
        let endpoint = self.api(via).base_url().to_owned();
        self.cli_raw(args, &["--endpoint", &endpoint, "--token", &self.admin])
            .await
    }

    /// Runs `gavel <args>` (any command) with no token or secret in its environment.
    pub async fn gavel(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gavel"));
        command
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("GAVEL_TOKEN")
            .env_remove("GAVEL_AUTH_SECRET")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(CLI_TIMEOUT, command.output()).await {
            Ok(output) => output.expect("run gavel"),
            Err(_) => panic!(
                "gavel {args:?} did not finish within {CLI_TIMEOUT:?}; logs:\n{}",
                self.all_logs()
            ),
        }
    }

    /// Runs `gavel cluster <args> <extra>` as given.
    pub async fn cli_raw(&self, args: &[&str], extra: &[&str]) -> Output {
        let all: Vec<&str> = ["cluster"]
            .iter()
            .chain(args)
            .chain(extra)
            .copied()
            .collect();
        self.gavel(&all).await
    }

    /// Like [`Cluster::cli`], and the command must exit 0; returns its stdout.
    pub async fn cli_ok(&self, via: u64, args: &[&str]) -> String {
        let output = self.cli(via, args).await;
        assert!(
            output.status.success(),
            "gavel cluster {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.all_logs()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    // -----------------------------------------------------------------------------------------
    // Data

    pub fn group_of(&self, auction_id: &str) -> u32 {
        gavel_cluster::group_of(auction_id, self.config.groups)
    }

    /// Creates auctions through `via` until every group holds one; returns them by group.
    pub async fn auction_per_group(&self, via: u64, creator: &str) -> Vec<Value> {
        self.auction_per_group_with(via, creator, active_auction_body)
            .await
    }

    /// Like [`Cluster::auction_per_group`], each auction created from `body(post id)`.
    pub async fn auction_per_group_with(
        &self,
        via: u64,
        creator: &str,
        body: impl Fn(&str) -> Value,
    ) -> Vec<Value> {
        let mut by_group: BTreeMap<u32, Value> = BTreeMap::new();
        for i in 0..CREATES_PER_GROUP_MAX * self.config.groups as usize {
            if by_group.len() == self.config.groups as usize {
                break;
            }
            let body = body(&format!("post-{i}"));
            let auction = self.api(via).create_auction(creator, &body).await;
            let group = self.group_of(auction["id"].as_str().expect("id"));
            by_group.entry(group).or_insert(auction);
        }
        assert_eq!(
            by_group.len(),
            self.config.groups as usize,
            "could not place an auction in every group"
        );
        by_group.into_values().collect()
    }

    /// (id, client) of each node of `ids`, for tasks that outlive a borrow of the cluster.
    pub fn apis(&self, ids: &[u64]) -> Vec<(u64, Api)> {
        ids.iter().map(|&id| (id, self.api(id))).collect()
    }

    /// Checks the ledger against the replicas of `nodes`: on each, every auction's history
    /// (linearizable read) is the same, forms a valid chain, holds exactly one decision per
    /// key the ledger sent and each acknowledged decision exactly as acknowledged, and the
    /// auction's state is its last accepted bid.
    pub async fn assert_ledger(&self, nodes: &[u64], auctions: &[Value], ledger: &Ledger) {
        let reader = token("ledger-reader", &["viewer"]);
        for created in auctions {
            let id = created["id"].as_str().expect("id");
            let decided = ledger.for_auction(id);
            let reference = read_history(&self.api(nodes[0]), &reader, id).await;
            check_chain(created, &reference);
            assert_eq!(
                reference.len(),
                decided.len(),
                "auction {id}: the history must hold exactly one decision per key sent ({} keys decided, {} decisions in node {}'s history)",
                decided.len(),
                reference.len(),
                nodes[0]
            );
            let bid_ids: BTreeSet<String> = decided
                .iter()
                .map(|d| d.reply["bidId"].to_string())
                .collect();
            assert_eq!(
                bid_ids.len(),
                decided.len(),
                "auction {id}: two keys were answered with the same decision"
            );
            for ack in &decided {
                let entry = reference
                    .iter()
                    .find(|h| h["bidId"] == ack.reply["bidId"])
                    .unwrap_or_else(|| {
                        panic!(
                            "acknowledged bid {} ({}) is missing from node {}'s history of {id}",
                            ack.reply["bidId"], ack.key, nodes[0]
                        )
                    });
                for field in ["amount", "status", "reason", "version"] {
                    assert_eq!(
                        entry[field], ack.reply[field],
                        "auction {id}: `{field}` of acknowledged bid {} differs in the history: {entry} vs {}",
                        ack.key, ack.reply
                    );
                }
                assert_eq!(entry["bidderId"], ack.bidder.as_str(), "bidder of {entry}");
            }
            for &node in nodes {
                let api = self.api(node);
                let history = read_history(&api, &reader, id).await;
                assert_eq!(
                    history, reference,
                    "auction {id}: node {node}'s history differs from node {}'s",
                    nodes[0]
                );
                let state = read_auction(&api, &reader, id).await;
                assert_state_matches(created, &state, &history);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in self.members.values_mut() {
            member.kill9();
        }
        if std::thread::panicking() || std::env::var_os("GAVEL_TEST_PRINT_LOGS").is_some() {
            eprintln!(
                "===== gavel cluster logs =====\n{}===== end of cluster logs =====",
                self.all_logs()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bids and the ledger

/// One bid to place until decided.
pub struct BidRequest<'a> {
    pub token: &'a str,
    pub auction_id: &'a str,
    pub key: &'a str,
    pub amount: &'a str,
    /// Give up (panic) after this long.
    pub within: Duration,
}

/// Places a bid until some node decides it (HTTP 200), retrying with the same key through
/// the nodes of `via` in turn (from `*turn`) on 503, 504, 429 and transport errors: what a
/// careful client does. Returns the checked decision, or every failed attempt once
/// `bid.within` has passed. Any other answer is a test failure.
pub async fn bid_until_decided(
    via: &[(u64, Api)],
    turn: &mut usize,
    bid: &BidRequest<'_>,
) -> Result<Value, String> {
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let path = format!("/auctions/{}/bids", bid.auction_id);
    loop {
        let (node, api) = &via[*turn % via.len()];
        *turn += 1;
        let request = api
            .request(Method::POST, &path, Some(bid.token))
            .header("Idempotency-Key", bid.key)
            .json(&json!({ "amount": bid.amount }))
            .timeout(Duration::from_millis(WRITE_ATTEMPT_TIMEOUT_MS));
        let sent = Instant::now();
        match try_send(request).await {
            Ok(resp) if resp.status == 200 => {
                let reply = resp.expect_json(200).json();
                assert_bid_reply_shape(&reply);
                if std::env::var_os("GAVEL_TEST_PRINT_LOGS").is_some() && !failures.is_empty() {
                    eprintln!(
                        "bid {} decided by node {node} after {:?}; failed attempts: {failures:#?}",
                        bid.key,
                        started.elapsed()
                    );
                }
                return Ok(reply);
            }
            Ok(resp) if [429, 503, 504].contains(&resp.status) => {
                resp.assert_problem_body();
                failures.push(format!(
                    "node {node} after {:?}: HTTP {} {}",
                    sent.elapsed(),
                    resp.status,
                    resp.text()
                ));
            }
            Ok(resp) => panic!(
                "bid {} through node {node}: unexpected HTTP {} {}",
                bid.key,
                resp.status,
                resp.text()
            ),
            Err(e) => failures.push(format!("node {node} after {:?}: {e}", sent.elapsed())),
        }
        if started.elapsed() >= bid.within {
            return Err(format!(
                "bid {} on {} was not decided within {:?}; attempts: {failures:#?}",
                bid.key, bid.auction_id, bid.within
            ));
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// How long a read may keep answering 503 (no leader yet, e.g. during an election) before the
/// tests give up.
pub const READ_WITHIN: Duration = Duration::from_secs(20);

/// `GET path?query` on `api` until it answers 200 (JSON), retrying 503 (which API.md allows
/// while a group has no leader or quorum) up to [`READ_WITHIN`]. Any other answer fails.
pub async fn read_json(api: &Api, path: &str, token: &str, query: &[(&str, &str)]) -> Value {
    let started = Instant::now();
    loop {
        let resp = api.get_query(path, token, query).await;
        if resp.status == 503 && started.elapsed() < READ_WITHIN {
            resp.assert_problem_body();
            assert!(
                resp.header("retry-after").is_some(),
                "a 503 carries Retry-After"
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            continue;
        }
        return resp.expect_json(200).json();
    }
}

/// The auction as `api` answers it (linearizable), retrying 503.
pub async fn read_auction(api: &Api, token: &str, id: &str) -> Value {
    let auction = read_json(api, &format!("/auctions/{id}"), token, &[]).await;
    assert_auction_shape(&auction);
    auction
}

/// The whole decision log of an auction as `api` answers it (linearizable, every page),
/// retrying 503.
pub async fn read_history(api: &Api, token: &str, id: &str) -> Vec<Value> {
    let path = format!("/auctions/{id}/bids");
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("status", "all"), ("limit", "1000")];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page = read_json(api, &path, token, &query).await;
        let bids = page["bids"].as_array().expect("bids array");
        for entry in bids {
            assert_history_shape(entry);
        }
        all.extend(bids.iter().cloned());
        match &page["nextCursor"] {
            Value::String(next) => cursor = Some(next.clone()),
            Value::Null => return all,
            other => panic!("nextCursor must be a string or null, got {other}"),
        }
    }
}

/// A decision a client received: the key it sent and the 200 answer.
#[derive(Clone, Debug)]
pub struct Decided {
    pub auction_id: String,
    pub bidder: String,
    pub key: String,
    pub reply: Value,
}

/// Every decision the test's clients received, shared by their tasks.
#[derive(Default)]
pub struct Ledger {
    decided: Mutex<Vec<Decided>>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    pub fn record(&self, auction_id: &str, bidder: &str, key: &str, reply: &Value) {
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Decided {
                auction_id: auction_id.to_owned(),
                bidder: bidder.to_owned(),
                key: key.to_owned(),
                reply: reply.clone(),
            });
    }

    pub fn for_auction(&self, auction_id: &str) -> Vec<Decided> {
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|d| d.auction_id == auction_id)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.decided.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn accepted(&self) -> usize {
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|d| d.reply["status"] == "accepted")
            .count()
    }
}

/// Clients bidding in the background until stopped, each with its own seeded choices of
/// auction, node and amount, retrying each bid with its key until decided.
pub struct Bidders {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Result<usize, String>>,
}

/// The setup of [`Bidders`].
pub struct BiddersConfig {
    /// Prefixes every idempotency key, so that rounds of bidders never reuse one.
    pub round: &'static str,
    pub bidders: usize,
    pub seed: u64,
    /// The nodes the bidders send to, in turn.
    pub via: Vec<(u64, Api)>,
    pub auctions: Vec<Value>,
    /// How long one bid may take to be decided, retries included.
    pub bid_within: Duration,
}

/// Waits (bounded) until the ledger holds `count` decisions.
pub async fn await_decisions(ledger: &Ledger, count: usize) {
    poll_until(
        &format!("{count} decided bids"),
        Duration::from_secs(60),
        || async { (ledger.len() >= count).then_some(()) },
    )
    .await;
}

impl Bidders {
    pub fn spawn(config: BiddersConfig, ledger: &Arc<Ledger>) -> Bidders {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..config.bidders {
            let via = config.via.clone();
            let auctions = config.auctions.clone();
            let ledger = ledger.clone();
            let stop = stop.clone();
            let seed = config
                .seed
                .wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let within = config.bid_within;
            let round = config.round;
            tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let bidder = format!("bidder-{i}");
                let token = token(&bidder, &["bidder"]);
                let mut prices: Vec<Decimal> =
                    auctions.iter().map(|a| money(&a["startPrice"])).collect();
                let mut turn = rng.gen_range(0..via.len());
                let mut placed = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let which = rng.gen_range(0..auctions.len());
                    let auction_id = auctions[which]["id"].as_str().expect("id");
                    let increment = money(&auctions[which]["minIncrement"]);
                    let amount = next_amount(&mut rng, prices[which], increment);
                    let key = format!("{round}-{bidder}-{placed}");
                    let bid = BidRequest {
                        token: &token,
                        auction_id,
                        key: &key,
                        amount: &amount,
                        within,
                    };
                    let reply = bid_until_decided(&via, &mut turn, &bid).await?;
                    ledger.record(auction_id, &bidder, &key, &reply);
                    prices[which] = money(&reply["currentPrice"]);
                    placed += 1;
                }
                Ok(placed)
            });
        }
        Bidders { stop, tasks }
    }

    /// Waits until the ledger holds `count` decisions, at most `within`; panics at once with
    /// a bidder's failure.
    pub async fn until_decided(&mut self, ledger: &Ledger, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while ledger.len() < count {
            if let Some(done) = self.tasks.try_join_next() {
                match done {
                    Ok(Ok(_)) => panic!("a background bidder stopped early"),
                    Ok(Err(failure)) => panic!("a background bidder failed: {failure}"),
                    Err(e) => panic!("a background bidder panicked: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} bids were decided within {within:?}",
                ledger.len()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Stops the bidders once their current bids are decided; returns how many they placed.
    /// Panics with the first bidder's failure.
    pub async fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut placed = 0;
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Ok(n)) => placed += n,
                Ok(Err(failure)) => panic!("a background bidder failed: {failure}"),
                Err(e) => panic!("a background bidder panicked: {e}"),
            }
        }
        placed
    }
}

/// A bid amount near the auction's price as this client last saw it: mostly enough to win
/// (1 to 3 increments above), sometimes the bare price (rejected unless it is the first bid).
pub fn next_amount(rng: &mut impl Rng, last_price: Decimal, increment: Decimal) -> String {
    let steps = [0u32, 1, 1, 2, 3][rng.gen_range(0..5)];
    money_text(last_price + increment * Decimal::from(steps))
}

// ---------------------------------------------------------------------------------------------
// /cluster JSON

/// The view of one group in a `/cluster` answer.
#[track_caller]
pub fn group_view(status: &Value, group: u32) -> &Value {
    status["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["id"] == group))
        .unwrap_or_else(|| panic!("group {group} is missing from /cluster: {status}"))
}

/// Each group's leader, by group id.
pub fn leaders(status: &Value) -> BTreeMap<u32, Option<u64>> {
    status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let id = u32::try_from(g["id"].as_u64().expect("group id")).expect("u32 id");
            (id, g["leader"].as_u64())
        })
        .collect()
}

/// A group's voters and learners.
pub fn members_of(status: &Value, group: u32) -> (Vec<u64>, Vec<u64>) {
    let view = group_view(status, group);
    let ids = |field: &str| -> Vec<u64> {
        view[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field}: {view}"))
            .iter()
            .map(|v| v.as_u64().expect("node id"))
            .collect()
    };
    (ids("voters"), ids("learners"))
}

/// Per group, the highest committed index any replica reports.
pub fn committed_by_group(status: &Value) -> BTreeMap<u32, u64> {
    status["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let id = u32::try_from(g["id"].as_u64().expect("group id")).expect("u32 id");
            let committed = g["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["committedIndex"].as_u64())
                .max()
                .unwrap_or(0);
            (id, committed)
        })
        .collect()
}

/// What keeps `status` from showing converged replicas of `members`, if anything.
pub fn convergence_gap(status: &Value, members: &[u64], groups: u32) -> Option<String> {
    let Some(views) = status["groups"].as_array() else {
        return Some("no groups in the answer".into());
    };
    if views.len() != groups as usize {
        return Some(format!("{} groups, expected {groups}", views.len()));
    }
    for view in views {
        let group = &view["id"];
        if view["leader"].as_u64().is_none() {
            return Some(format!("group {group} has no leader"));
        }
        let replicas = view["replicas"].as_array().cloned().unwrap_or_default();
        let mut seen: Option<(u64, u64, u64)> = None;
        for &node in members {
            let Some(replica) = replicas.iter().find(|r| r["nodeId"] == node) else {
                return Some(format!("group {group}: no replica of node {node} reported"));
            };
            let applied = replica["appliedIndex"].as_u64().unwrap_or(0);
            let Some(digest) = replica["digest"].as_u64() else {
                return Some(format!("group {group}: node {node} gave no digest"));
            };
            match seen {
                None => seen = Some((node, applied, digest)),
                Some((first, a, d)) if (a, d) != (applied, digest) => {
                    return Some(format!(
                        "group {group}: node {first} applied {a} (digest {d}), node {node} applied {applied} (digest {digest})"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// The `/cluster` JSON of API.md: nodes with addresses and reachability, groups with leader,
/// term, members and per-replica progress with its state digest.
#[track_caller]
pub fn assert_status_shape(status: &Value) {
    assert_status_shape_with(status, true);
}

/// The same without digests: `/cluster?digests=false`, and a membership change's answer.
#[track_caller]
pub fn assert_status_shape_without_digests(status: &Value) {
    assert_status_shape_with(status, false);
}

#[track_caller]
fn assert_status_shape_with(status: &Value, digests: bool) {
    assert_eq!(
        object_keys(status),
        sorted(&["nodeId", "nodes", "groups"]),
        "/cluster fields: {status}"
    );
    assert!(status["nodeId"].as_u64().is_some_and(|id| id >= 1));
    for node in status["nodes"].as_array().expect("nodes array") {
        assert_eq!(
            object_keys(node),
            sorted(&["id", "clientAddr", "peerAddr", "reachable"]),
            "node fields: {node}"
        );
        assert!(node["id"].as_u64().is_some_and(|id| id >= 1), "{node}");
        assert!(node["reachable"].is_boolean(), "{node}");
        for field in ["clientAddr", "peerAddr"] {
            assert!(node[field].is_string(), "{field}: {node}");
        }
    }
    for group in status["groups"].as_array().expect("groups array") {
        assert_eq!(
            object_keys(group),
            sorted(&["id", "leader", "term", "voters", "learners", "replicas"]),
            "group fields: {group}"
        );
        assert!(group["id"].is_u64(), "{group}");
        assert!(
            group["leader"].is_null() || group["leader"].is_u64(),
            "{group}"
        );
        assert!(group["term"].is_u64(), "{group}");
        let fields: &[&str] = if digests {
            &[
                "nodeId",
                "lastLogIndex",
                "committedIndex",
                "appliedIndex",
                "digest",
            ]
        } else {
            &["nodeId", "lastLogIndex", "committedIndex", "appliedIndex"]
        };
        for replica in group["replicas"].as_array().expect("replicas array") {
            assert_eq!(
                object_keys(replica),
                sorted(fields),
                "replica fields: {replica}"
            );
            for field in fields {
                assert!(replica[field].is_u64(), "{field}: {replica}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// A port below the ephemeral range that is free now and not yet handed out by this process.
fn pick_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = rand::thread_rng().gen_range(PORT_MIN..PORT_MAX);
        if handed_out.contains(&port) {
            continue;
        }
        // Free on every interface, so that nodes binding 0.0.0.0 may take it too.
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORT_MIN}..{PORT_MAX}");
}

/// Removes terminal colour sequences (`ESC [ ... m`) in case a node logs with colours.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Median and maximum of some latencies.
pub fn latency_summary(latencies: &[Duration]) -> (Duration, Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    (median, max)
}
