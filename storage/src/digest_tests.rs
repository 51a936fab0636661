//! State digests read while commits go on: each is the digest of the state at the applied id
//! it reports, as a replica that applied exactly that far digests it.
//!
//! The property test prints its seed; replay or widen it with
//! `PROPTEST_RNG_SEED=<n> cargo test -p gavel-storage digest` (and `PROPTEST_CASES=<n>`).

use std::sync::atomic::{AtomicBool, Ordering};

use gavel_rules::{Actor, Command, ControlAction};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;

use super::tests::{bid, create, proptest_config, store, T0};
use super::*;

const AUCTIONS: usize = 5;
const APPLIED: &str = "applied";

/// What one step of a script does to a state.
#[derive(Clone, Debug)]
enum Step {
    /// One commit of bids, each (auction, bidder, key, amount): most are left unwritten.
    Bids(Vec<(usize, usize, usize, i64)>),
    /// One commit of a creator's control, which rewrites the auction's record, and so writes
    /// what waits unwritten with it.
    Control(usize, ControlAction),
    /// Writes what commits left unwritten, as a snapshot point does (no commit: the applied id
    /// stays).
    WriteUnwritten,
}

fn step() -> impl Strategy<Value = Step> {
    let bid = (0..AUCTIONS, 0..4usize, 0..6usize, 1..60i64);
    let control = prop_oneof![
        Just(ControlAction::Pause),
        Just(ControlAction::Resume),
        Just(ControlAction::End),
    ];
    prop_oneof![
        8 => prop::collection::vec(bid, 1..12).prop_map(Step::Bids),
        1 => (0..AUCTIONS, control).prop_map(|(auction, action)| Step::Control(auction, action)),
        1 => Just(Step::WriteUnwritten),
    ]
}

/// The applied id as the tests store it: the number of the step's commit.
fn applied(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// A state with every auction of the scripts created (applied id 0).
fn created() -> (tempfile::TempDir, StateTree) {
    let (dir, state) = store();
    let mut writer = state.writer().unwrap();
    for auction in 0..AUCTIONS {
        let command = create(&format!("a{auction}"), "carol", T0, T0 + 600_000);
        writer.apply(T0, &command).unwrap();
    }
    writer.set_meta(APPLIED, applied(0));
    writer.commit().unwrap();
    (dir, state)
}

/// Runs step `n` of a script (its commit, if it makes one, stores applied id `n`).
fn run_step(state: &StateTree, n: u64, step: &Step) {
    let stamp = T0 + n as StampMs;
    let commands: Vec<Command> = match step {
        Step::WriteUnwritten => {
            state.write_unwritten().unwrap();
            return;
        }
        Step::Bids(bids) => bids
            .iter()
            .map(|(auction, bidder, key, amount)| {
                bid(
                    &format!("a{auction}"),
                    &format!("b{bidder}"),
                    &format!("k{key}"),
                    *amount,
                )
            })
            .collect(),
        Step::Control(auction, action) => vec![Command::Control {
            auction_id: format!("a{auction}"),
            action: *action,
            actor: Actor {
                user_id: "carol".into(),
                is_admin: false,
            },
        }],
    };
    let mut writer = state.writer().unwrap();
    for command in &commands {
        writer.apply(stamp, command).unwrap();
    }
    writer.set_meta(APPLIED, applied(n));
    writer.commit().unwrap();
}

/// A digest begun at any point of a script and read after any further steps (bids left
/// unwritten, records rewritten, what waited written) is the digest the state had when it
/// began, with the applied id of that state; a replica that ran only the steps before it has
/// that digest.
#[test]
fn a_digest_is_of_the_state_it_began_in_whatever_commits_came_before_it_was_read() {
    let mut runner = TestRunner::new(proptest_config("digest", 48));
    let case = (
        prop::collection::vec(step(), 1..40),
        any::<Index>(),
        any::<Index>(),
    );
    let result = runner.run(&case, |(steps, begin, read)| {
        let begin = begin.index(steps.len() + 1);
        let read = begin + read.index(steps.len() + 1 - begin);
        let (_dir, live) = created();
        let (_reference_dir, reference) = created();
        let mut pending = None;
        for (i, step) in steps.iter().enumerate() {
            if i == begin {
                pending = Some((
                    live.begin_digest(Some(APPLIED)).unwrap(),
                    reference.digest(),
                ));
            }
            if i == read {
                let (digest, expected) = pending.take().unwrap();
                let (digest, meta) = digest.finish().unwrap();
                prop_assert_eq!(digest, expected.unwrap(), "read at {}", i);
                prop_assert_eq!(meta, reference.meta(APPLIED).unwrap());
            }
            let n = i as u64 + 1;
            run_step(&live, n, step);
            if i < begin {
                run_step(&reference, n, step);
            }
        }
        if pending.is_none() && begin == steps.len() {
            pending = Some((
                live.begin_digest(Some(APPLIED)).unwrap(),
                reference.digest(),
            ));
        }
        if let Some((digest, expected)) = pending {
            let (digest, meta) = digest.finish().unwrap();
            prop_assert_eq!(digest, expected.unwrap());
            prop_assert_eq!(meta, reference.meta(APPLIED).unwrap());
        }
        // And the replica that ran every step agrees once both stand still.
        let (_whole_dir, whole) = created();
        for (i, step) in steps.iter().enumerate() {
            run_step(&whole, i as u64 + 1, step);
        }
        prop_assert_eq!(live.digest().unwrap(), whole.digest().unwrap());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Another thread commits a script as fast as it can while digests are read: every digest is
/// the one the state had at the applied id read with it. Read from the tree as it stood, a
/// digest could mix two commits' states.
#[test]
fn digests_read_while_another_thread_commits_each_belong_to_their_applied_id() {
    let steps: Vec<Step> = (0..120u64)
        .map(|n| match n % 40 {
            13 => Step::Control((n % AUCTIONS as u64) as usize, ControlAction::Pause),
            14 => Step::Control((n % AUCTIONS as u64) as usize, ControlAction::Resume),
            29 => Step::WriteUnwritten,
            _ => Step::Bids(
                (0..12u64)
                    .map(|i| {
                        let auction = ((n + i) % AUCTIONS as u64) as usize;
                        (
                            auction,
                            (i % 4) as usize,
                            (n % 6) as usize,
                            (n * 12 + i) as i64,
                        )
                    })
                    .collect(),
            ),
        })
        .collect();
    let (_reference_dir, reference) = created();
    let mut expected = vec![reference.digest().unwrap()];
    for (i, step) in steps.iter().enumerate() {
        let n = i as u64 + 1;
        run_step(&reference, n, step);
        expected.push(reference.digest().unwrap());
    }

    let (_dir, live) = created();
    let done = AtomicBool::new(false);
    let (reads, reads_across_commits) = std::thread::scope(|scope| {
        scope.spawn(|| {
            for (i, step) in steps.iter().enumerate() {
                run_step(&live, i as u64 + 1, step);
            }
            done.store(true, Ordering::Release);
        });
        let (mut reads, mut across) = (0, 0);
        loop {
            let finished = done.load(Ordering::Acquire);
            let before = live.meta(APPLIED).unwrap();
            let (digest, meta) = live.digest_with_meta(APPLIED).unwrap();
            let n = u64::from_be_bytes(meta.unwrap().try_into().unwrap()) as usize;
            assert_eq!(digest, expected[n], "the digest read with applied id {n}");
            reads += 1;
            if live.meta(APPLIED).unwrap() != before {
                across += 1;
            }
            if finished {
                break (reads, across);
            }
        }
    });
    eprintln!("{reads} digests read, {reads_across_commits} of them while commits went on");
    assert_eq!(live.digest().unwrap(), *expected.last().unwrap());
}

/// A snapshot installed while a digest is read makes that read fail (`Replaced`), and a read
/// begun after it digests the installed state.
#[test]
fn a_digest_read_across_an_install_is_read_again() {
    let (_dir, live) = created();
    run_step(&live, 1, &Step::Bids(vec![(0, 0, 0, 5), (1, 1, 0, 7)]));
    let (_source_dir, source) = created();
    run_step(&source, 1, &Step::Bids(vec![(2, 0, 0, 9)]));
    let blob = source.export().unwrap();

    let read = live.begin_digest(Some(APPLIED)).unwrap();
    live.import(&blob).unwrap();
    assert!(matches!(read.finish(), Err(StorageError::Replaced)));
    let (digest, meta) = live.digest_with_meta(APPLIED).unwrap();
    assert_eq!(digest, source.digest().unwrap());
    assert_eq!(meta, Some(applied(1)));
}
