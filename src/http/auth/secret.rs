//! The HS256 secret: where it comes from (`GAVEL_AUTH_SECRET`, `--auth-secret-file`, or a file
//! generated in the data dir), and the warnings about weak or exposed secrets and private keys.
//!
//! This module reads and writes files; it knows nothing of tokens beyond the bytes of the key.
//! No message it produces contains the secret: only its length and the file's path.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The environment variable that holds the HMAC secret.
pub const SECRET_ENV: &str = "GAVEL_AUTH_SECRET";
/// The secret's file name inside the data dir when neither the env nor a file is given.
pub const SECRET_FILE_NAME: &str = "auth-secret";
/// Random bytes in a generated secret (written as hex).
const SECRET_GENERATED_BYTES: usize = 32;
/// Secrets shorter than this get a warning: HS256 wants at least 256 bits of key.
const SECRET_RECOMMENDED_BYTES_MIN: usize = 32;
/// The largest secret or key file read, in bytes: a PEM key or a JWKS of a few dozen keys is far
/// smaller, and a bound keeps a wrong path (a log, a device) from being read whole.
pub const KEY_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The HMAC key HS256 tokens are signed and checked with.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Result<Secret, String> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err("the auth secret is empty".into());
        }
        Ok(Secret(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where the secret was found, for the startup message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File(PathBuf),
    /// Generated in this start, at this path.
    Created(PathBuf),
}

/// The secret the operator gave explicitly: `GAVEL_AUTH_SECRET`, else `file`, else none.
pub fn explicit_secret(file: Option<&Path>) -> anyhow::Result<Option<(Secret, SecretSource)>> {
    if let Some(value) = std::env::var_os(SECRET_ENV) {
        let bytes = value.into_encoded_bytes();
        let secret = Secret::new(bytes).map_err(|e| anyhow::anyhow!("{SECRET_ENV}: {e}"))?;
        warn_if_short(&secret, SECRET_ENV);
        return Ok(Some((secret, SecretSource::Env)));
    }
    match file {
        Some(path) => Ok(Some((
            read_secret_file(path)?,
            SecretSource::File(path.to_owned()),
        ))),
        None => Ok(None),
    }
}

/// Loads the secret: `GAVEL_AUTH_SECRET`, else `file`, else `<data_dir>/auth-secret`, which is
/// created (random, mode 0600) when `create` is set and it does not exist yet.
pub fn load_secret(
    file: Option<&Path>,
    data_dir: &Path,
    create: bool,
) -> anyhow::Result<(Secret, SecretSource)> {
    if let Some(found) = explicit_secret(file)? {
        return Ok(found);
    }
    let path = data_dir.join(SECRET_FILE_NAME);
    if path.exists() || !create {
        let secret = read_secret_file(&path).map_err(|e| {
            e.context(format!(
                "no auth secret: set {SECRET_ENV}, pass --auth-secret-file, or start `gavel serve` \
                 with this data dir once to create {}",
                path.display()
            ))
        })?;
        return Ok((secret, SecretSource::File(path)));
    }
    match create_secret_file(&path) {
        Ok(secret) => Ok((secret, SecretSource::Created(path))),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((read_secret_file(&path)?, SecretSource::File(path)))
        }
        Err(e) => Err(anyhow::anyhow!("cannot create {}: {e}", path.display())),
    }
}

fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
    let text = read_bounded(path)
        .map_err(|e| anyhow::anyhow!("cannot read the auth secret {}: {e}", path.display()))?;
    let trimmed = text.trim_ascii();
    let secret =
        Secret::new(trimmed.to_vec()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    warn_if_short(&secret, &path.display().to_string());
    warn_if_readable_by_others(path, "auth secret");
    Ok(secret)
}

/// Reads a whole key or secret file of at most [`KEY_FILE_BYTES_MAX`] bytes.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(KEY_FILE_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {KEY_FILE_BYTES_MAX} bytes"
        )));
    }
    Ok(bytes)
}

fn create_secret_file(path: &Path) -> std::io::Result<Secret> {
    use rand::RngCore;
    let mut bytes = [0u8; SECRET_GENERATED_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(hex.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Secret::new(hex.into_bytes()).map_err(std::io::Error::other)
}

fn warn_if_short(secret: &Secret, source: &str) {
    if secret.0.len() < SECRET_RECOMMENDED_BYTES_MIN {
        tracing::warn!(
            source,
            bytes = secret.0.len(),
            "the auth secret is shorter than {SECRET_RECOMMENDED_BYTES_MIN} bytes"
        );
    }
}

/// Warns when a file that holds a secret (`what`: "auth secret", "private key") can be read by
/// users other than its owner: anyone who reads it can mint tokens.
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    what,
                    "the {what} file is readable by other users; chmod 600 it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        // The env var would win; this test only runs the file paths.
        if std::env::var_os(SECRET_ENV).is_some() {
            return;
        }
        assert!(load_secret(None, dir.path(), false).is_err());
        let (first, source) = load_secret(None, dir.path(), true).unwrap();
        assert!(matches!(source, SecretSource::Created(_)));
        let (second, source) = load_secret(None, dir.path(), true).unwrap();
        assert!(matches!(source, SecretSource::File(_)));
        assert_eq!(first.0, second.0);
        assert_eq!(first.0.len(), 2 * SECRET_GENERATED_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn explicit_secret_never_reads_the_data_dir() {
        if std::env::var_os(SECRET_ENV).is_some() {
            return;
        }
        assert!(explicit_secret(None).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "  a-secret-of-some-length-0123456789 \n").unwrap();
        let (secret, source) = explicit_secret(Some(&path)).unwrap().unwrap();
        assert_eq!(secret.as_bytes(), b"a-secret-of-some-length-0123456789");
        assert_eq!(source, SecretSource::File(path.clone()));
        std::fs::write(&path, " \n").unwrap();
        assert!(explicit_secret(Some(&path)).is_err(), "an empty secret");
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; KEY_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(read_bounded(&path).is_err());
        std::fs::write(&path, vec![b'a'; 10]).unwrap();
        assert_eq!(read_bounded(&path).unwrap().len(), 10);
    }
}
