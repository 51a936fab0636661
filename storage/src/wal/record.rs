//! The bytes of the write-ahead log: a segment header, then records, each framed as
//! `len: u32 | crc32(body): u32 | body` (little-endian), where the body is a kind byte, the
//! group, and the kind's fields. A frame whose length or checksum does not hold marks where a
//! crash cut the last write short: everything from there on is discarded.

use crate::StorageError;

/// Starts every segment file: magic, format version, then the segment's sequence number.
const MAGIC: &[u8; 8] = b"GAVELWAL";
const FORMAT: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: u64 = 8 + 4 + 8;

/// `len` and `crc` before each body.
pub(crate) const FRAME_LEN: u64 = 8;
/// The body of an entry or copy record before its bytes: kind, group, index.
pub(crate) const ENTRY_PREFIX_LEN: u64 = 1 + 4 + 8;
/// Longest body a reader accepts; an entry holds at most a few hundred bids, far below it, so
/// a larger length is a torn or foreign frame rather than a record.
pub(crate) const BODY_MAX: u32 = 64 * 1024 * 1024;

const ENTRY: u8 = 1;
const COPY: u8 = 2;
const TRUNCATE: u8 = 3;
const PURGE: u8 = 4;
const NAMED: u8 = 5;

/// One record's meaning. Entry bytes are not copied out: readers get their position instead.
#[derive(Debug, PartialEq)]
pub(crate) enum Record<'a> {
    /// A log entry appended at `index`; it replaces every entry at `index` or after.
    Entry {
        group: u32,
        index: u64,
        bytes: &'a [u8],
    },
    /// A live entry moved forward out of an old segment; it replaces only the entry at `index`.
    Copy {
        group: u32,
        index: u64,
        bytes: &'a [u8],
    },
    /// Entries at `from` and after are gone (a new leader's log replaces them).
    Truncate { group: u32, from: u64 },
    /// Entries at `through` and before are gone (covered by a snapshot).
    Purge { group: u32, through: u64 },
    /// A small named value of the group (vote, committed, purged log id); the newest wins.
    Named {
        group: u32,
        name: &'a str,
        bytes: &'a [u8],
    },
}

pub(crate) fn segment_header(seq: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    header
}

/// Checks a segment's header: it must be this format and carry the sequence number its file
/// name says.
pub(crate) fn check_segment_header(bytes: &[u8], seq: u64) -> Result<(), String> {
    if bytes.len() < SEGMENT_HEADER_LEN as usize {
        return Err(format!("header cut short at {} bytes", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a Gavel log segment".into());
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(format!(
            "log segment format {format}, this build reads {FORMAT}"
        ));
    }
    let stored_seq = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if stored_seq != seq {
        return Err(format!("header says segment {stored_seq}"));
    }
    Ok(())
}

/// Appends `record`'s frame to `out`. Returns where the entry bytes start within `out`, for
/// entry and copy records.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) -> Result<Option<usize>, StorageError> {
    let frame_start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN as usize]);
    let body_start = out.len();
    let (kind, group) = match *record {
        Record::Entry { group, .. } => (ENTRY, group),
        Record::Copy { group, .. } => (COPY, group),
        Record::Truncate { group, .. } => (TRUNCATE, group),
        Record::Purge { group, .. } => (PURGE, group),
        Record::Named { group, .. } => (NAMED, group),
    };
    out.push(kind);
    out.extend_from_slice(&group.to_le_bytes());
    let mut bytes_at = None;
    match record {
        Record::Entry { index, bytes, .. } | Record::Copy { index, bytes, .. } => {
            out.extend_from_slice(&index.to_le_bytes());
            bytes_at = Some(out.len());
            out.extend_from_slice(bytes);
        }
        Record::Truncate { from: index, .. } | Record::Purge { through: index, .. } => {
            out.extend_from_slice(&index.to_le_bytes());
        }
        Record::Named { name, bytes, .. } => {
            let name_len = u8::try_from(name.len()).map_err(|_| {
                StorageError::Encode(format!("record name of {} bytes", name.len()))
            })?;
            out.push(name_len);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(bytes);
        }
    }
    let body_len = out.len() - body_start;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|len| *len <= BODY_MAX)
        .ok_or_else(|| StorageError::Encode(format!("a log record of {body_len} bytes")))?;
    let crc = crc32fast::hash(&out[body_start..]);
    out[frame_start..frame_start + 4].copy_from_slice(&len.to_le_bytes());
    out[frame_start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes_at)
}

/// What `next_frame` found at an offset.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame<'a> {
    /// A whole frame: its body, and the offset of the frame after it.
    Whole { body: &'a [u8], next: usize },
    /// Nothing more was written (the end of the data, or zeroes).
    End,
    /// A frame cut short or damaged: what a crash in the middle of a write leaves.
    Torn(String),
}

pub(crate) fn next_frame(data: &[u8], at: usize) -> Frame<'_> {
    let rest = &data[at.min(data.len())..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_LEN as usize {
        return Frame::Torn(format!("{} bytes, less than a frame header", rest.len()));
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        return Frame::End;
    }
    if len > BODY_MAX || len as usize > rest.len() - FRAME_LEN as usize {
        return Frame::Torn(format!(
            "a frame of {len} bytes with {} left",
            rest.len() - FRAME_LEN as usize
        ));
    }
    let body = &rest[FRAME_LEN as usize..FRAME_LEN as usize + len as usize];
    if crc32fast::hash(body) != crc {
        return Frame::Torn("a checksum that does not match".into());
    }
    Frame::Whole {
        body,
        next: at + FRAME_LEN as usize + len as usize,
    }
}

/// Decodes a body whose checksum held. A body that still does not parse was written by
/// something else than this format: that is corruption, not a torn write.
pub(crate) fn decode(body: &[u8]) -> Result<Record<'_>, String> {
    let (&kind, rest) = body.split_first().ok_or("an empty record")?;
    let group = u32::from_le_bytes(
        rest.get(..4)
            .ok_or("a record without its group")?
            .try_into()
            .expect("4 bytes"),
    );
    let rest = &rest[4..];
    let index = || -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            rest.get(..8)
                .ok_or("a record without its index")?
                .try_into()
                .expect("8 bytes"),
        ))
    };
    match kind {
        ENTRY => Ok(Record::Entry {
            group,
            index: index()?,
            bytes: &rest[8..],
        }),
        COPY => Ok(Record::Copy {
            group,
            index: index()?,
            bytes: &rest[8..],
        }),
        TRUNCATE | PURGE if rest.len() != 8 => Err(format!("a record of kind {kind} too long")),
        TRUNCATE => Ok(Record::Truncate {
            group,
            from: index()?,
        }),
        PURGE => Ok(Record::Purge {
            group,
            through: index()?,
        }),
        NAMED => {
            let (&name_len, rest) = rest.split_first().ok_or("a named record without a name")?;
            let name = rest
                .get(..usize::from(name_len))
                .ok_or("a named record cut inside its name")?;
            let name = std::str::from_utf8(name).map_err(|_| "a record name that is not UTF-8")?;
            Ok(Record::Named {
                group,
                name,
                bytes: &rest[usize::from(name_len)..],
            })
        }
        other => Err(format!("a record of unknown kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            encode(record, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn records_round_trip_and_entry_bytes_are_located() {
        let records = [
            Record::Entry {
                group: 3,
                index: 9,
                bytes: b"entry nine",
            },
            Record::Copy {
                group: 3,
                index: 2,
                bytes: b"",
            },
            Record::Truncate { group: 1, from: 40 },
            Record::Purge {
                group: u32::MAX,
                through: u64::MAX,
            },
            Record::Named {
                group: 0,
                name: "vote",
                bytes: &[1, 2, 3],
            },
        ];
        let data = frames(&records);
        let mut at = 0;
        for record in &records {
            let Frame::Whole { body, next } = next_frame(&data, at) else {
                panic!("a whole frame at {at}");
            };
            assert_eq!(&decode(body).unwrap(), record);
            at = next;
        }
        assert_eq!(next_frame(&data, at), Frame::End);

        let mut out = b"before".to_vec();
        let bytes_at = encode(&records[0], &mut out).unwrap().unwrap();
        assert_eq!(&out[bytes_at..], b"entry nine");
        assert_eq!(
            bytes_at as u64,
            6 + FRAME_LEN + ENTRY_PREFIX_LEN,
            "readers find entry bytes at this fixed distance from the frame"
        );
    }

    #[test]
    fn every_cut_and_every_flipped_bit_of_a_frame_reads_as_torn_or_end() {
        let data = frames(&[Record::Entry {
            group: 1,
            index: 1,
            bytes: b"abc",
        }]);
        for cut in 1..data.len() {
            let frame = next_frame(&data[..cut], 0);
            assert!(matches!(frame, Frame::Torn(_)), "cut at {cut}: {frame:?}");
        }
        for bit in 0..data.len() * 8 {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let frame = next_frame(&flipped, 0);
            assert!(
                matches!(frame, Frame::Torn(_) | Frame::End),
                "bit {bit}: {frame:?}"
            );
        }
        assert_eq!(next_frame(&[0; 64], 0), Frame::End, "zeroes end the log");
    }

    #[test]
    fn bodies_of_other_formats_are_errors_not_panics() {
        for body in [
            &[][..],
            &[1, 0, 0],
            &[1, 0, 0, 0, 0, 1, 2],
            &[3, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[5, 0, 0, 0, 0, 4, b'v'],
            &[5, 0, 0, 0, 0, 1, 0xff],
            &[9, 0, 0, 0, 0],
        ] {
            assert!(decode(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn segment_headers_are_checked() {
        let header = segment_header(7);
        assert!(check_segment_header(&header, 7).is_ok());
        assert!(check_segment_header(&header, 8).is_err());
        assert!(check_segment_header(&header[..10], 7).is_err());
        let mut other = header.clone();
        other[0] = b'X';
        assert!(check_segment_header(&other, 7).is_err());
    }
}
