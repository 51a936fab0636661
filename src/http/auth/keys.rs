//! The public keys asymmetric tokens are checked with: parsing one PEM public key or a JWKS
//! document into a `KeySet`, each key with the one algorithm it may verify, and choosing the
//! key of a token by its `kid`.
//!
//! A key's algorithm comes from the key itself (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA),
//! never from a token: that is what makes algorithm confusion impossible (`verify.rs` then
//! insists that the token's `alg` equals it). Every key is checked usable when it is loaded,
//! so a bad key is a clear error at start or reload, not a 401 for every token later.
//! Pure: bytes in, keys out; reading files and reloading belong to `reload.rs`. No error
//! message contains key material.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The asymmetric algorithms this node verifies, one per key type.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// The most keys a JWKS document may hold.
pub const JWKS_KEYS_MAX: usize = 64;
/// RSA keys shorter than this are refused: below 2048 bits they can be factored.
const RSA_MODULUS_BITS_MIN: usize = 2048;
/// The longest RSA modulus the verifier accepts (the `rsa` crate's own bound).
const RSA_MODULUS_BITS_MAX: usize = 4096;
/// The largest RSA public exponent the verifier accepts (the `rsa` crate's own bound).
const RSA_EXPONENT_MAX: u64 = (1 << 33) - 1;
/// An Ed25519 public key, in bytes.
const ED25519_PUBLIC_KEY_BYTES: usize = 32;

/// One trusted public key.
#[derive(Clone)]
pub struct PublicKey {
    /// The `kid` tokens name it by; `None` only for a key that is alone in its set.
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The public keys trusted now. Empty when the node has none configured.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<PublicKey>,
    /// Keys of a JWKS that are not for us (encryption keys, other algorithms), described for a
    /// warning.
    skipped: Vec<String>,
}

/// Why a key file cannot be used. Says where and what, never the key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM file: expected exactly one -----BEGIN ...----- block")]
    NotPem,
    #[error("a {0} PEM block is not a public key: give a PUBLIC KEY (or RSA PUBLIC KEY) block")]
    NotPublicPem(String),
    #[error("a {0} PEM block is not a private key: give a PRIVATE KEY (PKCS#8) block")]
    NotPrivatePem(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("not a JWKS document: expected an object with a \"keys\" array")]
    NotJwks,
    #[error("a JWKS may hold at most {JWKS_KEYS_MAX} keys")]
    TooManyKeys,
    #[error("JWKS key {index}: {why}")]
    Jwk { index: usize, why: String },
    #[error("no usable signing key (RS256, ES256 or EdDSA) in the file")]
    NoUsableKeys,
    #[error("the key id {0:?} appears twice")]
    DuplicateKid(String),
    #[error("with several keys, every key needs a kid")]
    KidMissing,
}

/// Why no key can check a token.
#[derive(Debug, PartialEq, Eq)]
pub enum SelectError {
    /// No public key is configured.
    Empty,
    /// The token names a `kid` no key has.
    UnknownKid,
    /// The token names no `kid` and there are several keys.
    KidRequired,
}

impl KeySet {
    /// A set of `keys`: at least one, ids unique, and every key named when there are several.
    pub fn new(keys: Vec<PublicKey>, skipped: Vec<String>) -> Result<KeySet, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::NoUsableKeys);
        }
        for (i, key) in keys.iter().enumerate() {
            match &key.kid {
                None if keys.len() > 1 => return Err(KeyError::KidMissing),
                Some(kid) if keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid)) => {
                    return Err(KeyError::DuplicateKid(kid.clone()))
                }
                _ => {}
            }
        }
        Ok(KeySet { keys, skipped })
    }

    /// `(kid, algorithm)` of every key, for logs: neither is secret.
    pub fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{}:{:?}", k.kid.as_deref().unwrap_or("(no kid)"), k.alg))
            .collect()
    }

    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The key a token with header `kid` is checked with: the key of that id, or the only
    /// key when the token names none.
    pub fn select(&self, kid: Option<&str>) -> Result<&PublicKey, SelectError> {
        match (kid, self.keys.as_slice()) {
            (_, []) => Err(SelectError::Empty),
            (Some(kid), keys) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(SelectError::UnknownKid),
            (None, [only]) => Ok(only),
            (None, _) => Err(SelectError::KidRequired),
        }
    }
}

/// The label of the one PEM block in `bytes` ("PUBLIC KEY", "PRIVATE KEY", ...).
pub fn pem_label(bytes: &[u8]) -> Result<&str, KeyError> {
    const BEGIN: &str = "-----BEGIN ";
    let text = std::str::from_utf8(bytes).map_err(|_| KeyError::NotPem)?;
    let mut blocks = text.match_indices(BEGIN);
    let (Some((at, _)), None) = (blocks.next(), blocks.next()) else {
        return Err(KeyError::NotPem);
    };
    let rest = &text[at + BEGIN.len()..];
    let end = rest.find("-----").ok_or(KeyError::NotPem)?;
    Ok(&rest[..end])
}

/// Parses a PEM public key into a set of one key, its algorithm inferred from the key type.
pub fn parse_public_pem(bytes: &[u8], kid: Option<String>) -> Result<KeySet, KeyError> {
    let label = pem_label(bytes)?;
    if !matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY") {
        return Err(KeyError::NotPublicPem(label.to_owned()));
    }
    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        let der = key
            .try_get_as_bytes()
            .map_err(|_| KeyError::Invalid("unreadable RSA key".into()))?;
        let provider = provider()?;
        let (n, e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|_| KeyError::Invalid("unreadable RSA key".into()))?;
        (Algorithm::RS256, rsa_key(&n, &e)?)
    } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        check_p256_point(key.try_get_as_bytes().unwrap_or_default())?;
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        check_ed25519_len(key.try_get_as_bytes().unwrap_or_default())?;
        (Algorithm::EdDSA, key)
    } else {
        return Err(KeyError::Unsupported(
            "not an RSA, EC P-256 or Ed25519 public key".into(),
        ));
    };
    check_usable(alg, &key)?;
    KeySet::new(vec![PublicKey { kid, alg, key }], Vec::new())
}

/// Parses a JWKS document (RFC 7517): the signing keys it holds for RS256, ES256 or EdDSA.
/// Keys for other uses or algorithms are skipped (and listed); a key of ours that is malformed,
/// or any key holding private parameters, makes the whole document an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, KeyError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| KeyError::Json {
        line: e.line(),
        column: e.column(),
    })?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeyError::NotJwks)?;
    if entries.len() > JWKS_KEYS_MAX {
        return Err(KeyError::TooManyKeys);
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let bad = |why: &str| KeyError::Jwk {
            index,
            why: why.to_owned(),
        };
        if entry.get("d").is_some() || entry.get("k").is_some() {
            return Err(bad("holds private or symmetric key material; a JWKS file for gavel holds public keys only"));
        }
        let jwk: Jwk = serde_json::from_value(entry.clone())
            .map_err(|_| bad("not a JSON Web Key (kty and its parameters)"))?;
        match jwk_key(&jwk).map_err(|why| bad(&why))? {
            Ok((alg, key)) => keys.push(PublicKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }),
            Err(why) => skipped.push(format!(
                "key {index} (kid {:?}): {why}",
                jwk.common.key_id.as_deref().unwrap_or("")
            )),
        }
    }
    KeySet::new(keys, skipped)
}

type JwkOutcome = Result<(Algorithm, DecodingKey), String>;

/// The algorithm and key of one JWK: `Ok(Ok(..))` ours, `Ok(Err(why))` not for us (skipped),
/// `Err(why)` one of ours that is malformed.
fn jwk_key(jwk: &Jwk) -> Result<JwkOutcome, String> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Ok(Err("not a signing key (use is not \"sig\")".into()));
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Ok(Err(
                "a symmetric key: HS256 uses the node's secret only".into()
            ))
        }
        AlgorithmParameters::Other(p) => return other_key(p.fields.get("kty")),
        _ => return Ok(Err("an unsupported curve".into())),
    };
    if let Some(named) = jwk.common.key_algorithm {
        if named != KeyAlgorithm::from(alg) {
            return Ok(Err(format!("its alg {named} is not {alg:?}")));
        }
    }
    let key = jwk_decoding_key(&jwk.algorithm)?;
    check_usable(alg, &key).map_err(|e| e.to_string())?;
    Ok(Ok((alg, key)))
}

/// The verification key of a JWK of a kind `jwk_key` accepted.
fn jwk_decoding_key(params: &AlgorithmParameters) -> Result<DecodingKey, String> {
    match params {
        AlgorithmParameters::RSA(p) => {
            let n = decode_b64(&p.n, "n")?;
            let e = decode_b64(&p.e, "e")?;
            rsa_key(&n, &e).map_err(|e| e.to_string())
        }
        AlgorithmParameters::EllipticCurve(p) => DecodingKey::from_ec_components(&p.x, &p.y)
            .map_err(|_| "x or y is not base64url".to_owned()),
        AlgorithmParameters::OctetKeyPair(p) => {
            let x = decode_b64(&p.x, "x")?;
            check_ed25519_len(&x).map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_ed_der(&x))
        }
        _ => Err("an unsupported key type".into()),
    }
}

/// A JWK the library could not type: malformed when its `kty` is one we use, else not ours.
fn other_key(kty: Option<&Value>) -> Result<JwkOutcome, String> {
    match kty.and_then(Value::as_str) {
        Some(kty @ ("RSA" | "EC" | "OKP")) => Err(format!(
            "a malformed {kty} key (missing or mistyped parameters)"
        )),
        Some(_) => Ok(Err("an unsupported key type".into())),
        None => Err("no kty".into()),
    }
}

fn decode_b64(text: &str, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("{name} is not base64url"))
}

/// An RSA verification key from its modulus and exponent, within the bounds the verifier
/// accepts and above the size that is still safe.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, KeyError> {
    let n = strip_leading_zeros(n);
    let bits = match n.first() {
        Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !(RSA_MODULUS_BITS_MIN..=RSA_MODULUS_BITS_MAX).contains(&bits) {
        return Err(KeyError::Unsupported(format!(
            "an RSA key of {bits} bits: between {RSA_MODULUS_BITS_MIN} and {RSA_MODULUS_BITS_MAX} are accepted"
        )));
    }
    let e = strip_leading_zeros(e);
    let exponent = (e.len() <= 8)
        .then(|| e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        .filter(|x| *x >= 3 && x % 2 == 1 && *x <= RSA_EXPONENT_MAX);
    if exponent.is_none() {
        return Err(KeyError::Invalid(
            "the RSA public exponent is not usable".into(),
        ));
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A SEC1 point of P-256 is 65 bytes uncompressed or 33 compressed; P-384 and others are
/// refused here with a clear message (only ES256 is accepted).
fn check_p256_point(point: &[u8]) -> Result<(), KeyError> {
    match (point.len(), point.first()) {
        (65, Some(4)) | (33, Some(2 | 3)) => Ok(()),
        _ => Err(KeyError::Unsupported(
            "an EC key that is not on P-256: only ES256 (P-256) is accepted".into(),
        )),
    }
}

/// The library slices the first 32 bytes of an Ed25519 key and would panic on fewer: check
/// first.
fn check_ed25519_len(key: &[u8]) -> Result<(), KeyError> {
    if key.len() == ED25519_PUBLIC_KEY_BYTES {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "an Ed25519 public key is {ED25519_PUBLIC_KEY_BYTES} bytes"
        )))
    }
}

/// The crypto backend jsonwebtoken was built with (rust_crypto).
pub fn provider() -> Result<&'static CryptoProvider, KeyError> {
    CryptoProvider::try_get_default()
        .ok_or_else(|| KeyError::Unsupported("no JWT crypto provider is built in".into()))
}

/// Builds the verifier the library would build for a token, which parses the key: a key that
/// passes here is one the library can verify with.
fn check_usable(alg: Algorithm, key: &DecodingKey) -> Result<(), KeyError> {
    (provider()?.verifier_factory)(&alg, key)
        .map(drop)
        .map_err(|_| KeyError::Invalid(format!("not a usable {alg:?} public key")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::auth::test_keys::{KeyKind, TestKey};

    fn jwks(keys: Vec<Value>) -> Vec<u8> {
        json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn a_pem_key_brings_its_own_algorithm() {
        for (kind, alg) in [
            (KeyKind::Rs256, Algorithm::RS256),
            (KeyKind::Es256, Algorithm::ES256),
            (KeyKind::EdDsa, Algorithm::EdDSA),
        ] {
            let key = TestKey::generate(kind);
            let set = parse_public_pem(key.public_pem.as_bytes(), None).unwrap();
            assert_eq!(set.describe(), vec![format!("(no kid):{alg:?}")]);
            let named = parse_public_pem(key.public_pem.as_bytes(), Some("k".into())).unwrap();
            assert_eq!(named.select(Some("k")).unwrap().alg, alg);
            // The same key as a JWK gives the same algorithm.
            let set = parse_jwks(&jwks(vec![key.jwk.clone()])).unwrap();
            assert_eq!(set.select(None).unwrap().alg, alg);
        }
    }

    #[test]
    fn bad_pem_files_are_clear_errors() {
        let key = TestKey::generate(KeyKind::EdDsa);
        let private = parse_public_pem(key.private_pem.as_bytes(), None).unwrap_err();
        assert_eq!(private, KeyError::NotPublicPem("PRIVATE KEY".into()));
        for garbage in [
            "".to_owned(),
            "not a key".to_owned(),
            format!("{}{}", key.public_pem, key.public_pem),
            "-----BEGIN PUBLIC KEY".to_owned(),
        ] {
            assert_eq!(
                parse_public_pem(garbage.as_bytes(), None).unwrap_err(),
                KeyError::NotPem,
                "{garbage:?}"
            );
        }
        let corrupt = key.public_pem.replace('A', "B").replace('M', "*");
        let error = parse_public_pem(corrupt.as_bytes(), None).unwrap_err();
        assert!(
            matches!(error, KeyError::Unsupported(_) | KeyError::Invalid(_)),
            "{error:?}"
        );
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            parse_public_pem(cert.as_bytes(), None).unwrap_err(),
            KeyError::NotPublicPem("CERTIFICATE".into())
        );
    }

    #[test]
    fn jwks_keys_not_for_us_are_skipped() {
        let ec = TestKey::generate(KeyKind::Es256);
        let ed = TestKey::generate(KeyKind::EdDsa);
        let mut encryption = ec.jwk_with_kid("enc");
        encryption["use"] = json!("enc");
        encryption["alg"] = json!("ECDH-ES");
        let mut pss = ed.jwk_with_kid("pss");
        pss["alg"] = json!("PS256");
        let p384 = json!({ "kty": "EC", "crv": "P-384", "kid": "p384",
            "x": "AAAA", "y": "AAAA" });
        let exotic = json!({ "kty": "XYZ", "kid": "xyz" });
        let set = parse_jwks(&jwks(vec![
            ec.jwk_with_kid("ec"),
            encryption,
            pss,
            p384,
            exotic,
            ed.jwk_with_kid("ed"),
        ]))
        .unwrap();
        assert_eq!(set.describe(), vec!["ec:ES256", "ed:EdDSA"]);
        assert_eq!(set.skipped().len(), 4, "{:?}", set.skipped());
    }

    #[test]
    fn malformed_jwks_are_errors_that_show_no_key() {
        let ed = TestKey::generate(KeyKind::EdDsa);
        let x = ed.jwk["x"].as_str().unwrap().to_owned();
        let with = |changes: Value| {
            let mut jwk = ed.jwk_with_kid("a");
            for (name, value) in changes.as_object().unwrap() {
                jwk[name] = value.clone();
            }
            jwk
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "not valid JSON"),
            (
                format!("{{\"keys\": [\"{x}\"").into_bytes(),
                "not valid JSON",
            ),
            (b"[]".to_vec(), "not a JWKS"),
            (b"{\"keys\": {}}".to_vec(), "not a JWKS"),
            (jwks(vec![]), "no usable"),
            (jwks(vec![with(json!({ "x": "AAAA" }))]), "32 bytes"),
            (jwks(vec![with(json!({ "x": "!!" }))]), "base64url"),
            (jwks(vec![with(json!({ "d": x }))]), "public keys only"),
            (
                jwks(vec![json!({ "kty": "oct", "k": x })]),
                "public keys only",
            ),
            (
                jwks(vec![json!({ "kty": "EC", "crv": "P-256", "x": x })]),
                "malformed EC",
            ),
            (
                jwks(vec![json!({ "kty": "RSA", "n": x, "e": "AQAB" })]),
                "bits",
            ),
            (jwks(vec![with(json!({})), with(json!({}))]), "twice"),
            (
                jwks(vec![with(json!({})), ed.jwk.clone()]),
                "every key needs a kid",
            ),
            (jwks(vec![json!({ "kid": "x" })]), "no kty"),
            (jwks(vec![with(json!({})); JWKS_KEYS_MAX + 1]), "at most"),
        ];
        for (bytes, expected) in cases {
            let error = parse_jwks(&bytes).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{}: {error}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(
                !error.contains(&x),
                "the message shows key material: {error}"
            );
        }
    }

    #[test]
    fn selection() {
        let ed = TestKey::generate(KeyKind::EdDsa);
        let one = parse_jwks(&jwks(vec![ed.jwk_with_kid("a")])).unwrap();
        assert!(one.select(Some("a")).is_ok());
        assert!(one.select(None).is_ok());
        assert_eq!(one.select(Some("b")).unwrap_err(), SelectError::UnknownKid);
        let other = TestKey::generate(KeyKind::EdDsa);
        let two = parse_jwks(&jwks(vec![ed.jwk_with_kid("a"), other.jwk_with_kid("b")])).unwrap();
        assert_eq!(two.select(None).unwrap_err(), SelectError::KidRequired);
        assert_eq!(
            KeySet::default().select(Some("a")).unwrap_err(),
            SelectError::Empty
        );
    }
}
