//! openraft's storage conformance suite (`openraft::testing::Suite`) against Gavel's sled-backed
//! log store and state machine, each case on a fresh database in its own temp dir.

#![allow(clippy::result_large_err)] // openraft's StorageError is large by design.

use std::sync::Arc;

use gavel_raft::{Flusher, GroupObserver, LogStore, RaftStorageError, StateMachine, TypeConfig};
use gavel_storage::{Store, StoreConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let store = Store::open(dir.path(), &StoreConfig::default())
            .map_err(|e| StorageIOError::write(&e))?;
        let group = 7;
        let log = store.log(group).map_err(|e| StorageIOError::write(&e))?;
        let state = store.state(group).map_err(|e| StorageIOError::write(&e))?;
        let log_store = LogStore::new(store.clone(), log, Flusher::start(store.clone()));
        let state_machine =
            StateMachine::new(group, store, state, Arc::new(GroupObserver::default()));
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn sled_store_passes_openraft_conformance_suite() -> Result<(), RaftStorageError> {
    Suite::test_all(SledStoreBuilder)
}
