//! Peer mutual TLS on real loopback sockets, in process: two transports with certificates from
//! one CA connect and answer a clock probe; a dialer refuses a peer whose certificate does not
//! name the dialed address, and a node refuses a peer from another CA and a plaintext peer.
//! Certificates are made here (rcgen), so the test needs no tool.

use std::net::IpAddr;
use std::time::Duration;

use gavel_raft::transport::{CallError, PeerTls, Transport, TransportConfig};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long a call may wait for a connection that should come up.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call waits for a connection that must be refused (it fails at this bound: the
/// dialer keeps retrying until then).
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A node certificate (server and client usage) naming `ip`, and this CA as trust.
    fn node_tls(&self, ip: &str) -> PeerTls {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, ip);
        params.subject_alt_names = vec![SanType::IpAddress(ip.parse::<IpAddr>().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let ca: CertificateDer<'static> = self.cert.der().clone();
        PeerTls::new(vec![cert.der().clone()], key, vec![ca]).unwrap()
    }
}

async fn node(id: u64, tls: Option<PeerTls>) -> (Transport, String) {
    let mut config = TransportConfig::new(id, String::new(), String::new());
    config.tls = tls;
    let (transport, addr) = Transport::start(config, "127.0.0.1:0").await.unwrap();
    (transport, addr.to_string())
}

/// Node 1 dials node 2 and asks for its clock.
async fn probe(
    one: Option<PeerTls>,
    two: Option<PeerTls>,
    timeout: Duration,
) -> Result<(), CallError> {
    let (first, _) = node(1, one).await;
    let (second, second_addr) = node(2, two).await;
    first.set_peer_addr(2, &second_addr);
    let outcome = first.probe_clock(2, timeout).await.map(|_| ());
    first.shutdown();
    second.shutdown();
    outcome
}

#[tokio::test]
async fn peers_with_certificates_from_the_trusted_ca_talk() {
    let ca = Ca::new("cluster CA");
    let outcome = probe(
        Some(ca.node_tls("127.0.0.1")),
        Some(ca.node_tls("127.0.0.1")),
        CALL_TIMEOUT,
    )
    .await;
    outcome.expect("a clock probe over mutual TLS");
}

#[tokio::test]
async fn a_dialer_refuses_a_certificate_that_does_not_name_the_dialed_address() {
    let ca = Ca::new("cluster CA");
    let outcome = probe(
        Some(ca.node_tls("127.0.0.1")),
        Some(ca.node_tls("127.0.0.9")),
        REFUSED_WITHIN,
    )
    .await;
    assert!(
        matches!(outcome, Err(CallError::Unreachable { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_node_refuses_a_peer_from_another_ca() {
    let ours = Ca::new("cluster CA");
    let theirs = Ca::new("another CA");
    let outcome = probe(
        Some(theirs.node_tls("127.0.0.1")),
        Some(ours.node_tls("127.0.0.1")),
        REFUSED_WITHIN,
    )
    .await;
    assert!(
        matches!(outcome, Err(CallError::Unreachable { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn tls_and_plaintext_peers_do_not_talk() {
    let ca = Ca::new("cluster CA");
    let plain_dialer = probe(None, Some(ca.node_tls("127.0.0.1")), REFUSED_WITHIN).await;
    assert!(
        matches!(plain_dialer, Err(CallError::Unreachable { .. })),
        "{plain_dialer:?}"
    );
    let tls_dialer = probe(Some(ca.node_tls("127.0.0.1")), None, REFUSED_WITHIN).await;
    assert!(
        matches!(tls_dialer, Err(CallError::Unreachable { .. })),
        "{tls_dialer:?}"
    );
}
