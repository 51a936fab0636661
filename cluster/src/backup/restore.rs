//! Building one member's data dir of a new cluster from a backup file (`gavel snapshot
//! restore`), to be run once per member with the same file and `--initial-cluster`.
//!
//! Nothing is written until the whole file is verified, and the data dir appears only
//! complete: the dir is built under a temporary name beside the target and renamed into place
//! at the end. A target that exists and is not empty is refused. Every group's state is
//! installed as its Raft snapshot with the new members (`gavel_raft::restore_group`), and the
//! node id and the backup's group count are recorded as `gavel serve` records them on first
//! start, so the restored members start already initialized, from identical states.

use std::fs;
use std::path::{Path, PathBuf};

use gavel_storage::{Store, StoreConfig};

use super::{read_verified, BackupError, BackupSummary};
use crate::node::{initial_members_of, DB_DIR, META_GROUPS, META_NODE_ID};

/// The member to build.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    pub data_dir: PathBuf,
    pub node_id: u64,
    /// `(node id, peer address)` of every member of the new cluster, this one included.
    pub initial_cluster: Vec<(u64, String)>,
}

/// Verifies the backup at `file`, then builds `target`'s data dir from it. Returns what the
/// backup held.
pub async fn restore(file: &Path, target: &RestoreTarget) -> Result<BackupSummary, BackupError> {
    check_target(target)?;
    let summary = super::inspect(file)?;
    let staging = staging_dir(&target.data_dir)?;
    fs::create_dir(&staging).map_err(|e| {
        BackupError::Refused(format!(
            "cannot create the staging dir {}: {e}",
            staging.display()
        ))
    })?;
    let built = build(file, target, &summary, &staging).await;
    let placed = built.and_then(|()| move_into_place(&staging, &target.data_dir));
    if let Err(error) = placed {
        if let Err(e) = fs::remove_dir_all(&staging) {
            tracing::warn!(dir = %staging.display(), error = %e, "could not remove the staging dir");
        }
        return Err(error);
    }
    tracing::info!(
        node_id = target.node_id,
        data_dir = %target.data_dir.display(),
        groups = summary.header.groups,
        "restored"
    );
    Ok(summary)
}

/// Refuses a target that cannot be built as asked, before anything is read or written.
fn check_target(target: &RestoreTarget) -> Result<(), BackupError> {
    if target.node_id == 0 {
        return Err(BackupError::Refused("node ids start at 1".into()));
    }
    if !target
        .initial_cluster
        .iter()
        .any(|(id, _)| *id == target.node_id)
    {
        return Err(BackupError::Refused(format!(
            "--initial-cluster does not list this node ({})",
            target.node_id
        )));
    }
    check_empty(&target.data_dir)
}

fn check_empty(dir: &Path) -> Result<(), BackupError> {
    let refuse = |why: &str| {
        BackupError::Refused(format!(
            "{} {why}: restore only into a new or empty directory",
            dir.display()
        ))
    };
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(refuse("is not empty")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(refuse("is a file")),
        Err(e) => Err(refuse(&format!("cannot be read ({e})"))),
    }
}

/// A new directory beside `data_dir` (same file system, so the final rename is atomic).
fn staging_dir(data_dir: &Path) -> Result<PathBuf, BackupError> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| BackupError::Refused(format!("{} names no directory", data_dir.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)?;
    Ok(parent.join(format!(".{name}.restoring-{}", std::process::id())))
}

/// Writes the node's identity and every group into a fresh database under `staging`.
async fn build(
    file: &Path,
    target: &RestoreTarget,
    verified: &BackupSummary,
    staging: &Path,
) -> Result<(), BackupError> {
    let store = Store::open(&staging.join(DB_DIR), &StoreConfig::default())?;
    store.set_node_meta(META_NODE_ID, &target.node_id)?;
    store.set_node_meta(META_GROUPS, &verified.header.groups)?;
    let members = initial_members_of(&target.initial_cluster);
    // The second read checks everything again: the file must not have changed since.
    let again = read_verified(file, |record, blob| {
        gavel_raft::restore_group(&store, record.group, blob, record.applied.index, &members)?;
        Ok(())
    })?;
    if again.checksum != verified.checksum {
        return Err(BackupError::Corrupt(
            "the file changed while it was being restored".into(),
        ));
    }
    store.flush().await?;
    Ok(())
}

/// Renames the built dir to `data_dir` (an empty one is replaced) and makes the rename durable.
fn move_into_place(staging: &Path, data_dir: &Path) -> Result<(), BackupError> {
    check_empty(data_dir)?;
    if data_dir.exists() {
        fs::remove_dir(data_dir)?;
    }
    fs::rename(staging, data_dir)?;
    if let Some(parent) = staging.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> RestoreTarget {
        RestoreTarget {
            data_dir: dir.to_path_buf(),
            node_id: 2,
            initial_cluster: vec![(1, "a:1".into()), (2, "b:2".into())],
        }
    }

    #[test]
    fn refuses_targets_it_cannot_build() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        assert!(check_target(&target(&fresh)).is_ok());
        fs::create_dir(&fresh).unwrap();
        assert!(
            check_target(&target(&fresh)).is_ok(),
            "an empty dir is fine"
        );
        fs::write(fresh.join("x"), b"x").unwrap();
        assert!(matches!(
            check_target(&target(&fresh)),
            Err(BackupError::Refused(_))
        ));
        assert!(check_target(&target(&fresh.join("x"))).is_err(), "a file");
        let mut stranger = target(&dir.path().join("other"));
        stranger.node_id = 3;
        assert!(check_target(&stranger).is_err());
    }
}
