//! The backup file format: encoding it piece by piece (so a node can stream it) and decoding
//! it with every check on the way (so nothing is trusted before it is verified).
//!
//! Layout, integers big-endian:
//!
//! ```text
//! magic            8 bytes   "GAVELBAK"
//! format version   u16       6 (versions 1 to 5 are still read)
//! groups           u32       how many group records follow (the cluster's --groups)
//! node count       u32       voters of the backed-up cluster
//! created at       i64       ms since the Unix epoch, the saving node's clock
//! source node      u64       the node that wrote it
//! gavel version    u16 length, then that many bytes of UTF-8 (at most 64)
//! per group, ids 0, 1, ... in order:
//!   group          u32
//!   applied term   u64       the applied log id the state is at: leader term,
//!   applied node   u64       leader node,
//!   applied index  u64       and index
//!   state length   u64       at most GROUP_STATE_BYTES_MAX
//!   state          the group's state machine exactly as a Raft snapshot carries it (the
//!                  storage crate's record: its own format byte, then the key/value pairs,
//!                  compressed with zstd from format 6)
//! end magic        8 bytes   "GAVELEND"
//! checksum         32 bytes  SHA-256 of every byte before it
//! ```
//!
//! Nothing follows the checksum. It knows nothing of nodes or Raft: a state is opaque bytes here.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::BackupError;

pub const MAGIC: [u8; 8] = *b"GAVELBAK";
pub const END_MAGIC: [u8; 8] = *b"GAVELEND";
/// The format version this build writes. Versions differ only in what their groups' states
/// hold (`gavel_storage::SNAPSHOT_FORMAT`), which a build that reads only older versions must
/// refuse, and does, by this number: 2, copies without idempotency records; 3, decision logs
/// in runs; 4, runs that carry their auction's state; 5, runs that carry only what decisions
/// change of it; 6, states compressed with zstd.
pub const BACKUP_FORMAT_VERSION: u16 = 6;
/// The oldest format version this build reads (`SnapshotBlob::from_bytes` reads its states).
pub const BACKUP_FORMAT_OLDEST_READ: u16 = 1;
/// The largest state one group may have in a backup, in bytes. A node holds one group's state
/// in memory while it sends it (as it does for a Raft snapshot), and a reader refuses a larger
/// length before allocating anything.
pub const GROUP_STATE_BYTES_MAX: u64 = 1 << 30;
/// The longest version text a header may carry, in bytes.
const VERSION_TEXT_BYTES_MAX: usize = 64;
/// The most groups a header may announce (the node's own limit).
const GROUPS_MAX: u32 = crate::node::GROUPS_MAX;

/// What the file says about the cluster it was taken from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    pub groups: u32,
    pub node_count: u32,
    pub created_at_ms: i64,
    pub source_node: u64,
    pub gavel_version: String,
}

/// The Raft log id a group's state was captured at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedAt {
    pub term: u64,
    pub leader_node: u64,
    pub index: u64,
}

/// One group's captured state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    pub group: u32,
    pub applied: AppliedAt,
    /// The state machine copy, as a Raft snapshot of the group carries it.
    pub state: Vec<u8>,
}

/// Encodes a backup in the order it is sent, keeping the running checksum and checking that
/// groups come in order and all of them.
pub struct Encoder {
    hasher: Sha256,
    groups: u32,
    next_group: u32,
}

impl Encoder {
    /// Starts a backup: the encoder and the header's bytes.
    pub fn start(header: &BackupHeader) -> Result<(Encoder, Vec<u8>), BackupError> {
        let version = header.gavel_version.as_bytes();
        if version.len() > VERSION_TEXT_BYTES_MAX || !(1..=GROUPS_MAX).contains(&header.groups) {
            return Err(BackupError::Corrupt(format!(
                "header out of bounds: {header:?}"
            )));
        }
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&BACKUP_FORMAT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&header.groups.to_be_bytes());
        bytes.extend_from_slice(&header.node_count.to_be_bytes());
        bytes.extend_from_slice(&header.created_at_ms.to_be_bytes());
        bytes.extend_from_slice(&header.source_node.to_be_bytes());
        bytes.extend_from_slice(&(version.len() as u16).to_be_bytes());
        bytes.extend_from_slice(version);
        let mut encoder = Encoder {
            hasher: Sha256::new(),
            groups: header.groups,
            next_group: 0,
        };
        encoder.hasher.update(&bytes);
        Ok((encoder, bytes))
    }

    /// The next group: its record's fixed fields, then its state (two pieces, so the state is
    /// never copied).
    pub fn group(&mut self, record: GroupRecord) -> Result<[Vec<u8>; 2], BackupError> {
        if record.group != self.next_group || record.group >= self.groups {
            return Err(BackupError::Corrupt(format!(
                "group {} out of order (expected {} of {})",
                record.group, self.next_group, self.groups
            )));
        }
        let state_len = record.state.len() as u64;
        if state_len > GROUP_STATE_BYTES_MAX {
            return Err(BackupError::TooLarge {
                group: record.group,
                state_bytes: state_len,
            });
        }
        let mut fields = Vec::with_capacity(36);
        fields.extend_from_slice(&record.group.to_be_bytes());
        fields.extend_from_slice(&record.applied.term.to_be_bytes());
        fields.extend_from_slice(&record.applied.leader_node.to_be_bytes());
        fields.extend_from_slice(&record.applied.index.to_be_bytes());
        fields.extend_from_slice(&state_len.to_be_bytes());
        self.hasher.update(&fields);
        self.hasher.update(&record.state);
        self.next_group += 1;
        Ok([fields, record.state])
    }

    /// The trailer: end magic and checksum. Every group must have been written.
    pub fn finish(mut self) -> Result<Vec<u8>, BackupError> {
        if self.next_group != self.groups {
            return Err(BackupError::Corrupt(format!(
                "only {} of {} groups written",
                self.next_group, self.groups
            )));
        }
        self.hasher.update(END_MAGIC);
        let mut bytes = END_MAGIC.to_vec();
        bytes.extend_from_slice(&self.hasher.finalize());
        Ok(bytes)
    }
}

/// Hashes every byte read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a backup front to back. Each piece is checked as it is read (magic, version, bounds,
/// group order); the checksum can only be checked by [`Decoder::finish`], so nothing a caller
/// does with the pieces may be kept before `finish` succeeded.
pub struct Decoder<R> {
    reader: Hashing<R>,
    format_version: u16,
    header: BackupHeader,
    next_group: u32,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the header.
    pub fn open(inner: R) -> Result<Decoder<R>, BackupError> {
        let mut reader = Hashing {
            inner,
            hasher: Sha256::new(),
        };
        let magic: [u8; 8] = read_array(&mut reader, "magic")?;
        if magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let version = u16::from_be_bytes(read_array(&mut reader, "format version")?);
        if !(BACKUP_FORMAT_OLDEST_READ..=BACKUP_FORMAT_VERSION).contains(&version) {
            return Err(BackupError::UnsupportedVersion {
                found: version,
                supported: BACKUP_FORMAT_VERSION,
            });
        }
        let header = read_header(&mut reader)?;
        Ok(Decoder {
            reader,
            format_version: version,
            header,
            next_group: 0,
        })
    }

    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// The format version the file was written in.
    pub fn format_version(&self) -> u16 {
        self.format_version
    }

    /// The next group's record, `None` after the last one.
    pub fn next_group(&mut self) -> Result<Option<GroupRecord>, BackupError> {
        if self.next_group == self.header.groups {
            return Ok(None);
        }
        let what = format!("group {}", self.next_group);
        let group = u32::from_be_bytes(read_array(&mut self.reader, &what)?);
        if group != self.next_group {
            return Err(BackupError::Corrupt(format!(
                "expected group {}, found {group}",
                self.next_group
            )));
        }
        let applied = AppliedAt {
            term: u64::from_be_bytes(read_array(&mut self.reader, &what)?),
            leader_node: u64::from_be_bytes(read_array(&mut self.reader, &what)?),
            index: u64::from_be_bytes(read_array(&mut self.reader, &what)?),
        };
        let state_len = u64::from_be_bytes(read_array(&mut self.reader, &what)?);
        if state_len > GROUP_STATE_BYTES_MAX {
            return Err(BackupError::Corrupt(format!(
                "group {group} claims {state_len} bytes of state (at most {GROUP_STATE_BYTES_MAX})"
            )));
        }
        // Grows as bytes arrive: a corrupt length cannot make it allocate more than the file.
        let mut state = Vec::new();
        (&mut self.reader).take(state_len).read_to_end(&mut state)?;
        if state.len() as u64 != state_len {
            return Err(BackupError::Truncated(format!(
                "group {group}'s state ends after {} of {state_len} bytes",
                state.len()
            )));
        }
        self.next_group += 1;
        Ok(Some(GroupRecord {
            group,
            applied,
            state,
        }))
    }

    /// Reads the trailer after the last group and checks the checksum and that nothing
    /// follows. Returns the checksum.
    pub fn finish(mut self) -> Result<[u8; 32], BackupError> {
        if self.next_group != self.header.groups {
            return Err(BackupError::Corrupt(format!(
                "finished after {} of {} groups",
                self.next_group, self.header.groups
            )));
        }
        let end: [u8; 8] = read_array(&mut self.reader, "end magic")?;
        if end != END_MAGIC {
            return Err(BackupError::Corrupt(
                "no end magic after the last group".into(),
            ));
        }
        let computed: [u8; 32] = self.reader.hasher.finalize().into();
        let stored: [u8; 32] = read_array(&mut self.reader.inner, "checksum")?;
        if computed != stored {
            return Err(BackupError::ChecksumMismatch);
        }
        let mut extra = [0u8; 1];
        if self.reader.inner.read(&mut extra)? != 0 {
            return Err(BackupError::Corrupt("bytes follow the checksum".into()));
        }
        Ok(computed)
    }
}

fn read_header<R: Read>(reader: &mut R) -> Result<BackupHeader, BackupError> {
    let groups = u32::from_be_bytes(read_array(reader, "header")?);
    let node_count = u32::from_be_bytes(read_array(reader, "header")?);
    let created_at_ms = i64::from_be_bytes(read_array(reader, "header")?);
    let source_node = u64::from_be_bytes(read_array(reader, "header")?);
    let version_len = usize::from(u16::from_be_bytes(read_array(reader, "header")?));
    if !(1..=GROUPS_MAX).contains(&groups) || version_len > VERSION_TEXT_BYTES_MAX {
        return Err(BackupError::Corrupt(format!(
            "header out of bounds ({groups} groups, version text of {version_len} bytes)"
        )));
    }
    let mut version = vec![0u8; version_len];
    read_exact(reader, &mut version, "header")?;
    let gavel_version = String::from_utf8(version)
        .map_err(|_| BackupError::Corrupt("the version text is not UTF-8".into()))?;
    Ok(BackupHeader {
        groups,
        node_count,
        created_at_ms,
        source_node,
        gavel_version,
    })
}

fn read_array<const N: usize, R: Read>(reader: &mut R, what: &str) -> Result<[u8; N], BackupError> {
    let mut bytes = [0u8; N];
    read_exact(reader, &mut bytes, what)?;
    Ok(bytes)
}

fn read_exact<R: Read>(reader: &mut R, bytes: &mut [u8], what: &str) -> Result<(), BackupError> {
    reader.read_exact(bytes).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Truncated(format!("the file ends in {what}")),
        _ => BackupError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(groups: u32) -> BackupHeader {
        BackupHeader {
            groups,
            node_count: 3,
            created_at_ms: 1_700_000_000_000,
            source_node: 2,
            gavel_version: "0.1.0".into(),
        }
    }

    fn record(group: u32, state: &[u8]) -> GroupRecord {
        GroupRecord {
            group,
            applied: AppliedAt {
                term: 4,
                leader_node: 1,
                index: 100 + u64::from(group),
            },
            state: state.to_vec(),
        }
    }

    fn encode(groups: &[GroupRecord]) -> Vec<u8> {
        let (mut encoder, mut bytes) = Encoder::start(&header(groups.len() as u32)).unwrap();
        for record in groups {
            for piece in encoder.group(record.clone()).unwrap() {
                bytes.extend_from_slice(&piece);
            }
        }
        bytes.extend_from_slice(&encoder.finish().unwrap());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<(BackupHeader, Vec<GroupRecord>), BackupError> {
        let mut decoder = Decoder::open(bytes)?;
        let header = decoder.header().clone();
        let mut groups = Vec::new();
        while let Some(record) = decoder.next_group()? {
            groups.push(record);
        }
        decoder.finish()?;
        Ok((header, groups))
    }

    #[test]
    fn round_trips() {
        let groups = vec![record(0, b"zero"), record(1, b""), record(2, &[7; 300])];
        let bytes = encode(&groups);
        let (read_header, read_groups) = decode(&bytes).unwrap();
        assert_eq!(read_header, header(3));
        assert_eq!(read_groups, groups);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let bytes = encode(&[record(0, b"state of zero"), record(1, b"one")]);
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            assert!(decode(&flipped).is_err(), "flipped byte {i} was accepted");
            assert!(
                matches!(decode(&bytes[..i]), Err(BackupError::Truncated(_))),
                "truncation at {i}: {:?}",
                decode(&bytes[..i]).err()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn other_versions_and_other_files_are_named_as_such() {
        let mut bytes = encode(&[record(0, b"x")]);
        let newer = BACKUP_FORMAT_VERSION + 1;
        bytes[8..10].copy_from_slice(&newer.to_be_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(BackupError::UnsupportedVersion { found, .. }) if found == newer
        ));
        // Versions 1 and 2 differ only in their states' format, which the storage crate reads.
        // (The checksum covers the version, so only the header is read here.)
        for older in [1, 2] {
            bytes[8..10].copy_from_slice(&u16::to_be_bytes(older));
            let decoder = Decoder::open(&bytes[..]).expect("older versions are read");
            assert_eq!(decoder.format_version(), older);
        }
        assert!(matches!(
            decode(b"SQLite format 3\0 and more"),
            Err(BackupError::NotABackup)
        ));
    }

    #[test]
    fn the_encoder_insists_on_every_group_in_order() {
        let (mut encoder, _) = Encoder::start(&header(2)).unwrap();
        assert!(encoder.group(record(1, b"")).is_err());
        encoder.group(record(0, b"")).unwrap();
        assert!(encoder.finish().is_err());
    }
}
