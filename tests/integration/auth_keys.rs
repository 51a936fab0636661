//! Asymmetric tokens against a real `gavel serve`: RS256, ES256 and EdDSA keys (generated here)
//! from a JWKS or a PEM file are accepted next to HS256; every check a token can fail (unknown
//! kid, issuer, audience, expiry, nbf, signature, the key's algorithm) is a 401 problem that
//! says which; a node with public keys only refuses HS256 outright, so a token "signed" with
//! the public key as an HMAC secret, or unsigned, gets nowhere; JWKS rotation takes effect
//! without a restart; bad key files stop the start; `gavel token --private-key-file` mints
//! tokens the node accepts; and no token ever reaches the server log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::keys::{with_changes, KeyKind, TestKey};
use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "gavel-tests";
/// How long a key file change may take to apply: the node polls every second.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `gavel` command that must fail may take.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Claims valid for an hour with this test's issuer and audience; `changes` are merged in
/// (`null` removes a claim).
fn claims(sub: &str, roles: &[&str], changes: Value) -> Value {
    let good = json!({
        "sub": sub, "roles": roles, "exp": now_s() + 3600, "iat": now_s(),
        "iss": ISSUER, "aud": AUDIENCE,
    });
    with_changes(good, changes)
}

/// An HS256 token whose HMAC key is `secret`, naming `kid`.
fn mint_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret).expect("a non-empty secret");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// The DER bytes of a PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

/// Writes `bytes` to `path` in one rename (as a key rotation should), mode 0600.
fn write_file(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).expect("write a key file");
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::rename(&temp, path).expect("rename a key file");
}

fn write_jwks(path: &Path, keys: &[(&TestKey, &str)]) {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(key, kid)| key.jwk_with_kid(kid))
        .collect();
    write_file(path, json!({ "keys": keys }).to_string().as_bytes());
}

/// Writes `dir/name` and returns its path as an argument.
fn key_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    write_file(&path, bytes);
    path_arg(&path)
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

/// A 401 problem whose detail contains `why` and not the token.
#[track_caller]
fn assert_refused(resp: Resp, token: &str, why: &str) {
    let resp = resp.expect_problem(401);
    let detail = resp.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains(why),
        "expected a 401 saying {why:?}, got {detail:?}"
    );
    assert!(
        token.len() < 8 || !detail.contains(token),
        "the detail repeats the token"
    );
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("invalid_token"), "{challenge:?}");
}

/// The server log holds none of `secrets` (tokens, key bodies).
#[track_caller]
fn assert_log_free_of(server: &Server, secrets: &[String]) {
    let log = std::fs::read_to_string(server.log_path()).expect("read the server log");
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the server log contains a secret"
        );
    }
}

/// `gavel token` with `extra` flags, checked to succeed; returns the token.
fn cli_mint(sub: &str, role: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["token", "--sub", sub, "--role", role, "--ttl", "1h"];
    args.extend_from_slice(extra);
    let output = run_gavel(&args, SECRET);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "gavel {args:?}: {stderr}");
    let token = String::from_utf8(output.stdout).expect("UTF-8");
    (token.trim().to_owned(), stderr)
}

/// A node started with these extra flags, with or without the HS256 secret in its env.
async fn start_node(args: &[&str], secret_env: bool) -> Server {
    let options = ServerOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        secret_env,
        ..ServerOptions::default()
    };
    Server::start_with(None, options).await
}

/// Each key creates an auction and bids on auction `id` (as `{kid}-user`); returns the tokens.
async fn create_and_bid_with_each(
    server: &Server,
    keys: &[(&TestKey, &str)],
    id: &str,
) -> Vec<String> {
    let mut used = Vec::new();
    for (n, (key, kid)) in keys.iter().enumerate() {
        let sub = format!("{kid}-user");
        let creator = key.sign(Some(kid), &claims(&sub, &["creator"], json!({})));
        let created = server
            .create_auction(&creator, &active_auction_body(&format!("post-{kid}")))
            .await;
        assert_eq!(created["creatorId"], sub.as_str());
        let bidder = key.sign(Some(kid), &claims(&sub, &["bidder"], json!({})));
        let amount = json!(format!("{}", 10 + n));
        let reply = server.bid_ok(&bidder, id, &fresh_key(), amount).await;
        assert_eq!(
            (&reply["status"], &reply["currentWinnerId"]),
            (&json!("accepted"), &json!(sub))
        );
        used.extend([creator, bidder]);
    }
    used
}

/// A token failing each check of a node with the JWKS {rsa, ec, ed}, issuer and audience, and
/// the reason its 401 must give.
fn failing_each_check(rsa: &TestKey, ec: &TestKey, ed: &TestKey) -> Vec<(String, &'static str)> {
    let stranger = TestKey::generate(KeyKind::Es256);
    let admin = |changes: Value| claims("mallory", &["viewer", "admin"], changes);
    vec![
        (ed.sign(Some("nope"), &admin(json!({}))), "kid"),
        (ed.sign(None, &admin(json!({}))), "no key id"),
        (
            ed.sign(Some("ed"), &admin(json!({ "iss": "https://evil.test" }))),
            "issuer",
        ),
        (
            ed.sign(Some("ed"), &admin(json!({ "iss": null }))),
            "no iss claim",
        ),
        (
            rsa.sign(Some("rsa"), &admin(json!({ "aud": ["other"] }))),
            "audience",
        ),
        (
            ec.sign(Some("ec"), &admin(json!({ "exp": now_s() - 60 }))),
            "expired",
        ),
        (
            ec.sign(Some("ec"), &admin(json!({ "nbf": now_s() + 600 }))),
            "not valid yet",
        ),
        (stranger.sign(Some("ec"), &admin(json!({}))), "signature"),
        (ed.sign(Some("ec"), &admin(json!({}))), "algorithm EdDSA"),
        // HS256 is accepted here (the secret was given), so this meets the secret and fails.
        (
            mint_hs256(ec.public_pem.as_bytes(), Some("ec"), &admin(json!({}))),
            "signature",
        ),
    ]
}

#[tokio::test]
async fn every_algorithm_is_accepted_and_every_check_refuses_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec, ed) = (
        TestKey::generate(KeyKind::Rs256),
        TestKey::generate(KeyKind::Es256),
        TestKey::generate(KeyKind::EdDsa),
    );
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[(&rsa, "rsa"), (&ec, "ec"), (&ed, "ed")]);
    let jwks = path_arg(&jwks);
    let args = [
        "--jwks-file",
        &jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ];
    let server = start_node(&args, true).await;

    // HS256 (an explicit secret is given) and each asymmetric algorithm create and bid.
    let hs = sign_jwt(
        SECRET.as_bytes(),
        &claims("hs-creator", &["creator"], json!({})),
    );
    let auction = server
        .create_auction(&hs, &active_auction_body("post-keys"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    let keys = [(&rsa, "rsa"), (&ec, "ec"), (&ed, "ed")];
    let mut secrets = create_and_bid_with_each(&server, &keys, &id).await;
    assert_eq!(server.history(&hs, &id, "all").await.len(), 3);

    // A stream takes the token from the query, however its key is spelled.
    let viewer = ec.sign(Some("ec"), &claims("vera", &["viewer"], json!({})));
    for key in ["access_token", "access%5Ftoken"] {
        let url = server.url(&format!("/auctions/{id}/stream?{key}={viewer}"));
        let resp = server
            .client()
            .get(url)
            .send()
            .await
            .expect("open a stream");
        assert_eq!(resp.status(), 200, "{key}");
    }

    for (token, why) in failing_each_check(&rsa, &ec, &ed) {
        assert_refused(server.get("/auctions", &token).await, &token, why);
        secrets.push(token);
    }
    secrets.extend([hs, viewer, rsa.private_pem, ec.private_pem, ed.private_pem]);
    assert_log_free_of(&server, &secrets);
}

/// Tokens a node with only `rsa`'s public key (no id) must refuse, with their reasons: HS256
/// with the real secret, HS256 over the public key (PEM and DER), unsigned, and a kid.
fn confusion_tokens(rsa: &TestKey) -> Vec<(String, &'static str)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let admin = json!({ "sub": "mallory", "roles": ["admin"], "exp": now_s() + 3600 });
    let der = pem_der(&rsa.public_pem);
    let unsigned = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(admin.to_string())
    );
    let refused = "does not accept HS256";
    vec![
        (sign_jwt(SECRET.as_bytes(), &admin), refused),
        (mint_hs256(rsa.public_pem.as_bytes(), None, &admin), refused),
        (
            mint_hs256(rsa.public_pem.trim().as_bytes(), None, &admin),
            refused,
        ),
        (mint_hs256(&der, None, &admin), refused),
        (mint_hs256(&der, Some("rsa"), &admin), refused),
        (unsigned, "header"),
        // Without --jwt-public-key-id, a token that names a key names an unknown one.
        (rsa.sign(Some("rsa"), &admin), "kid"),
    ]
}

/// Malformed tokens and the reason their 401 must give; the claims ones carry a good RS256
/// signature, so they get past the signature check.
fn malformed_tokens(rsa: &TestKey) -> Vec<(String, &'static str)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes()).unwrap();
    let signed = |header: &str, claims: &[u8]| {
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
        format!("{message}.{signature}")
    };
    let good = format!(r#"{{"sub":"a","roles":[],"exp":{}}}"#, now_s() + 60);
    vec![
        ("a.b".to_owned(), "well-formed"),
        ("a.b.c.d".to_owned(), "header"),
        ("é.é.é".to_owned(), "header"),
        ("x".repeat(9000), "longer than"),
        (signed(r#"{"alg":"RS256"}"#, b"not json"), "claims"),
        (signed(r#"{"alg":"RS256"}"#, b"[1,2]"), "claims"),
        (signed(r#"{"alg":"RS256""#, good.as_bytes()), "header"),
        (
            signed(r#"{"alg":"RS256","crit":["exp"]}"#, good.as_bytes()),
            "well-formed",
        ),
    ]
}

#[tokio::test]
async fn a_node_with_public_keys_only_refuses_hs256_and_algorithm_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::generate(KeyKind::Rs256);
    let public = dir.path().join("rsa.pub.pem");
    let private = dir.path().join("rsa.pem");
    write_file(&public, rsa.public_pem.as_bytes());
    write_file(&private, rsa.private_pem.as_bytes());
    let server = start_node(&["--jwt-public-key-file", &path_arg(&public)], false).await;
    assert!(
        !server.data_dir().join("auth-secret").exists(),
        "with public keys, no HS256 secret is generated"
    );

    // `gavel token --private-key-file` mints RS256 tokens the node accepts.
    let (creator, _) = cli_mint(
        "carol",
        "creator",
        &["--private-key-file", &path_arg(&private)],
    );
    assert_eq!(jwt_claims(&creator)["sub"], "carol");
    let auction = server
        .create_auction(&creator, &active_auction_body("post-rsa"))
        .await;
    let id = auction["id"].as_str().unwrap();

    let mut secrets = vec![creator.clone(), rsa.private_pem.clone()];
    for (token, why) in confusion_tokens(&rsa) {
        assert_refused(server.get("/cluster", &token).await, &token, why);
        let stream = format!("/auctions/{id}/stream?access_token={token}");
        assert_refused(server.get_anonymous(&stream).await, &token, why);
        secrets.push(token);
    }
    // Malformed tokens are 401s, never a 500 or a dropped connection.
    for (token, why) in malformed_tokens(&rsa) {
        assert_refused(server.get("/auctions", &token).await, &token, why);
    }
    server.get("/auctions", &creator).await.expect_json(200);
    assert_log_free_of(&server, &secrets);
}

/// Polls `/auctions` with `token` until it answers `status`.
async fn await_status(server: &Server, token: &str, status: u16, what: &str) {
    poll_until(what, ROTATION_TIMEOUT, || async {
        (server.get("/auctions", token).await.status == status).then_some(())
    })
    .await;
}

fn hangup(server: &Server) {
    let pid = libc::pid_t::try_from(server.pid()).expect("pid fits pid_t");
    // SAFETY: a plain syscall on our own child's pid, which we have not reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn jwks_rotation_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        TestKey::generate(KeyKind::EdDsa),
        TestKey::generate(KeyKind::Es256),
    );
    let jwks: PathBuf = dir.path().join("jwks.json");
    write_jwks(&jwks, &[(&a, "a")]);
    let server = start_node(&["--jwks-file", &path_arg(&jwks)], false).await;
    let plain = |sub: &str| json!({ "sub": sub, "roles": ["viewer"], "exp": now_s() + 3600 });
    let by_a = a.sign(Some("a"), &plain("alice"));
    let by_b = b.sign(Some("b"), &plain("bob"));
    server.get("/auctions", &by_a).await.expect_json(200);
    assert_refused(server.get("/auctions", &by_b).await, &by_b, "kid");

    // A new key works as soon as the file names it; the old one keeps working.
    write_jwks(&jwks, &[(&a, "a"), (&b, "b")]);
    await_status(&server, &by_b, 200, "the added key to be accepted").await;
    server.get("/auctions", &by_a).await.expect_json(200);

    // A removed key stops working.
    write_jwks(&jwks, &[(&b, "b")]);
    await_status(&server, &by_a, 401, "the removed key to be refused").await;
    assert_refused(server.get("/auctions", &by_a).await, &by_a, "kid");
    server.get("/auctions", &by_b).await.expect_json(200);

    // A broken file (reloaded at once with SIGHUP) keeps the last good keys.
    write_file(&jwks, br#"{"keys": [{"kty": "OKP", "crv": "Ed25519""#);
    hangup(&server);
    poll_until(
        "the reload failure to be logged",
        ROTATION_TIMEOUT,
        || async {
            let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
            log.contains("keeping the last good keys").then_some(())
        },
    )
    .await;
    server.get("/auctions", &by_b).await.expect_json(200);
    assert_refused(server.get("/auctions", &by_a).await, &by_a, "kid");

    // And the next good file applies.
    write_jwks(&jwks, &[(&a, "a")]);
    hangup(&server);
    await_status(&server, &by_a, 200, "the restored key to be accepted").await;
    assert_refused(server.get("/auctions", &by_b).await, &by_b, "kid");
    assert_log_free_of(&server, &[by_a, by_b, a.private_pem, b.private_pem]);
}

#[test]
fn bad_key_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ed = TestKey::generate(KeyKind::EdDsa);
    let file = |name: &str, bytes: &[u8]| key_file(dir.path(), name, bytes);
    let private = file("ed.pem", ed.private_pem.as_bytes());
    let public = file("ed.pub.pem", ed.public_pem.as_bytes());
    let bad_json = file("bad.json", br#"{"keys": [ {"kty": "OKP""#);
    let empty = file("empty.json", br#"{"keys": []}"#);
    let short = file(
        "short.json",
        br#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#,
    );
    let missing = path_arg(&dir.path().join("missing.pem"));
    let data_dir = path_arg(&dir.path().join("data"));
    let (listen, peer) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--data-dir",
            &data_dir,
            "--listen",
            &listen,
            "--peer-listen",
            &peer,
        ];
        args.extend_from_slice(extra);
        run_gavel_bounded(&args, EXIT_TIMEOUT)
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--jwks-file", &bad_json], "not valid JSON"),
        (vec!["--jwks-file", &empty], "no usable signing key"),
        (vec!["--jwks-file", &short], "32 bytes"),
        (vec!["--jwt-public-key-file", &private], "not a public key"),
        (vec!["--jwt-public-key-file", &missing], "cannot read"),
        (
            vec!["--jwt-public-key-file", &public, "--jwks-file", &empty],
            "cannot be used with",
        ),
        (vec!["--jwt-public-key-id", "k"], "--jwt-public-key-file"),
        (vec!["--jwt-leeway-s", "100000"], "100000"),
    ];
    for (extra, why) in cases {
        let output = serve(&extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "serve {extra:?} should fail");
        assert!(stderr.contains(why), "serve {extra:?}: {stderr}");
        assert!(
            !stderr.contains(&ed.private_pem[40..80]),
            "key material in {stderr}"
        );
    }
}

#[test]
fn the_cli_signs_with_private_keys_and_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let ed = TestKey::generate(KeyKind::EdDsa);
    let file = |name: &str, bytes: &[u8]| key_file(dir.path(), name, bytes);
    let public = file("ed.pub.pem", ed.public_pem.as_bytes());
    let jwks = file("jwks.json", br#"{"keys": []}"#);
    let missing = path_arg(&dir.path().join("missing.pem"));
    // The CLI refuses keys it cannot sign with, and warns about exposed ones.
    for (key, why) in [
        (&public, "not a private key"),
        (&missing, "cannot read"),
        (&jwks, "not a PEM file"),
    ] {
        let output = run_gavel(
            &[
                "token",
                "--sub",
                "a",
                "--role",
                "viewer",
                "--private-key-file",
                key,
            ],
            SECRET,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(why),
            "{key}: {stderr}"
        );
    }
    let exposed = dir.path().join("exposed.pem");
    write_file(&exposed, ed.private_pem.as_bytes());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (token, stderr) = cli_mint(
        "a",
        "viewer",
        &["--private-key-file", &path_arg(&exposed), "--kid", "ed"],
    );
    assert!(stderr.contains("readable by other users"), "{stderr}");
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::EdDSA, Some("ed"))
    );
}
