//! Startup of token checking: which tokens this node accepts, decided once from the flags.
//!
//! The policy: with no public key configured, HS256 is accepted as always (the secret from
//! `GAVEL_AUTH_SECRET`, `--auth-secret-file`, or generated in the data dir). With public keys
//! (`--jwt-public-key-file` or `--jwks-file`), asymmetric tokens are accepted, and HS256 only if
//! a secret was given explicitly (env or file): the data dir's generated secret is then neither
//! created nor read, so adding an identity provider's keys never leaves a forgotten shared
//! secret trusted. A key file that cannot be loaded is a startup error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::keys::KeySet;
use super::reload::{log_loaded, spawn_reloader, KeyFile, KEY_FILE_POLL_INTERVAL_MS};
use super::secret::{explicit_secret, load_secret, SecretSource};
use super::verify::{ClaimChecks, TokenVerifier};

/// How this node checks tokens, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// `--auth-secret-file` (`GAVEL_AUTH_SECRET` is read from the environment).
    pub secret_file: Option<PathBuf>,
    /// The public key file, if any.
    pub key_file: Option<KeyFile>,
    pub checks: ClaimChecks,
}

/// Token checking, ready.
pub struct AuthStarted {
    pub verifier: TokenVerifier,
    /// Where the HS256 secret came from; `None` when HS256 tokens are refused.
    pub secret_source: Option<SecretSource>,
}

/// Loads the secret and keys as the policy says and starts the key reloader (which ends when
/// the verifier is dropped). Call inside the runtime.
pub fn start(config: AuthConfig, data_dir: &Path) -> anyhow::Result<AuthStarted> {
    // Without a backend the library would panic on the first token: refuse to start instead.
    super::keys::provider()?;
    let secret = match &config.key_file {
        None => Some(load_secret(config.secret_file.as_deref(), data_dir, true)?),
        Some(_) => explicit_secret(config.secret_file.as_deref())?,
    };
    let (keys_tx, keys_rx) = watch::channel(Arc::new(KeySet::default()));
    if let Some(file) = config.key_file {
        let (set, seen) = file.load().context("cannot load the token keys")?;
        log_loaded(&file, &set, "loaded the token keys");
        keys_tx.send_replace(Arc::new(set));
        spawn_reloader(
            file,
            seen,
            keys_tx,
            Duration::from_millis(KEY_FILE_POLL_INTERVAL_MS),
        );
    }
    let verifier = TokenVerifier::new(
        secret.as_ref().map(|(secret, _)| secret),
        keys_rx,
        config.checks.clone(),
    )?;
    tracing::info!(
        hs256 = secret.is_some(),
        issuer = config.checks.issuer.as_deref().unwrap_or("(any)"),
        audience = config.checks.audience.as_deref().unwrap_or("(any)"),
        leeway_s = config.checks.leeway_s,
        "token checks"
    );
    Ok(AuthStarted {
        verifier,
        secret_source: secret.map(|(_, source)| source),
    })
}
