//! Opening the log of a data dir, moving the Raft log out of sled first if an older version
//! kept it there (trees `log/{group}`: index -> entry, and `raft/{group}`: named records).
//!
//! The moved log is written in a directory beside the final one, synced, and renamed into
//! place: a crash midway leaves the sled trees whole and no log directory, and the next open
//! starts over. The sled trees are dropped only once the log directory exists; dropping them
//! again after a crash is harmless.

use std::fs;
use std::path::Path;

use super::{io_error, Wal, WalOptions};
use crate::durable::sync_dir;
use crate::{HandleToken, StorageError};

/// The log's directory inside the database directory, and where a move out of sled builds it.
pub(crate) const WAL_DIR: &str = "raft-wal";
const WAL_BUILDING_DIR: &str = "raft-wal.building";

const SLED_ENTRIES_PREFIX: &str = "log/";
const SLED_RECORDS_PREFIX: &str = "raft/";

/// Opens the log in `db_dir`, moving it out of `db`'s trees first if it is still there. The
/// log keeps `db` open, and with it sled's lock on the directory.
pub(crate) fn open_with_sled_log(
    db: &sled::Db,
    db_dir: &Path,
    options: WalOptions,
) -> Result<Wal, StorageError> {
    let wal_dir = db_dir.join(WAL_DIR);
    if !wal_dir.exists() {
        let building = db_dir.join(WAL_BUILDING_DIR);
        if building.exists() {
            fs::remove_dir_all(&building).map_err(|e| io_error(&building, e))?;
        }
        let wal = Wal::open(&building, options.clone())?;
        let moved = copy_sled_log(db, &wal)?;
        wal.sync()?;
        drop(wal);
        fs::rename(&building, &wal_dir).map_err(|e| io_error(&wal_dir, e))?;
        sync_dir(db_dir)?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "moved the Raft log out of sled into its own files"
            );
        }
    }
    for name in sled_log_trees(db) {
        db.drop_tree(&name)?;
    }
    Wal::open_locked(&wal_dir, options, Some(db.clone()))
}

/// Copies every group's entries and records from sled into `wal`. Returns how many entries.
fn copy_sled_log(db: &sled::Db, wal: &Wal) -> Result<usize, StorageError> {
    let mut moved = 0;
    for name in sled_log_trees(db) {
        let Some((is_entries, group)) = parse_tree_name(&name) else {
            continue;
        };
        let log = wal.group(group, HandleToken::default());
        let tree = db.open_tree(&name)?;
        if is_entries {
            let mut batch = Vec::new();
            for item in tree.iter() {
                let (key, value) = item?;
                let index: [u8; 8] = key.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("log key of {} bytes in {name}", key.len()))
                })?;
                batch.push((u64::from_be_bytes(index), value.to_vec()));
                if batch.len() == 1024 {
                    moved += batch.len();
                    log.append(std::mem::take(&mut batch))?;
                }
            }
            moved += batch.len();
            log.append(batch)?;
        } else {
            for item in tree.iter() {
                let (key, value) = item?;
                let key = std::str::from_utf8(&key).map_err(|_| {
                    StorageError::Corrupt(format!("a record name that is not UTF-8 in {name}"))
                })?;
                log.set_record(key, value.to_vec())?;
            }
        }
    }
    Ok(moved)
}

/// The names of sled trees that hold a Raft log.
fn sled_log_trees(db: &sled::Db) -> Vec<String> {
    db.tree_names()
        .into_iter()
        .filter_map(|name| String::from_utf8(name.to_vec()).ok())
        .filter(|name| parse_tree_name(name).is_some())
        .collect()
}

/// `log/{group}` -> (true, group); `raft/{group}` -> (false, group).
fn parse_tree_name(name: &str) -> Option<(bool, u32)> {
    if let Some(group) = name.strip_prefix(SLED_ENTRIES_PREFIX) {
        return group.parse().ok().map(|group| (true, group));
    }
    let group = name.strip_prefix(SLED_RECORDS_PREFIX)?;
    group.parse().ok().map(|group| (false, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_kept_in_sled_moves_into_the_wal_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let entries = db.open_tree("log/3").unwrap();
        for index in 5u64..=2_500 {
            entries
                .insert(index.to_be_bytes(), index.to_le_bytes().to_vec())
                .unwrap();
        }
        let records = db.open_tree("raft/3").unwrap();
        records.insert("vote", b"v".to_vec()).unwrap();
        records.insert("purged", b"p".to_vec()).unwrap();
        db.open_tree("raft/snapshots-elsewhere").unwrap();
        drop((entries, records));

        let wal = open_with_sled_log(&db, dir.path(), WalOptions::default()).unwrap();
        let log = wal.group(3, HandleToken::default());
        let read = log.range(..).unwrap();
        assert_eq!(read.len(), 2_496);
        assert_eq!(read[0], (5, 5u64.to_le_bytes().to_vec()));
        assert_eq!(log.last().unwrap().unwrap().0, 2_500);
        assert_eq!(log.record("vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(log.record("purged").unwrap(), Some(b"p".to_vec()));
        assert!(sled_log_trees(&db).is_empty(), "sled's copy is dropped");
        let names: Vec<_> = db.tree_names();
        assert!(names
            .iter()
            .any(|n| n.as_ref() == b"raft/snapshots-elsewhere"));
        assert!(!dir.path().join(WAL_BUILDING_DIR).exists());
        drop((log, wal));

        // A second open finds the WAL and moves nothing again (a leftover sled tree, as a crash
        // after the rename leaves, is dropped, not copied over newer records).
        db.open_tree("raft/3")
            .unwrap()
            .insert("vote", b"stale".to_vec())
            .unwrap();
        let wal = open_with_sled_log(&db, dir.path(), WalOptions::default()).unwrap();
        let log = wal.group(3, HandleToken::default());
        assert_eq!(log.record("vote").unwrap(), Some(b"v".to_vec()));
        assert!(sled_log_trees(&db).is_empty());
    }

    #[test]
    fn a_move_interrupted_before_the_rename_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        db.open_tree("log/0")
            .unwrap()
            .insert(1u64.to_be_bytes(), b"one".to_vec())
            .unwrap();
        let building = dir.path().join(WAL_BUILDING_DIR);
        fs::create_dir_all(&building).unwrap();
        fs::write(building.join("0000000000000001.wal"), b"half a segment").unwrap();

        let wal = open_with_sled_log(&db, dir.path(), WalOptions::default()).unwrap();
        let log = wal.group(0, HandleToken::default());
        assert_eq!(log.range(..).unwrap(), vec![(1, b"one".to_vec())]);
    }

    #[test]
    fn tree_names_parse_strictly() {
        assert_eq!(parse_tree_name("log/12"), Some((true, 12)));
        assert_eq!(parse_tree_name("raft/0"), Some((false, 0)));
        for name in [
            "log/",
            "log/x",
            "raft/-1",
            "sm/3",
            "raft/3/extra",
            "apply-journal",
        ] {
            assert_eq!(parse_tree_name(name), None, "{name}");
        }
    }
}
