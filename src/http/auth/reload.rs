//! Key rotation without a restart: the public key file (one PEM key or a JWKS) is read again
//! every `KEY_FILE_POLL_INTERVAL_MS` and on SIGHUP, and a changed file that parses replaces
//! the keys in use at once. A file that does not parse (or cannot be read) leaves the last good
//! keys in place and is reported once, as a warning that names the file and what is wrong,
//! never its contents.
//!
//! This module owns the file IO and the task; parsing is `keys.rs`, use is `verify.rs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::keys::{parse_jwks, parse_public_pem, KeyError, KeySet};
use super::secret::read_bounded;

/// How often the key file is checked for changes, in milliseconds. Rotation waits at most
/// this long (or send SIGHUP); reading a small file once a second costs nothing.
pub const KEY_FILE_POLL_INTERVAL_MS: u64 = 1_000;

/// What the key file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// One PEM public key, named by this `kid` (if any).
    Pem { kid: Option<String> },
    /// A JWKS document.
    Jwks,
}

/// The file public keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub format: KeyFormat,
}

/// Why the key file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: String, error: KeyError },
}

impl KeyFile {
    /// Reads and parses the file; also returns the bytes read, to notice the next change.
    pub fn load(&self) -> Result<(KeySet, Vec<u8>), LoadError> {
        let bytes = self.read()?;
        Ok((self.parse(&bytes)?, bytes))
    }

    fn read(&self) -> Result<Vec<u8>, LoadError> {
        read_bounded(&self.path).map_err(|error| LoadError::Read {
            path: self.path.display().to_string(),
            error,
        })
    }

    fn parse(&self, bytes: &[u8]) -> Result<KeySet, LoadError> {
        let parsed = match &self.format {
            KeyFormat::Pem { kid } => parse_public_pem(bytes, kid.clone()),
            KeyFormat::Jwks => parse_jwks(bytes),
        };
        parsed.map_err(|error| LoadError::Parse {
            path: self.path.display().to_string(),
            error,
        })
    }
}

/// Logs what a loaded set holds: ids and algorithms, and what a JWKS held that is not used.
pub fn log_loaded(file: &KeyFile, set: &KeySet, event: &str) {
    tracing::info!(
        path = %file.path.display(),
        keys = ?set.describe(),
        "{event}"
    );
    for skipped in set.skipped() {
        tracing::warn!(path = %file.path.display(), key = %skipped, "ignoring a key");
    }
}

/// Keeps `keys` in step with `file` until every receiver is gone. `seen` is the content the
/// current keys were loaded from.
pub fn spawn_reloader(
    file: KeyFile,
    seen: Vec<u8>,
    keys: watch::Sender<Arc<KeySet>>,
    poll_interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; key files are polled only");
                None
            }
        };
        let mut tick = tokio::time::interval(poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watcher = Watcher {
            file,
            seen: Seen::Bytes(seen),
        };
        loop {
            let forced = tokio::select! {
                () = keys.closed() => return,
                _ = tick.tick() => false,
                Some(()) = recv_hangup(&mut hangup) => true,
            };
            watcher = watcher.check(&keys, forced).await;
        }
    })
}

async fn recv_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// What the last look at the file found, so each change (and each failure) is acted on and
/// reported once.
#[derive(PartialEq, Eq)]
enum Seen {
    Bytes(Vec<u8>),
    ReadError(String),
}

struct Watcher {
    file: KeyFile,
    seen: Seen,
}

impl Watcher {
    /// Reads the file off the runtime threads; loads it if it changed (or `forced`, on SIGHUP).
    async fn check(self, keys: &watch::Sender<Arc<KeySet>>, forced: bool) -> Watcher {
        let file = self.file.clone();
        let bytes = match tokio::task::spawn_blocking(move || file.read()).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return self.read_failed(e.to_string()),
            Err(e) => return self.read_failed(format!("the reader task failed: {e}")),
        };
        if !forced && matches!(&self.seen, Seen::Bytes(seen) if *seen == bytes) {
            return self;
        }
        let file = self.file.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let parsed = file.parse(&bytes);
            (parsed, bytes)
        })
        .await;
        let (parsed, bytes) = match parsed {
            Ok(done) => done,
            Err(e) => return self.read_failed(format!("the parser task failed: {e}")),
        };
        match parsed {
            Ok(set) => {
                log_loaded(&self.file, &set, "reloaded the token keys");
                keys.send_replace(Arc::new(set));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the key file changed but cannot be used; keeping the last good keys"
            ),
        }
        Watcher {
            seen: Seen::Bytes(bytes),
            ..self
        }
    }

    fn read_failed(self, error: String) -> Watcher {
        let seen = Seen::ReadError(error);
        if self.seen != seen {
            if let Seen::ReadError(error) = &seen {
                tracing::warn!(
                    path = %self.file.path.display(),
                    error = %error,
                    "cannot read the key file; keeping the last good keys"
                );
            }
        }
        Watcher { seen, ..self }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::http::auth::test_keys::{KeyKind, TestKey};

    /// Replaces the file in one rename, as a rotation should.
    fn write_atomically(path: &Path, bytes: &[u8]) {
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, bytes).unwrap();
        std::fs::rename(&temp, path).unwrap();
    }

    fn jwks(keys: &[(&TestKey, &str)]) -> Vec<u8> {
        let keys: Vec<_> = keys.iter().map(|(k, kid)| k.jwk_with_kid(kid)).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    fn kids(rx: &watch::Receiver<Arc<KeySet>>) -> Vec<String> {
        rx.borrow().describe()
    }

    #[tokio::test]
    async fn a_change_replaces_the_keys_and_a_bad_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (
            TestKey::generate(KeyKind::EdDsa),
            TestKey::generate(KeyKind::Es256),
        );
        write_atomically(&path, &jwks(&[(&a, "a")]));
        let file = KeyFile {
            path: path.clone(),
            format: KeyFormat::Jwks,
        };
        let (set, seen) = file.load().unwrap();
        let (tx, rx) = watch::channel(Arc::new(set));
        let mut watcher = Watcher {
            file,
            seen: Seen::Bytes(seen),
        };
        watcher = watcher.check(&tx, false).await;
        assert!(
            !rx.has_changed().unwrap(),
            "an unchanged file is not reloaded"
        );

        write_atomically(&path, &jwks(&[(&a, "a"), (&b, "b")]));
        watcher = watcher.check(&tx, false).await;
        assert_eq!(kids(&rx), vec!["a:EdDSA", "b:ES256"]);

        for broken in [&b"{\"keys\": ["[..], b"", &jwks(&[])] {
            write_atomically(&path, broken);
            watcher = watcher.check(&tx, false).await;
            assert_eq!(
                kids(&rx),
                vec!["a:EdDSA", "b:ES256"],
                "kept the last good keys"
            );
        }
        std::fs::remove_file(&path).unwrap();
        watcher = watcher.check(&tx, false).await;
        assert_eq!(
            kids(&rx),
            vec!["a:EdDSA", "b:ES256"],
            "kept them without a file"
        );

        write_atomically(&path, &jwks(&[(&b, "b")]));
        watcher = watcher.check(&tx, false).await;
        assert_eq!(kids(&rx), vec!["b:ES256"]);
        let mut rx_seen = rx.clone();
        rx_seen.mark_unchanged();
        watcher.check(&tx, true).await;
        assert!(
            rx_seen.has_changed().unwrap(),
            "SIGHUP reloads even an unchanged file"
        );
    }

    #[tokio::test]
    async fn the_reloader_polls_and_stops_with_its_receivers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let (a, b) = (
            TestKey::generate(KeyKind::EdDsa),
            TestKey::generate(KeyKind::Es256),
        );
        write_atomically(&path, a.public_pem.as_bytes());
        let file = KeyFile {
            path: path.clone(),
            format: KeyFormat::Pem { kid: None },
        };
        let (set, seen) = file.load().unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(set));
        let task = spawn_reloader(file, seen, tx, Duration::from_millis(10));
        write_atomically(&path, b.public_pem.as_bytes());
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("the new key is loaded within the bound")
            .unwrap();
        assert_eq!(kids(&rx), vec!["(no kid):ES256"]);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the reloader ends when nobody uses the keys")
            .unwrap();
    }
}
