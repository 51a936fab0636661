//! The `gavel` processes of a run: each node is a release binary started inside its own network
//! namespace (`ip netns exec`, which execs in place, so the child's pid is the node's), with its
//! data dir and log under the run's directory. Clock skew is libfaketime preloaded into the
//! node with `FAKETIME_DONT_FAKE_MONOTONIC=1` (wall clock shifted, timers untouched); changing a
//! node's offset restarts it, the only way libfaketime's offset changes for a running process.
//!
//! A scenario may put each node's data dir on a disk of its own (`DataDisk`): a tmpfs the
//! nemesis fills with a file that takes every free byte, and frees again; or a lazy disk
//! (`lazyfs`) that keeps writes in memory until they are synced, so that a power cut
//! (`Nodes::power_off`) loses what a node had not synced.
//!
//! Dropping `Nodes` kills every process it started (SIGCONT first, so a paused node dies too)
//! and unmounts the disks it mounted.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;

use crate::harness::lazyfs::{Cut, LazyDisk};
use crate::harness::net::{disk_mount_source, node_ip, node_namespace, run};
use crate::harness::NodeId;

const CLIENT_PORT: u16 = 8080;
const PEER_PORT: u16 = 9080;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// How long a (re)started node may take before its `/healthz` answers.
const START_WAIT: Duration = Duration::from_secs(20);
/// The nodes' `--consistency-check-interval-ms`: short, so that a minute's run compares the
/// replicas' states dozens of times, across every fault.
pub const CHECK_INTERVAL_MS: u64 = 2_000;
/// The file that takes a node's free disk space while its disk is full.
const DISK_FILLER: &str = "disk-filler";
/// The largest and smallest pieces the filler grows by (see `Nodes::fill_disk`).
const FILL_CHUNK_MAX: libc::off_t = 64 * 1024 * 1024;
const FILL_CHUNK_MIN: libc::off_t = 4096;

pub fn client_url(node: NodeId) -> String {
    format!("http://{}:{CLIENT_PORT}", node_ip(node))
}

pub fn client_addr(node: NodeId) -> String {
    format!("{}:{CLIENT_PORT}", node_ip(node))
}

pub fn peer_addr(node: NodeId) -> String {
    format!("{}:{PEER_PORT}", node_ip(node))
}

/// How every node of the run is started.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub bin: PathBuf,
    pub run_dir: PathBuf,
    pub secret_file: PathBuf,
    pub groups: u32,
    pub snapshot_after_entries: u64,
    pub initial: Vec<NodeId>,
    /// Passed as `--max-clock-offset-ms` when the binary knows the flag.
    pub max_clock_offset_ms: Option<i64>,
    pub propose_timeout_ms: u64,
    pub disk: DataDisk,
}

/// What each node's data dir is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDisk {
    /// A directory of the run's.
    Plain,
    /// A tmpfs of this many bytes, for a nemesis that fills it.
    Tmpfs { bytes: u64 },
    /// A lazy disk over `n<id>.synced` (what it holds as synced), for a nemesis that cuts the
    /// power; `torn`: a cut may find unsynced pages written back (`lazyfs`).
    Lazy { torn: bool },
}

struct NodeProc {
    child: Option<Child>,
    paused: bool,
    skew_ms: i64,
}

pub struct Nodes {
    settings: NodeSettings,
    procs: BTreeMap<NodeId, NodeProc>,
    http: reqwest::Client,
    /// The data dirs this run mounted a tmpfs on (`DataDisk::Tmpfs`).
    disks: Vec<PathBuf>,
    /// The nodes' lazy disks (`DataDisk::Lazy`), mounted on their data dirs.
    lazy_disks: BTreeMap<NodeId, LazyDisk>,
}

impl Nodes {
    pub fn new(settings: NodeSettings) -> anyhow::Result<Nodes> {
        if !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: apt-get install -y faketime");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(Nodes {
            settings,
            procs: BTreeMap::new(),
            http,
            disks: Vec::new(),
            lazy_disks: BTreeMap::new(),
        })
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    fn data_dir(&self, node: NodeId) -> PathBuf {
        self.settings.run_dir.join(format!("n{node}"))
    }

    pub fn log_path(&self, node: NodeId) -> PathBuf {
        self.settings.run_dir.join(format!("n{node}.log"))
    }

    /// Starts every initial member and waits until each answers `/healthz`.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for node in self.settings.initial.clone() {
            self.spawn(node, false)?;
        }
        for node in self.settings.initial.clone() {
            self.await_alive(node).await?;
        }
        Ok(())
    }

    /// Mounts `node`'s disk on its data dir the first time it starts, when the scenario has
    /// disks (`NodeSettings::disk`).
    fn ensure_disk(&mut self, node: NodeId) -> anyhow::Result<()> {
        let bytes = match self.settings.disk {
            DataDisk::Plain => return Ok(()),
            DataDisk::Lazy { torn } => return self.ensure_lazy_disk(node, torn),
            DataDisk::Tmpfs { bytes } => bytes,
        };
        let dir = self.data_dir(node);
        if self.disks.contains(&dir) {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).context("create the data dir")?;
        let size = format!("size={bytes}");
        let target = dir.display().to_string();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &size, &disk_mount_source(), &target],
        )?;
        self.disks.push(dir);
        Ok(())
    }

    fn ensure_lazy_disk(&mut self, node: NodeId, torn: bool) -> anyhow::Result<()> {
        if self.lazy_disks.contains_key(&node) {
            return Ok(());
        }
        let dir = self.data_dir(node);
        let synced = self.settings.run_dir.join(format!("n{node}.synced"));
        std::fs::create_dir_all(&dir).context("create the data dir")?;
        std::fs::create_dir_all(&synced).context("create the lazy disk's backing dir")?;
        let disk = LazyDisk::mount(&synced, &dir, &disk_mount_source(), torn)?;
        self.lazy_disks.insert(node, disk);
        Ok(())
    }

    /// Cuts `node`'s power: kill -9, then its lazy disk loses the writes the node had not
    /// synced (a torn one keeps pages written back before: `LazyDisk::cut_power`).
    pub fn power_off(&mut self, node: NodeId, rng: &mut StdRng) -> anyhow::Result<Cut> {
        self.kill(node);
        match self.lazy_disks.get(&node) {
            Some(disk) => disk
                .cut_power(rng)
                .with_context(|| format!("cut node {node}'s power")),
            None => bail!("node {node}'s data dir is no lazy disk"),
        }
    }

    /// Fills `node`'s disk: a file takes every byte left free (all but less than a page).
    /// Returns how many it took. The node writes meanwhile, so the free space is taken in
    /// chunks that halve whenever one no longer fits.
    pub fn fill_disk(&self, node: NodeId) -> anyhow::Result<u64> {
        use std::os::fd::AsRawFd;
        let dir = self.data_dir(node);
        if !self.disks.contains(&dir) {
            bail!("node {node}'s data dir is no disk of the run's");
        }
        let filler = std::fs::File::create(dir.join(DISK_FILLER)).context("create the filler")?;
        let mut taken: libc::off_t = 0;
        let mut chunk: libc::off_t = FILL_CHUNK_MAX;
        while chunk >= FILL_CHUNK_MIN {
            // SAFETY: fallocate on a file descriptor we own, with plain integer arguments.
            if unsafe { libc::fallocate(filler.as_raw_fd(), 0, taken, chunk) } == 0 {
                taken += chunk;
                continue;
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOSPC) {
                bail!("fallocate on node {node}'s disk: {error}");
            }
            chunk /= 2;
        }
        Ok(taken as u64)
    }

    /// Gives `node`'s disk its free space back (removes the filler, if any).
    pub fn free_disk(&self, node: NodeId) -> anyhow::Result<()> {
        match std::fs::remove_file(self.data_dir(node).join(DISK_FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context("remove the disk filler")
            }
            _ => Ok(()),
        }
    }

    fn spawn(&mut self, node: NodeId, join: bool) -> anyhow::Result<()> {
        self.ensure_disk(node)?;
        let skew_ms = self.procs.get(&node).map_or(0, |p| p.skew_ms);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .context("node log")?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &node_namespace(node)])
            .arg(&self.settings.bin)
            .args(self.serve_args(node, join))
            // The consistency checks' agreements too, which `replica_checks` counts.
            .env("RUST_LOG", "info,gavel_cluster::consistency=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if skew_ms != 0 {
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME", faketime_offset(skew_ms));
        }
        let child = command.spawn().context("cannot start gavel")?;
        self.procs.insert(
            node,
            NodeProc {
                child: Some(child),
                paused: false,
                skew_ms,
            },
        );
        Ok(())
    }

    fn serve_args(&self, node: NodeId, join: bool) -> Vec<String> {
        let s = &self.settings;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            node.to_string(),
            "--listen".into(),
            client_addr(node),
            "--peer-listen".into(),
            peer_addr(node),
            "--data-dir".into(),
            self.data_dir(node).display().to_string(),
            "--groups".into(),
            s.groups.to_string(),
            "--snapshot-after-entries".into(),
            s.snapshot_after_entries.to_string(),
            "--auth-secret-file".into(),
            s.secret_file.display().to_string(),
            "--propose-timeout-ms".into(),
            s.propose_timeout_ms.to_string(),
            // The workload's bidders are few and fast; rate limiting would only add noise.
            "--bid-rate-per-bidder".into(),
            "0".into(),
            "--consistency-check-interval-ms".into(),
            CHECK_INTERVAL_MS.to_string(),
        ];
        if join {
            args.push("--join".into());
        } else {
            let initial: Vec<String> = s
                .initial
                .iter()
                .map(|&n| format!("{n}={}", peer_addr(n)))
                .collect();
            args.push("--initial-cluster".into());
            args.push(initial.join(","));
        }
        if let Some(offset) = s.max_clock_offset_ms {
            args.push("--max-clock-offset-ms".into());
            args.push(offset.to_string());
        }
        args
    }

    /// Waits until `node` answers `/healthz`.
    pub async fn await_alive(&self, node: NodeId) -> anyhow::Result<()> {
        let url = format!("{}/healthz", client_url(node));
        let deadline = tokio::time::Instant::now() + START_WAIT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "node {node} did not come up within {START_WAIT:?}; see {}",
            self.log_path(node).display()
        )
    }

    pub fn is_running(&self, node: NodeId) -> bool {
        self.procs.get(&node).is_some_and(|p| p.child.is_some())
    }

    pub fn is_paused(&self, node: NodeId) -> bool {
        self.procs.get(&node).is_some_and(|p| p.paused)
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.procs
            .iter()
            .filter(|(_, p)| p.child.is_some())
            .map(|(&n, _)| n)
            .collect()
    }

    fn signal(&self, node: NodeId, signal: libc::c_int) {
        let pid = self
            .procs
            .get(&node)
            .and_then(|p| p.child.as_ref())
            .map(|c| c.id());
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signal delivery to our own child's pid.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// kill -9. A paused node is continued first so that it dies at once.
    pub fn kill(&mut self, node: NodeId) {
        self.signal(node, libc::SIGCONT);
        self.signal(node, libc::SIGKILL);
        if let Some(proc_) = self.procs.get_mut(&node) {
            if let Some(mut child) = proc_.child.take() {
                let _ = child.wait();
            }
            proc_.paused = false;
        }
    }

    pub fn pause(&mut self, node: NodeId) {
        self.signal(node, libc::SIGSTOP);
        if let Some(p) = self.procs.get_mut(&node) {
            p.paused = p.child.is_some();
        }
    }

    pub fn resume(&mut self, node: NodeId) {
        self.signal(node, libc::SIGCONT);
        if let Some(p) = self.procs.get_mut(&node) {
            p.paused = false;
        }
    }

    /// Starts a killed node, or one that stopped by itself (a full disk), again on its data
    /// dir (with its current clock offset).
    pub async fn restart(&mut self, node: NodeId) -> anyhow::Result<()> {
        if let Some(proc_) = self.procs.get_mut(&node) {
            let exited = match proc_.child.as_mut() {
                Some(child) => child.try_wait().context("poll the node")?.is_some(),
                None => false,
            };
            if exited {
                proc_.child = None;
                proc_.paused = false;
            }
        }
        if self.is_running(node) {
            return Ok(());
        }
        self.spawn(node, false)?;
        self.await_alive(node).await
    }

    /// Kills `node` and starts it again with its wall clock `skew_ms` off the true time.
    pub async fn restart_skewed(&mut self, node: NodeId, skew_ms: i64) -> anyhow::Result<()> {
        self.kill(node);
        if let Some(p) = self.procs.get_mut(&node) {
            p.skew_ms = skew_ms;
        }
        self.restart(node).await
    }

    pub fn skew_ms(&self, node: NodeId) -> i64 {
        self.procs.get(&node).map_or(0, |p| p.skew_ms)
    }

    /// Kills `node`, deletes its data and starts it empty with `--join`, waiting to be added.
    pub async fn rejoin_empty(&mut self, node: NodeId) -> anyhow::Result<()> {
        self.kill(node);
        let dir = self.data_dir(node);
        if self.disks.contains(&dir) || self.lazy_disks.contains_key(&node) {
            // A mount point stays; what it holds goes.
            for entry in std::fs::read_dir(&dir).context("list the data dir")? {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .context("wipe data dir")?;
            }
        } else if dir.exists() {
            std::fs::remove_dir_all(&dir).context("wipe data dir")?;
        }
        self.spawn(node, true)?;
        self.await_alive(node).await
    }

    /// Kills every node (used at the end of a run and on failure).
    pub fn kill_all(&mut self) {
        let nodes: Vec<NodeId> = self.procs.keys().copied().collect();
        for node in nodes {
            self.kill(node);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill_all();
        // Each unmounts as it goes, now that no node uses it.
        self.lazy_disks.clear();
        for dir in &self.disks {
            if let Err(e) = run("umount", &["-l", &dir.display().to_string()]) {
                eprintln!("gavel-jepsen: {e:#}");
            }
        }
    }
}

/// libfaketime's relative offset syntax: `+1.500s` / `-0.250s`.
fn faketime_offset(skew_ms: i64) -> String {
    let sign = if skew_ms < 0 { '-' } else { '+' };
    let abs = skew_ms.unsigned_abs();
    format!("{sign}{}.{:03}s", abs / 1000, abs % 1000)
}

#[cfg(test)]
mod tests {
    use super::faketime_offset;

    #[test]
    fn faketime_offsets_keep_milliseconds_and_sign() {
        assert_eq!(faketime_offset(1500), "+1.500s");
        assert_eq!(faketime_offset(-250), "-0.250s");
        assert_eq!(faketime_offset(3000), "+3.000s");
    }
}
