//! Signing keys made fresh for a test: RSA 2048, EC P-256 and Ed25519, each as a PKCS#8 private
//! PEM (what `gavel token --private-key-file` reads), an SPKI public PEM (what
//! `--jwt-public-key-file` reads) and a public JWK (for a `--jwks-file`); and tokens signed
//! with them over any claims.
//!
//! Shared by the integration tests (`tests/integration/common`) and the unit tests of `src/http/auth/`
//! (included there by path), so it uses nothing but the key and JWT crates.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use serde_json::{json, Value};

/// The RSA modulus of test keys, in bits: the smallest the node accepts (generation is slow).
const RSA_TEST_BITS: usize = 2048;

/// The kinds of key, by the algorithm they sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rs256,
    Es256,
    EdDsa,
}

impl KeyKind {
    /// The `alg` of tokens signed with this kind.
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Rs256 => "RS256",
            KeyKind::Es256 => "ES256",
            KeyKind::EdDsa => "EdDSA",
        }
    }
}

/// One generated key pair.
#[derive(Clone, Debug)]
pub struct TestKey {
    pub kind: KeyKind,
    pub private_pem: String,
    pub public_pem: String,
    /// The public key as a JWK, without `kid` (see [`TestKey::jwk_with_kid`]).
    pub jwk: Value,
}

impl TestKey {
    pub fn generate(kind: KeyKind) -> TestKey {
        match kind {
            KeyKind::Rs256 => rsa_key(),
            KeyKind::Es256 => p256_key(),
            KeyKind::EdDsa => ed25519_key(),
        }
    }

    /// A token over `claims` signed with the private key, naming `kid` in its header.
    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let pem = self.private_pem.as_bytes();
        let (alg, key) = match self.kind {
            KeyKind::Rs256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem)),
            KeyKind::Es256 => (Algorithm::ES256, EncodingKey::from_ec_pem(pem)),
            KeyKind::EdDsa => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem)),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key.expect("a private key")).expect("sign")
    }

    /// The public JWK naming itself `kid`, as an identity provider publishes it.
    pub fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(self.kind.alg());
        jwk
    }
}

/// `claims` with `changes` merged in; a `null` change removes the claim.
pub fn with_changes(mut claims: Value, changes: Value) -> Value {
    let (Some(object), Value::Object(changes)) = (claims.as_object_mut(), changes) else {
        panic!("claims and changes must be JSON objects");
    };
    for (name, value) in changes {
        match value {
            Value::Null => object.remove(&name),
            value => object.insert(name, value),
        };
    }
    claims
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed25519_key() -> TestKey {
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    TestKey {
        kind: KeyKind::EdDsa,
        private_pem: key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encode an Ed25519 key")
            .to_string(),
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("encode an Ed25519 public key"),
        jwk: json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes()) }),
    }
}

fn p256_key() -> TestKey {
    use p256::elliptic_curve::sec1::ToSec1Point as _;
    use p256::elliptic_curve::Generate as _;
    let key = p256::SecretKey::generate();
    let public = key.public_key();
    let point = public.to_sec1_point(false);
    let xy = &point.as_bytes()[1..];
    TestKey {
        kind: KeyKind::Es256,
        private_pem: key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encode a P-256 key")
            .to_string(),
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("encode a P-256 public key"),
        jwk: json!({ "kty": "EC", "crv": "P-256", "x": b64(&xy[..32]), "y": b64(&xy[32..]) }),
    }
}

fn rsa_key() -> TestKey {
    use rsa::traits::PublicKeyParts as _;
    let mut rng = p256::elliptic_curve::common::getrandom::SysRng;
    let key = rsa::PrivateKey::new(&mut rng, RSA_TEST_BITS).expect("generate an RSA key");
    let public = key.to_public_key();
    TestKey {
        kind: KeyKind::Rs256,
        private_pem: key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encode an RSA key")
            .to_string(),
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("encode an RSA public key"),
        jwk: json!({
            "kty": "RSA",
            "n": b64(&public.n_bytes()),
            "e": b64(&public.e_bytes()),
        }),
    }
}
