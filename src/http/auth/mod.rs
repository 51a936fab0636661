//! Authentication and roles: who may call (the `Principal` extractor handlers use to learn who
//! is calling, from `Authorization: Bearer`), what each role may do, and the token machinery
//! below it.
//!
//! - `verify.rs`: where trust in a token is decided (`TokenVerifier`: key selection, algorithm
//!   policy, signature, issuer, audience, times, our claims).
//! - `keys.rs`: public keys from a PEM file or a JWKS, each with the one algorithm it verifies.
//! - `reload.rs`: re-reading the key file on change or SIGHUP, keeping the last good keys.
//! - `secret.rs`: the HS256 secret and the warnings about exposed secret and key files.
//! - `mint.rs`: signing tokens (`gavel token`, load tools, tests).
//! - `setup.rs`: which tokens a node accepts, decided at start from the flags.
//!
//! This module knows nothing of auctions: what a role may do is asked through
//! `Principal::require`.

mod keys;
mod mint;
mod reload;
mod secret;
mod setup;
mod verify;

/// Keys generated for tests, shared with the integration tests' harness.
#[cfg(test)]
#[path = "../../../tests/integration/common/keys.rs"]
mod test_keys;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use crate::http::problem::ApiError;

pub use mint::{MintClaims, Minter};
pub use reload::{KeyFile, KeyFormat};
pub use secret::{load_secret, Secret, SecretSource};
pub use setup::{start, AuthConfig};
pub use verify::{ClaimChecks, TokenError, TokenVerifier};

/// The longest `sub`, in characters.
pub const SUB_LEN_MAX: usize = 64;

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

    pub(crate) fn parse(text: &str) -> Option<Role> {
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
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        authenticate(&TokenVerifier::from_ref(state), token)
    }
}

/// Checks `token` now: the caller, or the 401 that says which check failed. Refusals are
/// logged at debug level only (anyone can send a bad token) and without the token.
pub fn authenticate(verifier: &TokenVerifier, token: &str) -> Result<Principal, ApiError> {
    verifier.verify(token, now_s()).map_err(|e| {
        tracing::debug!(reason = %e, "refused a token");
        ApiError::from(e)
    })
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
}
