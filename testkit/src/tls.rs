//! TLS for the test servers: a self-signed https server's side (the
//! certificate, whose PEM is what a client must trust, and a rustls server
//! configuration offering h2 and HTTP/1.1 by ALPN), and a private
//! certificate authority with a server certificate it signed (what a TLS
//! Redis presents).

use std::sync::Arc;

use tokio_rustls::rustls;

/// A fresh self-signed certificate for `localhost`, and a server
/// configuration that presents it.
pub fn self_signed_localhost() -> (rcgen::CertifiedKey, Arc<rustls::ServerConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (cert, Arc::new(config))
}

/// A private certificate authority and a server certificate it signed for
/// `localhost` and `127.0.0.1`, as a TLS server run by a company is set up:
/// the server presents `cert_pem`, and a client trusts it only once told to
/// trust `ca_pem`.
pub struct PrivateCa {
    /// The authority's certificate: the one root a client must trust.
    pub ca_pem: String,
    /// The same, DER-encoded.
    pub ca_der: Vec<u8>,
    /// The server's certificate, signed by the authority.
    pub cert_pem: String,
    /// The server certificate's private key.
    pub key_pem: String,
}

impl PrivateCa {
    /// A fresh authority and server certificate, unknown to anyone else.
    pub fn new() -> PrivateCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        // A name of its own, as two companies' CAs have.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ca.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tower-defer test CA {} {n}", std::process::id()),
        );
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = server.signed_by(&key, &ca, &ca_key).unwrap();
        PrivateCa {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls client configuration that trusts this authority only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Default for PrivateCa {
    fn default() -> Self {
        PrivateCa::new()
    }
}
