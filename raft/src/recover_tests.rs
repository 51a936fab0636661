use std::collections::BTreeSet;

use gavel_rules::{Command, CreateAuction, Decimal};
use gavel_storage::{encode, encode_as, StoreConfig};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

use super::*;
use crate::types::{Entry, StoredMembership, ENTRY_FORMAT_VERSION};

const GROUP: u32 = 2;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).unwrap()
}

/// A log of blank entries `first..=last`, all of term `term`.
fn write_log(store: &Store, term: u64, first: u64, last: u64) {
    let rows = (first..=last).map(|index| {
        let entry = Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        };
        (index, encode_as(ENTRY_FORMAT_VERSION, &entry).unwrap())
    });
    store.log(GROUP).unwrap().append(rows).unwrap();
}

fn purge_through(store: &Store, id: LogId) {
    let log = store.log(GROUP).unwrap();
    record_purged(&log, id).unwrap();
    log.purge_through(id.index).unwrap();
}

fn indexes(store: &Store) -> Vec<u64> {
    let log = store.log(GROUP).unwrap();
    log.range(..).unwrap().into_iter().map(|(i, _)| i).collect()
}

/// A peer's copy of the group's state: one auction, applied through `last`.
fn peer_copy(last: LogId) -> (SnapshotMeta, SnapshotBlob) {
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path()).state(GROUP).unwrap();
    let mut writer = state.writer().unwrap();
    let create = Command::Create {
        auction_id: "kept".into(),
        creator_id: "carol".into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "p".into(),
            start_at_ms: 1_000,
            end_at_ms: 61_000,
            start_price: Decimal::ONE,
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    };
    writer.apply(1_000, &create).unwrap();
    writer.commit().unwrap();
    let membership = Membership::new(vec![BTreeSet::from([1u64, 2, 3])], None);
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), membership),
        snapshot_id: format!("peer-{}", last.index),
    };
    (meta, state.export().unwrap())
}

fn applied(store: &Store) -> Option<LogId> {
    let bytes = store.state(GROUP).unwrap().meta(APPLIED).unwrap().unwrap();
    decode::<Option<LogId>>(&bytes).unwrap()
}

#[tokio::test]
async fn a_state_is_behind_only_when_the_log_was_purged_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        state_behind_log(&store, GROUP).unwrap(),
        None,
        "a new group"
    );
    write_log(&store, 1, 1, 30);
    assert_eq!(
        state_behind_log(&store, GROUP).unwrap(),
        None,
        "an unpurged log re-applies everything"
    );
    purge_through(&store, log_id(1, 20));
    assert_eq!(
        state_behind_log(&store, GROUP).unwrap(),
        Some(log_id(1, 20)),
        "nothing applied, entries 1-20 gone"
    );
    let (meta, blob) = peer_copy(log_id(1, 19));
    install_blob(&store.state(GROUP).unwrap(), &meta, blob).unwrap();
    assert_eq!(
        state_behind_log(&store, GROUP).unwrap(),
        Some(log_id(1, 20)),
        "one short is still behind"
    );
    let (meta, blob) = peer_copy(log_id(1, 20));
    install_blob(&store.state(GROUP).unwrap(), &meta, blob).unwrap();
    assert_eq!(state_behind_log(&store, GROUP).unwrap(), None);
}

#[tokio::test]
async fn a_copy_keeps_the_entries_after_its_last_when_the_log_holds_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_log(&store, 1, 1, 40);
    purge_through(&store, log_id(1, 10));
    let (meta, blob) = peer_copy(log_id(1, 25));
    adopt_copy(&store, GROUP, &meta, blob).await.unwrap();
    assert_eq!(indexes(&store), (26..=40).collect::<Vec<_>>());
    assert_eq!(applied(&store), Some(log_id(1, 25)));
    assert!(store
        .state(GROUP)
        .unwrap()
        .auction("kept")
        .unwrap()
        .is_some());
    assert_eq!(state_behind_log(&store, GROUP).unwrap(), None);
    let stored = stored_copy_reaching(&store, GROUP, 25).unwrap();
    assert_eq!(
        stored.map(|(meta, _)| meta.last_log_id),
        Some(Some(log_id(1, 25))),
        "kept for followers"
    );

    // All of it survives a restart.
    drop(store);
    let store = open(dir.path());
    assert_eq!(indexes(&store), (26..=40).collect::<Vec<_>>());
    assert_eq!(applied(&store), Some(log_id(1, 25)));
    assert_eq!(state_behind_log(&store, GROUP).unwrap(), None);
}

/// The copy reaches exactly as far as the log was purged: the entries after it are the ones
/// the state needs next (and may include committed ones that the start re-applies).
#[tokio::test]
async fn a_copy_at_the_purge_point_keeps_every_entry_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_log(&store, 1, 1, 40);
    purge_through(&store, log_id(1, 25));
    let (meta, blob) = peer_copy(log_id(1, 25));
    adopt_copy(&store, GROUP, &meta, blob).await.unwrap();
    assert_eq!(indexes(&store), (26..=40).collect::<Vec<_>>());
    assert_eq!(state_behind_log(&store, GROUP).unwrap(), None);

    // Purged through another entry at that index (a different term): nothing after it is kept.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_log(&store, 1, 1, 40);
    purge_through(&store, log_id(1, 25));
    let (meta, blob) = peer_copy(log_id(2, 25));
    adopt_copy(&store, GROUP, &meta, blob).await.unwrap();
    assert!(indexes(&store).is_empty());
}

#[tokio::test]
async fn a_copy_drops_a_log_that_diverges_from_it_or_ends_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A deposed leader's entries 21-40 at term 1, where the group committed term 2's.
    write_log(&store, 1, 1, 40);
    purge_through(&store, log_id(1, 10));
    let (meta, blob) = peer_copy(log_id(2, 30));
    adopt_copy(&store, GROUP, &meta, blob).await.unwrap();
    assert!(indexes(&store).is_empty(), "{:?}", indexes(&store));
    let purged = store.log(GROUP).unwrap().record(PURGED).unwrap().unwrap();
    assert_eq!(decode::<LogId>(&purged).unwrap(), log_id(2, 30));
    assert_eq!(applied(&store), Some(log_id(2, 30)));

    // A log that ends before the copy's last entry.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_log(&store, 1, 1, 12);
    purge_through(&store, log_id(1, 5));
    let (meta, blob) = peer_copy(log_id(1, 50));
    adopt_copy(&store, GROUP, &meta, blob).await.unwrap();
    assert!(indexes(&store).is_empty());
    assert_eq!(state_behind_log(&store, GROUP).unwrap(), None);
}

#[tokio::test]
async fn a_stored_snapshot_serves_only_when_it_reaches_far_enough() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(stored_copy_reaching(&store, GROUP, 0).unwrap().is_none());
    let (meta, blob) = peer_copy(log_id(1, 25));
    let stored = encode(&(&meta, serde_bytes::ByteBuf::from(blob.to_bytes().unwrap()))).unwrap();
    store
        .state(GROUP)
        .unwrap()
        .save_snapshot_if_newer(26, &stored)
        .unwrap();
    assert!(stored_copy_reaching(&store, GROUP, 26).unwrap().is_none());
    let (found, blob) = stored_copy_reaching(&store, GROUP, 25).unwrap().unwrap();
    assert_eq!(found.last_log_id, Some(log_id(1, 25)));
    assert!(!blob.pairs.is_empty());
}
