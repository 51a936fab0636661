//! Authentication and roles against a real `gavel serve`: every protected endpoint answers 401
//! problems (with `WWW-Authenticate: Bearer ...`) to missing, forged, expired or malformed
//! tokens; each role may do exactly what API.md's table says (403 problems otherwise, and a
//! refused request changes nothing); tokens minted by `gavel token` are accepted.

use crate::common::*;
use reqwest::Method;

/// Tokens the server must refuse with 401, by what is wrong with them.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let exp = now_s() + 3600;
    let good_claims = json!({ "sub": "mallory", "roles": ["admin"], "exp": exp });
    let b64 = |text: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    };
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&good_claims.to_string())
    );
    let valid = token("mallory", &["admin"]);
    let mut tampered: Vec<&str> = valid.split('.').collect();
    let upgraded = b64(&json!({ "sub": "root", "roles": ["admin"], "exp": exp }).to_string());
    tampered[1] = &upgraded;
    let tampered = tampered.join(".");
    vec![
        (
            "signed with another secret",
            sign_jwt(b"not-the-server-secret", &good_claims),
        ),
        (
            "expired",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "mallory", "roles": ["admin"], "exp": now_s() - 120 }),
            ),
        ),
        (
            "without exp",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "mallory", "roles": ["admin"] }),
            ),
        ),
        (
            "exp not a number",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "mallory", "roles": ["admin"], "exp": exp.to_string() }),
            ),
        ),
        (
            "without sub",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "roles": ["admin"], "exp": exp }),
            ),
        ),
        (
            "sub with a space",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "mal lory", "roles": ["admin"], "exp": exp }),
            ),
        ),
        (
            "empty sub",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "", "roles": ["admin"], "exp": exp }),
            ),
        ),
        (
            "sub of 65 characters",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "m".repeat(65), "roles": ["admin"], "exp": exp }),
            ),
        ),
        (
            "roles not an array",
            sign_jwt(
                SECRET.as_bytes(),
                &json!({ "sub": "mallory", "roles": "admin", "exp": exp }),
            ),
        ),
        ("alg none", unsigned),
        ("payload swapped after signing", tampered),
        ("not a JWT", "not-a-jwt".to_owned()),
        ("garbage parts", "a.b.c".to_owned()),
    ]
}

#[tokio::test]
async fn bad_credentials_are_401_problems() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let auction = server
        .create_auction(&alice, &active_auction_body("post-auth"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    let create_body = active_auction_body("post-forged");
    let bid_body = json!({ "amount": "100" });

    let endpoints: Vec<(Method, String, Option<&Value>)> = vec![
        (Method::GET, "/auctions".into(), None),
        (Method::GET, format!("/auctions/{id}"), None),
        (Method::GET, format!("/auctions/{id}/bids"), None),
        (Method::POST, "/auctions".into(), Some(&create_body)),
        (
            Method::POST,
            format!("/auctions/{id}/bids"),
            Some(&bid_body),
        ),
        (Method::POST, format!("/auctions/{id}/pause"), None),
        (Method::POST, format!("/auctions/{id}/end"), None),
        (Method::GET, "/cluster".into(), None),
    ];
    let mut tokens: Vec<(&str, Option<String>)> = vec![("no token", None)];
    tokens.extend(bad_tokens().into_iter().map(|(why, t)| (why, Some(t))));

    for (method, path, body) in &endpoints {
        for (why, bad) in &tokens {
            let mut builder = server.request(method.clone(), path, bad.as_deref());
            if let Some(body) = body {
                builder = builder.json(body).header("Idempotency-Key", fresh_key());
            }
            let resp = send(builder).await;
            assert_eq!(
                resp.status,
                401,
                "{method} {path} with a token {why}: {} {}",
                resp.status,
                resp.text()
            );
            resp.assert_problem_body();
            let challenge = resp.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "{method} {path} ({why}): WWW-Authenticate {challenge:?}"
            );
        }
    }

    // Nothing of it reached the auction.
    let now = server.get_auction(&alice, &id).await;
    assert_eq!(now, auction, "refused requests changed the auction");
    assert!(server.history(&alice, &id, "all").await.is_empty());
    let listed = server.pages("/auctions", &alice, &[], "auctions").await;
    assert_eq!(listed.concat().len(), 1, "no forged auction was created");
}

#[tokio::test]
async fn roles_are_enforced() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let bert = token("bert", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let vera = token("vera", &["viewer"]);
    let root = token("root", &["admin"]);
    let auction = server
        .create_auction(&alice, &active_auction_body("post-roles"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    let body = active_auction_body("post-roles-2");

    // Everyone reads.
    for reader in [&alice, &bert, &bob, &vera, &root] {
        server.get("/auctions", reader).await.expect_status(200);
        server
            .get(&format!("/auctions/{id}"), reader)
            .await
            .expect_status(200);
        server
            .get(&format!("/auctions/{id}/bids"), reader)
            .await
            .expect_status(200);
    }

    // Viewers only read.
    server
        .bid(&vera, &id, "v1", json!("10"))
        .await
        .expect_problem(403);
    server
        .post("/auctions", &vera, Some(&body), None)
        .await
        .expect_problem(403);
    for action in ["start", "pause", "resume", "end"] {
        server.control(&vera, &id, action).await.expect_problem(403);
    }
    // Bidders bid but neither create nor steer.
    server
        .post("/auctions", &bob, Some(&body), None)
        .await
        .expect_problem(403);
    for action in ["start", "pause", "resume", "end"] {
        server.control(&bob, &id, action).await.expect_problem(403);
    }
    // Creators create and steer their own auctions, not others', and do not bid.
    for action in ["start", "pause", "resume", "end"] {
        server.control(&bert, &id, action).await.expect_problem(403);
    }
    server
        .bid(&alice, &id, "a1", json!("10"))
        .await
        .expect_problem(403);
    server
        .bid(&bert, &id, "b1", json!("10"))
        .await
        .expect_problem(403);
    assert_eq!(
        server.get_auction(&alice, &id).await,
        auction,
        "refused requests changed the auction"
    );

    // The widest valid subject, and claims we do not use, are fine.
    let long_sub = format!("{}.-_9", "Z".repeat(60));
    let wide = sign_jwt(
        SECRET.as_bytes(),
        &json!({
            "sub": long_sub, "roles": ["viewer", "bidder"], "exp": now_s() + 600,
            "iat": now_s(), "iss": "tests", "aud": "gavel",
        }),
    );
    server
        .get(&format!("/auctions/{id}"), &wide)
        .await
        .expect_json(200);

    let r = server.bid_ok(&bob, &id, "bob-1", json!("10")).await;
    assert_eq!(r["status"], "accepted");
    let paused = server.control_ok(&alice, &id, "pause").await;
    assert_eq!(
        (&paused["status"], &paused["version"]),
        (&json!("paused"), &json!(3))
    );
    // Admins steer any auction.
    let resumed = server.control_ok(&root, &id, "resume").await;
    assert_eq!(
        (&resumed["status"], &resumed["version"]),
        (&json!("active"), &json!(4))
    );
    let paused = server.control_ok(&root, &id, "pause").await;
    assert_eq!(paused["version"], 5);
    let resumed = server.control_ok(&alice, &id, "resume").await;
    assert_eq!(resumed["version"], 6);
    let ended = server.control_ok(&root, &id, "end").await;
    assert_eq!(
        (&ended["status"], &ended["version"]),
        (&json!("ended"), &json!(7))
    );
    assert_eq!(ended["currentWinnerId"], "bob");

    // Admins create (and own what they create); creators' new auctions are theirs.
    let mine = server.create_auction(&root, &body).await;
    assert_eq!(mine["creatorId"], "root");
    let berts = server.create_auction(&bert, &body).await;
    assert_eq!(berts["creatorId"], "bert");
    server
        .control_ok(&bert, berts["id"].as_str().unwrap(), "pause")
        .await;
    server
        .control(&alice, berts["id"].as_str().unwrap(), "resume")
        .await
        .expect_problem(403);

    // /cluster is admin only.
    for who in [&alice, &bob, &vera] {
        server.get("/cluster", who).await.expect_problem(403);
    }
    server.get("/cluster", &root).await.expect_status(200);
}

#[tokio::test]
async fn tokens_from_the_cli_are_accepted() {
    let server = Server::start().await;
    let before = now_s();
    let alice = cli_token("alice", &["creator"]);
    let claims = jwt_claims(&alice);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["creator"]));
    let exp = claims["exp"].as_i64().expect("numeric exp");
    assert!(
        (before + 3600 - 5..=now_s() + 3600 + 5).contains(&exp),
        "--ttl 1h gives exp = now + 3600, got {exp} (now {before})"
    );

    let bob = cli_token("bob", &["bidder", "viewer"]);
    let roles = jwt_claims(&bob)["roles"].clone();
    let mut roles: Vec<&str> = roles
        .as_array()
        .expect("roles array")
        .iter()
        .map(|r| r.as_str().expect("role string"))
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, vec!["bidder", "viewer"]);

    let auction = server
        .create_auction(&alice, &active_auction_body("post-cli"))
        .await;
    assert_eq!(auction["creatorId"], "alice");
    let id = auction["id"].as_str().unwrap();
    let r = server.bid_ok(&bob, id, "cli-1", json!("10")).await;
    assert_eq!(
        (&r["status"], &r["currentWinnerId"]),
        (&json!("accepted"), &json!("bob"))
    );

    // The same CLI with another secret mints tokens this server refuses.
    let output = run_gavel(
        &["token", "--sub", "eve", "--role", "admin", "--ttl", "1h"],
        "some-other-secret",
    );
    assert!(output.status.success(), "{output:?}");
    let forged = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    server.get("/auctions", &forged).await.expect_problem(401);

    // Invalid requests to mint are refused with a message, not turned into useless tokens.
    for args in [
        vec![
            "token", "--sub", "bad sub", "--role", "viewer", "--ttl", "1h",
        ],
        vec!["token", "--sub", "carl", "--role", "emperor", "--ttl", "1h"],
    ] {
        let output = run_gavel(&args, SECRET);
        assert!(
            !output.status.success(),
            "gavel {args:?} should fail: {output:?}"
        );
        assert!(!output.stderr.is_empty(), "gavel {args:?} should say why");
    }
}
