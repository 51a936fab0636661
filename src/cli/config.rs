//! Command-line configuration: the flags of `gavel serve` and `gavel token`, their strict
//! parsers, and the checks that span several flags.
//!
//! Anything wrong here is a usage error (clap's exit code 2) before the node touches its data
//! dir. This module knows nothing of HTTP handlers or the engine's internals: it produces a
//! `ServeConfig` that `server.rs` turns into a running node.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use gavel_cluster::NodeConfig;

use crate::http::auth::Role;

/// The most Raft groups a cluster may be created with.
pub const GROUPS_MAX: u32 = 1024;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's id (unique in the cluster, >= 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Address the HTTP API listens on (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_host_port)]
    pub listen: String,
    /// Address the Raft peer transport listens on (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = parse_host_port)]
    pub peer_listen: String,
    /// Directory for this node's database and generated auth secret (created if missing).
    #[arg(long, default_value = "./gavel-data")]
    pub data_dir: PathBuf,
    /// The initial voters on first start: "1=HOST:PEERPORT,2=HOST:PEERPORT,...".
    /// Default: this node alone. Ignored once the data dir is initialized.
    #[arg(long, value_parser = parse_initial_cluster, conflicts_with = "join")]
    pub initial_cluster: Option<InitialCluster>,
    /// Raft groups auctions are spread over (fixed when the cluster is first initialized).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=GROUPS_MAX as i64))]
    pub groups: u32,
    /// File holding the HMAC secret for tokens (GAVEL_AUTH_SECRET takes precedence).
    #[arg(long)]
    pub auth_secret_file: Option<PathBuf>,
    /// Asymmetric tokens: public keys, issuer, audience, leeway.
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Start empty and wait to be added with `gavel cluster add`.
    #[arg(long)]
    pub join: bool,
    /// How long a write waits for its decision before answering 504 "outcome unknown".
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub propose_timeout_ms: u64,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub body_limit_bytes: u64,
    /// API requests handled at once by this node; more are answered 503 at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub requests_in_flight_max: u32,
    /// Bids per second one bidder may place through this node (0: unlimited); bursts of twice that.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub bid_rate_per_bidder: u32,
    /// A Raft group takes a snapshot (flushes its state and purges its log behind it) after this
    /// many entries. A follower that falls further behind than the log kept is sent a copy of
    /// the whole state instead.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..=100_000_000))]
    pub snapshot_after_entries: u64,
    /// Every this many milliseconds of a group's time, each replica digests the group's state
    /// at the same log entry and compares it with the other voters'; a node whose state
    /// differs from the majority's stops, and its next start brings that group's state back
    /// from a peer. 0: never. The same on every node: nodes with different intervals never
    /// find a common entry to compare.
    #[arg(long, env = "GAVEL_CONSISTENCY_CHECK_INTERVAL_MS", default_value_t = 600_000, value_parser = parse_check_interval_ms)]
    pub consistency_check_interval_ms: u64,
    /// How long shutdown waits for in-flight requests before closing them, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,
    /// Threads of the HTTP runtime (requests and SSE viewers; Raft has `--consensus-threads`,
    /// WebSocket viewers `--fanout-threads`). Default: one per CPU core.
    /// Nodes sharing a machine with others (a cluster on one box) do better with fewer: every
    /// hand-off between threads costs a wake-up, and idle threads steal work from busy ones.
    #[arg(long, env = "GAVEL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Threads of the node's consensus runtime: Raft, the peer transport, the state machine
    /// and deadline timers, kept apart from the HTTP and fan-out threads so that viewers can
    /// never delay a heartbeat. Default: half the CPU cores, at least one.
    #[arg(long, env = "GAVEL_CONSENSUS_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub consensus_threads: Option<u16>,
    /// Threads that send live updates to WebSocket viewers, kept apart from the HTTP threads
    /// so that a crowd of viewers never delays an API request (a bid). Default: one per core.
    #[arg(long, env = "GAVEL_FANOUT_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub fanout_threads: Option<u16>,
    /// The niceness of the fan-out threads (0-19, Linux). Higher runs them after the HTTP and
    /// consensus threads whenever those have work: a saturated node lets viewers (re)connect
    /// about twice as fast, its crowd's frames coalesce instead. Off by default: bid
    /// acknowledgements had a worse tail with it (docs/OPERATIONS.md).
    #[arg(long, env = "GAVEL_FANOUT_NICE", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub fanout_nice: u8,
    /// Live viewers (SSE and WebSocket together) this node serves at once; more are answered
    /// 503. Each holds a socket: keep it well below the process's open-files limit.
    #[arg(long, env = "GAVEL_VIEWERS_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub viewers_max: u32,
    /// How long one write to a live viewer (or any client) may stall before the connection is
    /// dropped, in milliseconds.
    #[arg(long, env = "GAVEL_VIEWER_SEND_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub viewer_send_timeout_ms: u64,
    /// The most this node's wall clock may differ from a majority of the voters' clocks, in
    /// milliseconds. Beyond it the node does not lead (it hands its groups over) and is not
    /// ready; no bid sent after an auction's end plus about this much is accepted.
    #[arg(long, env = "GAVEL_MAX_CLOCK_OFFSET_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub max_clock_offset_ms: u64,
    /// How often WebSocket viewers are pinged, in milliseconds; a viewer silent for three
    /// intervals is dropped.
    #[arg(long, env = "GAVEL_VIEWER_PING_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub viewer_ping_interval_ms: u64,

    // Security: TLS on the peer and client ports (etcd's flag names; checks and file reading
    // in `cli/tls.rs`).
    /// This node's peer certificate (PEM, leaf first), shown to peers both as server and as
    /// client: it must carry the serverAuth and clientAuth usages and name (IP or DNS SAN) the
    /// address peers dial this node at. With the next two flags: the peer port speaks only
    /// mutual TLS 1.3.
    #[arg(long, env = "GAVEL_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, env = "GAVEL_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA certificate(s) (PEM) every peer's certificate must chain to.
    #[arg(long, env = "GAVEL_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// The certificate (PEM, leaf first) of the HTTP API; with --key-file the API, live
    /// streams and the live page are served over HTTPS only.
    #[arg(long, env = "GAVEL_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, env = "GAVEL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The URL clients reach this node's HTTP API at (http:// or https://, host and port),
    /// announced to peers and in /cluster. Default: the --listen address. Required when
    /// --listen binds every interface (0.0.0.0 or [::]).
    #[arg(long, env = "GAVEL_ADVERTISE_CLIENT_URL", value_parser = parse_client_url)]
    pub advertise_client_url: Option<ClientUrl>,
    /// The HOST:PORT peers dial to reach this node's Raft transport, announced to peers and in
    /// /cluster. Default: the --peer-listen address. Required when --peer-listen binds every
    /// interface (0.0.0.0 or [::]).
    #[arg(long, env = "GAVEL_ADVERTISE_PEER_ADDR", value_parser = parse_advertised_addr)]
    pub advertise_peer_addr: Option<String>,
}

/// An advertised client URL: `http` or `https`, a host that is not a wildcard, and a port
/// (the scheme's default when left out). Nothing else: no path, query or user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientUrl {
    pub scheme: String,
    /// `HOST:PORT`, what `/cluster` and peers know this node's client address as.
    pub authority: String,
}

impl std::fmt::Display for ClientUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The user id (1-64 characters of [A-Za-z0-9_.-]).
    #[arg(long, value_parser = parse_sub)]
    pub sub: String,
    /// A role to grant; repeat for several.
    #[arg(long = "role", value_enum, required = true)]
    pub roles: Vec<Role>,
    /// Lifetime: 3600s, 30m, 1h, 2d (at most a year).
    #[arg(long, default_value = "1h", value_parser = crate::http::auth::parse_ttl)]
    pub ttl: i64,
    /// Data dir whose auth-secret to sign with (when neither GAVEL_AUTH_SECRET nor
    /// --auth-secret-file is given).
    #[arg(long, default_value = "./gavel-data")]
    pub data_dir: PathBuf,
    /// File holding the HMAC secret (GAVEL_AUTH_SECRET takes precedence).
    #[arg(long)]
    pub auth_secret_file: Option<PathBuf>,
    /// Signing with a private key, and the issuer and audience claims.
    #[command(flatten)]
    pub mint: MintArgs,
}

/// `(node id, peer address)` of every initial voter, ids unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster(pub Vec<(u64, String)>);

/// The shortest consistency check interval: each check commits its entry alone and reads a
/// group's whole state on every replica.
const CHECK_INTERVAL_MS_MIN: u64 = 1_000;
const CHECK_INTERVAL_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// `--consistency-check-interval-ms`: 0 (never), or 1 s to a week.
fn parse_check_interval_ms(text: &str) -> Result<u64, String> {
    let ms: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))?;
    match ms {
        0 | CHECK_INTERVAL_MS_MIN..=CHECK_INTERVAL_MS_MAX => Ok(ms),
        _ => Err(format!(
            "{ms} ms: give 0 (no checks) or {CHECK_INTERVAL_MS_MIN} to {CHECK_INTERVAL_MS_MAX} \
             (a week)"
        )),
    }
}

fn parse_sub(text: &str) -> Result<String, String> {
    crate::http::auth::check_sub(text).map(|()| text.to_owned())
}

/// Checks `HOST:PORT` (a name, an IPv4 address or a bracketed IPv6 address, and a port).
pub fn parse_host_port(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid address {text:?}: {why} (expected HOST:PORT)");
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>().map_err(|_| bad("bad port"))?;
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !host_ok {
        return Err(bad("bad host"));
    }
    Ok(text.to_owned())
}

/// Whether `addr` (a checked `HOST:PORT`) names every interface (`0.0.0.0`, `[::]`) rather
/// than one address: fine to bind, meaningless to announce.
pub fn is_wildcard(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// Checks an address to announce: `HOST:PORT`, and not a wildcard.
pub fn parse_advertised_addr(text: &str) -> Result<String, String> {
    let addr = parse_host_port(text)?;
    if is_wildcard(&addr) {
        return Err(format!(
            "{text:?} names every interface; advertise an address others can reach"
        ));
    }
    Ok(addr)
}

/// Parses `http://HOST[:PORT][/]` or `https://...` strictly (see [`ClientUrl`]).
pub fn parse_client_url(text: &str) -> Result<ClientUrl, String> {
    let bad = |why: &str| format!("invalid URL {text:?}: {why} (expected http://HOST:PORT)");
    let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad(
            "only a scheme, a host and a port (no path, query or user)",
        ));
    }
    // A port is there when the text after the last ':' follows the host, not inside [IPv6].
    let has_port = authority.rsplit_once(':').is_some_and(|(host, _)| {
        !host.is_empty() && (!host.starts_with('[') || host.ends_with(']'))
    });
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let authority = parse_advertised_addr(&authority).map_err(|why| bad(&why))?;
    Ok(ClientUrl { scheme, authority })
}

/// Parses `"1=HOST:PORT,2=HOST:PORT"` strictly: every entry `id=addr`, ids >= 1 and unique,
/// addresses unique.
pub fn parse_initial_cluster(text: &str) -> Result<InitialCluster, String> {
    let mut members = Vec::new();
    let mut ids = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("entry {entry:?} is not ID=HOST:PORT"))?;
        let id = id
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id >= 1)
            .ok_or_else(|| format!("entry {entry:?}: node id must be an integer >= 1"))?;
        // Peers dial these: a wildcard would name no node.
        let addr = parse_advertised_addr(addr.trim())?;
        if !ids.insert(id) {
            return Err(format!("node id {id} appears twice"));
        }
        if !addrs.insert(addr.clone()) {
            return Err(format!("address {addr} appears twice"));
        }
        members.push((id, addr));
    }
    Ok(InitialCluster(members))
}

impl ServeArgs {
    /// Checks the rules that span several flags; the message is a usage error.
    pub fn check(&self) -> Result<(), String> {
        if let Some(InitialCluster(members)) = &self.initial_cluster {
            match members.iter().find(|(id, _)| *id == self.node_id) {
                None => {
                    return Err(format!(
                        "--initial-cluster does not list this node (--node-id {}); add it or use --join",
                        self.node_id
                    ))
                }
                Some((_, addr)) if *addr != self.peer_addr() => tracing::warn!(
                    listed = %addr,
                    peer_addr = %self.peer_addr(),
                    "--initial-cluster lists this node at another address than it advertises; peers will dial the listed one"
                ),
                Some(_) => {}
            }
        }
        if self.listen == self.peer_listen {
            return Err("--listen and --peer-listen must differ".into());
        }
        self.check_tls()?;
        self.check_advertised()
    }

    /// A wildcard listen address is no address to announce: the advertised one is required.
    fn check_advertised(&self) -> Result<(), String> {
        if is_wildcard(&self.listen) && self.advertise_client_url.is_none() {
            return Err(format!(
                "--listen {} binds every interface, which clients and peers cannot be told to \
                 reach; give --advertise-client-url (e.g. http://10.0.0.5:8080)",
                self.listen
            ));
        }
        if is_wildcard(&self.peer_listen) && self.advertise_peer_addr.is_none() {
            return Err(format!(
                "--peer-listen {} binds every interface, which peers cannot be told to dial; \
                 give --advertise-peer-addr (e.g. 10.0.0.5:9080)",
                self.peer_listen
            ));
        }
        Ok(())
    }

    /// The peer address announced to peers: `--advertise-peer-addr`, else `--peer-listen`.
    pub fn peer_addr(&self) -> String {
        self.advertise_peer_addr
            .clone()
            .unwrap_or_else(|| self.peer_listen.clone())
    }

    /// The client URL announced: `--advertise-client-url`, else the bound listen address.
    pub fn client_url(&self, bound: &str) -> ClientUrl {
        self.advertise_client_url
            .clone()
            .unwrap_or_else(|| ClientUrl {
                scheme: if self.cert_file.is_some() {
                    "https"
                } else {
                    "http"
                }
                .into(),
                authority: bound.to_owned(),
            })
    }

    /// `http` or `https`, the scheme of [`ServeArgs::client_url`].
    pub fn client_scheme(&self, bound: &str) -> &'static str {
        match self.client_url(bound).scheme.as_str() {
            "https" => "https",
            _ => "http",
        }
    }

    /// How tokens are checked.
    pub fn auth_config(&self) -> crate::http::auth::AuthConfig {
        crate::http::auth::AuthConfig {
            secret_file: self.auth_secret_file.clone(),
            key_file: self.jwt.key_file(),
            checks: self.jwt.claim_checks(),
        }
    }

    /// The live-update settings.
    pub fn live_config(&self) -> crate::live::LiveConfig {
        crate::live::LiveConfig {
            viewers_max: usize::try_from(self.viewers_max).unwrap_or(usize::MAX),
            send_timeout_ms: self.viewer_send_timeout_ms,
            ping_interval_ms: self.viewer_ping_interval_ms,
        }
    }

    /// The engine's configuration. `bound` is the address the HTTP listener really bound,
    /// announced unless another one is advertised; `peer_tls` comes from
    /// [`ServeArgs::peer_tls`].
    pub fn node_config(&self, bound: &str, peer_tls: Option<gavel_cluster::PeerTls>) -> NodeConfig {
        NodeConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            groups: self.groups,
            client_addr: self.client_url(bound).authority,
            peer_addr: self.peer_addr(),
            peer_listen: self.peer_listen.clone(),
            initial_cluster: self
                .initial_cluster
                .as_ref()
                .map(|c| c.0.clone())
                .unwrap_or_default(),
            join: self.join,
            propose_timeout_ms: self.propose_timeout_ms,
            snapshot_after_entries: self.snapshot_after_entries,
            max_clock_offset_ms: self.max_clock_offset_ms,
            peer_tls,
            consistency_check_interval_ms: self.consistency_check_interval_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens signed with public-key algorithms (`gavel serve` checks them, `gavel token` mints them).

/// The longest clock leeway on `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_S_MAX: u64 = 300;

/// How `gavel serve` checks tokens beyond the HS256 secret. With a public key file, HS256 is
/// accepted only when a secret is given explicitly (GAVEL_AUTH_SECRET or --auth-secret-file).
#[derive(Args, Debug, Clone)]
pub struct JwtArgs {
    /// A PEM public key (RSA, EC P-256 or Ed25519) that signs tokens; the algorithm (RS256,
    /// ES256, EdDSA) follows from the key. Re-read when it changes and on SIGHUP.
    #[arg(long, env = "GAVEL_JWT_PUBLIC_KEY_FILE", conflicts_with = "jwks_file")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// The key id of --jwt-public-key-file: tokens that carry a `kid` must name it. Without
    /// it, tokens with a `kid` are refused.
    #[arg(long, env = "GAVEL_JWT_PUBLIC_KEY_ID", requires = "jwt_public_key_file", value_parser = parse_claim_text)]
    pub jwt_public_key_id: Option<String>,
    /// A JWKS document (RFC 7517) of the keys that sign tokens, chosen by the token's `kid`.
    /// Re-read when it changes and on SIGHUP: rotate keys by editing it.
    #[arg(long, env = "GAVEL_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// When set, every token must carry this `iss`.
    #[arg(long, env = "GAVEL_JWT_ISSUER", value_parser = parse_claim_text)]
    pub jwt_issuer: Option<String>,
    /// When set, every token's `aud` must be (or contain) this.
    #[arg(long, env = "GAVEL_JWT_AUDIENCE", value_parser = parse_claim_text)]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(long, env = "GAVEL_JWT_LEEWAY_S", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=JWT_LEEWAY_S_MAX))]
    pub jwt_leeway_s: u64,
}

/// How `gavel token` signs: the HS256 secret unless a private key is given.
#[derive(Args, Debug, Clone)]
pub struct MintArgs {
    /// Sign with this PEM private key (PKCS#8 RSA, EC P-256 or Ed25519) instead of the secret;
    /// the algorithm (RS256, ES256, EdDSA) follows from the key.
    #[arg(
        long,
        env = "GAVEL_JWT_PRIVATE_KEY_FILE",
        conflicts_with = "auth_secret_file"
    )]
    pub private_key_file: Option<PathBuf>,
    /// The key id to put in the token header (`kid`), as the node's JWKS names the key.
    #[arg(long, env = "GAVEL_JWT_KID", requires = "private_key_file", value_parser = parse_claim_text)]
    pub kid: Option<String>,
    /// The `iss` claim (the node checks it when started with --jwt-issuer).
    #[arg(long, env = "GAVEL_JWT_ISSUER", value_parser = parse_claim_text)]
    pub issuer: Option<String>,
    /// The `aud` claim (the node checks it when started with --jwt-audience).
    #[arg(long, env = "GAVEL_JWT_AUDIENCE", value_parser = parse_claim_text)]
    pub audience: Option<String>,
}

/// The longest key id, issuer or audience accepted on the command line, in bytes.
const CLAIM_TEXT_LEN_MAX: usize = 256;

fn parse_claim_text(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > CLAIM_TEXT_LEN_MAX || text.chars().any(char::is_control) {
        return Err(format!(
            "must be 1-{CLAIM_TEXT_LEN_MAX} bytes without control characters"
        ));
    }
    Ok(text.to_owned())
}

impl JwtArgs {
    /// The public key file, if any, and what it holds.
    pub fn key_file(&self) -> Option<crate::http::auth::KeyFile> {
        use crate::http::auth::{KeyFile, KeyFormat};
        match (&self.jwt_public_key_file, &self.jwks_file) {
            (Some(path), _) => Some(KeyFile {
                path: path.clone(),
                format: KeyFormat::Pem {
                    kid: self.jwt_public_key_id.clone(),
                },
            }),
            (None, Some(path)) => Some(KeyFile {
                path: path.clone(),
                format: KeyFormat::Jwks,
            }),
            (None, None) => None,
        }
    }

    pub fn claim_checks(&self) -> crate::http::auth::ClaimChecks {
        crate::http::auth::ClaimChecks {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_s: self.jwt_leeway_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_intervals() {
        assert_eq!(parse_check_interval_ms("0"), Ok(0));
        assert_eq!(parse_check_interval_ms("1000"), Ok(1_000));
        assert_eq!(parse_check_interval_ms("604800000"), Ok(604_800_000));
        for bad in ["", "-1", "1.5", "999", "1", "604800001", "ten"] {
            assert!(parse_check_interval_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_ports() {
        for good in [
            "127.0.0.1:8080",
            "localhost:1",
            "node-1.example.com:9080",
            "[::1]:80",
            "0.0.0.0:0",
        ] {
            assert!(parse_host_port(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "8080",
            ":8080",
            "host:",
            "host:65536",
            "host:-1",
            "ho st:1",
            "::1:80",
            "[zz]:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_urls() {
        let url = parse_client_url("http://127.0.0.2:8080").unwrap();
        assert_eq!(
            (url.scheme.as_str(), url.authority.as_str()),
            ("http", "127.0.0.2:8080")
        );
        assert_eq!(url.to_string(), "http://127.0.0.2:8080");
        let defaults = [
            ("https://auction.example.com", "auction.example.com:443"),
            ("HTTP://node-1:80/", "node-1:80"),
            ("http://[fd00::5]", "[fd00::5]:80"),
            ("http://[fd00::5]:8080", "[fd00::5]:8080"),
        ];
        for (text, authority) in defaults {
            assert_eq!(
                parse_client_url(text).unwrap().authority,
                authority,
                "{text}"
            );
        }
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://host:1",
            "http://",
            "http://:8080",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://host:8080/api",
            "http://user@host:8080",
            "http://host:8080?x=1",
            "http://host:99999",
            "http://ho st:1",
        ] {
            assert!(parse_client_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_bind_but_are_never_advertised() {
        for wildcard in ["0.0.0.0:8080", "[::]:8080", "[0:0:0:0:0:0:0:0]:1"] {
            assert!(is_wildcard(wildcard), "{wildcard}");
            assert!(parse_advertised_addr(wildcard).is_err(), "{wildcard}");
        }
        for specific in ["127.0.0.1:8080", "[::1]:80", "node-1:9080", "10.0.0.5:9080"] {
            assert!(!is_wildcard(specific), "{specific}");
            assert_eq!(parse_advertised_addr(specific).unwrap(), specific);
        }
        assert!(parse_advertised_addr("nohost").is_err());
    }

    #[test]
    fn initial_clusters() {
        let parsed = parse_initial_cluster("1=a:1,2=b:2, 3=c:3").unwrap();
        assert_eq!(
            parsed.0,
            vec![(1, "a:1".into()), (2, "b:2".into()), (3, "c:3".into())]
        );
        for bad in [
            "",
            "1",
            "1=",
            "=a:1",
            "0=a:1",
            "x=a:1",
            "1=a:1,1=b:2",
            "1=a:1,2=a:1",
            "1=a:1,",
            "1=a",
            "1=0.0.0.0:9080",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?}");
        }
    }
}
