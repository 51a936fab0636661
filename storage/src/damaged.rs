//! A database whose storage engine will not open. sled 0.34 does not always recover its files
//! after a power cut that kept only some of the pages written since its last flush: the fault
//! suite's torn power cuts (`jepsen/README.md`) found it panicking inside `sled::open` ("tried to
//! serialize Uninitialized") and refusing its own file ("Read corrupted data at file offset").
//!
//! The Raft log and the stored snapshots are this crate's own files, each recovered by its own
//! rules; only sled's files are in doubt. They are set aside, not deleted, so that nothing an
//! operator may want to examine is lost, and the node opens a fresh engine beside the log it
//! kept (the cluster layer then brings the state machines back, see `gavel_raft`'s `recover`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::durable::sync_dir;
use crate::snapshot_files::SNAPSHOTS_DIR;
use crate::wal::WAL_DIR;
use crate::StorageError;

/// What sled reported (or how it panicked) when it would not open.
pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> StorageError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    StorageError::EnginePanicked(message)
}

impl StorageError {
    /// Whether the storage engine would not open because of what its files hold (a crash or a
    /// power cut left them in a state it cannot recover), not because of where they are (no
    /// permission, the lock held by another process, a full disk): setting its files aside
    /// is then the way forward, and opening again as they are is not.
    pub fn is_damaged_engine(&self) -> bool {
        matches!(
            self,
            StorageError::EnginePanicked(_)
                | StorageError::Engine(
                    sled::Error::Corruption { .. }
                        | sled::Error::Unsupported(_)
                        | sled::Error::ReportableBug(_)
                )
        )
    }
}

/// Moves every file of the database in `db_dir` but the Raft log and the stored snapshots into
/// a new directory beside it, `<db_dir>.damaged-<unix seconds>`, and returns that directory.
/// Durable when it returns: the moves and both directories are synced.
pub fn set_aside_engine_files(db_dir: &Path) -> Result<PathBuf, StorageError> {
    let io = |path: &Path, source: std::io::Error| StorageError::Io {
        path: path.display().to_string(),
        source,
    };
    let name = db_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| StorageError::Corrupt(format!("{} names no directory", db_dir.display())))?;
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let aside = db_dir.with_file_name(format!("{name}.damaged-{seconds}"));
    fs::create_dir(&aside).map_err(|e| io(&aside, e))?;
    for entry in fs::read_dir(db_dir).map_err(|e| io(db_dir, e))? {
        let entry = entry.map_err(|e| io(db_dir, e))?;
        if entry.file_name() == WAL_DIR || entry.file_name() == SNAPSHOTS_DIR {
            continue;
        }
        let to = aside.join(entry.file_name());
        fs::rename(entry.path(), &to).map_err(|e| io(&to, e))?;
    }
    sync_dir(&aside)?;
    sync_dir(db_dir)?;
    if let Some(parent) = aside.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};

    /// A database whose sled settings file was overwritten: sled refuses it as damaged, and
    /// once its files are set aside a fresh database opens with the Raft log as it was.
    #[test]
    fn a_database_sled_refuses_is_set_aside_and_the_log_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        {
            let store = Store::open(&db_dir, &StoreConfig::default()).unwrap();
            let log = store.log(3).unwrap();
            log.append([(1, b"one".to_vec()), (2, b"two".to_vec())])
                .unwrap();
            log.set_record("vote", b"mine".to_vec()).unwrap();
            store.set_node_meta("node_id", &7u64).unwrap();
            store
                .state(3)
                .unwrap()
                .save_snapshot_if_newer(1, b"a snapshot")
                .unwrap();
            store.wal.sync().unwrap();
            store.db.flush().unwrap();
        }
        fs::write(db_dir.join("conf"), [0xFF; 64]).unwrap();

        let refused = Store::open(&db_dir, &StoreConfig::default())
            .err()
            .expect("sled refuses a settings file it cannot read");
        assert!(refused.is_damaged_engine(), "{refused}");

        let aside = set_aside_engine_files(&db_dir).unwrap();
        assert!(aside.starts_with(dir.path()));
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("db.damaged-"));
        assert!(aside.join("conf").exists() && aside.join("db").exists());
        let mut kept: Vec<String> = fs::read_dir(&db_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, [SNAPSHOTS_DIR, WAL_DIR]);

        let store = Store::open(&db_dir, &StoreConfig::default()).unwrap();
        assert_eq!(
            store.node_meta::<u64>("node_id").unwrap(),
            None,
            "a fresh engine"
        );
        assert_eq!(store.log_groups(), [3]);
        let log = store.log(3).unwrap();
        let entries: Vec<u64> = log.range(..).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(entries, [1, 2]);
        assert_eq!(log.record("vote").unwrap().as_deref(), Some(&b"mine"[..]));
        assert_eq!(
            store.state(3).unwrap().load_snapshot().unwrap().as_deref(),
            Some(&b"a snapshot"[..])
        );
    }

    #[test]
    fn only_what_the_files_hold_counts_as_damage() {
        assert!(
            StorageError::EnginePanicked("tried to serialize Uninitialized".into())
                .is_damaged_engine()
        );
        assert!(StorageError::Engine(sled::Error::Unsupported("old".into())).is_damaged_engine());
        let held = std::io::Error::other("could not acquire lock");
        assert!(!StorageError::Engine(sled::Error::Io(held)).is_damaged_engine());
        let full = std::io::Error::from_raw_os_error(28);
        assert!(!StorageError::File(full).is_damaged_engine());
    }
}
