//! The on-disk record encoding: one format-version byte, then bincode.
//!
//! Every value this crate persists goes through `encode`/`decode`, so a future format change can
//! be recognised (and migrated) instead of being misread. The raft layer uses the same codec for
//! its own records (vote, log entries, snapshot metadata).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StorageError;

/// The format version written in front of every persisted record.
pub const FORMAT_VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(FORMAT_VERSION);
    bincode::serialize_into(&mut bytes, value).map_err(|e| StorageError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Encodes `value` under a format version of its own: for records whose shape changed (Raft
/// log entries), so old records stay readable beside new ones.
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(version);
    bincode::serialize_into(&mut bytes, value).map_err(|e| StorageError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// The format version a record was written with.
pub fn format_of(bytes: &[u8]) -> Result<u8, StorageError> {
    bytes
        .first()
        .copied()
        .ok_or_else(|| StorageError::Decode("empty record".into()))
}

/// Decodes a record written by [`encode_as`] with `version`.
pub fn decode_as<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&found, body)) if found == version => {
            bincode::deserialize(body).map_err(|e| StorageError::Decode(e.to_string()))
        }
        Some((&other, _)) => Err(StorageError::UnknownFormat(other)),
        None => Err(StorageError::Decode("empty record".into())),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            bincode::deserialize(body).map_err(|e| StorageError::Decode(e.to_string()))
        }
        Some((&other, _)) => Err(StorageError::UnknownFormat(other)),
        None => Err(StorageError::Decode("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_versions() {
        let bytes = encode(&("auction", 7u64)).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode(&bytes).unwrap();
        assert_eq!(back, ("auction".to_string(), 7));

        let mut future = bytes.clone();
        future[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            decode::<(String, u64)>(&future),
            Err(StorageError::UnknownFormat(_))
        ));
        assert!(decode::<(String, u64)>(&[]).is_err());
        assert!(decode::<(String, u64)>(&bytes[..3]).is_err());
    }
}
