//! Authentication and roles: HS256 JWTs (signed and checked by hand with `hmac`/`sha2`), the
//! node's HMAC secret, and the `Principal` extractor handlers use to learn who is calling.
//!
//! Only HS256 is accepted (`none` and every other `alg` are refused before anything else is
//! looked at), the signature is checked in constant time before the claims are parsed, and `exp`
//! is required. This module knows nothing of auctions: what a role may do is asked through
//! `Principal::require`.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::http::problem::ApiError;

/// The environment variable that holds the HMAC secret.
pub const SECRET_ENV: &str = "GAVEL_AUTH_SECRET";
/// The secret's file name inside the data dir when neither the env nor a file is given.
pub const SECRET_FILE_NAME: &str = "auth-secret";
/// Random bytes in a generated secret (written as hex).
const SECRET_GENERATED_BYTES: usize = 32;
/// Secrets shorter than this get a warning: HS256 wants at least 256 bits of key.
const SECRET_RECOMMENDED_BYTES_MIN: usize = 32;
/// The longest token we look at, in bytes.
const TOKEN_LEN_MAX: usize = 8 * 1024;
/// The longest `sub`, in characters.
pub const SUB_LEN_MAX: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// What a token holder may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    Viewer,
    Bidder,
    Creator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Bidder => "bidder",
            Role::Creator => "creator",
            Role::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Bidder, Role::Creator, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// Something a caller may want to do; each maps to the roles that allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read auctions, bid history and streams.
    Read,
    Bid,
    /// Create auctions and control them (the state machine checks ownership).
    Manage,
    /// Cluster administration (`/cluster/*`).
    Administer,
}

impl Permission {
    fn allowed_by(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin)
                | (Permission::Read, _)
                | (Permission::Bid, Role::Bidder)
                | (Permission::Manage, Role::Creator)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "a viewer, bidder, creator or admin role",
            Permission::Bid => "the bidder or admin role",
            Permission::Manage => "the creator or admin role",
            Permission::Administer => "the admin role",
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// `Ok` when one of the caller's roles grants `permission`, else a 403.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.roles.iter().any(|role| permission.allowed_by(*role)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this requires {}",
                permission.describe()
            )))
        }
    }
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    Algorithm(String),
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("invalid token claims: {0}")]
    Claims(String),
}

/// The HMAC key tokens are signed and checked with.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    roles: Vec<String>,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

impl Secret {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Result<Secret, String> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err("the auth secret is empty".into());
        }
        Ok(Secret(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length (longer ones are hashed): this cannot fail.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("invariant: HMAC-SHA256 accepts keys of every length"),
        }
    }

    /// Signs a token for `sub` with `roles`, valid until `exp_s` (seconds since the epoch).
    pub fn sign(&self, sub: &str, roles: &[Role], iat_s: i64, exp_s: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
            exp: exp_s,
            nbf: None,
            iat: Some(iat_s),
        };
        let claims = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks a token at `now_s` (seconds since the epoch) and returns who it names.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Principal, TokenError> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_text), Some(claims_text), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_part(header_text).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(TokenError::Claims(
                "critical header extensions are not supported".into(),
            ));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..header_text.len() + 1 + claims_text.len()];
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = decode_part(claims_text)?;
        check_claims(claims, now_s)
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Claims(e.to_string()))
}

fn check_claims(claims: Claims, now_s: i64) -> Result<Principal, TokenError> {
    if now_s >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now_s < nbf) {
        return Err(TokenError::NotYetValid);
    }
    check_sub(&claims.sub).map_err(TokenError::Claims)?;
    let mut roles = Vec::with_capacity(claims.roles.len());
    for name in &claims.roles {
        let role = Role::parse(name)
            .ok_or_else(|| TokenError::Claims(format!("unknown role {name:?}")))?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(Principal {
        sub: claims.sub,
        roles,
    })
}

/// Checks that `sub` is 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn check_sub(sub: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if sub.is_empty() || sub.len() > SUB_LEN_MAX || !sub.chars().all(allowed) {
        return Err(format!(
            "sub must be 1-{SUB_LEN_MAX} characters of [A-Za-z0-9_.-]"
        ));
    }
    Ok(())
}

/// Where the secret was found, for the startup message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File(PathBuf),
    /// Generated in this start, at this path.
    Created(PathBuf),
}

/// Loads the secret: `GAVEL_AUTH_SECRET`, else `file`, else `<data_dir>/auth-secret`, which is
/// created (random, mode 0600) when `create` is set and it does not exist yet.
pub fn load_secret(
    file: Option<&Path>,
    data_dir: &Path,
    create: bool,
) -> anyhow::Result<(Secret, SecretSource)> {
    if let Some(value) = std::env::var_os(SECRET_ENV) {
        let bytes = value.into_encoded_bytes();
        let secret = Secret::new(bytes).map_err(|e| anyhow::anyhow!("{SECRET_ENV}: {e}"))?;
        warn_if_short(&secret, SECRET_ENV);
        return Ok((secret, SecretSource::Env));
    }
    if let Some(path) = file {
        return Ok((read_secret_file(path)?, SecretSource::File(path.to_owned())));
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
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the auth secret {}: {e}", path.display()))?;
    let trimmed = text.trim_ascii();
    let secret =
        Secret::new(trimmed.to_vec()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    warn_if_short(&secret, &path.display().to_string());
    warn_if_readable_by_others(path);
    Ok(secret)
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

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the auth secret file is readable by other users; chmod 600 it");
            }
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Parses a token lifetime: `3600`, `3600s`, `30m`, `1h`, `2d`. Returns seconds.
pub fn parse_ttl(text: &str) -> Result<i64, String> {
    /// The longest lifetime a minted token may have, in seconds (one year).
    const TTL_S_MAX: i64 = 366 * 24 * 3600;
    let bad = || format!("invalid TTL {text:?}: expected e.g. 3600s, 30m, 1h or 2d");
    let (number, unit_s) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        Some((at, 'd')) => (&text[..at], 86_400),
        Some(_) => (text, 1),
        None => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let seconds = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_s))
        .ok_or_else(bad)?;
    if seconds == 0 || seconds > TTL_S_MAX {
        return Err(format!(
            "TTL must be between 1s and {}d",
            TTL_S_MAX / 86_400
        ));
    }
    Ok(seconds)
}

impl<S> FromRequestParts<S> for Principal
where
    Secret: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let secret = Secret::from_ref(state);
        secret
            .verify(token, now_s())
            .map_err(|e| ApiError::Unauthorized {
                detail: e.to_string(),
                invalid: true,
            })
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized {
        detail: "missing credentials: send Authorization: Bearer <token>".into(),
        invalid: false,
    };
    let malformed = || ApiError::Unauthorized {
        detail: "the Authorization header must be \"Bearer <token>\"".into(),
        invalid: true,
    };
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or_else(missing)?;
    if values.next().is_some() {
        return Err(malformed());
    }
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with arbitrary header and claims, correctly signed.
    fn forge(header: &str, claims: &str, key: &Secret) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let mut mac = key.mac();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn valid_token_round_trips() {
        let token = secret().sign("alice", &[Role::Bidder, Role::Viewer], NOW, NOW + 3600);
        let principal = secret().verify(&token, NOW).unwrap();
        assert_eq!(principal.sub, "alice");
        assert_eq!(principal.roles, vec![Role::Bidder, Role::Viewer]);
    }

    #[test]
    fn expired_token() {
        let token = secret().sign("alice", &[Role::Bidder], NOW - 10, NOW);
        assert_eq!(secret().verify(&token, NOW), Err(TokenError::Expired));
        assert!(secret().verify(&token, NOW - 1).is_ok());
    }

    #[test]
    fn bad_signature() {
        let other = Secret::new(b"another secret entirely, 32 bytes".to_vec()).unwrap();
        let token = other.sign("alice", &[Role::Admin], NOW, NOW + 60);
        assert_eq!(secret().verify(&token, NOW), Err(TokenError::Signature));
        // Tampered claims under the original signature.
        let token = secret().sign("alice", &[Role::Viewer], NOW, NOW + 60);
        let parts: Vec<&str> = token.split('.').collect();
        let claims =
            b64(format!(r#"{{"sub":"alice","roles":["admin"],"exp":{}}}"#, NOW + 60).as_bytes());
        let tampered = format!("{}.{}.{}", parts[0], claims, parts[2]);
        assert_eq!(secret().verify(&tampered, NOW), Err(TokenError::Signature));
        // Truncated signature.
        let truncated = &token[..token.len() - 2];
        assert!(secret().verify(truncated, NOW).is_err());
    }

    #[test]
    fn alg_none_and_others_are_refused() {
        let claims = format!(r#"{{"sub":"alice","roles":["admin"],"exp":{}}}"#, NOW + 60);
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims.as_bytes()));
        assert_eq!(
            secret().verify(&none, NOW),
            Err(TokenError::Algorithm("none".into()))
        );
        let hs512 = forge(r#"{"alg":"HS512"}"#, &claims, &secret());
        assert_eq!(
            secret().verify(&hs512, NOW),
            Err(TokenError::Algorithm("HS512".into()))
        );
        let missing = forge(r#"{"typ":"JWT"}"#, &claims, &secret());
        assert!(secret().verify(&missing, NOW).is_err());
    }

    #[test]
    fn bad_sub() {
        for sub in ["", "al ice", "alice/bob", "ü", &"a".repeat(65)] {
            let claims = format!(r#"{{"sub":"{sub}","roles":["viewer"],"exp":{}}}"#, NOW + 60);
            let token = forge(HS256, &claims, &secret());
            assert!(
                matches!(secret().verify(&token, NOW), Err(TokenError::Claims(_))),
                "{sub:?}"
            );
        }
        let ok = forge(
            HS256,
            &format!(
                r#"{{"sub":"{}","roles":[],"exp":{}}}"#,
                "a.B_9-".repeat(10),
                NOW + 60
            ),
            &secret(),
        );
        assert!(secret().verify(&ok, NOW).is_ok());
    }

    #[test]
    fn unknown_role() {
        let claims = format!(
            r#"{{"sub":"alice","roles":["viewer","root"],"exp":{}}}"#,
            NOW + 60
        );
        let token = forge(HS256, &claims, &secret());
        assert!(
            matches!(secret().verify(&token, NOW), Err(TokenError::Claims(m)) if m.contains("root"))
        );
    }

    #[test]
    fn missing_or_malformed_claims() {
        for claims in [
            r#"{"sub":"alice","roles":["viewer"]}"#.to_owned(),
            r#"{"sub":"alice","exp":99999999999}"#.to_owned(),
            r#"{"roles":["viewer"],"exp":99999999999}"#.to_owned(),
            r#"{"sub":"alice","roles":["viewer"],"exp":"tomorrow"}"#.to_owned(),
            r#"{"sub":"alice","roles":["viewer"],"exp":1.5e10}"#.to_owned(),
            r#"["alice"]"#.to_owned(),
        ] {
            let token = forge(HS256, &claims, &secret());
            assert!(
                matches!(secret().verify(&token, NOW), Err(TokenError::Claims(_))),
                "{claims}"
            );
        }
    }

    #[test]
    fn not_yet_valid() {
        let claims = format!(
            r#"{{"sub":"a","roles":[],"exp":{},"nbf":{}}}"#,
            NOW + 60,
            NOW + 30
        );
        let token = forge(HS256, &claims, &secret());
        assert_eq!(secret().verify(&token, NOW), Err(TokenError::NotYetValid));
    }

    #[test]
    fn garbage_tokens() {
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "...",
            "!!.??.**",
            &"a".repeat(TOKEN_LEN_MAX + 1),
        ] {
            assert!(secret().verify(token, NOW).is_err(), "{token:?}");
        }
    }

    #[test]
    fn roles_grant_permissions() {
        let who = |roles: &[Role]| Principal {
            sub: "u".into(),
            roles: roles.to_vec(),
        };
        assert!(who(&[Role::Viewer]).require(Permission::Read).is_ok());
        assert!(who(&[Role::Viewer]).require(Permission::Bid).is_err());
        assert!(who(&[Role::Bidder]).require(Permission::Bid).is_ok());
        assert!(who(&[Role::Bidder]).require(Permission::Manage).is_err());
        assert!(who(&[Role::Creator]).require(Permission::Manage).is_ok());
        assert!(who(&[Role::Creator]).require(Permission::Bid).is_err());
        for permission in [Permission::Read, Permission::Bid, Permission::Manage] {
            assert!(who(&[Role::Admin]).require(permission).is_ok());
        }
        assert!(who(&[]).require(Permission::Read).is_err());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("3600s"), Ok(3600));
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        for bad in [
            "",
            "h",
            "1x",
            "-1h",
            "0s",
            "1.5h",
            "999999999999999999999d",
            "400d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_header_parsing() {
        let parts = |value: Option<&str>| {
            let mut builder = axum::http::Request::builder();
            if let Some(value) = value {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(matches!(
            bearer_token(&parts(None)),
            Err(ApiError::Unauthorized { invalid: false, .. })
        ));
        assert_eq!(bearer_token(&parts(Some("Bearer abc"))).unwrap(), "abc");
        assert_eq!(bearer_token(&parts(Some("bearer  abc "))).unwrap(), "abc");
        assert!(bearer_token(&parts(Some("Basic abc"))).is_err());
        assert!(bearer_token(&parts(Some("Bearer"))).is_err());
    }

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
}
