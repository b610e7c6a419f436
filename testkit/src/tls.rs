//! A self-signed https server's TLS side: the certificate (its PEM is what a
//! client must trust) and a rustls server configuration offering h2 and
//! HTTP/1.1 by ALPN.

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
