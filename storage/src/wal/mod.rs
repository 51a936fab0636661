//! The Raft log of every group of a node, in one write-ahead log of its own: numbered segment
//! files of framed, checksummed records (`record.rs`), appended with one `write` per append and
//! made durable by one `fdatasync` for all groups (`Wal::sync`).
//!
//! Why not in sled: an append into sled was two or three inserts into sled's trees, a flush that
//! wakes every thread of sled's IO pool (half the context switches of an isolated write), and
//! then an `fdatasync` of sled's file on top of sled's own `sync_file_range`. Here an append is
//! a `pwrite` and the flusher's `fdatasync`, and sled keeps only the state machine, which the
//! log re-applies after a crash from the applied index sled has kept.
//!
//! Layout: `{seq:016x}.wal` files in the log directory. Only the last one is written; it is
//! synced before the next one starts, so every other segment is whole. The next segment opens
//! with a checkpoint: every group's purge point and named records, so an older segment matters
//! only for the entries it still holds. Segments are removed oldest first, one at a time, and
//! only once they hold no live entry (entries that an idle group keeps alive in a segment that
//! is otherwise garbage are copied forward first). The segments on disk are therefore always a
//! run of consecutive numbers, and replaying them in order rebuilds exactly the log: a stale
//! record in an old segment is always followed by the truncation or purge that removed it.
//!
//! Segments are written into files already full of zeroes (`spare`, prepared by a thread of
//! their own ahead of the roll): an `fdatasync` then writes only the data, where a file that
//! grows makes every sync commit ext4's journal too (0.19 against 0.15 ms a sync here, and
//! kernel work on the syncing thread).
//!
//! Recovery reads every segment in order. In the last one, a frame cut short or with a wrong
//! checksum is where a crash interrupted a write that was never synced (so never acknowledged),
//! and zeroes are where nothing was written yet: the log ends there, and whatever non-zero bytes
//! follow are zeroed, so that no frame of the lost write can reappear behind later ones.
//! Anywhere else it is corruption, and opening fails naming the file.
//!
//! Entries are kept on disk only; memory holds where each one is (`Location`), and reads use
//! `pread`, outside the lock, on a handle that stays valid if the segment is removed meanwhile.

mod migrate;
mod record;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use migrate::{open_with_sled_log, WAL_DIR};
use record::{Frame, Record, ENTRY_PREFIX_LEN, FRAME_LEN, SEGMENT_HEADER_LEN};

use crate::durable::{sync_dir, sync_error};
use crate::{HandleToken, StorageError};

const SEGMENT_EXTENSION: &str = "wal";
/// The next segment's file is `spare.{pid}.{n}.tmp` while it is filled with zeroes, renamed
/// when it is used: a name of its own each time, so that a thread still filling a file for a
/// log closed in this process never writes or renames the file another one is using.
const SPARE_PREFIX: &str = "spare.";
const SPARE_SUFFIX: &str = ".tmp";
static SPARE_NUMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// A new log's first segment is this small (if `segment_bytes` is larger), so that opening a
/// new data dir writes 1 MiB of zeroes, not a whole segment's; the node writes the next one's
/// while it fills this one.
const FIRST_SEGMENT_BYTES: u64 = 1024 * 1024;

/// How the log is laid out on disk.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is closed and the next one started once an append would take it past this.
    pub segment_bytes: u64,
    /// Live entries are copied out of the oldest segment only when more segments than this
    /// are kept, and only if they fill at most a quarter of it: copying is for the few entries
    /// of an idle group pinning a segment of garbage, not for a log that is simply long.
    pub copy_forward_after_segments: usize,
    /// Whether segments start as files of `segment_bytes` zeroes (see the module docs).
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 16 * 1024 * 1024,
            copy_forward_after_segments: 4,
            preallocate: true,
        }
    }
}

/// Where an entry's bytes are.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

impl Location {
    /// Whether `next` starts right after this entry's frame in the same segment, so both read
    /// with one `pread`.
    fn is_followed_by(&self, next: &Location) -> bool {
        self.segment == next.segment
            && self.offset + u64::from(self.len) + FRAME_LEN + ENTRY_PREFIX_LEN == next.offset
    }
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    live_entries: usize,
    live_bytes: u64,
}

#[derive(Default)]
struct GroupState {
    entries: BTreeMap<u64, Location>,
    named: BTreeMap<String, Vec<u8>>,
    purged_through: Option<u64>,
}

struct WalState {
    dir: PathBuf,
    options: WalOptions,
    segments: BTreeMap<u64, Segment>,
    /// The segment written to, always the newest.
    current: u64,
    /// Where the next frame goes in the current segment.
    end: u64,
    groups: BTreeMap<u32, GroupState>,
    /// Set by the first failed write or sync: the file's contents past the last sync are then
    /// unknown (and after a failed fsync the kernel may have dropped the pages), so nothing is
    /// written or acknowledged any more; reopening recovers what is durable.
    broken: Option<String>,
    /// The next segment's file, zero-filled and synced, once it is ready.
    spare: Arc<Spare>,
    /// Whether the current segment has asked for the next one's file (when half full).
    spare_requested: bool,
}

#[derive(Default)]
struct Spare {
    /// A zero-filled file and its path, ready to become the next segment.
    ready: Mutex<Option<(File, PathBuf)>>,
    preparing: std::sync::atomic::AtomicBool,
    /// Set when the log is closed: a file still being filled is then removed, not kept.
    closed: std::sync::atomic::AtomicBool,
}

impl Spare {
    fn ready(&self) -> MutexGuard<'_, Option<(File, PathBuf)>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for WalState {
    fn drop(&mut self) {
        self.spare
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some((_, path)) = self.spare.ready().take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn spare_path(dir: &Path) -> PathBuf {
    let number = SPARE_NUMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(
        "{SPARE_PREFIX}{}.{number}{SPARE_SUFFIX}",
        std::process::id()
    ))
}

/// A node's Raft log. Cheap to clone.
#[derive(Clone)]
pub struct Wal {
    state: Arc<Mutex<WalState>>,
    /// The sled database whose directory this log lives in, kept open so that sled's lock on
    /// the directory is held while any log handle is: two processes (or two opens in one)
    /// never write the same segment.
    _locked_by: Option<sled::Db>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering it as described in the module docs.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, StorageError> {
        Self::open_locked(dir, options, None)
    }

    pub(crate) fn open_locked(
        dir: &Path,
        options: WalOptions,
        locked_by: Option<sled::Db>,
    ) -> Result<Wal, StorageError> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut state = WalState {
            dir: dir.to_path_buf(),
            options,
            segments: BTreeMap::new(),
            current: 0,
            end: 0,
            groups: BTreeMap::new(),
            broken: None,
            spare: Arc::default(),
            spare_requested: false,
        };
        remove_spare_files(dir)?;
        let found = segment_files(dir)?;
        if found.is_empty() {
            if state.options.preallocate {
                // A new log: its first segment is prepared now, as later ones are in advance.
                let path = spare_path(dir);
                let never_closed = std::sync::atomic::AtomicBool::new(false);
                let file = zero_filled(&path, state.capacity(1), &never_closed)
                    .map_err(|e| io_error(&path, e))?;
                *state.spare.ready() = Some((file, path));
            }
            state.start_segment(1)?;
        } else {
            let last = found.last().map(|(seq, _)| *seq);
            for (seq, path) in found {
                state.replay(seq, path, Some(seq) == last)?;
            }
        }
        Ok(Wal {
            state: Arc::new(Mutex::new(state)),
            _locked_by: locked_by,
        })
    }

    /// The groups the log holds anything of.
    pub fn groups(&self) -> Vec<u32> {
        self.lock_even_if_broken().groups.keys().copied().collect()
    }

    /// One group's part of the log.
    pub fn group(&self, group: u32, open: HandleToken) -> GroupLog {
        GroupLog {
            wal: self.clone(),
            group,
            _open: open,
        }
    }

    /// Makes every write so far durable (`fdatasync` of the current segment; older ones were
    /// synced when they were closed). Blocks: call it from a blocking thread.
    pub fn sync(&self) -> Result<(), StorageError> {
        let (file, path) = {
            let state = self.lock()?;
            let segment = &state.segments[&state.current];
            (segment.file.clone(), segment.path.clone())
        };
        file.sync_data().map_err(|e| {
            let error = sync_error(&path, e);
            self.lock_even_if_broken().broken = Some(error.to_string());
            error
        })
    }

    /// Holds the log's lock for `hold` (calling `held` once it has it), as a sync held up
    /// behind the disk would hold its caller.
    #[cfg(test)]
    pub(crate) fn hold_lock_for(&self, hold: std::time::Duration, held: impl FnOnce()) {
        let _state = self.lock_even_if_broken();
        held();
        std::thread::sleep(hold);
    }

    fn lock(&self) -> Result<MutexGuard<'_, WalState>, StorageError> {
        let state = self.lock_even_if_broken();
        match &state.broken {
            Some(why) => Err(StorageError::Corrupt(format!(
                "the Raft log stopped taking writes after: {why}"
            ))),
            None => Ok(state),
        }
    }

    fn lock_even_if_broken(&self) -> MutexGuard<'_, WalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many segment files the log keeps.
    pub fn segment_count(&self) -> usize {
        self.lock_even_if_broken().segments.len()
    }
}

/// One group's log: entries keyed by index (opaque bytes to this crate) and named records.
/// Writes are durable once `Wal::sync` (`Store::sync_log`) returns after them.
#[derive(Clone)]
pub struct GroupLog {
    wal: Wal,
    group: u32,
    _open: HandleToken,
}

impl GroupLog {
    /// Writes entries in index order, with one `pwrite`. An entry replaces the one at its index
    /// and every one after it.
    pub fn append(
        &self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        let entries: Vec<(u64, Vec<u8>)> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = entries
            .iter()
            .map(|(index, bytes)| Record::Entry {
                group: self.group,
                index: *index,
                bytes,
            })
            .collect();
        let mut state = self.wal.lock()?;
        let locations = state.write(&records, true)?;
        for ((index, _), location) in entries.iter().zip(locations) {
            let location = location.expect("entry records have a location");
            state.place(self.group, *index, location, true);
        }
        Ok(())
    }

    /// Entries with indexes in `range`, in order.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let (located, files) = {
            let state = self.wal.lock()?;
            let Some(group) = state.groups.get(&self.group) else {
                return Ok(Vec::new());
            };
            let located: Vec<(u64, Location)> = group
                .entries
                .range((range.start_bound().cloned(), range.end_bound().cloned()))
                .map(|(index, location)| (*index, *location))
                .collect();
            let mut files = BTreeMap::new();
            for (_, location) in &located {
                files
                    .entry(location.segment)
                    .or_insert_with(|| state.segments[&location.segment].clone_handle());
            }
            (located, files)
        };
        read_entries(&located, &files)
    }

    /// The entry with the highest index, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let last = {
            let state = self.wal.lock()?;
            state
                .groups
                .get(&self.group)
                .and_then(|group| group.entries.last_key_value())
                .map(|(index, _)| *index)
        };
        match last {
            Some(index) => Ok(self.range(index..=index)?.pop()),
            None => Ok(None),
        }
    }

    /// Removes every entry with index <= `index` (covered by a snapshot).
    pub fn purge_through(&self, index: u64) -> Result<(), StorageError> {
        let mut state = self.wal.lock()?;
        state.write(
            &[Record::Purge {
                group: self.group,
                through: index,
            }],
            true,
        )?;
        state.remove_through(self.group, index);
        Ok(())
    }

    /// Removes every entry with index >= `index` (conflicting entries from an old leader).
    pub fn truncate_from(&self, index: u64) -> Result<(), StorageError> {
        let mut state = self.wal.lock()?;
        state.write(
            &[Record::Truncate {
                group: self.group,
                from: index,
            }],
            true,
        )?;
        state.remove_from(self.group, index);
        Ok(())
    }

    pub fn record(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let state = self.wal.lock()?;
        Ok(state
            .groups
            .get(&self.group)
            .and_then(|group| group.named.get(name))
            .cloned())
    }

    pub fn set_record(&self, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        let mut state = self.wal.lock()?;
        state.write(
            &[Record::Named {
                group: self.group,
                name,
                bytes: &bytes,
            }],
            true,
        )?;
        state
            .groups
            .entry(self.group)
            .or_default()
            .named
            .insert(name.to_string(), bytes);
        Ok(())
    }
}

impl Segment {
    fn clone_handle(&self) -> (Arc<File>, PathBuf) {
        (self.file.clone(), self.path.clone())
    }
}

/// Reads located entries, one `pread` per run of entries written one after another.
fn read_entries(
    located: &[(u64, Location)],
    files: &BTreeMap<u64, (Arc<File>, PathBuf)>,
) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let mut entries = Vec::with_capacity(located.len());
    let mut run_start = 0;
    while run_start < located.len() {
        let mut run_end = run_start + 1;
        while run_end < located.len() && located[run_end - 1].1.is_followed_by(&located[run_end].1)
        {
            run_end += 1;
        }
        let first = located[run_start].1;
        let last = located[run_end - 1].1;
        let span = (last.offset + u64::from(last.len) - first.offset) as usize;
        let mut buffer = vec![0; span];
        let (file, path) = &files[&first.segment];
        file.read_exact_at(&mut buffer, first.offset)
            .map_err(|e| io_error(path, e))?;
        for (index, location) in &located[run_start..run_end] {
            let from = (location.offset - first.offset) as usize;
            entries.push((*index, buffer[from..from + location.len as usize].to_vec()));
        }
        run_start = run_end;
    }
    Ok(entries)
}

impl WalState {
    /// Writes `records` at the end of the log with one `pwrite`, first starting a new segment
    /// if they would take the current one past its size (unless `may_roll` is false: records
    /// that belong to starting a segment). Returns each entry record's location.
    fn write(
        &mut self,
        records: &[Record],
        may_roll: bool,
    ) -> Result<Vec<Option<Location>>, StorageError> {
        let mut frames = Vec::new();
        let mut starts = Vec::with_capacity(records.len());
        for record in records {
            starts.push(record::encode(record, &mut frames)?);
        }
        let base = self.write_frames(&frames, may_roll)?;
        Ok(records
            .iter()
            .zip(starts)
            .map(|(record, start)| {
                let start = start?;
                let len = match record {
                    Record::Entry { bytes, .. } | Record::Copy { bytes, .. } => bytes.len(),
                    _ => return None,
                };
                Some(Location {
                    segment: self.current,
                    offset: base + start as u64,
                    len: len as u32,
                })
            })
            .collect())
    }

    /// Writes encoded frames at the end of the log (see `write`); returns where they start in
    /// the current segment.
    fn write_frames(&mut self, frames: &[u8], may_roll: bool) -> Result<u64, StorageError> {
        if may_roll
            && self.end > SEGMENT_HEADER_LEN
            && self.end + frames.len() as u64 > self.capacity(self.current)
        {
            self.roll()?;
        }
        let segment = &self.segments[&self.current];
        if let Err(e) = segment.file.write_all_at(frames, self.end) {
            let error = io_error(&segment.path, e);
            self.broken = Some(error.to_string());
            return Err(error);
        }
        let base = self.end;
        self.end += frames.len() as u64;
        if !self.spare_requested && self.end * 2 > self.capacity(self.current) {
            self.spare_requested = true;
            self.prepare_spare();
        }
        Ok(base)
    }

    /// How many bytes segment `seq` takes before the next one starts.
    fn capacity(&self, seq: u64) -> u64 {
        if seq == 1 {
            FIRST_SEGMENT_BYTES.min(self.options.segment_bytes)
        } else {
            self.options.segment_bytes
        }
    }

    /// Puts an entry at `index`; `replaces_later` also drops every entry after it (an append),
    /// as opposed to a copy moved forward.
    fn place(&mut self, group: u32, index: u64, location: Location, replaces_later: bool) {
        if replaces_later {
            self.remove_from(group, index);
        }
        let group_state = self.groups.entry(group).or_default();
        let previous = group_state.entries.insert(index, location);
        if let Some(previous) = previous {
            self.forget(previous);
        }
        if let Some(segment) = self.segments.get_mut(&location.segment) {
            segment.live_entries += 1;
            segment.live_bytes += u64::from(location.len);
        }
    }

    fn remove_from(&mut self, group: u32, from: u64) {
        let Some(group_state) = self.groups.get_mut(&group) else {
            return;
        };
        let removed = group_state.entries.split_off(&from);
        for location in removed.into_values() {
            self.forget(location);
        }
    }

    fn remove_through(&mut self, group: u32, through: u64) {
        let group_state = self.groups.entry(group).or_default();
        group_state.purged_through = group_state.purged_through.max(Some(through));
        let kept = match through.checked_add(1) {
            Some(next) => group_state.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        let removed = std::mem::replace(&mut group_state.entries, kept);
        for location in removed.into_values() {
            self.forget(location);
        }
    }

    fn forget(&mut self, location: Location) {
        if let Some(segment) = self.segments.get_mut(&location.segment) {
            segment.live_entries -= 1;
            segment.live_bytes -= u64::from(location.len);
        }
    }

    /// Creates segment `seq`, empty but for its header, and makes it the current one. It takes
    /// the spare file if one is ready; if not (it is still being filled), a file that grows.
    fn start_segment(&mut self, seq: u64) -> Result<(), StorageError> {
        let path = self.dir.join(format!("{seq:016x}.{SEGMENT_EXTENSION}"));
        let spare = self.spare.ready().take();
        let header = record::segment_header(seq);
        let write_header = |file: &File| {
            file.write_all_at(&header, 0)?;
            file.sync_data()
        };
        if spare.is_none() && self.options.preallocate && !self.segments.is_empty() {
            tracing::info!(
                segment = seq,
                "the next Raft log segment's zeroes were not ready; this one grows as it is written"
            );
        }
        let opened = match spare {
            // The header goes in before the rename, so a segment file always has one.
            Some((file, spare_path)) => write_header(&file)
                .and_then(|()| fs::rename(spare_path, &path))
                .map(|()| file),
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|file| write_header(&file).map(|()| file)),
        };
        let file = opened.map_err(|e| io_error(&path, e))?;
        sync_dir(&self.dir)?;
        self.spare_requested = false;
        self.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                path,
                live_entries: 0,
                live_bytes: 0,
            },
        );
        self.current = seq;
        self.end = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Starts filling the next segment's file with zeroes on a thread of its own, unless that
    /// is under way or done. A failure only means the next segment grows as it is written.
    fn prepare_spare(&self) {
        use std::sync::atomic::Ordering;
        // Only the log's writer (under its lock) calls this, and the preparing thread sets
        // `ready` before it clears `preparing`: with `preparing` taken, `ready` is final.
        if !self.options.preallocate || self.spare.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.spare.ready().is_some() {
            self.spare.preparing.store(false, Ordering::Release);
            return;
        }
        let spare = self.spare.clone();
        let path = spare_path(&self.dir);
        let bytes = self.options.segment_bytes;
        let started = std::thread::Builder::new()
            .name("gavel-wal-spare".into())
            .spawn(move || {
                // Nothing waits for the spare until the current segment is full (seconds away
                // even under a spike), but its writes took half a core for about 0.3 s, from
                // the bids' threads on a machine with no core to spare (see `zero_filled`).
                // Paced, not niced: at a lower priority under full load it could starve past
                // the roll, and the segment after would grow as it is written.
                crate::pace::pace_this_thread(crate::pace::REST_PER_WORK);
                let filled = zero_filled(&path, bytes, &spare.closed);
                let mut ready = spare.ready();
                match filled {
                    Ok(file) if !spare.closed.load(Ordering::Acquire) => *ready = Some((file, path)),
                    Ok(_) => {
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&path);
                        if !spare.closed.load(Ordering::Acquire) {
                            tracing::warn!(error = %e, "could not prepare the next Raft log segment; it will grow as it is written");
                        }
                    }
                }
                drop(ready);
                spare.preparing.store(false, Ordering::Release);
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start preparing the next Raft log segment");
            self.spare.preparing.store(false, Ordering::Release);
        }
    }

    /// Closes the current segment (synced whole) and starts the next one with a checkpoint,
    /// then removes the segments no longer needed. A failure leaves the log broken: the
    /// segments on disk are still a valid log, which reopening recovers.
    fn roll(&mut self) -> Result<(), StorageError> {
        let rolled = self.try_roll();
        if let Err(e) = &rolled {
            self.broken = Some(e.to_string());
        }
        rolled
    }

    fn try_roll(&mut self) -> Result<(), StorageError> {
        let closing = &self.segments[&self.current];
        closing
            .file
            .sync_data()
            .map_err(|e| sync_error(&closing.path, e))?;
        self.start_segment(self.current + 1)?;
        let mut checkpoint = Vec::new();
        for (&group, state) in &self.groups {
            if let Some(through) = state.purged_through {
                record::encode(&Record::Purge { group, through }, &mut checkpoint)?;
            }
            for (name, bytes) in &state.named {
                record::encode(&Record::Named { group, name, bytes }, &mut checkpoint)?;
            }
        }
        self.write_frames(&checkpoint, false)?;
        self.release_old_segments()
    }

    /// Removes the oldest segments while they hold no live entry, first copying forward the
    /// few live entries of a mostly dead one when many segments are kept.
    fn release_old_segments(&mut self) -> Result<(), StorageError> {
        let mut releasable = Vec::new();
        let mut copied_any = false;
        for (&seq, segment) in &self.segments {
            if seq == self.current {
                break;
            }
            let kept_after = self.segments.len() - releasable.len() - 1;
            let mostly_dead = segment.live_bytes * 4 <= self.options.segment_bytes;
            if segment.live_entries == 0 {
                releasable.push(seq);
            } else if kept_after > self.options.copy_forward_after_segments && mostly_dead {
                releasable.push(seq);
                copied_any = true;
            } else {
                break;
            }
        }
        if copied_any {
            for &seq in &releasable {
                self.copy_forward(seq)?;
            }
        }
        if releasable.is_empty() {
            return Ok(());
        }
        // Removals wait until what replaces them (the checkpoint, the copies) is durable.
        let current = &self.segments[&self.current];
        current
            .file
            .sync_data()
            .map_err(|e| sync_error(&current.path, e))?;
        for seq in releasable {
            let segment = self.segments.remove(&seq).expect("listed above");
            debug_assert_eq!(segment.live_entries, 0);
            fs::remove_file(&segment.path).map_err(|e| io_error(&segment.path, e))?;
            // One at a time, each made durable: the segments on disk stay consecutive.
            sync_dir(&self.dir)?;
            tracing::debug!(segment = seq, "removed a Raft log segment");
        }
        Ok(())
    }

    /// Re-appends the live entries of segment `seq` to the current segment.
    fn copy_forward(&mut self, seq: u64) -> Result<(), StorageError> {
        let mut moving: Vec<(u32, u64, Location)> = Vec::new();
        for (group, state) in &self.groups {
            for (index, location) in &state.entries {
                if location.segment == seq {
                    moving.push((*group, *index, *location));
                }
            }
        }
        let files = BTreeMap::from([(seq, self.segments[&seq].clone_handle())]);
        let located: Vec<(u64, Location)> = moving.iter().map(|(_, i, l)| (*i, *l)).collect();
        let read = read_entries(&located, &files)?;
        let copies: Vec<Record> = moving
            .iter()
            .zip(&read)
            .map(|((group, index, _), (_, bytes))| Record::Copy {
                group: *group,
                index: *index,
                bytes,
            })
            .collect();
        let moved = self.write(&copies, false)?;
        for ((group, index, _), location) in moving.into_iter().zip(moved) {
            let location = location.expect("copies have a location");
            self.place(group, index, location, false);
        }
        tracing::debug!(
            segment = seq,
            "copied live Raft log entries out of an old segment"
        );
        Ok(())
    }

    /// Replays segment `seq` into memory. In the last segment, a torn frame (or zeroes: not yet
    /// written, or where a crash left the file grown but its data not on disk) ends the log,
    /// and any non-zero bytes after that point are zeroed.
    fn replay(&mut self, seq: u64, path: PathBuf, is_last: bool) -> Result<(), StorageError> {
        if let Some(&previous) = self.segments.keys().next_back() {
            if previous + 1 != seq {
                return Err(StorageError::Corrupt(format!(
                    "Raft log segment {} is missing: segments {previous:016x} and {seq:016x} are not consecutive",
                    self.dir.join(format!("{:016x}.{SEGMENT_EXTENSION}", previous + 1)).display()
                )));
            }
        }
        let data = fs::read(&path).map_err(|e| io_error(&path, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        let header = &data[..data.len().min(SEGMENT_HEADER_LEN as usize)];
        if is_last && (header.len() < SEGMENT_HEADER_LEN as usize || header.iter().all(|b| *b == 0))
        {
            // A crash while the segment was being started: nothing was ever written to it. The
            // log goes on at the end of the one before (already replayed), or starts afresh.
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
            sync_dir(&self.dir)?;
            if self.segments.is_empty() {
                self.start_segment(seq)?;
            }
            return Ok(());
        }
        record::check_segment_header(&data, seq).map_err(|why| {
            StorageError::Corrupt(format!("Raft log segment {}: {why}", path.display()))
        })?;
        self.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                path: path.clone(),
                live_entries: 0,
                live_bytes: 0,
            },
        );
        let mut at = SEGMENT_HEADER_LEN as usize;
        let stop = loop {
            match record::next_frame(&data, at) {
                Frame::Whole { body, next } => {
                    let record = record::decode(body).map_err(|why| {
                        StorageError::Corrupt(format!(
                            "Raft log segment {} at byte {at}: {why}",
                            path.display()
                        ))
                    })?;
                    self.replay_record(seq, at as u64, record);
                    at = next;
                }
                Frame::End => break None,
                Frame::Torn(why) => break Some(why),
            }
        };
        // Past the log's end, bytes other than zeroes are what is left of a torn write.
        let torn_end = data[at..]
            .iter()
            .rposition(|byte| *byte != 0)
            .map(|last| at + last + 1);
        if let Some(torn_end) = torn_end {
            let why = stop.unwrap_or_else(|| "zeroes followed by data".into());
            if !is_last {
                return Err(StorageError::Corrupt(format!(
                    "Raft log segment {} at byte {at}: {why}, in a segment that was synced whole",
                    path.display()
                )));
            }
            tracing::warn!(
                segment = %path.display(),
                at,
                dropped_bytes = torn_end - at,
                reason = %why,
                "zeroed the Raft log's unsynced tail left by a crash"
            );
            let segment = &self.segments[&seq];
            segment
                .file
                .write_all_at(&vec![0; torn_end - at], at as u64)
                .and_then(|()| segment.file.sync_data())
                .map_err(|e| io_error(&path, e))?;
        }
        // Each segment replayed is the one written to next, until a later one is replayed.
        self.current = seq;
        self.end = at as u64;
        Ok(())
    }

    fn replay_record(&mut self, seq: u64, frame_at: u64, record: Record) {
        let entry_at = |bytes: &[u8]| Location {
            segment: seq,
            offset: frame_at + FRAME_LEN + ENTRY_PREFIX_LEN,
            len: bytes.len() as u32,
        };
        let purged = |state: &WalState, group: u32, index: u64| {
            state
                .groups
                .get(&group)
                .and_then(|g| g.purged_through)
                .is_some_and(|through| index <= through)
        };
        let is_append = matches!(record, Record::Entry { .. });
        match record {
            Record::Entry {
                group,
                index,
                bytes,
            }
            | Record::Copy {
                group,
                index,
                bytes,
            } => {
                // An entry replaces what follows it; a copy moved forward only itself.
                if !purged(self, group, index) {
                    self.place(group, index, entry_at(bytes), is_append);
                }
            }
            Record::Truncate { group, from } => self.remove_from(group, from),
            Record::Purge { group, through } => self.remove_through(group, through),
            Record::Named { group, name, bytes } => {
                self.groups
                    .entry(group)
                    .or_default()
                    .named
                    .insert(name.to_string(), bytes.to_vec());
            }
        }
    }
}

/// Pause between two synced chunks of a spare segment's zeroes. The filling thread is also
/// paced (`crate::pace`, at most a quarter of a core on average): on three nodes sharing two
/// cores, each 16 MiB fill had taken 50-80% of a core for about 0.3 s, and the open loop at
/// 12,000/s had a 100-200 ms hiccup with each.
const ZERO_FILL_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A file of `bytes` zeroes at `path`, its length durable.
/// Gives up early once `closed` is set (the log it was for is closed).
///
/// Each 1 MiB chunk is synced before the next, with a pause between: written all at once and
/// synced at the end, the 16 MiB reached the disk in one burst, and every node's log syncs
/// waited behind it at the same moment (the nodes' logs roll together): the whole cluster's
/// bids stalled for 50-100 ms every few seconds.
fn zero_filled(
    path: &Path,
    bytes: u64,
    closed: &std::sync::atomic::AtomicBool,
) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeroes = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < bytes {
        if closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(std::io::Error::other("the log was closed"));
        }
        let chunk = zeroes.len().min((bytes - written) as usize);
        crate::pace::pace();
        file.write_all_at(&zeroes[..chunk], written)?;
        written += chunk as u64;
        if written < bytes {
            file.sync_data()?;
            std::thread::sleep(ZERO_FILL_PAUSE);
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// Removes spare files a closed or crashed log left in `dir`.
fn remove_spare_files(dir: &Path) -> Result<(), StorageError> {
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let is_spare = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(SPARE_PREFIX) && name.ends_with(SPARE_SUFFIX));
        if is_spare {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&path, e))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The log's segment files in `dir`, oldest first. Files of other names are left alone.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXTENSION) {
            continue;
        }
        let Some(seq) = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .filter(|stem| stem.len() == 16)
            .and_then(|stem| u64::from_str_radix(stem, 16).ok())
        else {
            continue;
        };
        found.push((seq, path));
    }
    found.sort();
    Ok(found)
}

fn io_error(path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
