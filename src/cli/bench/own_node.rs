//! A single Gavel node that a load tool starts for its run when it is given no endpoint: this
//! same binary, `gavel serve` on free loopback ports, a fresh temporary data dir, a random
//! secret passed through the environment. Dropping it kills the process and removes the dir.
//!
//! It knows how to start and wait for a node, nothing about what the tool then measures.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::http::auth::Secret;

/// How long a node this tool started may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(50);

/// The node, its base URL and the secret its tokens must be signed with.
pub struct OwnNode {
    pub base: String,
    pub secret: Secret,
    child: Child,
    dir: PathBuf,
}

impl OwnNode {
    /// Starts `gavel serve` with `extra` flags (beyond listen addresses and data dir) and waits
    /// until it is ready. `purpose` names the temp dir (`gavel-<purpose>-<pid>`).
    pub async fn start(
        purpose: &str,
        extra: &[String],
        http: &reqwest::Client,
    ) -> anyhow::Result<OwnNode> {
        let secret_text = format!("{:032x}", rand::random::<u128>());
        let secret = Secret::new(secret_text.clone().into_bytes()).map_err(anyhow::Error::msg)?;
        let dir = std::env::temp_dir().join(format!("gavel-{purpose}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", &listen, "--peer-listen"])
            .arg(format!("127.0.0.1:{}", free_port()?))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .env("GAVEL_AUTH_SECRET", &secret_text)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a gavel node")?;
        let node = OwnNode {
            base: format!("http://{listen}"),
            secret,
            child,
            dir,
        };
        wait_ready(http, &node.base).await?;
        Ok(node)
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `/readyz` until it answers 200, for at most `READY_TIMEOUT`.
pub async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
    bail!("the node at {base} was not ready within {READY_TIMEOUT:?}")
}
