use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn token() -> HandleToken {
    HandleToken::default()
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 2 * 1024,
        copy_forward_after_segments: 2,
        preallocate: true,
    }
}

/// Segments that grow as they are written, for tests that cut them to a length.
fn growing_segments() -> WalOptions {
    WalOptions {
        preallocate: false,
        ..WalOptions::default()
    }
}

fn entry(index: u64, len: usize) -> (u64, Vec<u8>) {
    (index, vec![(index % 251) as u8; len])
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).unwrap().pop().unwrap().1
}

/// Appends entries 1..=`count` one at a time, pausing now and then so the thread preparing
/// the next segment gets its turn, as it does between a running node's appends.
fn append_slowly(log: &GroupLog, count: u64, len: usize) {
    for i in 1..=count {
        log.append([entry(i, len)]).unwrap();
        if i % 5 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[test]
fn appends_truncations_purges_and_records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let log = wal.group(3, token());
    log.append((1..=10).map(|i| entry(i, 20))).unwrap();
    assert_eq!(log.range(3..5).unwrap(), vec![entry(3, 20), entry(4, 20)]);
    log.truncate_from(8).unwrap();
    log.append([entry(8, 5)]).unwrap();
    log.purge_through(2).unwrap();
    log.set_record("vote", b"v1".to_vec()).unwrap();
    log.set_record("vote", b"v2".to_vec()).unwrap();
    wal.group(4, token()).append([entry(1, 1)]).unwrap();
    wal.sync().unwrap();
    drop((log, wal));

    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let log = wal.group(3, token());
    let mut expected: Vec<_> = (3..=7).map(|i| entry(i, 20)).collect();
    expected.push(entry(8, 5));
    assert_eq!(log.range(..).unwrap(), expected);
    assert_eq!(log.last().unwrap(), Some(entry(8, 5)));
    assert_eq!(log.record("vote").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(log.record("committed").unwrap(), None);
    assert_eq!(wal.group(4, token()).range(..).unwrap(), vec![entry(1, 1)]);
    assert!(wal.group(5, token()).last().unwrap().is_none());
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let log = wal.group(0, token());
    log.append((1..=3).map(|i| entry(i, 100))).unwrap();
    wal.sync().unwrap();
    log.append([entry(4, 100)]).unwrap();
    drop((log, wal));
    // The crash: the last append reached the disk only in part.
    let path = last_segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 30)
        .unwrap();

    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let log = wal.group(0, token());
    assert_eq!(log.last().unwrap().map(|(i, _)| i), Some(3));
    log.append([entry(4, 7)]).unwrap();
    wal.sync().unwrap();
    drop((log, wal));
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let read = wal.group(0, token()).range(..).unwrap();
    assert_eq!(read.len(), 4);
    assert_eq!(read[3], entry(4, 7));
}

#[test]
fn zeroes_where_a_crash_left_the_file_longer_than_its_data_end_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    wal.group(0, token()).append([entry(1, 10)]).unwrap();
    drop(wal);
    let path = last_segment(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len + 4096)
        .unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    assert_eq!(wal.group(0, token()).range(..).unwrap(), vec![entry(1, 10)]);
    wal.group(0, token()).append([entry(2, 10)]).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    assert_eq!(
        wal.group(0, token()).range(..).unwrap(),
        vec![entry(1, 10), entry(2, 10)],
        "written on from the end of the data, not of the file"
    );
}

/// A torn write in a zero-filled segment, and later writes shorter than it: what is left of
/// the torn write must not read as frames behind the later ones.
#[test]
fn the_remains_of_a_torn_write_never_reappear_behind_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 64 * 1024,
        ..small_segments()
    };
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let path = last_segment(dir.path());
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 * 1024, "zero-filled");
    let log = wal.group(0, token());
    log.append([entry(1, 10)]).unwrap();
    wal.sync().unwrap();
    let end = wal.lock().unwrap().end;
    log.append([entry(2, 100), entry(3, 100)]).unwrap();
    drop((log, wal));
    // The crash: the first bytes of the two-entry write are lost, the rest reached the disk.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xee; 16], end).unwrap();

    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let log = wal.group(0, token());
    assert_eq!(log.range(..).unwrap(), vec![entry(1, 10)]);
    log.append([entry(2, 1)]).unwrap();
    drop((log, wal));
    let wal = Wal::open(dir.path(), options).unwrap();
    assert_eq!(
        wal.group(0, token()).range(..).unwrap(),
        vec![entry(1, 10), entry(2, 1)]
    );
}

#[test]
fn segments_after_the_first_are_zero_filled_ahead_of_the_roll() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let log = wal.group(0, token());
    append_slowly(&log, 200, 60);
    let files = segment_files(dir.path()).unwrap();
    assert!(files.len() > 1);
    let full = files
        .iter()
        .skip(1)
        .filter(|(_, path)| fs::metadata(path).unwrap().len() == options.segment_bytes)
        .count();
    // A loaded machine may not run the preparing thread in time for every roll; then that
    // segment grows instead, which is correct too.
    assert!(full >= 1, "none of {} zero-filled", files.len());
    drop((log, wal));
    let wal = Wal::open(dir.path(), options).unwrap();
    assert_eq!(wal.group(0, token()).range(..).unwrap().len(), 200);
}

#[test]
fn damage_in_a_segment_synced_whole_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    let log = wal.group(0, token());
    for i in 1..=40 {
        log.append([entry(i, 100)]).unwrap();
    }
    assert!(wal.segment_count() > 1);
    drop((log, wal));
    let (_, first) = segment_files(dir.path()).unwrap().remove(0);
    let mut data = fs::read(&first).unwrap();
    data[SEGMENT_HEADER_LEN as usize + 40] ^= 0xff;
    fs::write(&first, data).unwrap();
    let error = Wal::open(dir.path(), small_segments())
        .err()
        .expect("corruption")
        .to_string();
    assert!(error.contains(&first.display().to_string()), "{error}");
}

#[test]
fn a_missing_segment_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    let log = wal.group(0, token());
    for i in 1..=60 {
        log.append([entry(i, 100)]).unwrap();
    }
    drop((log, wal));
    let files = segment_files(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    fs::remove_file(&files[1].1).unwrap();
    let error = Wal::open(dir.path(), small_segments())
        .err()
        .expect("a gap")
        .to_string();
    assert!(error.contains("missing"), "{error}");
}

#[test]
fn a_segment_started_but_never_written_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    wal.group(0, token()).append([entry(1, 10)]).unwrap();
    drop(wal);
    fs::write(dir.path().join("0000000000000002.wal"), b"GAVEL").unwrap();
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    let log = wal.group(0, token());
    log.append([entry(2, 10)]).unwrap();
    drop((log, wal));
    let wal = Wal::open(dir.path(), growing_segments()).unwrap();
    assert_eq!(wal.group(0, token()).range(..).unwrap().len(), 2);
}

/// A crash after a zero-filled segment was renamed into place but before its header reached
/// the disk: the log goes on at the end of the segment before, not at the end of its zeroes.
#[test]
fn a_started_segment_without_its_header_is_dropped_and_the_one_before_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let log = wal.group(0, token());
    append_slowly(&log, 60, 100);
    drop((log, wal));
    let files = segment_files(dir.path()).unwrap();
    assert!(files.len() > 2, "{files:?}");
    let (_, last_path) = files.last().unwrap().clone();
    // Stand for the crash: the last segment is all zeroes (its entries were never synced, so
    // never acknowledged: losing them is allowed).
    let zeroes = vec![0u8; fs::metadata(&last_path).unwrap().len() as usize];
    fs::write(&last_path, zeroes).unwrap();

    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    assert!(
        !last_path.exists(),
        "the segment without a header is dropped"
    );
    let log = wal.group(0, token());
    let kept = log.range(..).unwrap();
    let next = kept.last().expect("the earlier segments' entries").0 + 1;
    log.append([entry(next, 5)]).unwrap();
    drop((log, wal));
    let wal = Wal::open(dir.path(), options).unwrap();
    let read = wal.group(0, token()).range(..).unwrap();
    assert_eq!(read.len(), kept.len() + 1, "written where replay finds it");
    assert_eq!(read.last(), Some(&entry(next, 5)));
}

/// A log closed while the thread filling its next segment's file still runs, and reopened at
/// once, again and again: no file the old thread fills ever becomes a segment of the new log,
/// and no spare file is left behind once the threads are done.
#[test]
fn logs_reopened_while_their_next_segment_is_prepared_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_bytes: 2 * 1024 * 1024,
        copy_forward_after_segments: 4,
        preallocate: true,
    };
    let mut written = 0u64;
    for _ in 0..8 {
        let wal = Wal::open(dir.path(), options.clone()).unwrap();
        let log = wal.group(0, token());
        // 1.2 MB a round: past half a segment (the next one's file is being filled), and a
        // roll every other round.
        log.append((written + 1..=written + 20).map(|i| entry(i, 60_000)))
            .unwrap();
        written += 20;
        wal.sync().unwrap();
    }
    // Every log is closed: whatever its threads were filling is removed, not left to be
    // mistaken for anything later.
    let spare_files = || {
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(SPARE_PREFIX)
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while spare_files() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(spare_files(), 0, "spare files left behind");

    let wal = Wal::open(dir.path(), options).unwrap();
    let read = wal.group(0, token()).range(..).unwrap();
    assert_eq!(read.len() as u64, written);
    for ((index, bytes), expected) in read.iter().zip(1..) {
        assert_eq!(*index, expected);
        assert_eq!(*bytes, entry(expected, 60_000).1, "entry {expected}");
    }
}

/// A busy group purging behind itself does not keep old segments, and an idle group's few
/// entries are copied forward rather than pinning every segment after theirs.
#[test]
fn old_segments_go_even_when_an_idle_group_has_entries_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments();
    let wal = Wal::open(dir.path(), options.clone()).unwrap();
    let idle = wal.group(1, token());
    idle.append([entry(1, 50), entry(2, 50)]).unwrap();
    idle.set_record("vote", b"idle vote".to_vec()).unwrap();
    let busy = wal.group(2, token());
    for i in 1..=2_000 {
        busy.append([entry(i, 100)]).unwrap();
        if i % 5 == 0 {
            busy.purge_through(i - 5).unwrap();
        }
        busy.set_record("committed", i.to_le_bytes().to_vec())
            .unwrap();
        assert!(
            wal.segment_count() <= options.copy_forward_after_segments + 3,
            "{} segments after {i} appends",
            wal.segment_count()
        );
    }
    let on_disk = segment_files(dir.path()).unwrap().len();
    assert_eq!(on_disk, wal.segment_count());
    drop((idle, busy, wal));

    let wal = Wal::open(dir.path(), options).unwrap();
    let idle = wal.group(1, token());
    assert_eq!(idle.range(..).unwrap(), vec![entry(1, 50), entry(2, 50)]);
    assert_eq!(idle.record("vote").unwrap(), Some(b"idle vote".to_vec()));
    let busy = wal.group(2, token());
    let kept: Vec<u64> = busy.range(..).unwrap().iter().map(|(i, _)| *i).collect();
    assert_eq!(kept, (1_996..=2_000).collect::<Vec<_>>());
    assert_eq!(
        busy.record("committed").unwrap(),
        Some(2_000u64.to_le_bytes().to_vec())
    );
}

/// A truncated entry left in an old segment must not come back on replay.
#[test]
fn truncated_entries_in_older_segments_stay_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    let log = wal.group(0, token());
    log.append((1..=10).map(|i| entry(i, 100))).unwrap();
    log.truncate_from(6).unwrap();
    let filler = wal.group(9, token());
    for i in 1..=30 {
        filler.append([entry(i, 150)]).unwrap();
        filler.purge_through(i).unwrap();
    }
    drop((log, filler, wal));
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    let kept: Vec<u64> = wal
        .group(0, token())
        .range(..)
        .unwrap()
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(kept, vec![1, 2, 3, 4, 5]);
}

#[test]
fn reads_span_segments_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    let log = wal.group(0, token());
    let other = wal.group(1, token());
    let mut expected = Vec::new();
    for batch in 0..30u64 {
        let entries: Vec<_> = (batch * 3 + 1..=batch * 3 + 3)
            .map(|i| entry(i, (i as usize * 7) % 90))
            .collect();
        expected.extend(entries.clone());
        log.append(entries).unwrap();
        other.append([entry(batch + 1, 3)]).unwrap();
    }
    assert_eq!(log.range(..).unwrap(), expected);
    assert_eq!(log.range(10..=40).unwrap(), expected[9..40].to_vec());
}

/// One operation on the log, for the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` entries starting `back` entries before the end (0: right after it).
    Append {
        group: u32,
        back: u64,
        count: u64,
        len: usize,
    },
    Truncate {
        group: u32,
        back: u64,
    },
    Purge {
        group: u32,
        keep: u64,
    },
    Record {
        group: u32,
        name: u8,
        value: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u32, 0..3u64, 1..6u64, 0..400usize)
            .prop_map(|(group, back, count, len)| Op::Append { group, back, count, len }),
        1 => (0..3u32, 0..4u64).prop_map(|(group, back)| Op::Truncate { group, back }),
        2 => (0..3u32, 0..6u64).prop_map(|(group, keep)| Op::Purge { group, keep }),
        2 => (0..3u32, 0..3u8, any::<u8>())
            .prop_map(|(group, name, value)| Op::Record { group, name, value }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Clone, Debug, PartialEq)]
struct ModelGroup {
    entries: BTreeMap<u64, Vec<u8>>,
    records: BTreeMap<String, Vec<u8>>,
    purged_through: u64,
}

impl ModelGroup {
    fn next_index(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .map_or(self.purged_through + 1, |last| last + 1)
    }
}

fn check(wal: &Wal, model: &BTreeMap<u32, ModelGroup>) {
    for (group, expected) in model {
        let log = wal.group(*group, token());
        let read: BTreeMap<u64, Vec<u8>> = log.range(..).unwrap().into_iter().collect();
        assert_eq!(read, expected.entries, "group {group}'s entries");
        for name in ["a", "b", "c"] {
            assert_eq!(
                log.record(name).unwrap(),
                expected.records.get(name).cloned(),
                "group {group}'s record {name}"
            );
        }
        assert_eq!(
            log.last().unwrap(),
            expected
                .entries
                .last_key_value()
                .map(|(i, b)| (*i, b.clone()))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sequence of operations, with reopens between, reads back exactly what a plain map
    /// holds, over segments small enough that rolls, removals and copies happen all the time.
    #[test]
    fn the_log_reads_back_what_a_model_holds(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), small_segments()).unwrap();
        let mut model: BTreeMap<u32, ModelGroup> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append { group, back, count, len } => {
                    let state = model.entry(group).or_default();
                    let first_free = state.next_index();
                    let start = first_free.saturating_sub(back).max(state.purged_through + 1);
                    let entries: Vec<_> = (start..start + count)
                        .map(|i| (i, vec![(i as u8) ^ (len as u8); len]))
                        .collect();
                    wal.group(group, token()).append(entries.clone()).unwrap();
                    state.entries.split_off(&start);
                    state.entries.extend(entries);
                }
                Op::Truncate { group, back } => {
                    let state = model.entry(group).or_default();
                    let from = state.next_index().saturating_sub(back).max(state.purged_through + 1);
                    wal.group(group, token()).truncate_from(from).unwrap();
                    state.entries.split_off(&from);
                }
                Op::Purge { group, keep } => {
                    let state = model.entry(group).or_default();
                    let through = state.next_index().saturating_sub(keep + 1).max(state.purged_through);
                    wal.group(group, token()).purge_through(through).unwrap();
                    state.entries = state.entries.split_off(&(through + 1));
                    state.purged_through = through;
                }
                Op::Record { group, name, value } => {
                    let name = ["a", "b", "c"][name as usize];
                    wal.group(group, token()).set_record(name, vec![value; 3]).unwrap();
                    model.entry(group).or_default().records.insert(name.into(), vec![value; 3]);
                }
                Op::Reopen => {
                    drop(wal);
                    wal = Wal::open(dir.path(), small_segments()).unwrap();
                    check(&wal, &model);
                }
            }
        }
        check(&wal, &model);
        drop(wal);
        let wal = Wal::open(dir.path(), small_segments()).unwrap();
        check(&wal, &model);
        prop_assert_eq!(segment_files(dir.path()).unwrap().len(), wal.segment_count());
    }

    /// A crash keeps everything synced and a prefix of what came after: cutting the last
    /// segment anywhere past the last sync reads back the state after some later entry.
    #[test]
    fn a_crash_after_a_sync_keeps_a_prefix_of_later_writes(
        before in 1..20u64,
        after in proptest::collection::vec((0..2u32, 1..4u64, 1..200usize), 1..20),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), growing_segments()).unwrap();
        let mut model: BTreeMap<u32, ModelGroup> = BTreeMap::new();
        let log = wal.group(0, token());
        log.append((1..=before).map(|i| entry(i, 30))).unwrap();
        model.entry(0).or_default().entries.extend((1..=before).map(|i| entry(i, 30)));
        wal.sync().unwrap();
        let synced_len = fs::metadata(last_segment(dir.path())).unwrap().len();
        let mut states = vec![model.clone()];
        for (group, count, len) in after {
            let state = model.entry(group).or_default();
            let start = state.next_index();
            let entries: Vec<_> = (start..start + count).map(|i| entry(i, len)).collect();
            wal.group(group, token()).append(entries.clone()).unwrap();
            // An append cut short keeps a prefix of its entries: each one is a state to allow.
            for entry in entries {
                model.entry(group).or_default().entries.insert(entry.0, entry.1);
                states.push(model.clone());
            }
        }
        drop((log, wal));
        let path = last_segment(dir.path());
        let full_len = fs::metadata(&path).unwrap().len();
        let cut = synced_len + cut_at.index((full_len - synced_len + 1) as usize) as u64;
        OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();

        let wal = Wal::open(dir.path(), growing_segments()).unwrap();
        let mut read: BTreeMap<u32, ModelGroup> = BTreeMap::new();
        for group in 0..2 {
            let entries: BTreeMap<u64, Vec<u8>> =
                wal.group(group, token()).range(..).unwrap().into_iter().collect();
            if !entries.is_empty() {
                read.entry(group).or_default().entries = entries;
            }
        }
        let matches_a_state = states.iter().any(|state| {
            let state: BTreeMap<u32, ModelGroup> = state
                .iter()
                .filter(|(_, g)| !g.entries.is_empty())
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            state == read
        });
        prop_assert!(matches_a_state, "cut at {} of {}..{}: {:?}", cut, synced_len, full_len, read);
    }
}
