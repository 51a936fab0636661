//! Security on a real network, with real processes and sockets: a three-node cluster whose
//! peer port speaks only mutual TLS and whose client port speaks only HTTPS (certificates made
//! by the test, each node on a loopback address of its own named by its certificate's IP SAN)
//! elects, replicates and fails over as without TLS, and refuses every intruder on the peer
//! port without any change to the cluster's state: a plaintext peer that sends a well-formed
//! handshake and a vote, a TLS client without a certificate, and one whose certificate comes
//! from another CA. Plain HTTP to the HTTPS port fails cleanly and the port keeps serving.
//! `GET /cluster/endpoints` lists the nodes' https URLs.
//! `gavel serve` with only some TLS flags, or with unusable PEM, refuses to start.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::pki::{Issued, TestCa};
use crate::common::*;
use futures_util::StreamExt;
use gavel_raft::transport::frame::{decode_payload, encode_frame, Envelope, Hello, Message};
use gavel_raft::transport::PeerRequest;
use openraft::raft::VoteRequest;
use openraft::Vote;
use reqwest::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The peer transport's frame bound (what the intruder's encoder is allowed).
const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The term of the intruder's vote request: far above any real election of a test, so a node
/// that processed it would show it in `/cluster`.
const INTRUDER_TERM: u64 = 1_000_000_000;
const INTRUDER_ID: u64 = 99;
/// How long an intruder waits for the node to close its connection.
const REFUSAL_WITHIN: Duration = Duration::from_secs(10);
/// How long leader placement may take to settle after the cluster formed.
const PLACEMENT_WITHIN: Duration = Duration::from_secs(40);
/// How long one bid may take to be decided, failover included.
const BID_WITHIN: Duration = Duration::from_secs(30);
/// How long a misconfigured `gavel serve` may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(30);
/// The most bytes an intruder reads back.
const INTRUDER_READ_BYTES_MAX: usize = 64 * 1024;

/// The test's certificates: the cluster CA with one certificate per node, and a stranger
/// from another CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    stranger: Issued,
    nodes: BTreeMap<u64, Issued>,
}

impl Pki {
    fn new(nodes: u64) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("gavel-pki-")
            .tempdir()
            .expect("a temporary directory");
        let ca = TestCa::new(dir.path(), "cluster-ca");
        let nodes = (1..=nodes)
            .map(|id| {
                (
                    id,
                    ca.issue(&format!("node{id}"), &[&format!("127.0.0.{id}")]),
                )
            })
            .collect();
        let other = TestCa::new(dir.path(), "other-ca");
        let stranger = other.issue("stranger", &["127.0.0.1"]);
        Pki {
            dir,
            ca,
            stranger,
            nodes,
        }
    }

    /// Every TLS flag of node `id`: its certificate serves both ports.
    fn node_args(&self, id: u64) -> Vec<String> {
        let node = &self.nodes[&id];
        let path = |p: &Path| p.display().to_string();
        vec![
            "--peer-cert-file".into(),
            path(&node.cert_path),
            "--peer-key-file".into(),
            path(&node.key_path),
            "--peer-trusted-ca-file".into(),
            path(&self.ca.cert_path),
            "--cert-file".into(),
            path(&node.cert_path),
            "--key-file".into(),
            path(&node.key_path),
        ]
    }
}

async fn secure_cluster(pki: &Pki) -> Cluster {
    let mut config = ClusterConfig {
        loopback_ip_per_node: true,
        https_ca: Some(pki.ca.cert_path.clone()),
        ..ClusterConfig::default()
    };
    for id in 1..=config.nodes {
        config.node_args.insert(id, pki.node_args(id));
    }
    Cluster::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secure_cluster_works_and_refuses_intruders() {
    let started = Instant::now();
    let pki = Pki::new(3);
    let mut cluster = secure_cluster(&pki).await;
    eprintln!("secure cluster ready after {:?}", started.elapsed());
    // Connections that never say anything, held throughout: they must stall nobody.
    let node1 = cluster.member(1);
    let _silent = [
        TcpStream::connect(node1.client_addr())
            .await
            .expect("connect"),
        TcpStream::connect(node1.peer_addr())
            .await
            .expect("connect"),
    ];

    let auction = replicate_over_https(&cluster).await;
    live_over_https(&cluster, &pki, &auction).await;
    cli_over_https(&cluster, &pki).await;
    await_placement(&cluster).await;
    refuse_intruders(&cluster, &pki).await;
    plain_http_fails_cleanly(&cluster).await;
    fail_over(&mut cluster, &auction).await;
    eprintln!("whole test took {:?}", started.elapsed());
}

/// Creates an auction through node 1, bids through nodes 2 and 3, and reads both bids back
/// from every node. Returns the auction.
async fn replicate_over_https(cluster: &Cluster) -> Value {
    let creator = token("carol", &["creator"]);
    let reader = token("vic", &["viewer"]);
    let auction = cluster
        .api(1)
        .create_auction(&creator, &active_auction_body("secure-post"))
        .await;
    let id = auction["id"].as_str().expect("id").to_owned();
    for (via, amount) in [(2, "11.00"), (3, "12.00")] {
        let bidder = token(&format!("bidder-{via}"), &["bidder"]);
        let bid = BidRequest {
            token: &bidder,
            auction_id: &id,
            key: &format!("secure-{via}"),
            amount,
            within: BID_WITHIN,
        };
        let reply = bid_until_decided(&cluster.apis(&[via]), &mut 0, &bid)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.all_logs()));
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    for id_node in cluster.ids() {
        let history = read_history(&cluster.api(id_node), &reader, &id).await;
        let amounts: Vec<Decimal> = history.iter().map(|d| money(&d["amount"])).collect();
        assert_eq!(amounts, [dec("11.00"), dec("12.00")], "node {id_node}");
    }
    auction
}

/// The live page, an SSE stream and a WebSocket over TLS, each through another node: the
/// stream's first frame (the snapshot) shows the last bid.
async fn live_over_https(cluster: &Cluster, pki: &Pki, auction: &Value) {
    let id = auction["id"].as_str().expect("id");
    let viewer = token("vic", &["viewer"]);
    let page = cluster.api(1).get_anonymous("/").await.expect_status(200);
    assert!(
        page.text().contains("<html"),
        "the live page: {}",
        page.text()
    );
    // Viewers fail over to the nodes' HTTPS URLs, never to plain HTTP.
    let nodes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| format!("https://{}", cluster.member(*id).client_addr()))
        .collect();
    let endpoints = cluster
        .api(1)
        .get_anonymous("/cluster/endpoints")
        .await
        .expect_json(200);
    assert_eq!(endpoints.json(), json!({ "endpoints": nodes }));
    let mut sse = cluster
        .api(2)
        .request(
            Method::GET,
            &format!("/auctions/{id}/stream"),
            Some(&viewer),
        )
        .send()
        .await
        .expect("an SSE stream over HTTPS");
    assert_eq!(sse.status(), 200);
    let first = tokio::time::timeout(REFUSAL_WITHIN, sse.chunk())
        .await
        .expect("the SSE snapshot in time")
        .expect("an SSE chunk")
        .expect("the stream is open");
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("\"12.00\""), "SSE snapshot: {first}");
    let url = format!(
        "wss://{}/auctions/{id}/ws?access_token={viewer}",
        cluster.member(3).client_addr()
    );
    let tls = client_config(&pki.ca.cert_path, None);
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector));
    let (mut socket, _) = tokio::time::timeout(REFUSAL_WITHIN, connect)
        .await
        .expect("the WebSocket connects in time")
        .expect("a WebSocket over TLS");
    let first = tokio::time::timeout(REFUSAL_WITHIN, socket.next())
        .await
        .expect("the WebSocket snapshot in time")
        .expect("a frame")
        .expect("a good frame");
    let first = first.into_text().expect("a text frame");
    assert!(first.contains("\"12.00\""), "WebSocket snapshot: {first}");
}

/// `gavel cluster status` over HTTPS: it works with `--cacert`, and without it refuses the
/// node's certificate (not from a public CA).
async fn cli_over_https(cluster: &Cluster, pki: &Pki) {
    let ca = pki.ca.cert_path.display().to_string();
    let out = cluster.cli_ok(1, &["status", "--cacert", &ca]).await;
    assert!(out.contains("answered by node 1"), "{out}");
    let refused = cluster.cli(1, &["status"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "trusted an unknown CA: {stderr}");
    eprintln!("gavel cluster status without --cacert: {}", stderr.trim());
}

/// Waits until every group is led by its preferred voter (`voters[g mod n]`), after which
/// placement moves nothing: leaders and terms then change only if something happens.
async fn await_placement(cluster: &Cluster) {
    let deadline = Instant::now() + PLACEMENT_WITHIN;
    loop {
        if let Some(status) = cluster.try_status(1).await {
            let settled = status["groups"].as_array().is_some_and(|groups| {
                groups.iter().all(|g| {
                    let voters = g["voters"].as_array().cloned().unwrap_or_default();
                    let id = g["id"].as_u64().unwrap_or(0) as usize;
                    !voters.is_empty() && g["leader"] == voters[id % voters.len()]
                })
            });
            if settled {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "placement did not settle within {PLACEMENT_WITHIN:?}\n{}",
            cluster.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)).await;
    }
}

/// What an intruder could have changed: per node and group, the leader and term that node
/// sees, and the auctions listed.
#[derive(Debug, PartialEq)]
struct Digest {
    terms: BTreeMap<(u64, u64), (Value, u64)>,
    auctions: usize,
}

async fn digest(cluster: &Cluster) -> Digest {
    let mut terms = BTreeMap::new();
    for node in cluster.ids() {
        let status = cluster.status(node).await;
        for group in status["groups"].as_array().expect("groups") {
            let term = group["term"].as_u64().expect("term");
            assert!(
                term < INTRUDER_TERM,
                "node {node} took the intruder's term: {group}"
            );
            let id = group["id"].as_u64().expect("group id");
            terms.insert((node, id), (group["leader"].clone(), term));
        }
    }
    let reader = token("vic", &["viewer"]);
    let pages = cluster
        .api(1)
        .pages("/auctions", &reader, &[], "auctions")
        .await;
    Digest {
        terms,
        auctions: pages.iter().map(Vec::len).sum(),
    }
}

/// Each intrusion on node 1's peer port is refused, and the cluster's state is the same after.
async fn refuse_intruders(cluster: &Cluster, pki: &Pki) {
    let peer = cluster.member(1).peer_addr();
    let ip: IpAddr = cluster.member(1).host.parse().expect("an IP");
    let ca = pki.ca.cert_path.as_path();
    let before = digest(cluster).await;
    let plaintext = plaintext_intrusion(&peer).await;
    eprintln!("(a) plaintext handshake + vote: {plaintext}");
    assert_eq!(
        digest(cluster).await,
        before,
        "after the plaintext intruder"
    );
    let anonymous = tls_intrusion(&peer, ip, ca, None).await;
    eprintln!("(b) TLS without a client certificate: {anonymous}");
    assert_eq!(
        digest(cluster).await,
        before,
        "after the anonymous TLS intruder"
    );
    let stranger = tls_intrusion(&peer, ip, ca, Some(&pki.stranger)).await;
    eprintln!("(c) TLS with a certificate from another CA: {stranger}");
    assert_eq!(digest(cluster).await, before, "after the stranger");
}

/// The intruder's bytes: a well-formed handshake, then a vote request for group 0.
fn intrusion_frames() -> Vec<u8> {
    let hello = Envelope {
        request_id: 0,
        group: 0,
        message: Message::Hello(Hello {
            node_id: INTRUDER_ID,
            client_addr: String::new(),
            peer_addr: String::new(),
        }),
    };
    let vote = Envelope {
        request_id: 1,
        group: 0,
        message: Message::Request(PeerRequest::Vote(VoteRequest::new(
            Vote::new(INTRUDER_TERM, INTRUDER_ID),
            None,
        ))),
    };
    let mut bytes = encode_frame(&hello, FRAME_BYTES_MAX).expect("encode the hello");
    bytes.extend(encode_frame(&vote, FRAME_BYTES_MAX).expect("encode the vote"));
    bytes
}

/// Reads until the node closes the connection (bounded); panics if the node answered with a
/// frame of the peer protocol. Returns what came back and a description of it.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, String) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let outcome = tokio::time::timeout(REFUSAL_WITHIN, async {
        while received.len() < INTRUDER_READ_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .expect("the node must close an intruder's connection in time");
    if received.len() > 4 {
        let len = u32::from_be_bytes([received[0], received[1], received[2], received[3]]);
        if let Some(payload) = received.get(4..4 + len as usize) {
            let answer = decode_payload(payload, FRAME_BYTES_MAX);
            assert!(answer.is_err(), "the node answered a frame: {answer:?}");
        }
    }
    let shown: Vec<String> = received
        .iter()
        .take(7)
        .map(|b| format!("{b:02x}"))
        .collect();
    let description = match outcome {
        Ok(()) => format!(
            "closed after {} bytes [{}]",
            received.len(),
            shown.join(" ")
        ),
        Err(e) => format!("read failed after {} bytes: {e}", received.len()),
    };
    (received, description)
}

async fn plaintext_intrusion(peer: &str) -> String {
    let mut stream = TcpStream::connect(peer).await.expect("connect");
    // The write may fail once the node has closed: that is a refusal too.
    let written = stream.write_all(&intrusion_frames()).await;
    let (_, read) = read_until_closed(&mut stream).await;
    format!("write {written:?}; {read}")
}

/// A TLS 1.3 client that trusts the cluster CA (it wants in), with `identity` as its client
/// certificate if any, sends the intrusion frames.
async fn tls_intrusion(peer: &str, ip: IpAddr, ca: &Path, identity: Option<&Issued>) -> String {
    let config = client_config(ca, identity);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(peer).await.expect("connect");
    let handshake = connector.connect(ServerName::IpAddress(ip.into()), tcp);
    let stream = tokio::time::timeout(REFUSAL_WITHIN, handshake)
        .await
        .expect("the TLS handshake must end in time");
    // In TLS 1.3 the client finishes its handshake before the server has judged its
    // certificate; the refusal then arrives as an alert on the first read.
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let written = stream.write_all(&intrusion_frames()).await;
    let _ = stream.flush().await;
    let (_, read) = read_until_closed(&mut stream).await;
    format!("handshake done on the client's side; write {written:?}; {read}")
}

/// A TLS 1.3 client configuration that trusts the CA of `ca` and shows `identity`, if any.
fn client_config(ca: &Path, identity: Option<&Issued>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(ca).expect("read the CA");
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca_pem) {
        let cert: CertificateDer<'static> = cert.expect("CA PEM");
        roots.add(cert).expect("a CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain = vec![CertificateDer::from(issued.cert_der.clone())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone()));
            builder
                .with_client_auth_cert(chain, key)
                .expect("a client identity")
        }
    }
}

/// Plain HTTP to the HTTPS port gets no HTTP answer and a closed connection; HTTPS still works.
async fn plain_http_fails_cleanly(cluster: &Cluster) {
    let node = cluster.member(2);
    let mut stream = TcpStream::connect(node.client_addr())
        .await
        .expect("connect");
    let request = b"GET /readyz HTTP/1.1\r\nHost: gavel\r\nConnection: close\r\n\r\n";
    let written = stream.write_all(request).await;
    let (received, read) = read_until_closed(&mut stream).await;
    eprintln!("plain HTTP to the HTTPS port: write {written:?}; {read}");
    assert!(
        !received.starts_with(b"HTTP"),
        "answered in plain HTTP: {read}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{}/readyz", node.client_addr()))
        .timeout(REFUSAL_WITHIN)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    eprintln!("reqwest over http:// to it: {:?}", plain.err());
    node.api().get_anonymous("/readyz").await.expect_status(200);
}

/// SIGKILL the leader of the auction's group; a bid through a survivor is decided and every
/// survivor reads all three bids.
async fn fail_over(cluster: &mut Cluster, auction: &Value) {
    let id = auction["id"].as_str().expect("id").to_owned();
    let group = cluster.group_of(&id);
    let (leader, term) = cluster
        .await_leader(1, group, CONVERGE_TIMEOUT, |_, _| true)
        .await;
    cluster.kill9(leader);
    let killed = Instant::now();
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&n| n != leader).collect();
    let bidder = token("after-failover", &["bidder"]);
    let bid = BidRequest {
        token: &bidder,
        auction_id: &id,
        key: "secure-failover",
        amount: "13.00",
        within: BID_WITHIN,
    };
    let reply = bid_until_decided(&cluster.apis(&survivors), &mut 0, &bid)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.all_logs()));
    assert_eq!(reply["status"], "accepted", "{reply}");
    eprintln!(
        "killed node {leader} (led group {group} in term {term}); a bid was decided {:?} later",
        killed.elapsed()
    );
    let reader = token("vic", &["viewer"]);
    for node in survivors {
        let history = read_history(&cluster.api(node), &reader, &id).await;
        assert_eq!(history.len(), 3, "node {node}: {history:?}");
    }
}

/// Runs `gavel serve` with `args`, which must make it exit non-zero; returns its stderr.
async fn serve_must_refuse(args: &[String]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gavel"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--peer-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        .env("GAVEL_AUTH_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(EXIT_WITHIN, command.output())
        .await
        .expect("gavel serve must exit at once when misconfigured")
        .expect("run gavel serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "started with {args:?}: {stderr}");
    (output.status.code(), stderr)
}

#[tokio::test]
async fn serve_refuses_partial_or_unusable_tls_files() {
    let pki = Pki::new(1);
    let node = pki.nodes[&1].paths();
    let ca = pki.ca.cert_path.display().to_string();
    let partial: [(Vec<String>, &str); 3] = [
        (
            vec!["--peer-cert-file".into(), node.0.clone()],
            "peer TLS needs all of --peer-cert-file, --peer-key-file, --peer-trusted-ca-file",
        ),
        (
            vec![
                "--peer-cert-file".into(),
                node.0.clone(),
                "--peer-trusted-ca-file".into(),
                ca.clone(),
            ],
            "only --peer-cert-file, --peer-trusted-ca-file given",
        ),
        (
            vec!["--key-file".into(), node.1.clone()],
            "HTTPS needs all of --cert-file, --key-file",
        ),
    ];
    for (args, expected) in partial {
        let (code, stderr) = serve_must_refuse(&args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let garbage = garbage.display().to_string();
    let missing = pki.dir.path().join("missing.pem").display().to_string();
    let stranger_key = pki.stranger.paths().1;
    let unusable: [(Vec<String>, String); 4] = [
        (
            peer_flags(&garbage, &node.1, &ca),
            format!("--peer-cert-file: {garbage} holds no certificate"),
        ),
        (
            peer_flags(&node.0, &missing, &ca),
            format!("--peer-key-file: cannot read {missing}"),
        ),
        (
            peer_flags(&node.0, &node.1, &node.1),
            "--peer-trusted-ca-file: ".to_owned(),
        ),
        (
            peer_flags(&node.0, &stranger_key, &ca),
            "do not make a TLS configuration".to_owned(),
        ),
    ];
    for (args, expected) in unusable {
        let (code, stderr) = serve_must_refuse(&args).await;
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        eprintln!("{args:?}: {}", stderr.lines().last().unwrap_or(""));
    }
}

fn peer_flags(cert: &str, key: &str, ca: &str) -> Vec<String> {
    [
        "--peer-cert-file",
        cert,
        "--peer-key-file",
        key,
        "--peer-trusted-ca-file",
        ca,
    ]
    .map(str::to_owned)
    .to_vec()
}
