//! Minting tokens: `Minter` signs our claims with the HS256 secret or with a private key (PEM:
//! RSA, EC P-256 or Ed25519, the algorithm inferred from the key), for `gavel token`, the load
//! tools and tests.
//!
//! The node never mints; this is the issuer's side. A private key file gets the same
//! readable-by-others warning as the secret, and no error message contains key material.

use std::fmt;
use std::path::Path;

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::keys::{pem_label, KeyError};
use super::secret::{read_bounded, warn_if_readable_by_others};
use super::{Role, Secret};

/// RSA private keys shorter than this are refused (as the verifier refuses their public half).
const RSA_MODULUS_BYTES_MIN: usize = 2048 / 8;

/// What a minted token says.
#[derive(Clone, Debug)]
pub struct MintClaims<'a> {
    pub sub: &'a str,
    pub roles: &'a [Role],
    pub iat_s: i64,
    pub exp_s: i64,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    roles: Vec<&'static str>,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A signing key and the header that goes with it.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    header: Header,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("alg", &self.header.alg)
            .field("kid", &self.header.kid)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// Signs HS256 with the node's secret.
    pub fn hs256(secret: &Secret) -> Result<Minter, KeyError> {
        let key = EncodingKey::from_secret(secret.as_bytes())
            .map_err(|_| KeyError::Invalid("the auth secret is empty".into()))?;
        Ok(Minter {
            key,
            header: Header::new(Algorithm::HS256),
        })
    }

    /// Signs with the private key in a PEM file, naming it `kid` in every token's header.
    pub fn from_private_key_file(path: &Path, kid: Option<String>) -> anyhow::Result<Minter> {
        let bytes = read_bounded(path)
            .map_err(|e| anyhow::anyhow!("cannot read the private key {}: {e}", path.display()))?;
        warn_if_readable_by_others(path, "private key");
        Minter::from_private_pem(&bytes, kid)
            .map_err(|e| anyhow::anyhow!("the private key {}: {e}", path.display()))
    }

    /// Signs with a PKCS#8 (or PKCS#1 RSA) private key in PEM.
    pub fn from_private_pem(pem: &[u8], kid: Option<String>) -> Result<Minter, KeyError> {
        match pem_label(pem)? {
            "PRIVATE KEY" | "RSA PRIVATE KEY" => {}
            "EC PRIVATE KEY" => {
                return Err(KeyError::Unsupported(
                    "an EC PRIVATE KEY (SEC1) block: convert it to PKCS#8 with \
                     `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`"
                        .into(),
                ))
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(KeyError::Unsupported(
                    "an encrypted private key: give an unencrypted PKCS#8 key".into(),
                ))
            }
            other => return Err(KeyError::NotPrivatePem(other.to_owned())),
        }
        let (alg, key) = private_key(pem)?;
        let mut header = Header::new(alg);
        header.kid = kid;
        Ok(Minter { key, header })
    }

    /// The signed token.
    pub fn mint(&self, claims: &MintClaims<'_>) -> Result<String, KeyError> {
        let claims = Claims {
            sub: claims.sub,
            roles: claims.roles.iter().map(|role| role.as_str()).collect(),
            iat: claims.iat_s,
            exp: claims.exp_s,
            iss: claims.issuer,
            aud: claims.audience,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|_| KeyError::Invalid("signing failed".into()))
    }
}

/// The key and algorithm of a private key, tried as RSA, then EC P-256, then Ed25519; each
/// candidate counts only if a signer can be built from it (which parses the key).
fn private_key(pem: &[u8]) -> Result<(Algorithm, EncodingKey), KeyError> {
    let provider = CryptoProvider::try_get_default()
        .ok_or_else(|| KeyError::Unsupported("no JWT crypto provider is built in".into()))?;
    let usable = |alg: Algorithm, key: &EncodingKey| (provider.signer_factory)(&alg, key).is_ok();
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        let (n, _) = (provider.key_utils.rsa_pub_components_from_private_key)(key.as_bytes())
            .map_err(|_| KeyError::Invalid("unreadable RSA key".into()))?;
        if n.len() < RSA_MODULUS_BYTES_MIN {
            return Err(KeyError::Unsupported(
                "an RSA key shorter than 2048 bits".into(),
            ));
        }
        if usable(Algorithm::RS256, &key) {
            return Ok((Algorithm::RS256, key));
        }
    }
    if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        if usable(Algorithm::ES256, &key) {
            return Ok((Algorithm::ES256, key));
        }
        return Err(KeyError::Unsupported(
            "an EC key that is not on P-256: only ES256 (P-256) is supported".into(),
        ));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        if usable(Algorithm::EdDSA, &key) {
            return Ok((Algorithm::EdDSA, key));
        }
    }
    Err(KeyError::Unsupported(
        "not an RSA, EC P-256 or Ed25519 private key".into(),
    ))
}

impl Secret {
    /// Signs an HS256 token for `sub` with `roles`, valid until `exp_s` (seconds since the epoch).
    pub fn sign(&self, sub: &str, roles: &[Role], iat_s: i64, exp_s: i64) -> String {
        let claims = MintClaims {
            sub,
            roles,
            iat_s,
            exp_s,
            issuer: None,
            audience: None,
        };
        match Minter::hs256(self).and_then(|minter| minter.mint(&claims)) {
            Ok(token) => token,
            Err(e) => unreachable!(
                "invariant: HS256 signing with a non-empty secret and plain claims cannot fail: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;
    use crate::http::auth::keys::parse_public_pem;
    use crate::http::auth::test_keys::{KeyKind, TestKey};
    use crate::http::auth::{ClaimChecks, TokenVerifier};

    fn claims(now_s: i64) -> MintClaims<'static> {
        MintClaims {
            sub: "alice",
            roles: &[Role::Creator],
            iat_s: now_s,
            exp_s: now_s + 60,
            issuer: Some("issuer"),
            audience: Some("gavel"),
        }
    }

    #[test]
    fn each_private_key_mints_what_its_public_key_accepts() {
        let checks = ClaimChecks {
            issuer: Some("issuer".into()),
            audience: Some("gavel".into()),
            leeway_s: 0,
        };
        for kind in [KeyKind::Rs256, KeyKind::Es256, KeyKind::EdDsa] {
            let key = TestKey::generate(kind);
            let minter =
                Minter::from_private_pem(key.private_pem.as_bytes(), Some("k1".into())).unwrap();
            let token = minter.mint(&claims(1_000)).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(format!("{:?}", header.alg), kind.alg());
            assert_eq!(header.kid.as_deref(), Some("k1"));
            let keys = parse_public_pem(key.public_pem.as_bytes(), Some("k1".into())).unwrap();
            let (_, rx) = watch::channel(Arc::new(keys));
            let verifier = TokenVerifier::new(None, rx, checks.clone()).unwrap();
            let principal = verifier.verify(&token, 1_000).unwrap();
            assert_eq!(
                (principal.sub.as_str(), principal.roles),
                ("alice", vec![Role::Creator])
            );
        }
    }

    #[test]
    fn keys_that_cannot_sign_are_clear_errors() {
        let key = TestKey::generate(KeyKind::EdDsa);
        assert_eq!(
            Minter::from_private_pem(key.public_pem.as_bytes(), None).unwrap_err(),
            KeyError::NotPrivatePem("PUBLIC KEY".into())
        );
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n";
        let error = Minter::from_private_pem(sec1.as_bytes(), None).unwrap_err();
        assert!(
            error.to_string().contains("openssl pkcs8 -topk8"),
            "{error}"
        );
        assert_eq!(
            Minter::from_private_pem(b"garbage", None).unwrap_err(),
            KeyError::NotPem
        );
        let corrupt = key.private_pem.replace('M', "*");
        assert!(Minter::from_private_pem(corrupt.as_bytes(), None).is_err());
    }

    #[test]
    fn hs256_minting_is_what_the_secret_verifies() {
        let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let token = secret.sign("bob", &[Role::Bidder], 1_000, 1_060);
        let verifier = TokenVerifier::hs256(&secret).unwrap();
        assert_eq!(verifier.verify(&token, 1_000).unwrap().sub, "bob");
    }
}
