//! Retried bids through real sled: the in-memory idempotency index must answer every retry as
//! the decision log says, past its bound, across reopens and imports, with fingerprints that
//! collide, and after an upgrade from a version that kept a record per key. Every auction reads
//! back as the rules left it, whether a bid's run or a control's record holds its newest state.
//!
//! The property test prints its seed; replay or widen it with
//! `PROPTEST_RNG_SEED=<n> cargo test -p gavel-storage retries` (and `PROPTEST_CASES=<n>`).

use std::collections::HashMap;

use gavel_rules::{Actor, Auction, BidDecision, Command, ControlAction, Reply, StampMs};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::codec::{decode, encode};
use crate::idempotency::IdempotencyIndex;
use crate::state::tests::{bid, create, proptest_config, T0};
use crate::state::StateTree;
use crate::{keys, SnapshotBlob, StorageError, Store, StoreConfig, SNAPSHOT_FORMAT};

const AUCTIONS: usize = 4;
/// The last auction ends part-way through a run, so retries also reach an ended auction.
const SHORT_AUCTION_END_MS: StampMs = T0 + 40;

#[derive(Clone, Debug)]
enum Step {
    Bid {
        auction: usize,
        bidder: usize,
        key: usize,
        amount: i64,
    },
    /// Pauses, resumes, ends or starts an auction, as its creator.
    Control {
        auction: usize,
        action: ControlAction,
    },
    /// Ends the batch: commit, and a new writer.
    Commit,
    /// Commits, writes what is unwritten (as a clean shutdown does), then opens the data dir
    /// again (nothing in memory survives).
    Reopen,
    /// Commits, then imports the state into a fresh store and goes on there.
    Import,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0..AUCTIONS, 0..3usize, 0..5usize, 1..30i64).prop_map(
            |(auction, bidder, key, amount)| Step::Bid { auction, bidder, key, amount }
        ),
        1 => (0..AUCTIONS, prop_oneof![
            Just(ControlAction::Pause),
            Just(ControlAction::Resume),
            Just(ControlAction::End),
            Just(ControlAction::Start),
        ]).prop_map(|(auction, action)| Step::Control { auction, action }),
        3 => Just(Step::Commit),
        1 => Just(Step::Reopen),
        1 => Just(Step::Import),
    ]
}

/// The reference: the rules over plain maps, every decision kept by its key.
#[derive(Default)]
struct Model {
    auctions: HashMap<String, Auction>,
    decisions: HashMap<(String, String, String), BidDecision>,
}

impl Model {
    fn apply(&mut self, stamp: StampMs, command: &Command) -> Reply {
        let id = command.auction_id().to_owned();
        let prior = match command {
            Command::Bid {
                bidder_id,
                idempotency_key,
                ..
            } => self
                .decisions
                .get(&(id.clone(), bidder_id.clone(), idempotency_key.clone())),
            _ => None,
        };
        let effects = gavel_rules::apply(self.auctions.get(&id), prior, command, stamp);
        if let Some(decision) = effects.decision {
            let scope = (
                id.clone(),
                decision.bidder_id.clone(),
                decision.idempotency_key.clone(),
            );
            self.decisions.insert(scope, decision);
        }
        if let Some(auction) = effects.auction {
            self.auctions.insert(id, auction);
        }
        effects.reply
    }
}

fn open_state(dir: &tempfile::TempDir, entries_max: usize, mask: u64) -> StateTree {
    let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
    let index = IdempotencyIndex::new(entries_max).with_fingerprint_mask(mask);
    store.state(0).unwrap().with_index(index)
}

/// Runs `steps` on a real tree and on the model; every reply must be the same.
fn run(steps: &[Step], entries_max: usize, mask: u64) -> Result<(), TestCaseError> {
    let mut dir = tempfile::tempdir().unwrap();
    let mut state = open_state(&dir, entries_max, mask);
    let mut model = Model::default();
    let mut stamp = T0;
    let mut writer = state.writer().unwrap();
    for i in 0..AUCTIONS {
        let end = if i == AUCTIONS - 1 {
            SHORT_AUCTION_END_MS
        } else {
            T0 + 600_000
        };
        let command = create(&format!("a{i}"), "carol", T0, end);
        model.apply(stamp, &command);
        writer.apply(stamp, &command).unwrap();
    }
    writer.commit().unwrap();
    let mut writer = state.writer().unwrap();
    for step in steps {
        stamp += 1;
        match step {
            Step::Bid {
                auction,
                bidder,
                key,
                amount,
            } => {
                let command = bid(
                    &format!("a{auction}"),
                    ["bob", "dave", "erin"][*bidder],
                    &format!("k{key}"),
                    *amount,
                );
                let expected = model.apply(stamp, &command);
                let got = writer.apply(stamp, &command).unwrap().effects.reply;
                prop_assert_eq!(got, expected, "{:?}", command);
            }
            Step::Control { auction, action } => {
                let command = Command::Control {
                    auction_id: format!("a{auction}"),
                    action: *action,
                    actor: Actor {
                        user_id: "carol".into(),
                        is_admin: false,
                    },
                };
                let expected = model.apply(stamp, &command);
                let got = writer.apply(stamp, &command).unwrap().effects.reply;
                prop_assert_eq!(got, expected, "{:?}", command);
            }
            Step::Commit | Step::Reopen | Step::Import => {
                writer.commit().unwrap();
                if matches!(step, Step::Reopen) {
                    state.write_unwritten().unwrap();
                    drop(state);
                    state = open_state(&dir, entries_max, mask);
                }
                if matches!(step, Step::Import) {
                    let copy =
                        SnapshotBlob::from_bytes(&state.export().unwrap().to_bytes().unwrap())
                            .unwrap();
                    dir = tempfile::tempdir().unwrap();
                    state = open_state(&dir, entries_max, mask);
                    state.import(&copy).unwrap();
                }
                assert_auctions_read_as_modelled(&state, &model)?;
                writer = state.writer().unwrap();
            }
        }
    }
    writer.commit().unwrap();
    assert_auctions_read_as_modelled(&state, &model)?;
    state.write_unwritten().unwrap();
    drop(state);
    assert_auctions_read_as_modelled(&open_state(&dir, entries_max, mask), &model)
}

fn assert_auctions_read_as_modelled(state: &StateTree, model: &Model) -> Result<(), TestCaseError> {
    for i in 0..AUCTIONS {
        let id = format!("a{i}");
        let stored = state.auction(&id).unwrap();
        prop_assert_eq!(stored.as_ref(), model.auctions.get(&id), "auction {}", id);
    }
    Ok(())
}

/// Retries decide as the model does: with a roomy index, with one so small that every batch
/// drops auctions, and with fingerprints of one bit or none (every key of an auction shares
/// one), so that answers rest on the confirming read.
#[test]
fn retries_are_answered_as_the_decision_log_says() {
    let mut runner = TestRunner::new(proptest_config("retries", 64));
    let case = (
        prop::collection::vec(step(), 1..120),
        prop_oneof![Just(1_000_000usize), Just(6), Just(2)],
        prop_oneof![Just(u64::MAX), Just(1), Just(0)],
    );
    let result = runner.run(&case, |(steps, entries_max, mask)| {
        run(&steps, entries_max, mask)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// What a version before the in-memory index left: a record per key, in the tree and in
/// format-1 copies. The store drops the records when it opens and copies lose them when read,
/// and retries still find their decisions. A format-2 copy is refused by a reader of format 1
/// only, as an older version is.
#[test]
fn records_of_an_older_version_are_dropped_and_retries_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let state = open_state(&dir, 1_000, u64::MAX);
    let mut writer = state.writer().unwrap();
    writer
        .apply(T0, &create("a", "carol", T0, T0 + 60_000))
        .unwrap();
    writer.apply(T0 + 1, &bid("a", "bob", "k1", 5)).unwrap();
    writer.commit().unwrap();
    let current = state.export().unwrap();

    // The older version's record for bob's k1: the decision's seq under the key scope.
    let old_record = (keys::idempotency("a", "bob", "k1"), encode(&1u64).unwrap());
    let mut old_copy = current.clone();
    old_copy.pairs.push(old_record.clone());
    old_copy.pairs.sort();
    let from_old = SnapshotBlob::from_bytes(&encode(&old_copy).unwrap()).unwrap();
    assert_eq!(from_old, current);
    assert_eq!(from_old.summary().unwrap().idempotency_keys, 1);

    let format2 = current.to_bytes().unwrap();
    assert_eq!(format2[0], SNAPSHOT_FORMAT);
    assert!(matches!(
        decode::<SnapshotBlob>(&format2),
        Err(StorageError::UnknownFormat(SNAPSHOT_FORMAT))
    ));

    // The older version's tree: the record next to the decision, removed at the next open.
    let digest = state.digest().unwrap();
    state.import(&old_copy).unwrap();
    assert_ne!(state.digest().unwrap(), digest);
    drop(state);
    let reopened = open_state(&dir, 1_000, u64::MAX);
    assert_eq!(reopened.digest().unwrap(), digest);
    let mut writer = reopened.writer().unwrap();
    let retried = writer.apply(T0 + 2, &bid("a", "bob", "k1", 5)).unwrap();
    assert!(matches!(
        retried.effects.reply,
        Reply::Bid { replayed: true, .. }
    ));
}
