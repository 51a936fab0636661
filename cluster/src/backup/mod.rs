//! Backup and restore of a whole cluster's state (`gavel snapshot save|status|restore`,
//! modelled on `etcdctl snapshot save` and `etcdutl snapshot restore`).
//!
//! - `format`: the file: header, one record per group (its Raft snapshot state and applied
//!   log id), SHA-256 trailer; encoded piece by piece, decoded with every check;
//! - `capture`: a running node's linearizable copy of every group, streamed as that file;
//! - `restore`: verifying a file and building one member's data dir of a new cluster from it.
//!
//! This module knows files and the node's groups; it knows nothing of HTTP (the node hands a
//! stream of bytes to `src/`) and reaches sled and openraft only through `gavel-storage` and
//! `gavel-raft`.

mod capture;
mod format;
mod restore;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use gavel_storage::{SnapshotBlob, StateSummary};

pub(crate) use capture::snapshot_reaching;
pub use capture::{BackupStream, BACKUP_PIECES_QUEUED_MAX};
pub use format::{
    AppliedAt, BackupHeader, Decoder, Encoder, GroupRecord, BACKUP_FORMAT_OLDEST_READ,
    BACKUP_FORMAT_VERSION, GROUP_STATE_BYTES_MAX,
};
pub use restore::{restore, RestoreTarget};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Gavel backup file (no GAVELBAK magic at its start)")]
    NotABackup,
    #[error(
        "backup format version {found} is not supported: this gavel reads versions {} to {supported}",
        BACKUP_FORMAT_OLDEST_READ
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("the backup file is truncated: {0}")]
    Truncated(String),
    #[error("the backup file is corrupt: {0}")]
    Corrupt(String),
    #[error("the backup file is corrupt: its SHA-256 checksum does not match its contents")]
    ChecksumMismatch,
    #[error("group {group}'s state is {state_bytes} bytes, more than a backup holds ({GROUP_STATE_BYTES_MAX})")]
    TooLarge { group: u32, state_bytes: u64 },
    /// A group could not be captured (it stopped, or built no snapshot in time).
    #[error("{0}")]
    Unavailable(String),
    /// The stream's reader went away.
    #[error("the backup was abandoned by its reader")]
    Abandoned,
    /// A restore that must not run as asked (non-empty target, wrong node id, ...).
    #[error("{0}")]
    Refused(String),
    #[error("cannot open {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] gavel_storage::StorageError),
}

/// One group of a verified backup.
#[derive(Clone, Debug)]
pub struct GroupSummary {
    pub group: u32,
    pub applied: AppliedAt,
    pub state_bytes: u64,
    pub state: StateSummary,
}

/// What a verified backup file holds.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    /// The format version the file was written in.
    pub format_version: u16,
    pub header: BackupHeader,
    pub groups: Vec<GroupSummary>,
    pub file_bytes: u64,
    /// The file's SHA-256 (its trailer), checked.
    pub checksum: [u8; 32],
}

/// Reads and verifies the whole backup at `path`: structure, every record of every group's
/// state, and the checksum. Nothing in the file is trusted unless this succeeds.
pub fn inspect(path: &Path) -> Result<BackupSummary, BackupError> {
    read_verified(path, |_, _| Ok(()))
}

/// Reads the backup at `path` front to back, checking everything, and hands each group's
/// decoded state to `each` as it goes. The checksum is checked only at the end, so whatever
/// `each` did must be discarded when this fails.
pub(crate) fn read_verified(
    path: &Path,
    mut each: impl FnMut(&GroupRecord, SnapshotBlob) -> Result<(), BackupError>,
) -> Result<BackupSummary, BackupError> {
    let file = File::open(path).map_err(|source| BackupError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let file_bytes = file.metadata()?.len();
    let mut decoder = Decoder::open(BufReader::new(file))?;
    let header = decoder.header().clone();
    let format_version = decoder.format_version();
    let mut groups = Vec::with_capacity(header.groups as usize);
    while let Some(record) = decoder.next_group()? {
        let corrupt = |e: gavel_storage::StorageError| {
            BackupError::Corrupt(format!("group {}'s state: {e}", record.group))
        };
        let blob = SnapshotBlob::from_bytes(&record.state).map_err(corrupt)?;
        let state = blob.summary().map_err(corrupt)?;
        groups.push(GroupSummary {
            group: record.group,
            applied: record.applied,
            state_bytes: record.state.len() as u64,
            state,
        });
        each(&record, blob)?;
    }
    let checksum = decoder.finish()?;
    Ok(BackupSummary {
        format_version,
        header,
        groups,
        file_bytes,
        checksum,
    })
}
