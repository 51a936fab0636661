//! Peer mutual TLS: who may be a peer, decided once for both directions of a connection.
//!
//! With `PeerTls` configured the peer port speaks only TLS 1.3 (rustls on ring). Both ends show
//! a certificate and accept only a chain to the trusted CA: the accepting side requires a client
//! certificate (`WebPkiClientVerifier`, which also wants the `clientAuth` usage); the dialing
//! side verifies the server's chain (`serverAuth` usage) *and* that the certificate names the
//! host it dialed: an IP SAN for an address such as `10.0.0.2:9080`, a DNS SAN for a name. So a
//! node's certificate carries both usages and the address peers dial it at (`--peer-listen`,
//! or the one in `--initial-cluster`), which is how etcd's peer certificates are made too.
//!
//! What it does not decide: which node id a peer may claim. Any holder of a certificate from
//! the trusted CA is a member of the cluster, so the CA must issue peer certificates to this
//! cluster's nodes only.
//!
//! The handshake runs in the task of its one connection and is bounded by
//! `PEER_TLS_HANDSHAKE_TIMEOUT_MS`, so a peer that connects and stays silent holds nothing but
//! its own task. This module knows nothing of files: the binary reads the PEM.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The longest a peer TLS handshake may take, either side, in milliseconds. A healthy one
/// takes a round trip or two; this only bounds a peer that stalls.
pub const PEER_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Peer TLS handshakes that failed (refused certificate, timeout, plaintext peer), by side.
pub const PEER_TLS_HANDSHAKES_FAILED_TOTAL: &str = "gavel_peer_tls_handshakes_failed_total";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    #[error("the trusted CA file holds no certificate")]
    NoTrustedCa,
    #[error("a trusted CA certificate is not usable: {0}")]
    BadCa(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// Both halves of the peer TLS configuration. Cheap to clone.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls { TLS 1.3, mutual }")
    }
}

impl PeerTls {
    /// Builds the server and client configurations from this node's certificate chain (leaf
    /// first), its private key, and the CA certificates peers must chain to.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trusted_ca: Vec<CertificateDer<'static>>,
    ) -> Result<PeerTls, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        if trusted_ca.is_empty() {
            return Err(TlsError::NoTrustedCa);
        }
        let mut roots = RootCertStore::empty();
        for ca in trusted_ca {
            roots.add(ca).map_err(|e| TlsError::BadCa(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::BadCa(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The accepting side's handshake, bounded in time.
    pub(super) async fn accept(&self, tcp: TcpStream) -> io::Result<PeerStream> {
        let handshake = self.acceptor.accept(tcp);
        let stream = bounded(handshake, "accepted").await?;
        Ok(PeerStream::Tls(Box::new(stream.into())))
    }

    /// The dialing side's handshake with the peer at `addr` (`HOST:PORT`), whose certificate
    /// must name `HOST`; bounded in time.
    pub(super) async fn connect(&self, tcp: TcpStream, addr: &str) -> io::Result<PeerStream> {
        let name = server_name(addr)?;
        let handshake = self.connector.connect(name, tcp);
        let stream = bounded(handshake, "dialed").await?;
        Ok(PeerStream::Tls(Box::new(stream.into())))
    }
}

async fn bounded<T>(
    handshake: impl std::future::Future<Output = io::Result<T>>,
    side: &'static str,
) -> io::Result<T> {
    let timeout = Duration::from_millis(PEER_TLS_HANDSHAKE_TIMEOUT_MS);
    let outcome = match tokio::time::timeout(timeout, handshake).await {
        Ok(outcome) => outcome,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done within {PEER_TLS_HANDSHAKE_TIMEOUT_MS} ms"),
        )),
    };
    if outcome.is_err() {
        metrics::counter!(PEER_TLS_HANDSHAKES_FAILED_TOTAL, "side" => side).increment(1);
    }
    outcome
}

/// The name a dialed peer's certificate must carry: the host of `HOST:PORT`, an IP address
/// (brackets of IPv6 removed) or a DNS name.
pub(super) fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} has no host a certificate can name: {e}"),
        )
    })
}

/// One peer connection's byte stream: plain TCP, or TLS over TCP. The plain variant is split
/// into owned halves (no lock); the TLS one with `tokio::io::split`, as a TLS session is one
/// state for both directions.
pub(super) enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialed_hosts_become_server_names() {
        assert!(matches!(
            server_name("127.0.0.2:9080").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9080").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("node-1.example:9080").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }
}
