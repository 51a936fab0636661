//! TLS from the command line: the security flags of `gavel serve` checked together, their PEM
//! files read into rustls types (every failure a clear error naming the flag and the file,
//! never a panic), and the trust of `--cacert` for the client commands (`gavel cluster`,
//! `gavel bench`).
//!
//! It decides no trust itself: the peer transport (`gavel_raft::transport`, via `PeerTls`) and
//! the HTTP listener (`crate::http::tls`) do. This module only turns files into their inputs.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use gavel_cluster::PeerTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::config::ServeArgs;

impl ServeArgs {
    /// Both-or-none and all-or-none rules of the TLS flags; the message is a usage error.
    pub fn check_tls(&self) -> Result<(), String> {
        let peer = [
            ("--peer-cert-file", self.peer_cert_file.is_some()),
            ("--peer-key-file", self.peer_key_file.is_some()),
            (
                "--peer-trusted-ca-file",
                self.peer_trusted_ca_file.is_some(),
            ),
        ];
        let client = [
            ("--cert-file", self.cert_file.is_some()),
            ("--key-file", self.key_file.is_some()),
        ];
        for (what, set) in [("peer TLS", &peer[..]), ("HTTPS", &client[..])] {
            let given: Vec<&str> = set.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
            if !given.is_empty() && given.len() != set.len() {
                let all: Vec<&str> = set.iter().map(|(f, _)| *f).collect();
                return Err(format!(
                    "{what} needs all of {} together; only {} given",
                    all.join(", "),
                    given.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The peer transport's mutual TLS, when its three flags are set.
    pub fn peer_tls(&self) -> anyhow::Result<Option<PeerTls>> {
        let (Some(cert), Some(key), Some(ca)) = (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) else {
            return Ok(None);
        };
        let chain = read_certs("--peer-cert-file", cert)?;
        let key = read_key("--peer-key-file", key)?;
        let trusted = read_certs("--peer-trusted-ca-file", ca)?;
        let tls = PeerTls::new(chain, key, trusted).with_context(|| {
            format!(
                "peer TLS from --peer-cert-file {} and --peer-trusted-ca-file {}",
                cert.display(),
                ca.display()
            )
        })?;
        Ok(Some(tls))
    }

    /// The HTTPS configuration of the client port, when `--cert-file` and `--key-file` are set.
    pub fn http_tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        let chain = read_certs("--cert-file", cert)?;
        let key = read_key("--key-file", key)?;
        let config = crate::http::tls::server_config(chain, key).with_context(|| {
            format!(
                "HTTPS from --cert-file {} (its key does not fit?)",
                cert.display()
            )
        })?;
        Ok(Some(config))
    }

    /// Says loudly that peers talk in the clear on a port other machines can reach.
    pub fn warn_if_peers_unprotected(&self) {
        if self.peer_cert_file.is_some() || host_is_loopback(&self.peer_listen) {
            return;
        }
        tracing::warn!(
            node_id = self.node_id,
            peer_listen = %self.peer_listen,
            "INSECURE: the Raft peer port is not on loopback and peer TLS is off: anyone who \
             can reach it can read the replicated data and impersonate a node. Set \
             --peer-cert-file, --peer-key-file and --peer-trusted-ca-file (see README, \
             \"Running securely\")"
        );
        eprintln!(
            "WARNING: peer port {} is not loopback and peer TLS is off (insecure; see README \"Running securely\")",
            self.peer_listen
        );
    }
}

/// Whether `HOST:PORT` names a loopback host.
fn host_is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn read_file(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// Every certificate of a PEM file, in order; at least one.
pub fn read_certs(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag}: {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{flag}: {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
            path.display()
        );
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(flag: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{flag}: {} holds no usable private key (expected PEM \"BEGIN PRIVATE KEY\")",
            path.display()
        )
    })
}

/// An HTTP client builder for `https://` endpoints: rustls, the public web roots, and the
/// certificates of `cacert` (`--cacert`) for a private CA.
pub fn http_client(cacert: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(path) = cacert {
        let pem = read_file("--cacert", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--cacert: {} is not valid PEM", path.display()))?;
        if certs.is_empty() {
            bail!("--cacert: {} holds no certificate", path.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// The TLS configuration for `wss://` with `--cacert`: only that CA is trusted. `None` without
/// it: the WebSocket client's own (public web roots).
pub fn ws_tls(cacert: Option<&Path>) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(path) = cacert else { return Ok(None) };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("--cacert", path)? {
        roots.add(cert).with_context(|| {
            format!(
                "--cacert: a certificate of {} is not usable",
                path.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS client configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for yes in [
            "127.0.0.1:9080",
            "127.0.0.3:1",
            "[::1]:9080",
            "localhost:9080",
        ] {
            assert!(host_is_loopback(yes), "{yes}");
        }
        for no in ["0.0.0.0:9080", "10.0.0.2:9080", "node-1:9080", "[::]:1"] {
            assert!(!host_is_loopback(no), "{no}");
        }
    }
}
