//! The integration-test harness: runs the real `gavel` binary as a child process and talks to
//! it over real sockets, exactly as a client would.
//!
//! It owns the process lifecycle (free ports, a temporary data dir, readiness polling, SIGKILL,
//! SIGTERM, restart on the same data dir), token minting (in-process HS256 signing and the
//! `gavel token` CLI), small HTTP helpers and the checks of the JSON shapes of API.md.
//! It knows nothing of the server's internals: everything is observed through the HTTP API.
//! When a test fails, the server's log (stdout and stderr of every run) is printed.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

// The multi-node cluster harness (`cluster_*.rs`).
pub mod cluster;
// Test certificate authorities and certificates (`security_tls.rs`).
pub mod pki;
// Fresh RSA, P-256 and Ed25519 keys for the asymmetric-token tests.
pub mod keys;
// Which tests may run beside each other (timing-bound tests run alone).
pub mod machine;
// Steady load with per-group stall measurement (`rolling_restart.rs`, `advertise.rs`).
pub mod load;

use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
pub use rust_decimal::Decimal;
pub use serde_json::{json, Value};
use sha2::Sha256;

pub use machine::{share_machine, take_whole_machine, MachineHold};

/// The HMAC secret every test server is started with.
pub const SECRET: &str = "gavel-integration-tests-secret-5b1e0c";
/// Raft groups of every test server.
pub const GROUPS: u32 = 4;
/// How long a (debug-build) server may take to answer `/readyz` with 200.
const READY_TIMEOUT_MS: u64 = 60_000;
/// How long one readiness probe may take (a slow one is simply retried).
const READY_PROBE_TIMEOUT_MS: u64 = 500;
/// How often readiness and other conditions are polled.
pub const POLL_INTERVAL_MS: u64 = 20;
/// Attempts to start a server when the chosen port was taken meanwhile.
const SPAWN_ATTEMPTS_MAX: u32 = 5;
/// Upper bound of any single HTTP request made by the tests.
const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// The most of the server log printed when a test fails, in bytes.
const LOG_PRINT_BYTES_MAX: usize = 48 * 1024;
/// The most pages any pagination helper follows.
const PAGES_MAX: usize = 10_000;

/// The fields of an auction, exactly as API.md lists them.
pub const AUCTION_FIELDS: [&str; 15] = [
    "id",
    "postId",
    "creatorId",
    "status",
    "startAt",
    "endAt",
    "startPrice",
    "minIncrement",
    "antiSnipingSeconds",
    "currentPrice",
    "currentWinnerId",
    "bidCount",
    "version",
    "createdAt",
    "endedAt",
];
/// The fields of a bid response.
pub const BID_REPLY_FIELDS: [&str; 8] = [
    "status",
    "reason",
    "bidId",
    "amount",
    "currentPrice",
    "currentWinnerId",
    "version",
    "endAt",
];
/// The fields of one entry of the bid history.
pub const BID_HISTORY_FIELDS: [&str; 8] = [
    "bidId",
    "bidderId",
    "amount",
    "status",
    "reason",
    "version",
    "createdAt",
    "seq",
];

// ---------------------------------------------------------------------------------------------
// The server process

/// How a test server is started beyond the defaults.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Extra `gavel serve` flags.
    pub args: Vec<String>,
    /// Whether `GAVEL_AUTH_SECRET` is [`SECRET`] (else unset: no HS256 secret given).
    pub secret_env: bool,
    /// The data dir is a tmpfs of this many bytes, so that a test can fill it (needs root, as
    /// the fault suite does); unmounted when the server is dropped.
    pub disk_bytes: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            args: Vec::new(),
            secret_env: true,
            disk_bytes: None,
        }
    }
}

/// One running `gavel serve` on a temporary data dir. Killed (SIGKILL) when dropped.
/// Dereferences to its [`Api`] for requests.
pub struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    options: ServerOptions,
    pub client_port: u16,
    pub peer_port: u16,
    api: Api,
    /// Released after `Drop` killed the process.
    _machine: MachineHold,
}

impl std::ops::Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A client of one server: cheap to clone into tasks that outlive a borrow of the [`Server`].
#[derive(Clone)]
pub struct Api {
    base_url: String,
    http: reqwest::Client,
}

impl Server {
    /// Starts a fresh single-node server and waits until `/readyz` answers 200.
    pub async fn start() -> Server {
        Server::start_on(None).await
    }

    /// Like [`Server::start`], trying `(client port, peer port)` first when given (to test the
    /// retry on a taken port).
    pub async fn start_on(ports: Option<(u16, u16)>) -> Server {
        Server::start_with(ports, ServerOptions::default()).await
    }

    /// Like [`Server::start_on`], with extra flags or without the HS256 secret.
    pub async fn start_with(ports: Option<(u16, u16)>, options: ServerOptions) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("gavel-it-")
            .tempdir()
            .expect("create a temporary directory");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .pool_max_idle_per_host(64)
            .build()
            .expect("build the HTTP client");
        let mut server = Server {
            dir,
            child: None,
            options,
            client_port: 0,
            peer_port: 0,
            api: Api {
                base_url: String::new(),
                http,
            },
            _machine: share_machine(),
        };
        server.pick_ports();
        if let Some(bytes) = server.options.disk_bytes {
            std::fs::create_dir_all(server.data_dir()).expect("create the data dir");
            server.mount_disk(&format!("size={bytes}"));
        }
        if let Some((client_port, peer_port)) = ports {
            server.client_port = client_port;
            server.peer_port = peer_port;
            server.api.base_url = format!("http://127.0.0.1:{client_port}");
        }
        server.spawn_until_ready().await;
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Mounts the data dir's tmpfs (`disk_bytes`), or changes it with `options`.
    fn mount_disk(&self, options: &str) {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(self.data_dir())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount -o {options} a tmpfs on the data dir (this test needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Gives the data dir's tmpfs a new size (`disk_bytes`), keeping what it holds.
    pub fn resize_disk(&self, bytes: u64) {
        assert!(
            self.options.disk_bytes.is_some(),
            "the data dir is no tmpfs"
        );
        self.mount_disk(&format!("remount,size={bytes}"));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A handle for requests that stays usable while the server is borrowed mutably.
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    fn pick_ports(&mut self) {
        self.client_port = free_port();
        self.peer_port = loop {
            let port = free_port();
            if port != self.client_port {
                break port;
            }
        };
        self.api.base_url = format!("http://127.0.0.1:{}", self.client_port);
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let log_err = log.try_clone().expect("clone the server log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gavel"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.client_port))
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--groups")
            .arg(GROUPS.to_string())
            .args(&self.options.args)
            .env("GAVEL_AUTH_SECRET", SECRET)
            .env_remove("GAVEL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if !self.options.secret_env {
            command.env_remove("GAVEL_AUTH_SECRET");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        // Never leave an orphan server behind if the test process dies without running Drop.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn the gavel binary");
        self.child = Some(child);
    }

    /// Spawns the server (on the current ports first) and waits for readiness, choosing new
    /// ports if the process exits early (most likely a port taken since we chose it).
    async fn spawn_until_ready(&mut self) {
        for attempt in 0..SPAWN_ATTEMPTS_MAX {
            if attempt > 0 {
                self.pick_ports();
            }
            self.append_to_log(&format!(
                "\n=== harness: spawn attempt {attempt} on client port {} peer port {} ===\n",
                self.client_port, self.peer_port
            ));
            self.spawn();
            match self.await_ready().await {
                Ok(()) => return,
                Err(status) => self.append_to_log(&format!(
                    "=== harness: the server exited before it was ready: {status} ===\n"
                )),
            }
        }
        panic!(
            "gavel serve did not start in {SPAWN_ATTEMPTS_MAX} attempts; log:\n{}",
            self.log_tail()
        );
    }

    /// Polls `/readyz` until 200 (Ok), the process exits (Err) or the deadline passes (panic).
    async fn await_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child.try_wait().expect("poll the server process") {
                self.child = None;
                return Err(status);
            }
            let probe = self
                .api
                .http
                .get(self.url("/readyz"))
                .timeout(Duration::from_millis(READY_PROBE_TIMEOUT_MS))
                .send()
                .await;
            if matches!(&probe, Ok(r) if r.status() == 200) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "gavel serve was not ready within {READY_TIMEOUT_MS} ms (last probe: {probe:?}); log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.append_to_log("\n=== harness: killed with SIGKILL ===\n");
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit and returns its status.
    /// Panics (after SIGKILL) if it does not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.take().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill -TERM {pid}: {}",
            std::io::Error::last_os_error()
        );
        self.reap_within(child, timeout, "after SIGTERM").await
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its status.
    /// Panics (after SIGKILL) if it does not.
    pub async fn await_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.take().expect("the server is running");
        self.reap_within(child, timeout, "by itself").await
    }

    /// Waits up to `timeout` for `child` to exit (`how`: why it would) and returns its status;
    /// past it, kills it and panics.
    async fn reap_within(&self, mut child: Child, timeout: Duration, how: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("poll the server process") {
                self.append_to_log(&format!("\n=== harness: exited {how}: {status} ===\n"));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gavel serve did not exit {how} within {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Starts the server again on the same data dir without waiting for it to be ready, for a
    /// start expected to fail (`await_exit` reaps it).
    pub fn spawn_again(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
    }

    /// Starts the server again on the same data dir (and the same ports when still free).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn_until_ready().await;
    }

    fn append_to_log(&self, text: &str) {
        use std::io::Write;
        if let Ok(mut file) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
        {
            let _ = file.write_all(text.as_bytes());
        }
    }

    /// The end of the server log (all runs), for failure messages.
    pub fn log_tail(&self) -> String {
        let bytes = std::fs::read(self.log_path()).unwrap_or_default();
        let from = bytes.len().saturating_sub(LOG_PRINT_BYTES_MAX);
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }
}

impl Api {
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        send(self.request(Method::GET, path, Some(token))).await
    }

    pub async fn get_query(&self, path: &str, token: &str, query: &[(&str, &str)]) -> Resp {
        send(self.request(Method::GET, path, Some(token)).query(query)).await
    }

    /// Without any credentials.
    pub async fn get_anonymous(&self, path: &str) -> Resp {
        send(self.request(Method::GET, path, None)).await
    }

    /// POST with an optional JSON body and an optional `Idempotency-Key`.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Resp {
        let mut builder = self.request(Method::POST, path, Some(token));
        if let Some(body) = body {
            builder = builder.json(body);
        }
        if let Some(key) = key {
            builder = builder.header("Idempotency-Key", key);
        }
        send(builder).await
    }

    /// Creates an auction and checks the 201, `Location` and shape; returns the auction.
    pub async fn create_auction(&self, token: &str, body: &Value) -> Value {
        let resp = self
            .post("/auctions", token, Some(body), None)
            .await
            .expect_json(201);
        let auction = resp.json();
        assert_auction_shape(&auction);
        let id = auction["id"].as_str().expect("id");
        let location = resp.header("location").expect("201 carries Location");
        assert!(
            location.ends_with(&format!("/auctions/{id}")),
            "Location {location:?} does not name auction {id}"
        );
        auction
    }

    pub async fn get_auction(&self, token: &str, id: &str) -> Value {
        let auction = self
            .get(&format!("/auctions/{id}"), token)
            .await
            .expect_json(200)
            .json();
        assert_auction_shape(&auction);
        auction
    }

    pub async fn get_auction_local(&self, token: &str, id: &str) -> Value {
        let auction = self
            .get_query(
                &format!("/auctions/{id}"),
                token,
                &[("consistency", "local")],
            )
            .await
            .expect_status(200)
            .json();
        assert_auction_shape(&auction);
        auction
    }

    /// Places a bid; `amount` is sent as given (JSON string or number).
    pub async fn bid(&self, token: &str, auction_id: &str, key: &str, amount: Value) -> Resp {
        let body = json!({ "amount": amount });
        self.post(
            &format!("/auctions/{auction_id}/bids"),
            token,
            Some(&body),
            Some(key),
        )
        .await
    }

    /// Places a bid that must be decided (200); returns the checked decision.
    pub async fn bid_ok(&self, token: &str, auction_id: &str, key: &str, amount: Value) -> Value {
        let reply = self
            .bid(token, auction_id, key, amount)
            .await
            .expect_json(200)
            .json();
        assert_bid_reply_shape(&reply);
        reply
    }

    /// `POST /auctions/{id}/{action}` without a body.
    pub async fn control(&self, token: &str, auction_id: &str, action: &str) -> Resp {
        self.post(
            &format!("/auctions/{auction_id}/{action}"),
            token,
            None,
            None,
        )
        .await
    }

    /// A control action that must succeed; returns the checked auction.
    pub async fn control_ok(&self, token: &str, auction_id: &str, action: &str) -> Value {
        let auction = self
            .control(token, auction_id, action)
            .await
            .expect_json(200)
            .json();
        assert_auction_shape(&auction);
        auction
    }

    /// Follows `nextCursor` through every page of a listing; returns the pages.
    /// `items` is the array's field (`auctions` or `bids`).
    pub async fn pages(
        &self,
        path: &str,
        token: &str,
        query: &[(&str, &str)],
        items: &str,
    ) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            if let Some(cursor) = &cursor {
                q.push(("cursor", cursor));
            }
            let page = self
                .get_query(path, token, &q)
                .await
                .expect_json(200)
                .json();
            let keys = object_keys(&page);
            assert_eq!(
                keys,
                sorted(&[items, "nextCursor"]),
                "listing shape: {page}"
            );
            let list = page[items].as_array().expect("an array").clone();
            pages.push(list);
            match &page["nextCursor"] {
                Value::Null => return pages,
                Value::String(next) => {
                    assert!(!next.is_empty(), "nextCursor is an empty string");
                    cursor = Some(next.clone());
                }
                other => panic!("nextCursor must be a string or null, got {other}"),
            }
        }
        panic!("{path} did not end within {PAGES_MAX} pages");
    }

    /// The whole decision log of an auction (`status` = `all` or `accepted`), checked entry by entry.
    pub async fn history(&self, token: &str, auction_id: &str, status: &str) -> Vec<Value> {
        let path = format!("/auctions/{auction_id}/bids");
        let pages = self
            .pages(
                &path,
                token,
                &[("status", status), ("limit", "1000")],
                "bids",
            )
            .await;
        let all: Vec<Value> = pages.into_iter().flatten().collect();
        for entry in &all {
            assert_history_shape(entry);
        }
        all
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.options.disk_bytes.is_some() {
            // Lazily: the temporary dir goes next, whatever still holds the mount.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir())
                .status();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- gavel server log ({}) -----\n{}\n----- end of server log -----",
                self.log_path().display(),
                self.log_tail()
            );
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A fully read HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends a request and reads the whole response; panics on transport errors.
pub async fn send(builder: RequestBuilder) -> Resp {
    try_send(builder)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

/// Sends a request and reads the whole response.
pub async fn try_send(builder: RequestBuilder) -> Result<Resp, reqwest::Error> {
    let response = builder.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    #[track_caller]
    pub fn expect_status(self, status: u16) -> Resp {
        assert_eq!(
            self.status,
            status,
            "expected HTTP {status}, got {} with body {:?}",
            self.status,
            self.text()
        );
        self
    }

    /// Checks a successful JSON answer: the status and `Content-Type: application/json`.
    #[track_caller]
    pub fn expect_json(self, status: u16) -> Resp {
        let resp = self.expect_status(status);
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "HTTP {status} has Content-Type {content_type:?}, expected application/json"
        );
        resp
    }

    /// Checks an RFC 9457 problem: the status, the media type and the four fields.
    #[track_caller]
    pub fn expect_problem(self, status: u16) -> Resp {
        let resp = self.expect_status(status);
        resp.assert_problem_body();
        resp
    }

    /// Checks the problem media type and body whatever the status.
    #[track_caller]
    pub fn assert_problem_body(&self) {
        if let Some(wrong) = self.problem_error() {
            panic!("{wrong}");
        }
    }

    /// What is wrong with this response as an RFC 9457 problem, if anything.
    pub fn problem_error(&self) -> Option<String> {
        let content_type = self.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/problem+json") {
            return Some(format!(
                "HTTP {} has Content-Type {content_type:?}, expected application/problem+json; body {:?}",
                self.status,
                self.text()
            ));
        }
        let Ok(problem) = serde_json::from_slice::<Value>(&self.body) else {
            return Some(format!("problem body is not JSON: {:?}", self.text()));
        };
        let non_empty = |field: &str| problem[field].as_str().is_some_and(|s| !s.is_empty());
        for field in ["type", "title", "detail"] {
            if !non_empty(field) {
                return Some(format!(
                    "problem `{field}` must be a non-empty string: {problem}"
                ));
            }
        }
        if problem["status"].as_u64() != Some(u64::from(self.status)) {
            return Some(format!(
                "problem `status` must repeat HTTP {}: {problem}",
                self.status
            ));
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// An HS256 JWT signed with [`SECRET`], valid for an hour.
pub fn token(sub: &str, roles: &[&str]) -> String {
    sign_jwt(
        SECRET.as_bytes(),
        &json!({ "sub": sub, "roles": roles, "exp": now_s() + 3600 }),
    )
}

/// An HS256 JWT with arbitrary claims.
pub fn sign_jwt(secret: &[u8], claims: &Value) -> String {
    sign_jwt_with_header(secret, &json!({ "alg": "HS256", "typ": "JWT" }), claims)
}

/// A JWT with an arbitrary header, signed with HMAC-SHA256 whatever the header says.
pub fn sign_jwt_with_header(secret: &[u8], header: &Value, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The claims of a JWT (not verified).
pub fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap_or_else(|e| panic!("JWT payload is not base64url ({e}): {token:?}"));
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// Runs the `gavel` binary with `GAVEL_AUTH_SECRET` = `secret`.
pub fn run_gavel(args: &[&str], secret: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(args)
        .env("GAVEL_AUTH_SECRET", secret)
        .env_remove("GAVEL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run the gavel binary")
}

/// Runs `gavel` with `GAVEL_AUTH_SECRET` unset, for a command that must exit by itself (such as
/// a `gavel serve` that refuses its flags); kills it and panics after `timeout`.
pub fn run_gavel_bounded(args: &[&str], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let out = std::fs::File::create(&out_path).expect("create the stdout file");
    let err = std::fs::File::create(&err_path).expect("create the stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(args)
        .env_remove("GAVEL_AUTH_SECRET")
        .env_remove("GAVEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run the gavel binary");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the gavel process") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gavel {args:?} did not exit within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// How long `gavel serve` may take to refuse its flags.
const SERVE_REFUSAL_WITHIN: Duration = Duration::from_secs(10);

/// `gavel serve` with extra flags and environment, and what its refusal must say.
pub type Refusal<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

/// Asserts that `gavel serve` refuses each case at once: it exits 2 with a message that says
/// the case's words, and never creates its data dir.
pub fn assert_serve_refused(cases: Vec<Refusal>) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (flags, env, message) in cases {
        let data_dir = dir.path().join("data");
        let data = data_dir.to_str().expect("utf-8 path");
        let mut args = vec!["serve", "--data-dir", data];
        args.extend(&flags);
        let output = run_gavel_to_exit(&args, &env, SERVE_REFUSAL_WITHIN);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "gavel {args:?} with {env:?} must exit with a usage error; stderr: {stderr}"
        );
        assert!(
            stderr.contains(message),
            "gavel {args:?} with {env:?} must say {message:?}; stderr: {stderr}"
        );
        assert!(
            !data_dir.exists(),
            "a refused node must not touch its data dir ({args:?})"
        );
    }
}

/// Runs `gavel <args>` with `env` added, for a command expected to end by itself (a
/// `gavel serve` refusing its flags); kills it and panics if it still runs after `within`.
pub fn run_gavel_to_exit(args: &[&str], env: &[(&str, &str)], within: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(args)
        .envs(env.iter().copied())
        .env("GAVEL_AUTH_SECRET", SECRET)
        .env_remove("GAVEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the gavel binary");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("poll the gavel process").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("reap the gavel process");
            panic!(
                "gavel {args:?} still ran after {within:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    child.wait_with_output().expect("collect the gavel output")
}

/// `gavel token --sub S --role R... --ttl 1h`, checked to exit 0 and print only a token.
pub fn cli_token(sub: &str, roles: &[&str]) -> String {
    let mut args = vec!["token", "--sub", sub];
    for role in roles {
        args.extend(["--role", role]);
    }
    args.extend(["--ttl", "1h"]);
    let output = run_gavel(&args, SECRET);
    assert!(
        output.status.success(),
        "gavel {args:?} failed: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)
        .expect("the token is UTF-8")
        .trim()
        .to_owned();
    assert_eq!(
        token.split('.').count(),
        3,
        "gavel token must print just the JWT on stdout, got {token:?}"
    );
    token
}

// ---------------------------------------------------------------------------------------------
// Time, money and shapes

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn now_s() -> i64 {
    Utc::now().timestamp()
}

/// Milliseconds since the epoch as API.md formats times: UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .expect("a representable time")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a response time, checking the exact `YYYY-MM-DDTHH:MM:SS.mmmZ` form.
#[track_caller]
pub fn time_ms(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a time must be a string, got {value}"));
    let bytes = text.as_bytes();
    let well_formed = bytes.len() == 24
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            23 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(
        well_formed,
        "time {text:?} is not RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
    );
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("time {text:?} does not parse: {e}"))
        .timestamp_millis()
}

/// Parses a response money string, checking the form: a JSON string, no sign, no exponent,
/// 2 to 6 fractional digits.
#[track_caller]
pub fn money(value: &Value) -> Decimal {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("money must be a JSON string, got {value}"));
    let (int, frac) = text
        .split_once('.')
        .unwrap_or_else(|| panic!("money {text:?} has no fractional part"));
    let well_formed = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'))
        && (2..=6).contains(&frac.len())
        && frac.bytes().all(|b| b.is_ascii_digit());
    assert!(well_formed, "money {text:?} is not like \"125.50\"");
    Decimal::from_str(text).expect("money parses")
}

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("a decimal literal")
}

/// Money as the server formats it: at least two fractional digits, at most six, no trailing
/// zeros beyond the second.
pub fn money_text(amount: Decimal) -> String {
    let mut normalized = amount.normalize();
    if normalized.scale() < 2 {
        normalized.rescale(2);
    }
    normalized.to_string()
}

pub fn object_keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

pub fn sorted(keys: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    keys.sort();
    keys
}

/// The auction JSON of API.md: exactly its fields, each of its type.
#[track_caller]
pub fn assert_auction_shape(a: &Value) {
    assert_eq!(
        object_keys(a),
        sorted(&AUCTION_FIELDS),
        "auction fields: {a}"
    );
    for field in ["id", "postId", "creatorId"] {
        let text = a[field].as_str().unwrap_or_else(|| panic!("{field}: {a}"));
        assert!(!text.is_empty(), "{field} is empty: {a}");
    }
    let status = a["status"].as_str().expect("status string");
    assert!(
        ["scheduled", "active", "paused", "ended"].contains(&status),
        "status {status:?}"
    );
    for field in ["startAt", "endAt", "createdAt"] {
        time_ms(&a[field]);
    }
    for field in ["startPrice", "minIncrement", "currentPrice"] {
        money(&a[field]);
    }
    assert!(a["antiSnipingSeconds"].is_u64(), "antiSnipingSeconds: {a}");
    assert!(a["bidCount"].is_u64(), "bidCount: {a}");
    assert!(
        a["version"].as_u64().is_some_and(|v| v >= 1),
        "version: {a}"
    );
    assert!(
        a["currentWinnerId"].is_null() || a["currentWinnerId"].is_string(),
        "currentWinnerId: {a}"
    );
    assert_eq!(
        a["currentWinnerId"].is_null(),
        a["bidCount"] == 0,
        "a winner exactly when there are accepted bids: {a}"
    );
    if status == "ended" {
        time_ms(&a["endedAt"]);
    } else {
        assert!(
            a["endedAt"].is_null(),
            "endedAt must be null until ended: {a}"
        );
    }
}

/// The bid response of API.md.
#[track_caller]
pub fn assert_bid_reply_shape(r: &Value) {
    assert_eq!(
        object_keys(r),
        sorted(&BID_REPLY_FIELDS),
        "bid reply fields: {r}"
    );
    assert_decision_fields(r);
    money(&r["currentPrice"]);
    assert!(
        r["currentWinnerId"].is_null() || r["currentWinnerId"].is_string(),
        "currentWinnerId: {r}"
    );
    time_ms(&r["endAt"]);
    if r["status"] == "accepted" {
        assert_eq!(
            r["currentPrice"], r["amount"],
            "accepted: price = amount: {r}"
        );
    }
}

/// One entry of the bid history of API.md.
#[track_caller]
pub fn assert_history_shape(h: &Value) {
    assert_eq!(
        object_keys(h),
        sorted(&BID_HISTORY_FIELDS),
        "history fields: {h}"
    );
    assert_decision_fields(h);
    assert!(
        h["bidderId"].as_str().is_some_and(|s| !s.is_empty()),
        "bidderId: {h}"
    );
    time_ms(&h["createdAt"]);
    assert!(h["seq"].as_u64().is_some_and(|s| s >= 1), "seq: {h}");
}

#[track_caller]
fn assert_decision_fields(d: &Value) {
    assert!(
        d["bidId"].as_str().is_some_and(|s| !s.is_empty()),
        "bidId: {d}"
    );
    money(&d["amount"]);
    assert!(
        d["version"].as_u64().is_some_and(|v| v >= 1),
        "version: {d}"
    );
    match d["status"].as_str() {
        Some("accepted") => assert!(d["reason"].is_null(), "accepted has no reason: {d}"),
        Some("rejected") => {
            let reason = d["reason"].as_str().unwrap_or_default();
            assert!(
                [
                    "below_minimum",
                    "not_started",
                    "paused",
                    "ended",
                    "self_bid"
                ]
                .contains(&reason),
                "unknown reason: {d}"
            );
        }
        _ => panic!("bid status must be accepted or rejected: {d}"),
    }
}

/// A create body: `startAt`/`endAt` relative to now, start price 10.00, increment 1.00.
pub fn auction_body(post_id: &str, start_in_ms: i64, end_in_ms: i64) -> Value {
    let now = now_ms();
    json!({
        "postId": post_id,
        "startAt": rfc3339(now + start_in_ms),
        "endAt": rfc3339(now + end_in_ms),
        "startPrice": "10.00",
        "minIncrement": "1.00",
    })
}

/// An auction that is active at once and ends in an hour.
pub fn active_auction_body(post_id: &str) -> Value {
    auction_body(post_id, -60_000, 3_600_000)
}

/// Asserts that `history` holds the decision `reply` answered `bidder`, as it was answered.
#[track_caller]
pub fn assert_kept(history: &[Value], reply: &Value, bidder: &str) {
    let entry = history
        .iter()
        .find(|h| h["bidId"] == reply["bidId"])
        .unwrap_or_else(|| panic!("acknowledged bid lost: {reply}"));
    assert_eq!(entry["bidderId"], bidder);
    for field in ["amount", "status", "reason", "version"] {
        assert_eq!(entry[field], reply[field], "{field} of {reply}");
    }
}

/// Replays a decision log through a model of the rules, for an auction that stayed active with
/// no status change: each decision is accepted iff it reaches the minimum (`startPrice` first,
/// then the last accepted amount + `minIncrement`), otherwise rejected `below_minimum`; `seq`
/// counts from 1 and `version` grows by exactly 1 per accepted bid. Returns the last accepted.
#[track_caller]
pub fn check_chain<'h>(auction: &Value, history: &'h [Value]) -> Option<&'h Value> {
    let start_price = money(&auction["startPrice"]);
    let increment = money(&auction["minIncrement"]);
    let mut last: Option<&Value> = None;
    let mut version = auction["version"].as_u64().expect("version");
    for (i, entry) in history.iter().enumerate() {
        assert_eq!(entry["seq"], i + 1, "seq is consecutive from 1");
        let amount = money(&entry["amount"]);
        let minimum = match last {
            None => start_price,
            Some(previous) => money(&previous["amount"]) + increment,
        };
        if amount >= minimum {
            assert_eq!(
                entry["status"], "accepted",
                "{amount} >= minimum {minimum}: {entry}"
            );
            version += 1;
            last = Some(entry);
        } else {
            assert_eq!(
                entry["status"], "rejected",
                "{amount} < minimum {minimum}: {entry}"
            );
            assert_eq!(entry["reason"], "below_minimum", "{entry}");
        }
        assert_eq!(
            entry["version"],
            version,
            "version after decision {}: {entry}",
            i + 1
        );
    }
    last
}

/// Checks that the auction's state is the last accepted bid of `history`.
#[track_caller]
pub fn assert_state_matches(created: &Value, state: &Value, history: &[Value]) {
    let accepted: Vec<&Value> = history
        .iter()
        .filter(|h| h["status"] == "accepted")
        .collect();
    match accepted.last() {
        Some(last) => {
            assert_eq!(
                state["currentPrice"], last["amount"],
                "price = last accepted"
            );
            assert_eq!(
                state["currentWinnerId"], last["bidderId"],
                "winner = last accepted"
            );
            assert_eq!(
                state["version"], last["version"],
                "version = last accepted's"
            );
        }
        None => {
            assert_eq!(state["currentPrice"], created["startPrice"]);
            assert_eq!(state["currentWinnerId"], Value::Null);
        }
    }
    assert_eq!(
        state["bidCount"],
        accepted.len(),
        "bidCount = accepted bids"
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting and randomness

/// Polls `probe` every [`POLL_INTERVAL_MS`] until it yields `Some`, panicking after `timeout`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Sleeps until the wall clock reaches `ms` since the epoch. For tests whose point is that
/// time passes (a deadline must go by), not for waiting on a condition.
pub async fn sleep_until_wall_ms(ms: i64) {
    let wait = ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// The seed of a randomized test: `GAVEL_TEST_SEED` if set, else random. Printed for replay.
pub fn test_seed() -> u64 {
    let seed = match std::env::var("GAVEL_TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("GAVEL_TEST_SEED={text:?} is not a u64: {e}")),
        Err(_) => rand::random(),
    };
    eprintln!("test seed: {seed} (replay with GAVEL_TEST_SEED={seed})");
    seed
}

/// A unique idempotency key.
pub fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A JSON number sent with its digits as written, never through `f64` (serde_json keeps the
/// text with `arbitrary_precision`; it may only respell an exponent, `1e12` as `1e+12`).
pub fn raw_number(text: &str) -> Value {
    let value: Value = serde_json::from_str(text).expect("a JSON number");
    assert!(value.is_number(), "{text} is not a JSON number");
    value
}

/// The samples of one metric family: (labels, value) for `name`, `name_bucket`, etc.
pub fn metric_samples<'t>(text: &'t str, name: &str) -> Vec<(&'t str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            metric.starts_with(name).then(|| {
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|e| panic!("bad sample value in {line:?}: {e}"));
                (series, value)
            })
        })
        .collect()
}
