//! State copies (Raft snapshots, backups) compressed with zstd.
//!
//! A hot group's copy is mostly its bid log, whose records repeat auction ids, bidder ids and
//! field layouts: 125 MB of bincode packs into about 26 MB at level 1 in about 0.2 s of a core.
//! Every replica writes its snapshot file on the same schedule, and on a shared disk the log's
//! fsyncs wait behind those writes, so the bytes written are what a snapshot costs the bids.

use std::io::{BufWriter, Write};

use serde::Serialize;

use crate::StorageError;

/// zstd's fastest regular level: higher levels shrink the copy a little more (level 3: 30
/// MB of the same 125) for twice the CPU, taken from the bids on two cores.
const LEVEL: i32 = 1;

/// The largest copy this build unpacks, in bytes. The frame states its size, so a corrupt or
/// hostile one is refused before anything is allocated; a real state this large would not fit
/// the copy a snapshot holds in memory anyway.
pub(crate) const UNPACKED_BYTES_MAX: u64 = 1 << 32;

/// `version`, then `value`'s bincode in one zstd frame that states its unpacked size.
pub(crate) fn pack<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StorageError> {
    let encode_error = |e: &dyn std::fmt::Display| StorageError::Encode(e.to_string());
    let plain_len = bincode::serialized_size(value).map_err(|e| encode_error(&e))?;
    // Level 1 packs state copies about five to one; a guess that saves most regrowth.
    let mut packed = Vec::with_capacity(1 + usize::try_from(plain_len / 4).unwrap_or(0));
    packed.push(version);
    let mut encoder =
        zstd::stream::write::Encoder::new(packed, LEVEL).map_err(|e| encode_error(&e))?;
    // The size lets a reader refuse a bad frame before allocating; the checksum turns a
    // damaged file into an error instead of a different state.
    encoder
        .include_contentsize(true)
        .and_then(|()| encoder.include_checksum(true))
        .and_then(|()| encoder.set_pledged_src_size(Some(plain_len)))
        .map_err(|e| encode_error(&e))?;
    {
        // bincode writes a length prefix and a slice per key and value: a buffer in front
        // hands zstd large pieces instead of millions of small ones. A snapshot's thread
        // paces itself between those pieces (`pace`).
        let paced = crate::pace::PacedWriter(&mut encoder);
        let mut buffered = BufWriter::with_capacity(1 << 16, paced);
        bincode::serialize_into(&mut buffered, value).map_err(|e| encode_error(&e))?;
        buffered.flush().map_err(|e| encode_error(&e))?;
    }
    encoder.finish().map_err(|e| encode_error(&e))
}

fn corrupt(why: String) -> StorageError {
    StorageError::Decode(format!("compressed state copy: {why}"))
}

/// The size a frame written by `pack` states it unpacks to, refused past `UNPACKED_BYTES_MAX`.
fn unpacked_len(frame: &[u8]) -> Result<u64, StorageError> {
    let plain_len = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(len)) => len,
        Ok(None) => return Err(corrupt("its frame does not state its size".into())),
        Err(_) => return Err(corrupt("not a zstd frame".into())),
    };
    if plain_len > UNPACKED_BYTES_MAX {
        return Err(corrupt(format!(
            "it claims {plain_len} bytes unpacked (at most {UNPACKED_BYTES_MAX})"
        )));
    }
    Ok(plain_len)
}

/// The bincode bytes a frame written by `pack` holds (without the version byte `pack` wrote
/// in front of it).
pub(crate) fn unpack(frame: &[u8]) -> Result<Vec<u8>, StorageError> {
    let plain_len = unpacked_len(frame)?;
    let plain_len = usize::try_from(plain_len)
        .map_err(|_| corrupt(format!("{plain_len} bytes do not fit in memory here")))?;
    let mut plain = Vec::new();
    plain
        .try_reserve_exact(plain_len)
        .map_err(|e| corrupt(format!("cannot reserve {plain_len} bytes: {e}")))?;
    let written = zstd::bulk::Decompressor::new()
        .and_then(|mut decompressor| decompressor.decompress_to_buffer(frame, &mut plain))
        .map_err(|e| corrupt(e.to_string()))?;
    if written != plain_len {
        return Err(corrupt(format!(
            "it unpacked to {written} bytes, not the {plain_len} it states"
        )));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(count: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let key = format!("auction-{:04}/bid-{i:08}", i % 97).into_bytes();
                let value = format!("bidder-{}:{}.00", i % 13, 100 + i).into_bytes();
                (key, value)
            })
            .collect()
    }

    #[test]
    fn a_packed_value_unpacks_to_its_bincode_and_is_smaller() {
        let value = pairs(20_000);
        let packed = pack(9, &value).unwrap();
        assert_eq!(packed[0], 9);
        let plain = bincode::serialize(&value).unwrap();
        assert_eq!(unpacked_len(&packed[1..]).unwrap(), plain.len() as u64);
        assert!(
            packed.len() * 3 < plain.len(),
            "{} packed of {} plain",
            packed.len(),
            plain.len()
        );
        assert_eq!(unpack(&packed[1..]).unwrap(), plain);
    }

    #[test]
    fn an_empty_value_round_trips() {
        let packed = pack(9, &Vec::<(Vec<u8>, Vec<u8>)>::new()).unwrap();
        let back: Vec<(Vec<u8>, Vec<u8>)> =
            bincode::deserialize(&unpack(&packed[1..]).unwrap()).unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let packed = pack(9, &pairs(2_000)).unwrap();
        let frame = &packed[1..];
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not zstd", b"certainly not a zstd frame".to_vec()),
            ("cut short", frame[..frame.len() / 2].to_vec()),
            ("two frames", [frame, frame].concat()),
        ];
        let mut flipped = frame.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0xff;
        cases.push(("a byte flipped", flipped));
        for (what, bytes) in cases {
            match unpack(&bytes) {
                Err(StorageError::Decode(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_frame_claiming_too_much_is_refused_before_allocating() {
        // A frame header stating 2^40 bytes (single segment, 8-byte size field), no content.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        match unpack(&frame) {
            Err(StorageError::Decode(why)) => assert!(why.contains("claims"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
