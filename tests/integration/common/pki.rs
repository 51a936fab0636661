//! Certificates for the security tests, made in the test (rcgen), so no tool is needed: a CA,
//! node certificates (serverAuth and clientAuth, IP SANs) signed by it, written as PEM files
//! into a directory, as an operator would have them.
//!
//! It knows nothing of the server: only which files `gavel serve`'s TLS flags take.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority whose certificate is at `cert_path`.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    dir: PathBuf,
    pub cert_path: PathBuf,
}

/// One certificate and its key, as PEM files, with the DER of the certificate.
pub struct Issued {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl Issued {
    /// (certificate, key) paths as text, for command lines.
    pub fn paths(&self) -> (String, String) {
        (
            self.cert_path.display().to_string(),
            self.key_path.display().to_string(),
        )
    }
}

impl TestCa {
    /// A new CA called `name`, its files under `dir/name`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("create the CA dir");
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let cert_path = dir.join("ca.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write the CA certificate");
        TestCa {
            cert,
            key,
            dir,
            cert_path,
        }
    }

    /// A certificate for `name` usable as TLS server and client, naming each of `ips`.
    pub fn issue(&self, name: &str, ips: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = ips
            .iter()
            .map(|ip| SanType::IpAddress(ip.parse::<IpAddr>().expect("an IP address")))
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the certificate");
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
        Issued {
            cert_path,
            key_path,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}
