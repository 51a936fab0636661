use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{written_back_before_cut, Cut, LazyDisk, Unsynced, PAGE};

/// The seed from `LAZYFS_TEST_SEED`, else a fresh one; printed either way for replay.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("LAZYFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test}: seed {seed} (replay with LAZYFS_TEST_SEED={seed})");
    seed
}

fn read_all(pending: &Unsynced, backing: &File) -> Vec<u8> {
    pending.read(backing, 0, u64::MAX).unwrap()
}

/// Random writes, truncations and syncs on one file, against two plain byte vectors: what
/// its writers see, and what a loss would leave (the content at the last sync).
#[test]
fn unsynced_pages_read_as_written_and_a_loss_leaves_the_last_sync() {
    let seed = seed("unsynced_pages");
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let initial: Vec<u8> = (0..rng.gen_range(0..3 * PAGE + 7))
            .map(|_| rng.gen())
            .collect();
        fs::write(&path, &initial).unwrap();
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut seen = initial.clone();
        let mut synced = initial;
        let mut pending = Unsynced::over(&backing).unwrap();
        for step in 0..40 {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let offset = rng.gen_range(0..5 * PAGE) as usize;
                    let data: Vec<u8> = (0..rng.gen_range(0..2 * PAGE + 3))
                        .map(|_| rng.gen())
                        .collect();
                    pending.write(&backing, offset as u64, &data).unwrap();
                    if seen.len() < offset + data.len() {
                        seen.resize(offset + data.len(), 0);
                    }
                    seen[offset..offset + data.len()].copy_from_slice(&data);
                }
                6 | 7 => {
                    let size = rng.gen_range(0..5 * PAGE) as usize;
                    pending.truncate(size as u64);
                    seen.resize(size, 0);
                }
                8 => {
                    pending.write_back(&backing).unwrap();
                    synced = seen.clone();
                    pending = Unsynced::over(&backing).unwrap();
                }
                _ => {
                    let offset = rng.gen_range(0..6 * PAGE);
                    let len = rng.gen_range(0..2 * PAGE);
                    let read = pending.read(&backing, offset, len).unwrap();
                    let from = (offset as usize).min(seen.len());
                    let to = ((offset + len) as usize).min(seen.len());
                    assert_eq!(read, seen[from..to], "round {round} step {step}: a read");
                }
            }
            assert_eq!(pending.size, seen.len() as u64, "round {round} step {step}");
        }
        assert_eq!(
            read_all(&pending, &backing),
            seen,
            "round {round}: the file"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            synced,
            "round {round}: the backing file"
        );

        // A power cut that finds some pages written back: those, as they stood, over the last
        // sync's content.
        let pages: Vec<u64> = pending.pages.keys().copied().collect();
        let kept = written_back_before_cut(&pages, &mut rng);
        pending.write_back_pages(&backing, &kept).unwrap();
        let mut expected = synced;
        for index in kept {
            let start = (index * PAGE) as usize;
            let end = (start + PAGE as usize).min(seen.len());
            if expected.len() < end {
                expected.resize(end, 0);
            }
            expected[start..end].copy_from_slice(&seen[start..end]);
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            expected,
            "round {round}: after a cut"
        );
    }
}

fn mounted() -> (tempfile::TempDir, LazyDisk, std::path::PathBuf) {
    mounted_with(false)
}

fn mounted_with(torn: bool) -> (tempfile::TempDir, LazyDisk, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mount = dir.path().join("mount");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mount).unwrap();
    let disk = LazyDisk::mount(&backing, &mount, "gavel-lazy-test", torn)
        .expect("a FUSE mount (needs root and /dev/fuse, like the fault suite)");
    (dir, disk, mount)
}

/// Through a real mount (root, /dev/fuse): what a program wrote reads back before the loss,
/// and after it only what was synced is there, while names stay.
#[test]
fn a_mounted_disk_loses_only_what_was_not_synced() {
    let (_dir, disk, mount) = mounted();
    fs::create_dir(mount.join("sub")).unwrap();

    let mut synced = File::create(mount.join("sub/synced")).unwrap();
    synced.write_all(b"kept").unwrap();
    synced.sync_data().unwrap();
    synced.write_all(b" and lost").unwrap();

    let mut unsynced = File::create(mount.join("unsynced")).unwrap();
    unsynced.write_all(&vec![7u8; 3 * PAGE as usize]).unwrap();

    let mut cut = File::create(mount.join("cut")).unwrap();
    cut.write_all(&[1u8; 10_000]).unwrap();
    cut.sync_all().unwrap();
    cut.set_len(100).unwrap();
    cut.write_all_at(b"x", 5_000).unwrap();

    // A file written and renamed into place without a sync: the rename stays, the data goes.
    let mut temp = File::create(mount.join("temp")).unwrap();
    temp.write_all(b"renamed").unwrap();
    fs::rename(mount.join("temp"), mount.join("sub/renamed")).unwrap();

    assert_eq!(
        fs::read(mount.join("sub/synced")).unwrap(),
        b"kept and lost"
    );
    assert_eq!(
        fs::read(mount.join("unsynced")).unwrap().len(),
        3 * PAGE as usize
    );
    let cut_now = fs::read(mount.join("cut")).unwrap();
    assert_eq!(cut_now.len(), 5_001);
    assert!(cut_now[..100].iter().all(|&b| b == 1));
    assert!(cut_now[100..5_000].iter().all(|&b| b == 0));
    assert_eq!(fs::read(mount.join("sub/renamed")).unwrap(), b"renamed");
    assert_eq!(fs::metadata(mount.join("cut")).unwrap().len(), 5_001);
    drop((synced, unsynced, cut, temp));

    let lost = disk.cut_power(&mut StdRng::seed_from_u64(0)).unwrap();
    let files: Vec<(&str, usize, usize)> = lost
        .files
        .iter()
        .map(|f| (f.path.to_str().unwrap(), f.pages, f.kept))
        .collect();
    let expected = [
        ("cut", 1, 0),
        ("sub/renamed", 1, 0),
        ("sub/synced", 1, 0),
        ("unsynced", 3, 0),
    ];
    assert_eq!(files, expected, "{lost}");

    assert_eq!(fs::read(mount.join("sub/synced")).unwrap(), b"kept");
    assert_eq!(fs::read(mount.join("unsynced")).unwrap(), b"");
    assert_eq!(fs::read(mount.join("cut")).unwrap(), vec![1u8; 10_000]);
    assert_eq!(fs::read(mount.join("sub/renamed")).unwrap(), b"");
    let mut names: Vec<String> = fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cut", "sub", "unsynced"]);
    assert_eq!(
        disk.cut_power(&mut StdRng::seed_from_u64(0)).unwrap(),
        Cut::default(),
        "nothing left to lose"
    );
}

/// What sled and the Raft log do on a data dir: reopen, read back, overwrite in place, remove.
#[test]
fn a_mounted_disk_serves_reopens_overwrites_and_removals() {
    let (_dir, disk, mount) = mounted();
    let path = mount.join("log");
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    file.write_all_at(&vec![9u8; 2 * PAGE as usize + 10], 0)
        .unwrap();
    file.sync_data().unwrap();
    file.write_all_at(b"over", PAGE - 2).unwrap();
    drop(file);

    let mut again = File::open(&path).unwrap();
    let mut content = Vec::new();
    again.read_to_end(&mut content).unwrap();
    assert_eq!(&content[PAGE as usize - 2..PAGE as usize + 2], b"over");
    assert_eq!(content.len(), 2 * PAGE as usize + 10);

    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    assert_eq!(
        disk.cut_power(&mut StdRng::seed_from_u64(0)).unwrap(),
        Cut::default(),
        "a removed file's writes are gone"
    );
    assert!(fs::read_dir(&mount).unwrap().next().is_none());
}

/// On a torn disk a cut keeps the pages it reports kept, each whole as written, and no others.
#[test]
fn a_torn_disk_keeps_exactly_the_pages_a_cut_reports() {
    let seed = seed("torn_disk");
    let mut rng = StdRng::seed_from_u64(seed);
    let (_dir, disk, mount) = mounted_with(true);
    let path = mount.join("log");
    let mut file = File::create(&path).unwrap();
    file.write_all(&vec![1u8; 2 * PAGE as usize]).unwrap();
    file.sync_data().unwrap();
    // Eight unsynced pages, each with its own byte: two over synced ones, six past the end.
    for page in 0..8u8 {
        file.write_all_at(&[page + 10; PAGE as usize], u64::from(page) * PAGE)
            .unwrap();
    }
    drop(file);
    let cut = disk.cut_power(&mut rng).unwrap();
    let [report] = cut.files.as_slice() else {
        panic!("one file had unsynced pages: {cut}");
    };
    assert_eq!(report.pages, 8, "{cut}");

    let kept = fs::read(&path).unwrap();
    assert_eq!(kept.len() % PAGE as usize, 0);
    let mut kept_pages = 0;
    for (index, page) in kept.chunks(PAGE as usize).enumerate() {
        let written = index as u8 + 10;
        if page.iter().all(|&b| b == written) {
            kept_pages += 1;
        } else {
            let before = if index < 2 { 1 } else { 0 };
            assert!(
                page.iter().all(|&b| b == before),
                "page {index} is neither as synced nor as written (seed {seed})"
            );
        }
    }
    assert_eq!(kept_pages, report.kept, "{cut} (seed {seed})");
}
