//! The live auction page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), driven over WebDriver by a minimal client here:
//! the page loads, shows the price, follows a bid made over HTTP, reconnects by itself when the
//! node restarts, places a bid through its own form, shows the countdown reach the end, and
//! the list page links to the auction. In a three-node cluster, the page follows the stream
//! from another node when its own node is killed, also when the others are full at first.
//!
//! Without the two binaries the test fails under CI and says so elsewhere (a developer machine
//! without a browser); nothing is downloaded.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show something the test waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the auction lasts: long enough to bid twice and restart the node, short enough to
/// watch it end.
const AUCTION_MS: i64 = 14_000;
/// How long the failover test's auction lasts: it must not end during the test.
const FAILOVER_AUCTION_MS: i64 = 120_000;
/// How long a bid through a survivor may take, the election after the kill included.
const FAILOVER_BID_WITHIN: Duration = Duration::from_secs(20);
/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver and the browser it started, in a process group of their own that is
/// killed on drop (a browser whose driver died would otherwise live on).
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(group) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: a plain syscall on the process group we created for the driver.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http,
            session: None,
            _profile: tempfile::tempdir().unwrap(),
        };
        let (http, status) = (driver.http.clone(), format!("{}/status", driver.base));
        poll_until("chromedriver to answer", PAGE_TIMEOUT, || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let reply = http.get(&status).send().await.ok()?;
                let body: Value = reply.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        driver.new_session().await;
        driver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if method == reqwest::Method::POST {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = reply.status();
        let body: Value = reply.json().await.expect("WebDriver answers JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {body}");
        body["value"].clone()
    }

    async fn new_session(&mut self) {
        let profile = self._profile.path().display().to_string();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--window-size=1100,900", format!("--user-data-dir={profile}")],
            },
        }}});
        let value = self
            .call(reqwest::Method::POST, "/session", capabilities)
            .await;
        self.session = Some(
            value["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        );
    }

    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_deref().unwrap())
    }

    async fn open(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.path("/url"),
            json!({ "url": url }),
        )
        .await;
    }

    /// Runs a script in the page and returns its value.
    async fn script_with(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            &self.path("/execute/sync"),
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn script(&self, script: &str) -> Value {
        self.script_with(script, json!([])).await
    }

    /// The text of the element with this id (empty when it does not exist).
    async fn text(&self, id: &str) -> String {
        let script =
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : '';";
        let value = self.script_with(script, json!([id])).await;
        value.as_str().unwrap_or_default().trim().to_owned()
    }

    /// Waits until element `id` shows text that `want` accepts; returns it.
    async fn wait_text(&self, id: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + PAGE_TIMEOUT;
        while std::time::Instant::now() < deadline {
            last = self.text(id).await;
            if want(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS * 5)).await;
        }
        panic!("#{id} did not show {what} within {PAGE_TIMEOUT:?}; it shows {last:?}");
    }

    async fn element(&self, css: &str) -> String {
        let value = self
            .call(
                reqwest::Method::POST,
                &self.path("/element"),
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        value[ELEMENT_KEY].as_str().expect("an element").to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        let base = format!("/element/{element}");
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("{base}/clear")),
            json!({}),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("{base}/value")),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &self.path(&format!("/element/{element}/click")),
            json!({}),
        )
        .await;
    }

    /// Ends the session: the browser quits.
    async fn quit(&mut self) {
        if self.session.is_some() {
            self.call(reqwest::Method::DELETE, &self.path(""), Value::Null)
                .await;
            self.session = None;
        }
    }

    /// Saves a PNG of the page when `GAVEL_BROWSER_SCREENSHOT_DIR` is set (for looking at it).
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("GAVEL_BROWSER_SCREENSHOT_DIR") else {
            return;
        };
        use base64::Engine as _;
        let value = self
            .call(reqwest::Method::GET, &self.path("/screenshot"), Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// Whether the browser is installed; fails under CI (where `.ci/run` installs it) when not.
fn browser_installed() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} and {CHROMEDRIVER} are missing: .ci/run installs chromium and chromium-driver"
        );
        eprintln!("SKIPPING the browser test: apt-get install chromium chromium-driver to run it");
    }
    present
}

#[tokio::test]
async fn the_live_page_follows_bids_and_counts_down_to_the_end() {
    if !browser_installed() {
        return;
    }
    let mut server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let erin = token("erin", &["bidder"]);
    let auction = server
        .create_auction(&carol, &auction_body("browser-post", -1_000, AUCTION_MS))
        .await;
    let id = auction["id"].as_str().unwrap();
    let mut driver = Driver::start().await;

    driver
        .open(&server.url(&format!("/a/{id}#token={erin}")))
        .await;
    driver
        .wait_text("price", "the start price", |t| t == "10.00")
        .await;
    driver
        .wait_text("connection", "a live stream", |t| t == "live")
        .await;
    assert_eq!(driver.text("title").await, "browser-post");
    assert_eq!(driver.text("status").await, "active");
    driver
        .wait_text("countdown", "a countdown", |t| t.contains(':'))
        .await;

    // A bid made over HTTP by someone else appears.
    server.bid_ok(&bob, id, "b1", json!("12.50")).await;
    driver
        .wait_text("price", "bob's bid", |t| t == "12.50")
        .await;
    driver
        .wait_text("winner", "bob leading", |t| t == "bob")
        .await;
    driver
        .wait_text("history", "bob's bid in the history", |t| {
            t.contains("12.50")
        })
        .await;
    driver.screenshot("after-http-bid").await;

    // The node goes away and comes back: the page reconnects by itself, resuming from the
    // version it shows, and keeps following.
    server.kill9();
    driver
        .wait_text("connection", "reconnecting", |t| {
            t.starts_with("reconnecting")
        })
        .await;
    server.restart().await;
    driver
        .wait_text("connection", "live again", |t| t == "live")
        .await;
    assert_eq!(driver.text("price").await, "12.50", "never an older state");

    // The page's own form (erin is a bidder): prefilled with the minimum next bid.
    let prefilled = "const f = document.getElementById('bid-form'); \
                     return f.hidden ? '' : document.getElementById('bid-amount').value;";
    let minimum = poll_until("the bid form, prefilled", PAGE_TIMEOUT, || async {
        let value = driver.script(prefilled).await;
        value.as_str().filter(|v| !v.is_empty()).map(str::to_owned)
    })
    .await;
    assert_eq!(minimum, "13.50", "12.50 + the 1.00 increment");
    driver.type_into("#bid-amount", "20").await;
    driver.click("#bid-submit").await;
    driver
        .wait_text("bid-result", "an accepted bid", |t| {
            t.starts_with("accepted")
        })
        .await;
    driver
        .wait_text("price", "erin's bid", |t| t == "20.00")
        .await;
    assert_eq!(driver.text("winner").await, "erin");
    let version = driver.wait_text("version", "version 3", |t| t == "3").await;
    assert_eq!(version, "3");

    // The deadline passes: the countdown reaches the end and the stream says ended.
    driver
        .wait_text("countdown", "Ended", |t| t == "Ended")
        .await;
    driver.wait_text("status", "ended", |t| t == "ended").await;
    driver
        .wait_text("connection", "the ended stream", |t| t == "auction ended")
        .await;
    assert_eq!(driver.text("price").await, "20.00");
    assert_eq!(driver.text("winner-label").await, "Winner");
    let form_hidden = driver
        .script("return document.getElementById('bid-form').offsetParent === null;")
        .await;
    assert_eq!(form_hidden, true, "no bid form once ended");
    driver.screenshot("ended").await;
    let state = server.get_auction(&carol, id).await;
    assert_eq!(state["status"], "ended");
    assert_eq!(state["currentWinnerId"], "erin");

    // The list page links to it.
    driver.open(&server.url("/")).await;
    driver
        .wait_text("auctions", "the auction listed", |t| {
            t.contains("browser-post")
        })
        .await;
    driver.screenshot("list").await;
    driver.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_another_node_when_its_node_is_killed() {
    if !browser_installed() {
        return;
    }
    let mut watch = Watching::start(ClusterConfig::default()).await;
    watch.cluster.kill9(watch.home);
    watch.bid_through_survivors("12.50").await;
    watch.await_bid_via_a_survivor("12.50").await;
    watch.driver.screenshot("failed-over").await;
    watch.driver.quit().await;
}

/// The survivors are full (`--viewers-max 1`, their slot taken) when the page's node dies: the
/// page reads their 503s across origins, keeps away from each until its `Retry-After` passed,
/// and comes live on one once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_honours_the_retry_after_of_full_nodes() {
    if !browser_installed() {
        return;
    }
    let mut config = ClusterConfig::default();
    for id in [2, 3] {
        config
            .node_args
            .insert(id, vec!["--viewers-max".into(), "1".into()]);
    }
    let mut watch = Watching::start(config).await;
    let mut held = Vec::new();
    for &id in &watch.survivors {
        let path = format!("/auctions/{}/stream", watch.auction_id);
        let resp = watch
            .cluster
            .api(id)
            .request(reqwest::Method::GET, &path, Some(&watch.viewer_token))
            .send()
            .await
            .expect("a stream that takes the node's one slot");
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    watch.cluster.kill9(watch.home);
    let refused = "const now = Date.now(); \
                   return [...nodes.retryAt.values()].filter((at) => at > now - 60000).length;";
    poll_until(
        "both full nodes' Retry-After read",
        PAGE_TIMEOUT,
        || async {
            let count = watch.driver.script(refused).await;
            (count == 2).then_some(())
        },
    )
    .await;
    assert!(watch
        .driver
        .text("connection")
        .await
        .starts_with("reconnecting"));
    // The held viewers leave; their nodes notice when the bid's frame cannot be written.
    drop(held);
    watch.bid_through_survivors("12.50").await;
    watch.await_bid_via_a_survivor("12.50").await;
    watch.driver.quit().await;
}

/// A cluster with an active auction and the live page watching it from node 1 (`home`), which
/// it has come live on and from which it learned every node.
struct Watching {
    cluster: Cluster,
    driver: Driver,
    home: u64,
    survivors: Vec<u64>,
    auction_id: String,
    viewer_token: String,
}

impl Watching {
    async fn start(config: ClusterConfig) -> Watching {
        let cluster = Cluster::start(config).await;
        let ids = cluster.ids();
        let (home, survivors) = (ids[0], ids[1..].to_vec());
        let carol = token("carol", &["creator"]);
        let vera = token("vera", &["viewer"]);
        let body = auction_body("failover-post", -1_000, FAILOVER_AUCTION_MS);
        let home_api = cluster.api(home);
        let auction = home_api.create_auction(&carol, &body).await;
        let id = auction["id"].as_str().expect("an id").to_owned();
        poll_until(
            "the page's node to hold the auction",
            PAGE_TIMEOUT,
            || async {
                let path = format!("/auctions/{id}?consistency=local");
                let resp =
                    try_send(home_api.request(reqwest::Method::GET, &path, Some(&vera))).await;
                resp.ok().filter(|r| r.status == 200).map(|_| ())
            },
        )
        .await;
        let driver = Driver::start().await;
        driver
            .open(&home_api.url(&format!("/a/{id}#token={vera}")))
            .await;
        driver
            .wait_text("connection", "a live stream", |t| t == "live")
            .await;
        let home_host = cluster.member(home).client_addr();
        assert_eq!(driver.text("via").await, format!("via {home_host}"));
        assert_eq!(driver.text("version").await, "1");
        poll_until("the page to know all three nodes", PAGE_TIMEOUT, || async {
            let known = driver.script("return nodes.urls.length;").await;
            (known == 3).then_some(())
        })
        .await;
        Watching {
            cluster,
            driver,
            home,
            survivors,
            auction_id: id,
            viewer_token: vera,
        }
    }

    /// A bid by bob through the survivors, retried there until decided (the groups the killed
    /// node led elect new leaders meanwhile).
    async fn bid_through_survivors(&self, amount: &str) {
        let bob = token("bob", &["bidder"]);
        let bid = BidRequest {
            token: &bob,
            auction_id: &self.auction_id,
            key: "after-the-kill",
            amount,
            within: FAILOVER_BID_WITHIN,
        };
        let reply = bid_until_decided(&self.cluster.apis(&self.survivors), &mut 0, &bid)
            .await
            .unwrap_or_else(|failure| panic!("{failure}\n{}", self.cluster.all_logs()));
        assert_eq!(reply["status"], "accepted", "{reply}");
    }

    /// The page shows the bid, live on a stream from a survivor.
    async fn await_bid_via_a_survivor(&self, amount: &str) {
        let driver = &self.driver;
        driver
            .wait_text("price", "the bid made after the kill", |t| t == amount)
            .await;
        driver.wait_text("version", "version 2", |t| t == "2").await;
        assert_eq!(driver.text("winner").await, "bob");
        driver
            .wait_text("connection", "a live stream", |t| t == "live")
            .await;
        let via = driver.text("via").await;
        let survivor_hosts: Vec<String> = self
            .survivors
            .iter()
            .map(|id| format!("via {}", self.cluster.member(*id).client_addr()))
            .collect();
        assert!(
            survivor_hosts.contains(&via),
            "{via} is not one of {survivor_hosts:?}"
        );
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_token() {
    let server = Server::start().await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/a/some-auction", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let resp = server.get_anonymous(path).await.expect_status(200);
        let got = resp.header("content-type").unwrap_or_default();
        assert!(got.starts_with(content_type), "{path}: {got}");
        assert!(resp.header("content-security-policy").is_some(), "{path}");
    }
    server
        .get_anonymous("/a/bad%20id")
        .await
        .expect_problem(404);
}
