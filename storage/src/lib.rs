//! Gavel's storage: one sled database per node holding, for every Raft group, its log, its vote
//! and its state machine.
//!
//! Layout (all keys big-endian so sled's byte order is numeric order):
//! - `raft-wal/` (a directory beside sled's files): every group's Raft log, its entries and its
//!   vote, committed and purged log ids (opaque bytes to this crate), see `wal/`;
//! - `sm/{group}`: the state machine (auctions, decision logs, listing and deadline indexes,
//!   the applied log id), see `state.rs`; idempotency keys are indexed in memory from the
//!   decision logs (`idempotency.rs`);
//! - `raft-snapshots/{group}/` (a directory beside sled's files, not a tree): the latest built
//!   snapshot, see `snapshot_files.rs`;
//! - `apply-journal`: per group, what the keys its last state machine commit wrote held
//!   before it, put back when the store opens if that commit never finished (see `state.rs`).
//!
//! `summary` counts what a state machine copy holds (for backups).
//!
//! Architecture invariant: this is the only crate that knows sled. It knows the auction rules'
//! types (it persists them) but nothing of openraft: Raft records arrive as bytes.

mod codec;
mod compressed;
mod damaged;
mod durable;
mod idempotency;
mod keys;
mod pace;
#[cfg(test)]
mod retry_tests;
mod snapshot_files;
mod state;
mod summary;
mod wal;

use std::path::Path;

pub use codec::{decode, decode_as, encode, encode_as, format_of, FORMAT_VERSION};
pub use damaged::set_aside_engine_files;
pub use state::{
    Applied, AuctionCursor, AuctionFilter, AuctionPage, BidFilter, BidPage, DigestRead,
    SnapshotBlob, StateTree, StateWriter, TreeCopy, LIST_SCAN_ROWS_MAX, SNAPSHOT_FORMAT,
};
pub use summary::StateSummary;
use wal::Wal;
pub use wal::{GroupLog, WalOptions};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("cannot decode a record: {0}")]
    Decode(String),
    #[error("record has unknown format version {0}")]
    UnknownFormat(u8),
    #[error("storage invariant broken: {0}")]
    Corrupt(String),
    #[error("snapshot file: {0}")]
    File(#[from] std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make {path} durable: {source}")]
    Sync {
        path: String,
        source: std::io::Error,
    },
    #[error("the state was replaced (a snapshot installed) while it was copied")]
    Replaced,
    /// sled panicked while it opened its files (its recovery does, on some torn files).
    #[error("storage engine panicked while opening its files: {0}")]
    EnginePanicked(String),
}

/// How the database is opened; every sled option we rely on is set explicitly.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// sled's background flush interval. Durability never depends on it: the Raft log is
    /// synced before an append is reported done, and re-applies what sled had not flushed.
    pub background_flush_ms: Option<u64>,
    /// The Raft log's files.
    pub log: WalOptions,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity_bytes: 256 * 1024 * 1024,
            background_flush_ms: Some(500),
            log: WalOptions::default(),
        }
    }
}

/// A node's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The directory sled was opened in; snapshot files live inside it.
    dir: std::sync::Arc<std::path::PathBuf>,
    /// Flushes run one at a time, see `flush`; each ends by syncing sled's files.
    flushing: std::sync::Arc<tokio::sync::Mutex<durable::DataFiles>>,
    /// Every group's Raft log.
    wal: Wal,
    /// How long the log's last sync took, which decides where the next one runs.
    log_sync: std::sync::Arc<LogSyncTimer>,
    /// Shared by every handle that keeps the database open (stores and trees), so a node can
    /// wait for the last one before its data dir is opened again.
    handles: HandleToken,
}

/// Counts the handles that keep one database open.
pub(crate) type HandleToken = std::sync::Arc<()>;

/// How long `Store::open` waits for another holder of the data dir's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    /// Opens (or creates) the database in `dir`. sled releases a database's file lock from its
    /// own threads a moment after the last handle is dropped, so a data dir closed just before
    /// (a node restarted in the same process) can still be locked for a few milliseconds: the
    /// open retries for up to `LOCK_WAIT` before it reports the lock as held.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store, StorageError> {
        let sled_config = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(config.background_flush_ms)
            .mode(sled::Mode::HighThroughput)
            .use_compression(false);
        let give_up_at = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            // sled's recovery panics on some files a power cut left (see `damaged.rs`); the
            // panic is its answer to those files, so it becomes an error the node can act on.
            let opened =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sled_config.open()))
                    .map_err(|payload| damaged::panicked(payload.as_ref()))?;
            match opened {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < give_up_at =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        state::finish_journals(&db)?;
        state::drop_idempotency_records(&db)?;
        state::move_snapshots_out_of_sled(&db, dir)?;
        let data_files = durable::DataFiles::open(dir)?;
        let wal = wal::open_with_sled_log(&db, dir, config.log.clone())?;
        Ok(Store {
            db,
            dir: std::sync::Arc::new(dir.to_path_buf()),
            flushing: std::sync::Arc::new(tokio::sync::Mutex::new(data_files)),
            wal,
            log_sync: std::sync::Arc::default(),
            handles: HandleToken::default(),
        })
    }

    /// Handles to this database (stores and trees) besides this one. sled releases the data
    /// dir's lock only when the last of them is dropped.
    pub fn handles_elsewhere(&self) -> usize {
        std::sync::Arc::strong_count(&self.handles) - 1
    }

    /// The group's Raft log.
    pub fn log(&self, group: u32) -> Result<GroupLog, StorageError> {
        Ok(self.wal.group(group, self.handles.clone()))
    }

    /// The group's state machine. Open it once per group and clone that: clones share what
    /// commits keep in memory, which a second handle would not see change (it would read and
    /// decide on stale auctions after the other handle's commits).
    pub fn state(&self, group: u32) -> Result<StateTree, StorageError> {
        StateTree::open(&self.db, &self.dir, group, self.handles.clone())
    }

    /// Makes every write so far durable (fsync), the state machines' and the Raft log's: sled's
    /// flush, then a sync of the files it wrote (`durable.rs`), then the log's sync.
    ///
    /// Flushes are serialized and run on a blocking thread, never through sled's `flush_async`:
    /// that one runs on sled's own small thread pool, and enough concurrent flushes (one per
    /// group saving its vote at startup is enough) occupy every pool thread waiting for buffer
    /// writes that need a pool thread themselves, which deadlocks the whole node.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let mut data_files = self.flushing.clone().lock_owned().await;
        let db = self.db.clone();
        let wal = self.wal.clone();
        on_blocking_thread("flush", move || {
            db.flush()?;
            data_files.sync()?;
            wal.sync()
        })
        .await
    }

    /// Makes every Raft log write so far durable; the state machines' writes need not be
    /// (the log re-applies them). Appends await this before they report done.
    ///
    /// The sync runs on the calling thread unless one took over `INLINE_LOG_SYNC_MAX` in the
    /// last `LOG_SYNC_POOL_HOLD`; then on the blocking pool. Every group whose core appended
    /// waits for this sync anyway (openraft 0.9's core awaits each append's flush), so a quick
    /// sync costs the caller's runtime little, while handing it to the pool costs two thread
    /// wake-ups and the waits for a core in between: one sequential client's p50 0.87-0.92 ms
    /// against 0.79-0.81 on 3 nodes sharing 2 cores (docs/PERFORMANCE.md, 2026-12-05 19:24).
    /// But a slow sync there holds the consensus runtime, every group of the node with it, for
    /// as long as it takes, and a busy disk mixes slow syncs with quick ones: going back to the
    /// caller's thread at the first quick one held it 0.1-1 s, one to five times a node in 40 s,
    /// while another process wrote large files; the hold cut that to two stalls in two runs.
    pub async fn sync_log(&self) -> Result<(), StorageError> {
        if self.log_sync.inline_now() {
            return self.log_sync.timed(|| self.wal.sync());
        }
        let wal = self.wal.clone();
        let log_sync = self.log_sync.clone();
        on_blocking_thread("log sync", move || log_sync.timed(|| wal.sync())).await
    }

    /// The groups the Raft log holds anything of (entries or records such as a vote).
    pub fn log_groups(&self) -> Vec<u32> {
        self.wal.groups()
    }

    /// How many segment files the Raft log keeps (see `wal/`).
    pub fn log_segments(&self) -> usize {
        self.wal.segment_count()
    }

    /// Node-level settings (node id, group count) that must survive restarts.
    pub fn node_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let tree = self.db.open_tree("node")?;
        tree.get(key)?.map(|bytes| decode(&bytes)).transpose()
    }

    pub fn set_node_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let tree = self.db.open_tree("node")?;
        tree.insert(key, encode(value)?)?;
        Ok(())
    }
}

/// The longest a Raft log sync may take and the next ones still run on the thread that asks
/// for them. A sync on this machine's disk takes 0.1-0.2 ms alone, but one over 1 ms comes
/// often enough that with a bound of 1 ms the hold below kept even a lone client's syncs on
/// the pool, at the pool's cost. Holding the runtime 10 ms now and then is harmless; past it
/// the disk is busy with something else.
pub const INLINE_LOG_SYNC_MAX: std::time::Duration = std::time::Duration::from_millis(10);

/// How long after a slower sync the Raft log's syncs stay on the blocking pool: a disk that
/// was busy a moment ago (another process's writes, a snapshot's file, sled's own flush)
/// likely still is, however quick the last sync happened to be.
pub const LOG_SYNC_POOL_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// When the Raft log's last slow sync ended, which decides where the next one runs.
#[derive(Default)]
struct LogSyncTimer {
    /// The end of the last sync slower than `INLINE_LOG_SYNC_MAX`, if one was.
    slow_ended: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LogSyncTimer {
    fn inline_now(&self) -> bool {
        self.inline_at(std::time::Instant::now())
    }

    fn inline_at(&self, now: std::time::Instant) -> bool {
        self.slow_ended()
            .is_none_or(|ended| now >= ended + LOG_SYNC_POOL_HOLD)
    }

    fn timed<T>(&self, sync: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let result = sync();
        let ended = std::time::Instant::now();
        self.record(ended - started, ended);
        result
    }

    fn record(&self, took: std::time::Duration, ended: std::time::Instant) {
        if took > INLINE_LOG_SYNC_MAX {
            let mut slow_ended = self.slow_ended.lock().unwrap_or_else(|e| e.into_inner());
            // The latest end wins: the flusher's and a vote's syncs may finish in either order.
            *slow_ended = Some(slow_ended.map_or(ended, |earlier| earlier.max(ended)));
        }
    }

    fn slow_ended(&self) -> Option<std::time::Instant> {
        *self.slow_ended.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs storage work that takes long (an fsync, a whole-state copy) on a blocking thread, so the
/// async thread it came from goes on serving other groups meanwhile. `what` names the work in
/// the error if its thread panicked.
pub async fn on_blocking_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(StorageError::Corrupt(format!("{what} task failed: {e}"))))
}

/// Raises the calling thread's niceness to `nice` (Linux sets it per thread). Raising it needs
/// no privilege; if the kernel refuses anyway, the thread keeps its priority and says so. A
/// thread already at least that nice (a node started under `nice`) is left alone: setting the
/// value would raise its priority above the node's other threads, the opposite of the intent.
pub fn lower_this_threads_priority(nice: u8) {
    let nice = libc::c_int::from(nice);
    if nice == 0 {
        return;
    }
    // SAFETY: `gettid`, `getpriority` and `setpriority` take plain integers and touch only
    // this thread's scheduling attributes; errno is this thread's own.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // -1 is a valid niceness: only errno tells it from a failure.
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 && current >= nice {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        tracing::warn!(%error, nice, thread, "cannot lower a thread's priority");
    }
}

/// The niceness of `on_background_thread`'s threads.
const BACKGROUND_NICENESS: u8 = 10;

/// Runs work that takes seconds of CPU and that nothing urgent waits for (a snapshot's copy,
/// encoding and file) on a thread of its own at a lower priority, so that a bid's thread that
/// wakes takes the CPU from it rather than waiting out its time slice (one client bidding on a
/// group of about 370,000 decisions that snapshots every 3,000 entries: p99 3.8-4.1 ms against
/// 4.8-5.3 ms), and paced (`pace`: at most a quarter of a core on average, so that a burst of it
/// does not hold up the bids under load). `what` names the thread.
pub async fn on_background_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    on_paced_thread(what, pace::REST_PER_WORK, work).await
}

/// Like [`on_background_thread`], for work that is in no hurry at all: it takes at most a
/// sixteenth of a core. A consistency checkpoint's digest reads a group's whole state on every
/// replica at the same moment: with a checkpoint every 30 s, an open loop at 10,000 bids/s on
/// two shared cores had p99 116-148 ms at a quarter of a core, 58 ms at a sixteenth, 37-40 ms
/// without checks (`docs/PERFORMANCE.md`, 2026-12-06).
pub async fn on_idle_background_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    on_paced_thread(what, IDLE_REST_PER_WORK, work).await
}

/// How long an idle background thread rests per unit of CPU it used: a sixteenth of a core.
const IDLE_REST_PER_WORK: u32 = 15;

async fn on_paced_thread<T: Send + 'static>(
    what: &'static str,
    rest_per_work: u32,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("gavel-{what}"))
        .spawn(move || {
            lower_this_threads_priority(BACKGROUND_NICENESS);
            pace::pace_this_thread(rest_per_work);
            let _ = done.send(work());
        })
        .map_err(|source| StorageError::Io {
            path: format!("(a thread for the {what})"),
            source,
        })?;
    result
        .await
        .unwrap_or_else(|_| Err(StorageError::Corrupt(format!("{what} thread failed"))))
}

/// The state machine key of a meta record, as it appears in a `SnapshotBlob`.
pub fn meta_key(name: &str) -> Vec<u8> {
    keys::meta(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness.
    fn this_threads_niceness() -> i32 {
        // SAFETY: plain integer syscalls on this thread's own scheduling attributes.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[tokio::test]
    async fn background_work_runs_at_a_lower_priority_and_hands_back_its_result() {
        let ours = this_threads_niceness();
        let (answer, niceness) = on_background_thread("test", || Ok((42, this_threads_niceness())))
            .await
            .unwrap();
        assert_eq!(answer, 42);
        assert!(
            niceness >= i32::from(BACKGROUND_NICENESS).max(ours),
            "niceness {niceness}"
        );
        assert_eq!(
            this_threads_niceness(),
            ours,
            "the caller's thread is left alone"
        );
        let failed = on_background_thread("test", || -> Result<(), StorageError> {
            Err(StorageError::Corrupt("no".into()))
        })
        .await;
        assert!(matches!(failed, Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn a_slow_log_sync_sends_the_next_ones_to_the_pool_for_a_while_however_quick() {
        let timer = LogSyncTimer::default();
        let start = std::time::Instant::now();
        let at = |ms: u64| start + std::time::Duration::from_millis(ms);
        assert!(
            timer.inline_at(start),
            "the first sync runs on the caller's thread"
        );
        timer.record(INLINE_LOG_SYNC_MAX, at(5));
        assert!(timer.inline_at(at(6)), "a sync of the bound is quick");
        let slow = INLINE_LOG_SYNC_MAX + std::time::Duration::from_micros(1);
        timer.record(slow, at(10));
        assert!(!timer.inline_at(at(10)));
        timer.record(std::time::Duration::from_micros(150), at(20));
        assert!(
            !timer.inline_at(at(20)),
            "a quick sync right after a slow one does not bring the syncs back"
        );
        let hold_ms = LOG_SYNC_POOL_HOLD.as_millis() as u64;
        assert!(!timer.inline_at(at(10 + hold_ms - 1)));
        assert!(timer.inline_at(at(10 + hold_ms)));
        timer.record(slow, at(10 + hold_ms + 5));
        assert!(
            !timer.inline_at(at(10 + 2 * hold_ms)),
            "the hold counts from the last slow sync"
        );
        assert!(timer.inline_at(at(10 + 2 * hold_ms + 5)));
        let later = 10 + 3 * hold_ms;
        timer.record(slow, at(later));
        timer.record(slow, at(later - 5));
        assert!(
            !timer.inline_at(at(later + hold_ms - 1)),
            "a slow sync that ended earlier but was recorded later does not shorten the hold"
        );
    }

    /// After a slow sync, a sync held up (here behind the log's lock, as a real one is behind
    /// the disk's queue) leaves the runtime that asked for it free for its other tasks, even a
    /// runtime of one thread, however quick the syncs in between were.
    #[test]
    fn after_a_slow_log_sync_a_held_up_one_leaves_the_runtime_running_its_other_tasks() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
            store
                .sync_log()
                .await
                .expect("a sync on the caller's thread");
            let now = std::time::Instant::now();
            store.log_sync.record(INLINE_LOG_SYNC_MAX * 10, now);
            store
                .log_sync
                .record(std::time::Duration::from_micros(150), now);

            let hold = std::time::Duration::from_millis(300);
            let (held, holding) = std::sync::mpsc::channel();
            let wal = store.wal.clone();
            let holder = std::thread::spawn(move || {
                wal.hold_lock_for(hold, || held.send(()).unwrap());
            });
            holding.recv().unwrap();
            let started = std::time::Instant::now();
            let mut sync = std::pin::pin!(store.sync_log());
            let mut ticks = 0;
            let mut longest_tick = std::time::Duration::ZERO;
            let synced = loop {
                let tick = std::time::Instant::now();
                tokio::select! {
                    synced = &mut sync => break synced,
                    () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                        ticks += 1;
                        longest_tick = longest_tick.max(tick.elapsed());
                    }
                }
            };
            holder.join().unwrap();
            synced.expect("the sync completes once the lock is released");
            assert!(started.elapsed() >= hold / 2, "{:?}", started.elapsed());
            assert!(ticks >= 10, "the runtime ran other tasks {ticks} times");
            assert!(
                longest_tick < std::time::Duration::from_millis(100),
                "the runtime stalled {longest_tick:?}"
            );
        });
    }

    #[test]
    fn open_waits_for_a_lock_released_soon_and_reports_one_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let reopened = Store::open(dir.path(), &StoreConfig::default());
        release.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());

        let started = std::time::Instant::now();
        let second = Store::open(dir.path(), &StoreConfig::default());
        let error = second.err().expect("the lock is still held").to_string();
        assert!(error.contains("could not acquire lock"), "{error}");
        assert!(started.elapsed() >= LOCK_WAIT, "{:?}", started.elapsed());
    }
}
