//! The one rustls connector (feature `tls`), shared by the https upstream
//! ([`Upstream`](crate::upstream::Upstream)) and https webhook receivers:
//! the ring provider, Mozilla's roots compiled in (no system lookup, so a
//! container image needs no CA bundle), plus any roots the user adds for a
//! private CA or a self-signed server. Plain `http://` URIs pass through it
//! unencrypted.

use hyper_rustls::HttpsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The HTTP versions offered to an https server by ALPN; the server picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Webhook receivers are spoken to in HTTP/1.1 only, the upstream in h2 or
// either: a build with one of the two uses some of the variants.
#[cfg_attr(not(all(feature = "proxy", feature = "webhooks")), allow(dead_code))]
pub(crate) enum Alpn {
    /// HTTP/1.1 only (no ALPN at all: every server speaks it).
    Http1,
    /// `h2` only.
    Http2,
    /// `h2`, then `http/1.1`.
    Both,
}

/// The certificates in PEM text, in order; the blocks that are not
/// certificates (a private key in the same file, say) are skipped.
#[cfg(any(feature = "proxy", feature = "webhooks"))]
pub(crate) fn certificates_in_pem(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// Whether each certificate can be a root of trust, checked as the connector
/// will: `Err` says why the first that cannot is refused.
#[cfg(feature = "proxy")]
pub(crate) fn check_roots(extra: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    extra.iter().try_for_each(|cert| roots.add(cert.clone()))
}

/// `http` wrapped in TLS for `https://` URIs, trusting Mozilla's roots plus
/// `extra`. A root that cannot be used is skipped with a warning: check them
/// first with [`check_roots`] to refuse them instead.
pub(crate) fn connector<H>(
    http: H,
    extra: &[CertificateDer<'static>],
    alpn: Alpn,
) -> HttpsConnector<H> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(extra))
        .https_or_http();
    match alpn {
        Alpn::Http1 => builder.enable_http1().wrap_connector(http),
        Alpn::Http2 => builder.enable_http2().wrap_connector(http),
        Alpn::Both => builder.enable_all_versions().wrap_connector(http),
    }
}

fn client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(error = %e, "an extra root certificate was refused");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
