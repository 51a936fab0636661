//! A group's latest built Raft snapshot, kept as a file beside sled: `raft-snapshots/{group}/
//! {position:020}.snap` in the database's directory, where `position` orders snapshots (how far
//! into the log each reaches, the caller's measure).
//!
//! Why not in sled: a snapshot is the group's whole state, its bid log too (12 MB after 20,000
//! bids to one auction, 25 MB after 40,000). Stored as one sled value, it went through sled's log
//! with every group's appends, and the flush that made it durable held up every group's log
//! flush on the node for 0.5-0.8 s; all replicas build a snapshot at about the same entry, so
//! the whole cluster stalled. A file of its own is written and synced in 20-60 ms here (5-12 MB).
//!
//! A save writes `{position}.snap.partial`, syncs it, renames it into place, syncs the directory,
//! then removes the older files: a crash leaves either the old snapshot or the new one whole,
//! plus at most a partial file that loads ignore and the next save removes.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::durable::sync_dir;
use crate::StorageError;

const SNAPSHOT_EXTENSION: &str = "snap";
const PARTIAL_SUFFIX: &str = ".snap.partial";
/// The directory, inside sled's, that holds one directory per group.
pub(crate) const SNAPSHOTS_DIR: &str = "raft-snapshots";

/// Saves run one at a time in the process: the check for a newer snapshot and the rename must not
/// interleave with another save of the same group (an install racing a build), and one snapshot
/// written at a time also keeps the disk free for the log flushes between them. Saves are rare.
static SAVING: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    pub(crate) fn new(db_dir: &Path, group: u32) -> SnapshotFiles {
        SnapshotFiles {
            dir: db_dir.join(SNAPSHOTS_DIR).join(group.to_string()),
        }
    }

    /// Stores `bytes` as the snapshot at `position`, durably, unless one at `position` or further
    /// is stored. Returns whether it stored it.
    pub(crate) fn save_if_newer(&self, position: u64, bytes: &[u8]) -> Result<bool, StorageError> {
        let _one_at_a_time = SAVING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.newest()?.is_some_and(|(stored, _)| stored >= position) {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir)?;
        let name = format!("{position:020}");
        let partial = self.dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let mut file = File::create(&partial)?;
        // In MiB pieces, so that a snapshot's thread paces itself (`pace`) as it writes.
        for chunk in bytes.chunks(1 << 20) {
            crate::pace::pace();
            file.write_all(chunk)?;
        }
        file.sync_data()?;
        drop(file);
        let path = self.dir.join(format!("{name}.{SNAPSHOT_EXTENSION}"));
        fs::rename(&partial, &path)?;
        sync_dir(&self.dir)?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.path() != path {
                // What is left is older snapshots and partial files of crashed saves; a failure
                // to remove one only leaves it taking space until the next save.
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove an old snapshot file");
                }
            }
        }
        Ok(true)
    }

    /// Removes every snapshot file of the group, durably.
    pub(crate) fn discard(&self) -> Result<(), StorageError> {
        let _one_at_a_time = SAVING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            fs::remove_file(entry?.path())?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// The stored snapshot's bytes, if any.
    pub(crate) fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        match self.newest()? {
            None => Ok(None),
            Some((_, path)) => Ok(Some(fs::read(path)?)),
        }
    }

    /// The newest complete snapshot file and its position.
    fn newest(&self) -> Result<Option<(u64, PathBuf)>, StorageError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SNAPSHOT_EXTENSION) {
                continue;
            }
            let position = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
                .ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "snapshot file {} is not named by its position",
                        path.display()
                    ))
                })?;
            if newest.as_ref().is_none_or(|(best, _)| position > *best) {
                newest = Some((position, path));
            }
        }
        Ok(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_replaces_only_an_older_one_and_survives_a_crashed_save() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path(), 3);
        assert_eq!(files.load().unwrap(), None, "nothing saved yet");
        assert!(files.save_if_newer(7, b"seven").unwrap());
        assert!(!files.save_if_newer(7, b"seven again").unwrap());
        assert!(!files.save_if_newer(2, b"two").unwrap());
        // A save that crashed before its rename leaves a partial file: never loaded, removed by
        // the next save.
        let partial = files.dir.join(format!("{:020}{PARTIAL_SUFFIX}", 9));
        fs::write(&partial, b"nine, cut sh").unwrap();
        assert_eq!(files.load().unwrap(), Some(b"seven".to_vec()));
        assert!(files.save_if_newer(8, b"eight").unwrap());
        assert_eq!(files.load().unwrap(), Some(b"eight".to_vec()));
        let left: Vec<_> = fs::read_dir(&files.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![format!("{:020}.snap", 8)], "older files removed");
        let other_group = SnapshotFiles::new(dir.path(), 4);
        assert_eq!(other_group.load().unwrap(), None, "groups are apart");
    }

    #[test]
    fn a_discarded_snapshot_is_gone_and_any_position_saves_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path(), 1);
        files.discard().unwrap();
        assert!(files.save_if_newer(9, b"nine").unwrap());
        files.discard().unwrap();
        assert_eq!(files.load().unwrap(), None);
        assert!(files.save_if_newer(9, b"nine, from a peer").unwrap());
        assert_eq!(files.load().unwrap(), Some(b"nine, from a peer".to_vec()));
    }

    #[test]
    fn a_file_not_named_by_a_position_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path(), 0);
        fs::create_dir_all(&files.dir).unwrap();
        fs::write(files.dir.join("latest.snap"), b"?").unwrap();
        assert!(matches!(files.load(), Err(StorageError::Corrupt(_))));
    }
}
