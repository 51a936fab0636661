//! Tests of the state machine tree through real sled: batches that read their own writes, the
//! deadline and listing indexes, decision-log paging, snapshot export/import, and snapshots
//! stored only over older ones.

use gavel_rules::{Command, CreateAuction, Decimal, Reply, Status};

use super::*;
use crate::{Store, StoreConfig};

pub(crate) const T0: StampMs = 1_700_000_000_000;

pub(crate) fn store() -> (tempfile::TempDir, StateTree) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    let state = store.state(0).unwrap();
    (dir, state)
}

/// A property test's runner settings: `cases` cases unless `PROPTEST_CASES` says otherwise, and
/// a seed of its own unless `PROPTEST_RNG_SEED` gives one, printed with the test's name so that
/// a failure can be replayed.
pub(crate) fn proptest_config(test: &str, cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.rng_seed == RngSeed::Random {
        use std::hash::{BuildHasher, RandomState};
        config.rng_seed = RngSeed::Fixed(RandomState::new().hash_one(test));
    }
    // Cases run from a unit test: no regressions file next to a source file of the library.
    config.failure_persistence = None;
    eprintln!(
        "gavel-storage {test}: PROPTEST_RNG_SEED={} PROPTEST_CASES={}",
        config.rng_seed, config.cases
    );
    config
}

pub(crate) fn create(id: &str, creator: &str, start: StampMs, end: StampMs) -> Command {
    Command::Create {
        auction_id: id.into(),
        creator_id: creator.into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "p".into(),
            start_at_ms: start,
            end_at_ms: end,
            start_price: Decimal::ONE,
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    }
}

pub(crate) fn bid(id: &str, bidder: &str, key: &str, amount: i64) -> Command {
    Command::Bid {
        auction_id: id.into(),
        bid_id: format!("{bidder}/{key}"),
        bidder_id: bidder.into(),
        idempotency_key: key.into(),
        amount: Decimal::new(amount, 0),
    }
}

#[test]
fn a_batch_reads_its_own_writes_and_commits_atomically() {
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    let first = writer.apply(T0 + 1, &bid("a", "bob", "k", 5)).unwrap();
    let replay = writer.apply(T0 + 2, &bid("a", "bob", "k", 5)).unwrap();
    assert!(matches!(
        replay.effects.reply,
        Reply::Bid { replayed: true, .. }
    ));
    assert!(matches!(
        first.effects.reply,
        Reply::Bid {
            replayed: false,
            ..
        }
    ));
    assert!(
        state.auction("a").unwrap().is_none(),
        "nothing visible before commit"
    );
    writer.commit().unwrap();
    let auction = state.auction("a").unwrap().unwrap();
    assert_eq!((auction.bid_count, auction.version), (1, 2));
    assert_eq!(state.last_stamp().unwrap(), T0 + 2);
    let mut next = state.writer().unwrap();
    let retried = next.apply(T0 + 3, &bid("a", "bob", "k", 5)).unwrap();
    assert!(matches!(
        retried.effects.reply,
        Reply::Bid { replayed: true, .. }
    ));
}

#[test]
fn stamps_never_go_back() {
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0 + 500, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    let late = writer.apply(T0, &bid("a", "bob", "k", 5)).unwrap();
    assert_eq!(
        late.stamp,
        T0 + 500,
        "an older stamp is clamped to the newest applied"
    );
}

#[test]
fn deadline_index_follows_the_status() {
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    let created = writer
        .apply(T0, &create("a", "carol", T0 + 1_000, T0 + 5_000))
        .unwrap();
    assert!(created.deadline_moved);
    writer.commit().unwrap();
    assert_eq!(state.next_deadline().unwrap(), Some(T0 + 1_000));
    assert!(state.due_deadlines(T0 + 999, 10).unwrap().is_empty());
    assert_eq!(state.due_deadlines(T0 + 1_000, 10).unwrap(), ["a"]);

    let mut writer = state.writer().unwrap();
    let started = writer
        .apply(
            T0 + 1_000,
            &Command::Deadline {
                auction_id: "a".into(),
            },
        )
        .unwrap();
    assert!(started.deadline_moved);
    let bid = writer.apply(T0 + 1_001, &bid("a", "bob", "k", 5)).unwrap();
    assert!(
        !bid.deadline_moved,
        "a bid without anti-sniping leaves the end alone"
    );
    writer.commit().unwrap();
    assert_eq!(state.next_deadline().unwrap(), Some(T0 + 5_000));

    let mut writer = state.writer().unwrap();
    writer
        .apply(
            T0 + 5_000,
            &Command::Deadline {
                auction_id: "a".into(),
            },
        )
        .unwrap();
    writer.commit().unwrap();
    assert_eq!(state.auction("a").unwrap().unwrap().status, Status::Ended);
    assert_eq!(state.next_deadline().unwrap(), None);
}

#[test]
fn listing_is_newest_first_with_filters_and_cursor() {
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    for (i, creator) in ["ann", "ben", "ann", "ben", "ann"].iter().enumerate() {
        let id = format!("a{i}");
        writer
            .apply(
                T0 + i as i64,
                &create(&id, creator, T0 + 10_000, T0 + 60_000),
            )
            .unwrap();
    }
    writer.commit().unwrap();
    let ids = |page: &AuctionPage| {
        page.auctions
            .iter()
            .map(|a| a.id.clone())
            .collect::<Vec<_>>()
    };
    let all = state
        .list_auctions(&AuctionFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&all), ["a4", "a3", "a2", "a1", "a0"]);
    assert!(all.frontier.is_none());
    let anns = AuctionFilter {
        creator_id: Some("ann".into()),
        limit: 2,
        ..Default::default()
    };
    let first = state.list_auctions(&anns).unwrap();
    assert_eq!(ids(&first), ["a4", "a2"]);
    let rest = state
        .list_auctions(&AuctionFilter {
            before: first.frontier.clone(),
            ..anns
        })
        .unwrap();
    assert_eq!(ids(&rest), ["a0"]);
    let active = AuctionFilter {
        status: Some(Status::Active),
        limit: 10,
        ..Default::default()
    };
    assert!(state.list_auctions(&active).unwrap().auctions.is_empty());
}

#[test]
fn bid_pages_follow_the_decision_log() {
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    for n in 1..=7 {
        // Every other bid is too low and rejected.
        let amount = if n % 2 == 0 { 1 } else { 10 + n };
        writer
            .apply(T0 + n, &bid("a", &format!("b{n}"), "k", amount))
            .unwrap();
    }
    writer.commit().unwrap();
    let page = |after_seq, accepted_only| {
        state
            .bids(
                "a",
                &BidFilter {
                    accepted_only,
                    limit: 3,
                    after_seq,
                },
            )
            .unwrap()
    };
    let first = page(0, false);
    assert_eq!(
        first.bids.iter().map(|b| b.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(first.next_after_seq, Some(3));
    let last = page(6, false);
    assert_eq!(last.bids.len(), 1);
    assert_eq!(last.next_after_seq, None);
    let accepted = page(0, true);
    assert!(accepted
        .bids
        .iter()
        .all(|b| b.status == gavel_rules::BidStatus::Accepted));
    assert!(state
        .bids(
            "other",
            &BidFilter {
                accepted_only: false,
                limit: 3,
                after_seq: 0
            }
        )
        .unwrap()
        .bids
        .is_empty());
}

#[test]
fn export_import_reproduces_the_state_byte_for_byte() {
    let (_dir, source) = store();
    let mut writer = source.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    writer.apply(T0 + 1, &bid("a", "bob", "k", 5)).unwrap();
    writer.set_meta("applied", vec![1, 2, 3]);
    writer.commit().unwrap();

    let (_dir2, target) = store();
    let mut writer = target.writer().unwrap();
    writer
        .apply(T0, &create("stale", "x", T0, T0 + 60_000))
        .unwrap();
    writer.commit().unwrap();
    target.import(&source.export().unwrap()).unwrap();
    assert_eq!(target.digest().unwrap(), source.digest().unwrap());
    assert!(
        target.auction("stale").unwrap().is_none(),
        "import replaces, never merges"
    );
    assert_eq!(target.meta("applied").unwrap(), Some(vec![1, 2, 3]));
}

#[test]
fn a_snapshot_is_saved_only_over_an_older_one() {
    let (_dir, state) = store();
    assert!(state.save_snapshot_if_newer(0, b"empty").unwrap());
    assert!(state.save_snapshot_if_newer(7, b"seven").unwrap());
    assert!(!state.save_snapshot_if_newer(3, b"three").unwrap());
    assert!(!state.save_snapshot_if_newer(7, b"seven again").unwrap());
    assert_eq!(state.load_snapshot().unwrap(), Some(b"seven".to_vec()));
    assert!(state.save_snapshot_if_newer(8, b"eight").unwrap());
    assert_eq!(state.load_snapshot().unwrap(), Some(b"eight".to_vec()));
}

#[test]
fn snapshots_an_older_version_kept_in_sled_move_to_files_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let with_position = db.open_tree("snap/3").unwrap();
        with_position
            .insert("current", b"three at 41".to_vec())
            .unwrap();
        with_position
            .insert("position", &41u64.to_be_bytes())
            .unwrap();
        let without_position = db.open_tree("snap/5").unwrap();
        without_position
            .insert("current", b"five, before positions".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    let three = store.state(3).unwrap();
    assert_eq!(
        three.load_snapshot().unwrap(),
        Some(b"three at 41".to_vec())
    );
    assert!(
        !three.save_snapshot_if_newer(41, b"stale").unwrap(),
        "its position moved along"
    );
    let five = store.state(5).unwrap();
    assert_eq!(
        five.load_snapshot().unwrap(),
        Some(b"five, before positions".to_vec())
    );
    assert!(five
        .save_snapshot_if_newer(1, b"any newer save wins")
        .unwrap());
    assert!(store.state(4).unwrap().load_snapshot().unwrap().is_none());
    drop((three, five, store));
    let reopened = sled::open(dir.path()).unwrap();
    assert!(
        !reopened
            .tree_names()
            .iter()
            .any(|name| name.starts_with(b"snap/")),
        "the sled trees are gone"
    );
}

/// Stages a bid war on "a" after its creation: enough writes that half of them is a real cut.
fn stage_bid_war(state: &StateTree) -> StateWriter<'_> {
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    for (i, bidder) in ["bob", "dave", "erin", "bob"].iter().enumerate() {
        let amount = 5 + i as i64 * 2;
        writer
            .apply(
                T0 + 1 + i as i64,
                &bid("a", bidder, &format!("k{i}"), amount),
            )
            .unwrap();
    }
    writer.set_meta("applied", vec![4, 2]);
    writer
}

fn reopen(dir: &tempfile::TempDir) -> StateTree {
    Store::open(dir.path(), &StoreConfig::default())
        .unwrap()
        .state(0)
        .unwrap()
}

/// Carol, the creator in these tests, pauses auction `id`.
fn pause_by_carol(id: &str) -> Command {
    Command::Control {
        auction_id: id.into(),
        action: gavel_rules::ControlAction::Pause,
        actor: gavel_rules::Actor {
            user_id: "carol".into(),
            is_admin: false,
        },
    }
}

/// The commit after `stage_bid_war`'s: more bids, and a pause, which rewrites the auction's
/// record and drops its deadline, so the undo record holds old values as well as new keys.
fn stage_pause_after_bids(state: &StateTree) -> StateWriter<'_> {
    let mut writer = state.writer().unwrap();
    for (i, bidder) in ["frank", "gina"].iter().enumerate() {
        let amount = 20 + i as i64 * 2;
        writer
            .apply(
                T0 + 10 + i as i64,
                &bid("a", bidder, &format!("p{i}"), amount),
            )
            .unwrap();
    }
    writer.apply(T0 + 20, &pause_by_carol("a")).unwrap();
    writer.set_meta("applied", vec![7, 3]);
    writer
}

/// Every way a crash can cut a commit short: its undo record and any prefix of its writes
/// short of the last. The store then opens in the state before the commit, every time, and
/// applying the commit again lands it whole.
#[test]
fn a_commit_cut_short_by_a_crash_is_undone_when_the_store_opens() {
    let (_before_dir, before) = store();
    stage_bid_war(&before).commit().unwrap();
    let (_after_dir, after) = store();
    stage_bid_war(&after).commit().unwrap();
    stage_pause_after_bids(&after).commit().unwrap();
    assert_ne!(before.digest().unwrap(), after.digest().unwrap());

    let mut cuts = 0;
    for written in 0.. {
        let (cut_dir, cut) = store();
        stage_bid_war(&cut).commit().unwrap();
        let (undo, writes) = stage_pause_after_bids(&cut)
            .journaled_writes()
            .unwrap()
            .unwrap();
        if written == writes.len() {
            break;
        }
        assert!(writes.len() >= 5, "too few writes to cut: {}", writes.len());
        cut.journal.insert(cut.journal_key, undo).unwrap();
        write_each(&cut.tree, writes[..written].to_vec()).unwrap();
        drop(cut);

        let recovered = reopen(&cut_dir);
        assert_eq!(
            recovered.digest().unwrap(),
            before.digest().unwrap(),
            "{written} of {} writes",
            writes.len()
        );
        assert_eq!(recovered.meta("applied").unwrap(), Some(vec![4, 2]));
        assert_eq!(
            recovered.auction("a").unwrap().unwrap().status,
            Status::Active
        );
        // Undoing twice is harmless, and the commit then lands whole.
        drop(recovered);
        let recovered = reopen(&cut_dir);
        assert_eq!(recovered.digest().unwrap(), before.digest().unwrap());
        stage_pause_after_bids(&recovered).commit().unwrap();
        assert_eq!(recovered.digest().unwrap(), after.digest().unwrap());
        drop(recovered);
        assert_eq!(reopen(&cut_dir).digest().unwrap(), after.digest().unwrap());
        cuts += 1;
    }
    assert!(cuts >= 5, "{cuts} cuts");
}

/// A finished commit's record is left in the journal; opening the store must not undo it,
/// whether the commit was made by `commit` or its writes were all made by hand.
#[test]
fn a_finished_commit_is_kept_when_the_store_opens() {
    let (_after_dir, after) = store();
    stage_bid_war(&after).commit().unwrap();
    stage_pause_after_bids(&after).commit().unwrap();
    let (dir, state) = store();
    stage_bid_war(&state).commit().unwrap();
    stage_pause_after_bids(&state).commit().unwrap();
    drop(state);
    let reopened = reopen(&dir);
    assert_eq!(reopened.digest().unwrap(), after.digest().unwrap());
    assert_eq!(reopened.meta("applied").unwrap(), Some(vec![7, 3]));

    let (by_hand_dir, by_hand) = store();
    stage_bid_war(&by_hand).commit().unwrap();
    let (undo, writes) = stage_pause_after_bids(&by_hand)
        .journaled_writes()
        .unwrap()
        .unwrap();
    by_hand.journal.insert(by_hand.journal_key, undo).unwrap();
    write_each(&by_hand.tree, writes).unwrap();
    drop(by_hand);
    assert_eq!(
        reopen(&by_hand_dir).digest().unwrap(),
        after.digest().unwrap()
    );
}

/// A batch that changes nothing writes nothing, not even a journal record: the record of the
/// commit before stays, and still reads as finished.
#[test]
fn a_batch_that_changes_nothing_writes_nothing() {
    let (dir, state) = store();
    stage_bid_war(&state).commit().unwrap();
    let journal = state.journal.get(state.journal_key).unwrap();
    let digest = state.digest().unwrap();
    let mut writer = state.writer().unwrap();
    writer.set_meta("applied", vec![4, 2]);
    writer.commit().unwrap();
    assert_eq!(state.journal.get(state.journal_key).unwrap(), journal);
    drop(state);
    assert_eq!(reopen(&dir).digest().unwrap(), digest);
}

/// A redo record (the batch's new values), as versions before undo records journaled, left
/// with half of its writes done: opening the store completes it.
#[test]
fn a_redo_record_of_an_older_version_is_completed_when_the_store_opens() {
    let (_whole_dir, whole) = store();
    stage_bid_war(&whole).commit().unwrap();

    let (cut_dir, cut) = store();
    let (_, writes) = stage_bid_war(&cut).journaled_writes().unwrap().unwrap();
    assert!(writes.len() >= 7, "too few writes to cut: {}", writes.len());
    cut.journal
        .insert(cut.journal_key, encode(&writes).unwrap())
        .unwrap();
    write_each(&cut.tree, writes[..writes.len() / 2].to_vec()).unwrap();
    assert_ne!(cut.digest().unwrap(), whole.digest().unwrap());
    drop(cut);

    let recovered = reopen(&cut_dir);
    assert_eq!(recovered.digest().unwrap(), whole.digest().unwrap());
    assert_eq!(recovered.meta("applied").unwrap(), Some(vec![4, 2]));
    // Redoing is harmless: a second open changes nothing.
    drop(recovered);
    assert_eq!(reopen(&cut_dir).digest().unwrap(), whole.digest().unwrap());
}

/// A store holding one auction, `id`, just created: the source of a state to import.
fn store_with_auction(id: &str) -> (tempfile::TempDir, StateTree) {
    let (dir, state) = store();
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create(id, "carol", T0, T0 + 60_000))
        .unwrap();
    writer.commit().unwrap();
    (dir, state)
}

#[test]
fn an_imported_state_is_never_overwritten_by_an_older_journaled_commit() {
    let (_source_dir, source) = store_with_auction("b");

    let (target_dir, target) = store();
    stage_bid_war(&target).commit().unwrap();
    target.import(&source.export().unwrap()).unwrap();
    drop(target);

    let reopened = reopen(&target_dir);
    assert_eq!(reopened.digest().unwrap(), source.digest().unwrap());
    assert!(reopened.auction("a").unwrap().is_none());
}

/// The next batch's writer finds the auctions and stamp earlier commits left in memory; an
/// import replaces them with the imported state's.
#[test]
fn after_an_import_writers_decide_on_the_imported_state() {
    let (_source_dir, source) = store_with_auction("a");

    let (_target_dir, target) = store();
    stage_bid_war(&target).commit().unwrap();
    let mut writer = target.writer().unwrap();
    let too_low = writer.apply(T0 + 10, &bid("a", "frank", "f1", 6)).unwrap();
    assert!(
        matches!(too_low.effects.reply, Reply::Bid { ref decision, .. } if decision.status != BidStatus::Accepted),
        "the bid war left the price above 6"
    );
    drop(writer);

    target.import(&source.export().unwrap()).unwrap();
    let mut writer = target.writer().unwrap();
    assert_eq!(writer.last_stamp, T0, "the imported state's stamp");
    let first = writer.apply(T0 + 10, &bid("a", "frank", "f1", 6)).unwrap();
    assert!(
        matches!(first.effects.reply, Reply::Bid { ref decision, .. } if decision.status == BidStatus::Accepted),
        "no bid in the imported state: 6 is the first"
    );
}

/// Batch after batch on one tree (with what commits keep in memory, past its bound too)
/// decides exactly as on a tree reopened before each batch (nothing in memory).
#[test]
fn what_commits_keep_in_memory_decides_as_the_tree_does() {
    let (_kept_dir, kept) = store();
    let (fresh_dir, fresh) = store();
    drop(fresh);
    let mut stamp = T0;
    let mut run_batch = |commands: Vec<Command>| {
        let mut kept_writer = kept.writer().unwrap();
        let fresh_state = reopen(&fresh_dir);
        let mut fresh_writer = fresh_state.writer().unwrap();
        for command in &commands {
            stamp += 1;
            let kept_reply = kept_writer.apply(stamp, command).unwrap().effects.reply;
            let fresh_reply = fresh_writer.apply(stamp, command).unwrap().effects.reply;
            assert_eq!(kept_reply, fresh_reply, "{command:?}");
        }
        kept_writer.commit().unwrap();
        fresh_writer.commit().unwrap();
        fresh_state.write_unwritten().unwrap();
    };
    // More auctions than are kept, in batches: the bound is crossed.
    let auctions = COMMITTED_AUCTIONS_MAX + 100;
    for first in (0..auctions).step_by(1_000) {
        run_batch(
            (first..auctions.min(first + 1_000))
                .map(|i| create(&format!("a{i}"), "carol", T0, T0 + 600_000))
                .collect(),
        );
    }
    // Then bids on a few hundred of them, each batch over auctions earlier batches wrote (a
    // fixed scramble, not random), with retried keys among them.
    for round in 0..40u64 {
        let bids = (0..40u64)
            .map(|j| {
                let auction = (round * 7_919 + j * 104_729) % 300;
                let bidder = ["bob", "dave", "erin"][(j % 3) as usize];
                let key = format!("k{}", round / 2);
                bid(&format!("a{auction}"), bidder, &key, 2 + round as i64)
            })
            .collect();
        run_batch(bids);
    }
    let fresh = reopen(&fresh_dir);
    assert_eq!(kept.digest().unwrap(), fresh.digest().unwrap());
    // Readers see through the same memory: every auction reads as from the tree alone.
    for i in 0..auctions {
        let id = format!("a{i}");
        assert_eq!(
            kept.auction(&id).unwrap(),
            fresh.auction(&id).unwrap(),
            "{id}"
        );
    }
}

/// A commit that creates "a" and "b" (so it writes) with 40 bids on "a" and 3 on "b", then one
/// with 5 more bids on "a", which stay unwritten: 48 decisions.
fn stage_decision_runs(state: &StateTree) {
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    writer
        .apply(T0, &create("b", "carol", T0, T0 + 60_000))
        .unwrap();
    for n in 1..=40 {
        // Every third bid is too low and rejected.
        let amount = if n % 3 == 0 { 1 } else { 10 + n };
        writer
            .apply(T0 + n, &bid("a", &format!("b{n}"), "k", amount))
            .unwrap();
        if n <= 3 {
            writer
                .apply(T0 + n, &bid("b", &format!("b{n}"), "k", 10 + n))
                .unwrap();
        }
    }
    writer.commit().unwrap();
    let mut writer = state.writer().unwrap();
    for n in 41..=45 {
        writer
            .apply(T0 + n, &bid("a", &format!("b{n}"), "k", 10 + n))
            .unwrap();
    }
    writer.commit().unwrap();
}

fn decision_records(state: &StateTree, auction_id: &str) -> Vec<Vec<u64>> {
    state
        .tree
        .scan_prefix(keys::decision_prefix(auction_id))
        .values()
        .map(|record| {
            let decisions = decode_decisions(&record.unwrap()).unwrap();
            decisions.iter().map(|d| d.seq).collect()
        })
        .collect()
}

/// Every way of reading "a"'s decision log sees seqs 1..=45 exactly once, in order.
fn assert_reads_whole_log(state: &StateTree) {
    for seq in 1..=45 {
        let decision = state.decision("a", seq).unwrap();
        assert_eq!(decision.map(|d| d.seq), Some(seq));
    }
    assert!(state.decision("a", 46).unwrap().is_none());
    assert!(state.decision("a", 0).unwrap().is_none());
    assert!(state.decision("c", 1).unwrap().is_none());
    for after_seq in 0..=45 {
        let mut seen = Vec::new();
        let mut after = Some(after_seq);
        while let Some(after_seq) = after {
            let filter = BidFilter {
                accepted_only: false,
                limit: 7,
                after_seq,
            };
            let page = state.bids("a", &filter).unwrap();
            seen.extend(page.bids.iter().map(|d| d.seq));
            after = page.next_after_seq;
        }
        assert_eq!(seen, (after_seq + 1..=45).collect::<Vec<_>>());
    }
    let accepted = state
        .bids(
            "a",
            &BidFilter {
                accepted_only: true,
                limit: 100,
                after_seq: 0,
            },
        )
        .unwrap();
    assert_eq!(accepted.bids.len(), 45 - 13);
    // A retry after a restart is answered from the log: the index is rebuilt from the runs
    // (and from what is unwritten).
    let mut writer = state.writer().unwrap();
    for (bidder, seq, amount) in [("b20", 20, 30), ("b43", 43, 53)] {
        let retried = writer
            .apply(T0 + 100, &bid("a", bidder, "k", amount))
            .unwrap();
        match retried.effects.reply {
            Reply::Bid {
                replayed: true,
                decision,
            } => assert_eq!(decision.seq, seq),
            other => panic!("not replayed: {other:?}"),
        }
    }
    drop(writer);
    let summary = state.export().unwrap().summary().unwrap();
    assert_eq!(summary.decisions, 48);
}

#[test]
fn a_commits_decisions_are_stored_in_runs_per_auction_and_read_back_one_by_one() {
    let (dir, state) = store();
    stage_decision_runs(&state);
    let written = [
        (1..=16).collect::<Vec<_>>(),
        (17..=32).collect(),
        (33..=40).collect(),
    ];
    assert_eq!(decision_records(&state, "a"), written);
    assert_eq!(decision_records(&state, "b"), [vec![1, 2, 3]]);
    // Read through what is unwritten; the export at the end writes it.
    assert_reads_whole_log(&state);
    let mut all = written.to_vec();
    all.push((41..=45).collect());
    assert_eq!(decision_records(&state, "a"), all);
    drop(state);
    assert_reads_whole_log(&reopen(&dir));
}

/// One commit of `count` bids on "a" (bidders `w{first}`.., each above the last), setting the
/// applied log id to `[applied]`.
fn commit_bids(state: &StateTree, first: u64, count: u64, applied: u8) {
    let mut writer = state.writer().unwrap();
    for n in first..first + count {
        writer
            .apply(T0 + 10, &bid("a", &format!("w{n}"), "k", 100 + n as i64))
            .unwrap();
    }
    writer.set_meta("applied", vec![applied]);
    writer.commit().unwrap();
}

/// Bids alone leave their decisions, the stamp and the applied log id unwritten: readers see
/// them all the same, a crash (a reopen without `write_unwritten`) finds the state before them
/// (the Raft log applies them again), and they are written when `UNWRITTEN_DECISIONS_MAX`
/// decisions wait, or with the next change of anything else.
#[test]
fn bids_stay_unwritten_until_enough_wait_or_something_else_changes() {
    let (dir, state) = store();
    stage_bid_war(&state).commit().unwrap();
    let before_bids = state.digest().unwrap();
    let written_auction = state.auction("a").unwrap().unwrap();
    commit_bids(&state, 0, 10, 5);
    assert_eq!(
        decision_records(&state, "a").len(),
        1,
        "only the bid war's run"
    );
    assert_ne!(state.digest().unwrap(), before_bids);
    let auction = state.auction("a").unwrap().unwrap();
    assert_eq!(auction.decision_count, 4 + 10);
    assert_eq!(state.meta("applied").unwrap(), Some(vec![5]));
    assert_eq!(state.decision("a", 14).unwrap().unwrap().bidder_id, "w9");
    let page = state
        .bids(
            "a",
            &BidFilter {
                accepted_only: false,
                limit: 100,
                after_seq: 2,
            },
        )
        .unwrap();
    assert_eq!(
        page.bids.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (3..=14).collect::<Vec<_>>()
    );
    let reader_digest = state.digest().unwrap();

    // A crash (nothing written on the way out): the tree holds the state before the bids.
    drop(state);
    let state = reopen(&dir);
    assert_eq!(state.digest().unwrap(), before_bids);
    assert_eq!(state.auction("a").unwrap().unwrap(), written_auction);
    assert_eq!(state.meta("applied").unwrap(), Some(vec![4, 2]));
    // Applied again, as the Raft log would: the same state as before the crash.
    commit_bids(&state, 0, 10, 5);
    assert_eq!(state.digest().unwrap(), reader_digest);

    // Up to the bound: everything is written, and reads the same.
    let remaining = (UNWRITTEN_DECISIONS_MAX - 10) as u64;
    commit_bids(&state, 10, remaining - 1, 6);
    assert_eq!(decision_records(&state, "a").len(), 1);
    commit_bids(&state, 10 + remaining - 1, 1, 7);
    assert!(decision_records(&state, "a").len() > 60);
    assert_eq!(state.meta("applied").unwrap(), Some(vec![7]));
    let written = state.digest().unwrap();
    drop(state);
    let state = reopen(&dir);
    assert_eq!(state.digest().unwrap(), written);
    assert_eq!(
        state.auction("a").unwrap().unwrap().decision_count,
        4 + UNWRITTEN_DECISIONS_MAX as u64
    );
    assert_ne!(written, reader_digest);

    // A change of something else writes what waits with it.
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0 + 20, &bid("a", "late", "k", 5_000))
        .unwrap();
    writer.commit().unwrap();
    let records = decision_records(&state, "a").len();
    let mut writer = state.writer().unwrap();
    writer.apply(T0 + 21, &pause_by_carol("a")).unwrap();
    writer.commit().unwrap();
    assert_eq!(decision_records(&state, "a").len(), records + 1);
    let paused = state.digest().unwrap();
    drop(state);
    let state = reopen(&dir);
    assert_eq!(state.digest().unwrap(), paused);
    assert_eq!(state.auction("a").unwrap().unwrap().status, Status::Paused);
}

/// Bids leave the auction's record as the create wrote it: the last record of each entry's
/// run carries the auction (only the last: a hot entry's earlier records do not), and the
/// auction reads as the newest of the two, after a control writes the record again too.
#[test]
fn bids_leave_the_auction_record_and_the_entrys_last_run_carries_the_auction() {
    let (dir, state) = store();
    stage_decision_runs(&state);
    state.write_unwritten().unwrap();
    let record = |state: &StateTree| -> Auction {
        decode(&state.tree.get(keys::auction("a")).unwrap().unwrap()).unwrap()
    };
    let formats: Vec<u8> = state
        .tree
        .scan_prefix(keys::decision_prefix("a"))
        .values()
        .map(|record| record.unwrap()[0])
        .collect();
    let (plain, carrying) = (DECISION_RUN_FORMAT, DECISION_RUN_WITH_PROGRESS_FORMAT);
    assert_eq!(formats, [plain, plain, carrying, carrying]);
    assert_eq!(record(&state).decision_count, 0);
    let after_bids = state.auction("a").unwrap().unwrap();
    assert_eq!(after_bids.decision_count, 45);
    assert_eq!(after_bids.current_price, Decimal::new(55, 0));
    // Read back from the tree (not from what the commit left in memory): the record with the
    // newest run's progress is the whole auction as the bids left it.
    drop(state);
    let state = reopen(&dir);
    assert_eq!(state.auction("a").unwrap().unwrap(), after_bids);

    let mut writer = state.writer().unwrap();
    writer.apply(T0 + 50, &pause_by_carol("a")).unwrap();
    writer.commit().unwrap();
    assert_eq!(record(&state).status, Status::Paused);
    assert_eq!(record(&state).decision_count, 45);
    // Paused: the bid is rejected, a decision with no new version, newer than the record.
    let mut writer = state.writer().unwrap();
    writer.apply(T0 + 51, &bid("a", "zed", "k", 99)).unwrap();
    writer.commit().unwrap();
    state.write_unwritten().unwrap();
    drop(state);
    let state = reopen(&dir);
    let auction = state.auction("a").unwrap().unwrap();
    assert_eq!(
        (auction.status, auction.decision_count),
        (Status::Paused, 46)
    );
    assert_eq!(auction.version, record(&state).version);
}

/// Runs an older version wrote carry the whole auction (`DECISION_RUN_WITH_AUCTION_FORMAT`):
/// they still read, as the newest copy of the auction and as decisions, in the tree and in a
/// state copy's summary.
#[test]
fn runs_that_carry_the_whole_auction_still_read() {
    let (dir, state) = store();
    stage_decision_runs(&state);
    state.write_unwritten().unwrap();
    let expected = state.auction("a").unwrap().unwrap();
    let summary = state.export().unwrap().summary().unwrap();
    let (key, record) = state
        .tree
        .scan_prefix(keys::decision_prefix("a"))
        .next_back()
        .unwrap()
        .unwrap();
    let (_, decisions) = decode_run(&record).unwrap();
    let older = encode_as(DECISION_RUN_WITH_AUCTION_FORMAT, &(&expected, &decisions)).unwrap();
    state.tree.insert(key, older).unwrap();
    drop(state);

    let state = reopen(&dir);
    assert_eq!(state.auction("a").unwrap().unwrap(), expected);
    assert_eq!(state.export().unwrap().summary().unwrap(), summary);
    assert_reads_whole_log(&state);
}

#[test]
fn decisions_stored_one_per_record_before_runs_still_read() {
    let (dir, state) = store();
    stage_decision_runs(&state);
    state.write_unwritten().unwrap();
    // Rewrite "a"'s first two runs as the records of earlier versions: one decision each.
    for (key, record) in state
        .tree
        .scan_prefix(keys::decision_prefix("a"))
        .take(2)
        .map(Result::unwrap)
        .collect::<Vec<_>>()
    {
        state.tree.remove(key).unwrap();
        for decision in decode_decisions(&record).unwrap() {
            let key = keys::decision("a", decision.seq);
            state.tree.insert(key, encode(&decision).unwrap()).unwrap();
        }
    }
    assert_eq!(decision_records(&state, "a").len(), 32 + 2);
    drop(state);
    assert_reads_whole_log(&reopen(&dir));
}

/// Replicas apply the same entries in different batches and so leave different decisions
/// unwritten and write them in different runs; their digests are equal all the same, and
/// differ from a state with one decision less.
#[test]
fn replicas_that_apply_the_same_entries_in_different_batches_have_the_same_digest() {
    let entries: Vec<Vec<Command>> = vec![
        vec![create("a", "carol", T0, T0 + 60_000)],
        (1..=20)
            .map(|n| bid("a", &format!("b{n}"), "k", 10 + n))
            .collect(),
        (21..=24)
            .map(|n| bid("a", &format!("b{n}"), "k", 10 + n))
            .collect(),
    ];
    let apply = |state: &StateTree, entries: &[Vec<Command>]| {
        let mut writer = state.writer().unwrap();
        for command in entries.iter().flatten() {
            writer.apply(T0 + 1, command).unwrap();
        }
        writer.commit().unwrap();
    };
    let (_together_dir, together) = store();
    apply(&together, &entries);
    let (_apart_dir, apart) = store();
    for entry in &entries {
        apply(&apart, std::slice::from_ref(entry));
    }
    assert_eq!(decision_records(&together, "a").len(), 2);
    assert!(decision_records(&apart, "a").is_empty());
    assert_eq!(together.digest().unwrap(), apart.digest().unwrap());
    apart.write_unwritten().unwrap();
    assert_eq!(decision_records(&apart, "a").len(), 2);
    assert_eq!(together.digest().unwrap(), apart.digest().unwrap());

    let (_short_dir, short) = store();
    apply(&short, &entries[..2]);
    apply(&short, &[entries[2][..3].to_vec()]);
    assert_ne!(short.digest().unwrap(), together.digest().unwrap());
}

#[test]
fn a_state_copy_from_before_runs_reads_and_this_versions_copies_say_runs() {
    let (_dir, state) = store();
    stage_decision_runs(&state);
    let blob = state.export().unwrap();
    let copy = blob.to_bytes().unwrap();
    assert_eq!(copy[0], SNAPSHOT_FORMAT);
    assert_eq!(SnapshotBlob::from_bytes(&copy).unwrap(), blob);
    // Copies from before compression read as they were written.
    let uncompressed = encode_as(SNAPSHOT_FORMAT_PROGRESS_RUNS, &blob).unwrap();
    assert_eq!(uncompressed.len() as u64, 1 + blob.plain_len().unwrap());
    assert_eq!(SnapshotBlob::from_bytes(&uncompressed).unwrap(), blob);
    let runs_without_auctions = encode_as(SNAPSHOT_FORMAT_RUNS, &blob).unwrap();
    assert_eq!(
        SnapshotBlob::from_bytes(&runs_without_auctions).unwrap(),
        blob
    );
    let before_runs = encode_as(SNAPSHOT_FORMAT_BEFORE_RUNS, &blob).unwrap();
    assert_eq!(SnapshotBlob::from_bytes(&before_runs).unwrap(), blob);
}

/// The tree's raw pairs, as `export` copies them (without writing what is unwritten).
fn raw_pairs(state: &StateTree) -> Vec<KeyValue> {
    state
        .tree
        .iter()
        .map(|item| {
            let (key, value) = item.unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect()
}

/// A copy begun before commits and finished while they go on, on another thread, is exactly
/// the state the tree was in when it began, however its read of the tree interleaved with
/// their writes (a tree of some thousands of records takes milliseconds to read, a commit
/// well under one).
#[test]
fn a_copy_taken_while_commits_go_on_is_the_state_it_began_at() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_dir, state) = store();
    let mut writer = state.writer().unwrap();
    for i in 0..3_000 {
        let id = format!("filler{i}");
        writer
            .apply(T0, &create(&id, "carol", T0, T0 + 600_000))
            .unwrap();
    }
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 600_000))
        .unwrap();
    writer.commit().unwrap();
    for round in 0..5i64 {
        let copy = state.begin_copy().unwrap();
        let at_begin = raw_pairs(&state);
        let done = Arc::new(AtomicUsize::new(0));
        let committing = state.clone();
        let counter = done.clone();
        let commits = std::thread::spawn(move || {
            for n in 0..40 {
                let mut writer = committing.writer().unwrap();
                let id = format!("r{round}-{n}");
                // A create writes the tree at once, with its batch's bids.
                writer
                    .apply(T0 + 1, &create(&id, "carol", T0, T0 + 600_000))
                    .unwrap();
                for b in 0..20 {
                    let amount = 10 + (round * 40 + n) * 20 + b;
                    let bidder = format!("b{round}-{n}-{b}");
                    writer
                        .apply(T0 + 1, &bid("a", &bidder, "k", amount))
                        .unwrap();
                }
                writer.commit().unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        while done.load(Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        let blob = copy.finish().unwrap();
        let committed_during_copy = done.load(Ordering::SeqCst);
        commits.join().unwrap();
        assert!(
            blob.pairs == at_begin,
            "round {round}: the copy ({} pairs) is not the state it began at ({} pairs), \
             {committed_during_copy} commits in",
            blob.pairs.len(),
            at_begin.len()
        );
        assert_ne!(
            raw_pairs(&state),
            at_begin,
            "round {round}: nothing was committed"
        );
    }
    // Past the last commit, a copy is the tree as it stands, what was unwritten included.
    let expected = state.export().unwrap();
    assert_eq!(state.begin_copy().unwrap().finish().unwrap(), expected);
}

/// An import while a copy is in progress replaces the state the copy was of: the copy fails
/// (and says why) instead of holding a mix of the two.
#[test]
fn a_copy_in_progress_during_an_import_fails() {
    let (_source_dir, source) = store_with_auction("x");
    let imported = source.export().unwrap();
    let (_dir, state) = store_with_auction("a");
    let copy = state.begin_copy().unwrap();
    state.import(&imported).unwrap();
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0 + 5, &create("y", "carol", T0, T0 + 600_000))
        .unwrap();
    writer.commit().unwrap();
    assert!(matches!(copy.finish(), Err(StorageError::Replaced)));
    // A copy begun after the import is of the imported state.
    let blob = state.begin_copy().unwrap().finish().unwrap();
    assert_eq!(blob.pairs, raw_pairs(&state));
    assert!(blob.pairs.iter().all(|(key, _)| key != &keys::auction("a")));
}
