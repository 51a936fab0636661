//! Where trust in a token is decided: `TokenVerifier` picks the one key a token may be checked
//! with, has `jsonwebtoken` check the signature (and `iss`/`aud` when configured) with exactly
//! that key's algorithm, then checks the times and our own claims (`sub`, `roles`).
//!
//! The key decides the algorithm, never the token: an `HS256` token is checked with the node's
//! secret or refused (when HS256 is not accepted), never with a public key; an `RS256`, `ES256`
//! or `EdDSA` token is checked with the public key its `kid` names (or the only key), and only
//! when that key's own algorithm is the token's. So a token "signed" with a public key as an
//! HMAC secret, or with `alg: none`, has nothing to be checked against. Time is passed in, so
//! this file does no IO and reads no clock; errors say which check failed and never repeat the
//! token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::watch;

use super::keys::{KeyError, KeySet, SelectError, ASYMMETRIC_ALGORITHMS};
use super::{check_sub, Principal, Role, Secret};

/// The longest token looked at, in bytes.
pub const TOKEN_LEN_MAX: usize = 8 * 1024;

/// The claim checks beyond the signature, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimChecks {
    /// When set, `iss` is required and must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` is required and must be (or contain) it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

/// Why a token is refused (always a 401). Never contains the token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is longer than {TOKEN_LEN_MAX} bytes")]
    TooLong,
    #[error(
        "the token header is malformed or names an unknown algorithm \
         (accepted: HS256, RS256, ES256, EdDSA)"
    )]
    Header,
    #[error("this node does not accept {0:?} tokens")]
    AlgorithmRefused(Algorithm),
    #[error("the token's key id (kid) names no key this node trusts")]
    UnknownKid,
    #[error("the token names no key id (kid) and this node trusts several keys")]
    KidRequired,
    #[error("the token's algorithm {token:?} is not the algorithm of its key ({key:?})")]
    AlgorithmMismatch { token: Algorithm, key: Algorithm },
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token's issuer (iss) is not the one this node expects")]
    Issuer,
    #[error("the token's audience (aud) does not name this node's")]
    Audience,
    #[error("the token has no {0} claim, which this node requires")]
    MissingClaim(&'static str),
    #[error("invalid token claims: {0}")]
    Claims(String),
    #[error("the token's key cannot be used by this node")]
    Key,
}

/// The claims we read. Others (`iat`, `jti`, ...) are ignored; `iss` and `aud` are checked by
/// the library when configured.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    roles: Vec<String>,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
}

/// Checks tokens. Cheap to clone; the public keys behind it may be replaced at any time
/// (`reload.rs`), each check uses the set current when it starts.
#[derive(Clone)]
pub struct TokenVerifier(Arc<Trust>);

struct Trust {
    /// The HS256 key, when HS256 tokens are accepted at all.
    hs256: Option<DecodingKey>,
    keys: watch::Receiver<Arc<KeySet>>,
    checks: ClaimChecks,
    verified: Mutex<VerifiedTokens>,
}

/// How many bytes of tokens (and what they name) `VerifiedTokens` keeps before it starts over.
pub const VERIFIED_TOKENS_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Tokens whose signature and claims were checked, so that a client's next request with the
/// same token skips the signature check and the decoding: about a tenth of the HTTP threads'
/// time under a bid load, where every client sends the same token again and again. Only
/// successes are kept, each with the key set it was checked against: once the keys are
/// reloaded, an entry no longer counts (a removed key's tokens are refused at once). The
/// times (`exp`, `nbf`) are checked again on every use. Bounded in bytes; when full it is
/// emptied, which costs each client one full check.
#[derive(Default)]
struct VerifiedTokens {
    entries: HashMap<Box<str>, Verified>,
    bytes: usize,
}

struct Verified {
    principal: Principal,
    exp: i64,
    nbf: Option<i64>,
    /// The key set the token was checked against (held, so its address cannot be reused).
    keys: Arc<KeySet>,
}

impl VerifiedTokens {
    fn get(&self, token: &str, keys: &Arc<KeySet>) -> Option<&Verified> {
        self.entries
            .get(token)
            .filter(|verified| Arc::ptr_eq(&verified.keys, keys))
    }

    fn insert(&mut self, token: &str, verified: Verified) {
        let bytes = token.len() + verified.principal.sub.len() + std::mem::size_of::<Verified>();
        if self.bytes + bytes > VERIFIED_TOKENS_BYTES_MAX {
            self.entries.clear();
            self.bytes = 0;
        }
        if self.entries.insert(token.into(), verified).is_none() {
            self.bytes += bytes;
        }
    }
}

impl TokenVerifier {
    /// Accepts HS256 tokens signed with `hs256` (if any) and asymmetric tokens signed by the
    /// current `keys`.
    pub fn new(
        hs256: Option<&Secret>,
        keys: watch::Receiver<Arc<KeySet>>,
        checks: ClaimChecks,
    ) -> Result<TokenVerifier, KeyError> {
        let hs256 = hs256
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()))
            .transpose()
            .map_err(|_| KeyError::Invalid("the auth secret is empty".into()))?;
        Ok(TokenVerifier(Arc::new(Trust {
            hs256,
            keys,
            checks,
            verified: Mutex::default(),
        })))
    }

    /// Accepts only HS256 tokens signed with `secret`, with no issuer or audience check.
    #[cfg(test)]
    pub fn hs256(secret: &Secret) -> Result<TokenVerifier, KeyError> {
        let (_, keys) = watch::channel(Arc::new(KeySet::default()));
        TokenVerifier::new(Some(secret), keys, ClaimChecks::default())
    }

    /// Checks a token at `now_s` (seconds since the epoch) and returns who it names.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Principal, TokenError> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(TokenError::TooLong);
        }
        let keys = self.0.keys.borrow().clone();
        let leeway_s = self.0.checks.leeway_s;
        if let Some(verified) = self.verified().get(token, &keys) {
            check_times(verified.exp, verified.nbf, now_s, leeway_s)?;
            return Ok(verified.principal.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidToken => TokenError::Malformed,
            _ => TokenError::Header,
        })?;
        let (key, alg) = self.select(header.alg, header.kid.as_deref(), &keys)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation(alg))
            .map_err(|e| library_error(e.kind()))?
            .claims;
        check_times(claims.exp, claims.nbf, now_s, leeway_s)?;
        let (exp, nbf) = (claims.exp, claims.nbf);
        let principal = principal(claims)?;
        let verified = Verified {
            principal: principal.clone(),
            exp,
            nbf,
            keys,
        };
        self.verified().insert(token, verified);
        Ok(principal)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, VerifiedTokens> {
        // A panic while holding the lock leaves at worst a partial map of checked tokens.
        self.0.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key (and so the algorithm) a token with header `alg` and `kid` is checked with.
    fn select<'k>(
        &'k self,
        alg: Algorithm,
        kid: Option<&str>,
        keys: &'k KeySet,
    ) -> Result<(&'k DecodingKey, Algorithm), TokenError> {
        if alg == Algorithm::HS256 {
            return match &self.0.hs256 {
                Some(secret) => Ok((secret, Algorithm::HS256)),
                None => Err(TokenError::AlgorithmRefused(alg)),
            };
        }
        if !ASYMMETRIC_ALGORITHMS.contains(&alg) {
            return Err(TokenError::AlgorithmRefused(alg));
        }
        let key = keys.select(kid).map_err(|e| match e {
            SelectError::Empty => TokenError::AlgorithmRefused(alg),
            SelectError::UnknownKid => TokenError::UnknownKid,
            SelectError::KidRequired => TokenError::KidRequired,
        })?;
        if key.alg != alg {
            return Err(TokenError::AlgorithmMismatch {
                token: alg,
                key: key.alg,
            });
        }
        Ok((&key.key, key.alg))
    }

    /// What the library checks: the signature with `alg` only, and `iss`/`aud` when configured.
    /// Times are ours (`check_times`): the library would read the clock itself.
    fn validation(&self, alg: Algorithm) -> Validation {
        let checks = &self.0.checks;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        if let Some(issuer) = &checks.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        validation.validate_aud = checks.audience.is_some();
        if let Some(audience) = &checks.audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        validation
    }
}

/// Our words for the library's refusals. Its claim errors come after the signature was
/// checked (it verifies before it parses the claims).
fn library_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::MissingClaim("iss"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::MissingClaim("aud"),
        ErrorKind::InvalidClaimFormat(claim) if claim == "iss" => {
            TokenError::Claims("iss must be a string or an array of strings".into())
        }
        ErrorKind::InvalidClaimFormat(claim) if claim == "aud" => {
            TokenError::Claims("aud must be a string or an array of strings".into())
        }
        ErrorKind::Json(_) => TokenError::Claims(
            "sub (a string), roles (an array of role names) and exp (whole seconds) are required"
                .into(),
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Header,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::Key,
        _ => TokenError::Malformed,
    }
}

fn check_times(exp: i64, nbf: Option<i64>, now_s: i64, leeway_s: u64) -> Result<(), TokenError> {
    let leeway_s = i64::try_from(leeway_s).unwrap_or(i64::MAX);
    if now_s >= exp.saturating_add(leeway_s) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now_s.saturating_add(leeway_s) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

fn principal(claims: Claims) -> Result<Principal, TokenError> {
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

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;
    use crate::http::auth::keys::{parse_jwks, parse_public_pem};
    use crate::http::auth::test_keys::{with_changes, KeyKind, TestKey};

    const NOW: i64 = 1_800_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn secret() -> Secret {
        Secret::new(SECRET.to_vec()).unwrap()
    }

    /// Good claims, with `changes` merged in (a `null` removes a claim).
    fn claims(changes: Value) -> Value {
        let good = json!({ "sub": "alice", "roles": ["bidder"], "exp": NOW + 60 });
        with_changes(good, changes)
    }

    fn hs256(key: &[u8], claims: &Value) -> String {
        let key = EncodingKey::from_secret(key).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    /// A token from raw header and claims JSON and a raw signature.
    fn raw(header: &str, claims: &str, signature: &[u8]) -> String {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(claims.as_bytes()),
            b64(signature)
        )
    }

    fn verifier(hs256: Option<&Secret>, keys: KeySet, checks: ClaimChecks) -> TokenVerifier {
        let (_, rx) = watch::channel(Arc::new(keys));
        TokenVerifier::new(hs256, rx, checks).unwrap()
    }

    fn pem_set(key: &TestKey, kid: Option<&str>) -> KeySet {
        parse_public_pem(key.public_pem.as_bytes(), kid.map(str::to_owned)).unwrap()
    }

    fn jwks_set(keys: &[(&TestKey, &str)]) -> KeySet {
        let keys: Vec<Value> = keys.iter().map(|(k, kid)| k.jwk_with_kid(kid)).collect();
        parse_jwks(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn hs256_round_trips_through_the_secret_signer() {
        let token = secret().sign("alice", &[Role::Bidder, Role::Viewer], NOW, NOW + 3600);
        let principal = TokenVerifier::hs256(&secret())
            .unwrap()
            .verify(&token, NOW)
            .unwrap();
        assert_eq!(principal.sub, "alice");
        assert_eq!(principal.roles, vec![Role::Bidder, Role::Viewer]);
    }

    #[test]
    fn times_with_and_without_leeway() {
        let strict = TokenVerifier::hs256(&secret()).unwrap();
        let token = hs256(SECRET, &claims(json!({ "exp": NOW })));
        assert_eq!(strict.verify(&token, NOW), Err(TokenError::Expired));
        assert!(strict.verify(&token, NOW - 1).is_ok());
        let future = hs256(SECRET, &claims(json!({ "nbf": NOW + 10 })));
        assert_eq!(strict.verify(&future, NOW), Err(TokenError::NotYetValid));
        assert!(strict.verify(&future, NOW + 10).is_ok());

        let lenient = ClaimChecks {
            leeway_s: 30,
            ..ClaimChecks::default()
        };
        let lenient = verifier(Some(&secret()), KeySet::default(), lenient);
        assert!(lenient.verify(&token, NOW + 29).is_ok());
        assert_eq!(lenient.verify(&token, NOW + 30), Err(TokenError::Expired));
        assert!(lenient.verify(&future, NOW - 20).is_ok());
        assert_eq!(
            lenient.verify(&future, NOW - 21),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn bad_hs256_signatures() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let other = hs256(b"another secret entirely, 32 bytes", &claims(json!({})));
        assert_eq!(verifier.verify(&other, NOW), Err(TokenError::Signature));
        let token = hs256(SECRET, &claims(json!({})));
        let parts: Vec<&str> = token.split('.').collect();
        let upgraded = URL_SAFE_NO_PAD.encode(claims(json!({ "roles": ["admin"] })).to_string());
        let tampered = format!("{}.{upgraded}.{}", parts[0], parts[2]);
        assert_eq!(verifier.verify(&tampered, NOW), Err(TokenError::Signature));
        let truncated = &token[..token.len() - 2];
        assert!(verifier.verify(truncated, NOW).is_err());
    }

    #[test]
    fn unknown_and_unaccepted_algorithms_are_refused() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let body = claims(json!({})).to_string();
        let none = raw(r#"{"alg":"none"}"#, &body, b"");
        assert_eq!(verifier.verify(&none, NOW), Err(TokenError::Header));
        let none = format!("{}.", &none[..none.len() - 1]);
        assert!(verifier.verify(&none, NOW).is_err());
        let mut header = Header::new(Algorithm::HS512);
        header.typ = None;
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let hs512 = jsonwebtoken::encode(&header, &claims(json!({})), &key).unwrap();
        assert_eq!(
            verifier.verify(&hs512, NOW),
            Err(TokenError::AlgorithmRefused(Algorithm::HS512))
        );
        let no_alg = raw(r#"{"typ":"JWT"}"#, &body, b"sig");
        assert_eq!(verifier.verify(&no_alg, NOW), Err(TokenError::Header));
        // An asymmetric token where no public key is configured.
        let key = TestKey::generate(KeyKind::EdDsa);
        assert_eq!(
            verifier.verify(&key.sign(None, &claims(json!({}))), NOW),
            Err(TokenError::AlgorithmRefused(Algorithm::EdDSA))
        );
    }

    #[test]
    fn our_claims_are_checked_after_the_signature() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        for sub in ["", "al ice", "alice/bob", "ü", &"a".repeat(65)] {
            let token = hs256(SECRET, &claims(json!({ "sub": sub })));
            assert!(
                matches!(verifier.verify(&token, NOW), Err(TokenError::Claims(_))),
                "{sub:?}"
            );
        }
        let widest = hs256(SECRET, &claims(json!({ "sub": "a.B_9-".repeat(10) })));
        assert!(verifier.verify(&widest, NOW).is_ok());
        let root = hs256(SECRET, &claims(json!({ "roles": ["viewer", "root"] })));
        assert!(
            matches!(verifier.verify(&root, NOW), Err(TokenError::Claims(m)) if m.contains("root"))
        );
        for bad in [
            json!({ "exp": null }),
            json!({ "roles": null }),
            json!({ "sub": null }),
            json!({ "exp": "tomorrow" }),
            json!({ "exp": 1.5e10 }),
            json!({ "roles": "admin" }),
            json!({ "nbf": "now" }),
        ] {
            let token = hs256(SECRET, &claims(bad.clone()));
            assert!(
                matches!(verifier.verify(&token, NOW), Err(TokenError::Claims(_))),
                "{bad}"
            );
        }
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let array = jsonwebtoken::encode(&Header::default(), &json!(["alice"]), &key).unwrap();
        assert!(matches!(
            verifier.verify(&array, NOW),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn garbage_is_refused_without_a_panic() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let signature = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let not_json = format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode("not json at all")
        );
        for token in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "...",
            "!!.??.**",
            "eyJhbGciOiJIUzI1NiJ9.e30",
            &not_json,
            &"a".repeat(TOKEN_LEN_MAX + 1),
        ] {
            assert!(verifier.verify(token, NOW).is_err(), "{token:?}");
        }
        assert_eq!(
            verifier.verify(&"a".repeat(TOKEN_LEN_MAX + 1), NOW),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn each_asymmetric_key_verifies_its_own_algorithm() {
        for kind in [KeyKind::Es256, KeyKind::EdDsa] {
            let key = TestKey::generate(kind);
            let from_pem = verifier(None, pem_set(&key, None), ClaimChecks::default());
            let token = key.sign(None, &claims(json!({})));
            assert_eq!(from_pem.verify(&token, NOW).unwrap().sub, "alice");
            let from_jwks = verifier(None, jwks_set(&[(&key, "k1")]), ClaimChecks::default());
            let named = key.sign(Some("k1"), &claims(json!({})));
            assert_eq!(from_jwks.verify(&named, NOW).unwrap().sub, "alice");
            // The only key is used for a token without kid, too.
            assert!(from_jwks.verify(&token, NOW).is_ok());
            let forged = TestKey::generate(kind).sign(Some("k1"), &claims(json!({})));
            assert_eq!(from_jwks.verify(&forged, NOW), Err(TokenError::Signature));
        }
    }

    #[test]
    fn keys_are_selected_by_kid_and_their_algorithm_is_enforced() {
        let ec = TestKey::generate(KeyKind::Es256);
        let ed = TestKey::generate(KeyKind::EdDsa);
        let both = verifier(
            None,
            jwks_set(&[(&ec, "ec"), (&ed, "ed")]),
            ClaimChecks::default(),
        );
        let good = claims(json!({}));
        assert!(both.verify(&ec.sign(Some("ec"), &good), NOW).is_ok());
        assert!(both.verify(&ed.sign(Some("ed"), &good), NOW).is_ok());
        assert_eq!(
            both.verify(&ed.sign(Some("nope"), &good), NOW),
            Err(TokenError::UnknownKid)
        );
        assert_eq!(
            both.verify(&ed.sign(None, &good), NOW),
            Err(TokenError::KidRequired)
        );
        assert_eq!(
            both.verify(&ed.sign(Some("ec"), &good), NOW),
            Err(TokenError::AlgorithmMismatch {
                token: Algorithm::EdDSA,
                key: Algorithm::ES256
            })
        );
        // A PEM key without a configured id serves tokens without kid only.
        let lone = verifier(None, pem_set(&ed, None), ClaimChecks::default());
        assert_eq!(
            lone.verify(&ed.sign(Some("ed"), &good), NOW),
            Err(TokenError::UnknownKid)
        );
        let named = verifier(None, pem_set(&ed, Some("ed")), ClaimChecks::default());
        assert!(named.verify(&ed.sign(Some("ed"), &good), NOW).is_ok());
        assert!(named.verify(&ed.sign(None, &good), NOW).is_ok());
    }

    #[test]
    fn keys_named_in_the_header_are_never_trusted() {
        let trusted = TestKey::generate(KeyKind::EdDsa);
        let attacker = TestKey::generate(KeyKind::EdDsa);
        let verifier = verifier(None, jwks_set(&[(&trusted, "t")]), ClaimChecks::default());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("t".into());
        header.jku = Some("https://attacker.example/jwks.json".into());
        header.x5u = Some("https://attacker.example/cert.pem".into());
        header.jwk = serde_json::from_value(attacker.jwk.clone()).ok();
        assert!(header.jwk.is_some());
        let key = EncodingKey::from_ed_pem(attacker.private_pem.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &claims(json!({})), &key).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(TokenError::Signature));
    }

    /// The public key's own bytes as an HMAC secret: the classic algorithm confusion.
    fn confusion_tokens(key: &TestKey, kid: Option<&str>) -> Vec<String> {
        let body: String = key
            .public_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(body).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        let claims = claims(json!({ "roles": ["admin"] }));
        [
            key.public_pem.as_bytes(),
            key.public_pem.trim().as_bytes(),
            &der,
        ]
        .into_iter()
        .map(|secret| {
            let secret = EncodingKey::from_secret(secret).unwrap();
            jsonwebtoken::encode(&header, &claims, &secret).unwrap()
        })
        .collect()
    }

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        let rsa = TestKey::generate(KeyKind::Rs256);
        let ec = TestKey::generate(KeyKind::Es256);
        // RS256 works, so the refusals below are about the algorithm only.
        let only_rsa = verifier(None, pem_set(&rsa, None), ClaimChecks::default());
        assert!(only_rsa
            .verify(&rsa.sign(None, &claims(json!({}))), NOW)
            .is_ok());
        let jwks = verifier(None, jwks_set(&[(&ec, "ec")]), ClaimChecks::default());
        for (verifier, key, kid) in [(&only_rsa, &rsa, None), (&jwks, &ec, Some("ec"))] {
            for token in confusion_tokens(key, kid) {
                assert_eq!(
                    verifier.verify(&token, NOW),
                    Err(TokenError::AlgorithmRefused(Algorithm::HS256))
                );
            }
        }
        // With HS256 also accepted, such tokens meet the real secret and fail its signature.
        let mixed = verifier(Some(&secret()), pem_set(&rsa, None), ClaimChecks::default());
        for token in confusion_tokens(&rsa, None) {
            assert_eq!(mixed.verify(&token, NOW), Err(TokenError::Signature));
        }
        assert!(mixed
            .verify(&hs256(SECRET, &claims(json!({}))), NOW)
            .is_ok());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let checks = ClaimChecks {
            issuer: Some("https://id.example".into()),
            audience: Some("gavel".into()),
            leeway_s: 0,
        };
        let strict = verifier(Some(&secret()), KeySet::default(), checks);
        let good = json!({ "iss": "https://id.example", "aud": "gavel" });
        assert!(strict.verify(&hs256(SECRET, &claims(good)), NOW).is_ok());
        let listed = json!({ "iss": "https://id.example", "aud": ["other", "gavel"] });
        assert!(strict.verify(&hs256(SECRET, &claims(listed)), NOW).is_ok());
        for (changes, expected) in [
            (json!({ "aud": "gavel" }), TokenError::MissingClaim("iss")),
            (
                json!({ "iss": "https://id.example" }),
                TokenError::MissingClaim("aud"),
            ),
            (
                json!({ "iss": "https://evil.example", "aud": "gavel" }),
                TokenError::Issuer,
            ),
            (
                json!({ "iss": "https://id.example", "aud": "other" }),
                TokenError::Audience,
            ),
        ] {
            let token = hs256(SECRET, &claims(changes.clone()));
            assert_eq!(strict.verify(&token, NOW), Err(expected), "{changes}");
        }
        // Unconfigured, both are ignored.
        let open = TokenVerifier::hs256(&secret()).unwrap();
        let any = json!({ "iss": "whoever", "aud": ["x", "y"] });
        assert!(open.verify(&hs256(SECRET, &claims(any)), NOW).is_ok());
    }

    fn remembered(verifier: &TokenVerifier) -> usize {
        verifier.verified().entries.len()
    }

    #[test]
    fn a_checked_token_is_remembered_and_its_times_still_count() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let token = hs256(SECRET, &claims(json!({ "exp": NOW + 60 })));
        assert_eq!(verifier.verify(&token, NOW).unwrap().sub, "alice");
        assert_eq!(remembered(&verifier), 1);
        let again = verifier.verify(&token, NOW + 59).unwrap();
        assert_eq!(
            (again.sub.as_str(), again.roles.as_slice()),
            ("alice", &[Role::Bidder][..])
        );
        assert_eq!(verifier.verify(&token, NOW + 60), Err(TokenError::Expired));
    }

    #[test]
    fn refused_tokens_are_not_remembered() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let forged = hs256(b"another secret entirely, 32 bytes", &claims(json!({})));
        let expired = hs256(SECRET, &claims(json!({ "exp": NOW })));
        let unknown_role = hs256(SECRET, &claims(json!({ "roles": ["root"] })));
        for _ in 0..2 {
            assert_eq!(verifier.verify(&forged, NOW), Err(TokenError::Signature));
            assert_eq!(verifier.verify(&expired, NOW), Err(TokenError::Expired));
            assert!(matches!(
                verifier.verify(&unknown_role, NOW),
                Err(TokenError::Claims(_))
            ));
        }
        assert_eq!(remembered(&verifier), 0);
    }

    #[test]
    fn remembered_tokens_stay_within_their_bound() {
        let verifier = TokenVerifier::hs256(&secret()).unwrap();
        let mut most = 0;
        for n in 0..20_000 {
            let token = hs256(SECRET, &claims(json!({ "sub": format!("bidder-{n}") })));
            assert!(verifier.verify(&token, NOW).is_ok());
            let verified = verifier.verified();
            assert!(
                verified.bytes <= VERIFIED_TOKENS_BYTES_MAX,
                "{}",
                verified.bytes
            );
            most = most.max(verified.entries.len());
        }
        assert!(most < 20_000, "the bound emptied the memory at least once");
        assert!(most > 1_000, "it remembered many before that: {most}");
    }

    #[test]
    fn replaced_keys_apply_to_the_next_token() {
        let old = TestKey::generate(KeyKind::EdDsa);
        let new = TestKey::generate(KeyKind::EdDsa);
        let (tx, rx) = watch::channel(Arc::new(jwks_set(&[(&old, "old")])));
        let verifier = TokenVerifier::new(None, rx, ClaimChecks::default()).unwrap();
        let by_old = old.sign(Some("old"), &claims(json!({})));
        let by_new = new.sign(Some("new"), &claims(json!({})));
        assert!(verifier.verify(&by_old, NOW).is_ok());
        assert_eq!(verifier.verify(&by_new, NOW), Err(TokenError::UnknownKid));
        tx.send_replace(Arc::new(jwks_set(&[(&old, "old"), (&new, "new")])));
        assert!(verifier.verify(&by_new, NOW).is_ok());
        tx.send_replace(Arc::new(jwks_set(&[(&new, "new")])));
        assert_eq!(verifier.verify(&by_old, NOW), Err(TokenError::UnknownKid));
        assert!(verifier.verify(&by_new, NOW).is_ok());
    }
}
