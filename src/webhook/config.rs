//! [`Webhooks`]: the delivery settings a layer is given.

use std::fmt;
use std::time::Duration;

use super::sign::{BasetenSecret, Secret};
use super::target;

/// How a layer delivers webhooks: the signing secrets, the retry schedule,
/// the per-attempt timeout, and which receivers it accepts.
///
/// Give it to [`DeferLayer::webhooks`](crate::DeferLayer::webhooks); without
/// it, a submission that asks for a webhook answers `400`.
///
/// ```
/// use std::time::Duration;
/// use tower_defer::{DeferLayer, MemoryStore, Webhooks};
///
/// let layer = DeferLayer::new(MemoryStore::new()).webhooks(
///     Webhooks::new()
///         // The new secret and the one being retired: each signs every event.
///         .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///         .secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
///         .schedule([Duration::ZERO, Duration::from_secs(5), Duration::from_secs(60)])
///         .allow_hosts(["hooks.example.com", "*.example.org"])
///         .public_url("https://api.example.com"),
/// );
/// # let _ = layer;
/// ```
///
/// Its `Debug` output shows how many secrets there are, never their text.
#[derive(Clone)]
pub struct Webhooks {
    pub(crate) secrets: Vec<Secret>,
    pub(crate) baseten_secret: Option<BasetenSecret>,
    pub(crate) schedule: Vec<Duration>,
    pub(crate) attempt_timeout: Duration,
    pub(crate) allow_hosts: Option<Vec<String>>,
    pub(crate) deny_private: bool,
    pub(crate) output_cap: usize,
    pub(crate) concurrency: usize,
    pub(crate) public_url: Option<String>,
    #[cfg(feature = "tls")]
    pub(crate) roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            secrets: Vec::new(),
            baseten_secret: None,
            schedule: vec![
                Duration::ZERO,
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
                Duration::from_secs(2700),
            ],
            attempt_timeout: Duration::from_secs(10),
            allow_hosts: None,
            deny_private: true,
            output_cap: 256 * 1024,
            concurrency: 16,
            public_url: None,
            #[cfg(feature = "tls")]
            roots: Vec::new(),
        }
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Webhooks");
        d.field(
            "secrets",
            &format_args!("<{} redacted>", self.secrets.len()),
        )
        .field(
            "baseten_secret",
            &format_args!(
                "{}",
                if self.baseten_secret.is_some() {
                    "<redacted>"
                } else {
                    "None"
                }
            ),
        )
        .field("schedule", &self.schedule)
        .field("attempt_timeout", &self.attempt_timeout)
        .field("allow_hosts", &self.allow_hosts)
        .field("deny_private_addresses", &self.deny_private)
        .field("output_cap", &self.output_cap)
        .field("concurrency", &self.concurrency)
        .field("public_url", &self.public_url);
        #[cfg(feature = "tls")]
        d.field("extra_roots", &self.roots.len());
        d.finish()
    }
}

impl Webhooks {
    /// The defaults: no secret (events go unsigned), 5 attempts over about
    /// an hour (0 s, 30 s, 2 min, 10 min, 45 min apart), 10 s per attempt,
    /// any host but private and loopback addresses refused, JSON outputs up
    /// to 256 KiB inlined, 16 deliveries in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a Standard Webhooks signing secret, `whsec_<base64>`. Repeat it
    /// to rotate: every secret signs every event, and `webhook-signature`
    /// carries all the signatures, space-separated, so a receiver holding
    /// either the old or the new secret verifies.
    ///
    /// # Panics
    ///
    /// If `secret` is not `whsec_` followed by base64 (the message does not
    /// repeat it). Check untrusted text with [`Secret::new`] first.
    pub fn secret(mut self, secret: impl AsRef<str>) -> Self {
        match Secret::new(secret.as_ref()) {
            Ok(s) => self.secrets.push(s),
            Err(e) => panic!("{e}"),
        }
        self
    }

    /// The secret that signs events of jobs submitted through the Baseten
    /// dialect (`X-BASETEN-SIGNATURE: v1=<hex HMAC-SHA256 of the body>`),
    /// keyed with its text exactly as given. Without it those events go
    /// unsigned.
    pub fn baseten_secret(mut self, secret: impl Into<String>) -> Self {
        self.baseten_secret = Some(BasetenSecret(secret.into()));
        self
    }

    /// When each attempt is made: the first `delays[0]` after the job ended,
    /// each next one `delays[n]` after the one before (a receiver's
    /// `Retry-After` can only lengthen a wait). Its length is the number of
    /// attempts. Default: 0 s, 30 s, 2 min, 10 min, 45 min.
    ///
    /// # Panics
    ///
    /// If `delays` is empty.
    pub fn schedule(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        let delays: Vec<Duration> = delays.into_iter().collect();
        assert!(
            !delays.is_empty(),
            "a webhook schedule needs at least one attempt"
        );
        self.schedule = delays;
        self
    }

    /// How long one attempt may take, connecting included (default 10 s);
    /// a receiver that does not answer in time is tried again later.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Accepts webhook URLs on these hosts only (default: any host). An entry
    /// `*.example.com` allows every subdomain of `example.com`; others match
    /// the host exactly, ignoring case.
    pub fn allow_hosts<I, H>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = H>,
        H: Into<String>,
    {
        let hosts = hosts
            .into_iter()
            .map(|h| h.into().trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        self.allow_hosts = Some(hosts);
        self
    }

    /// Whether to refuse receivers on loopback, private, link-local,
    /// shared (CGNAT), multicast and unspecified addresses (default `true`).
    /// A literal address is refused at submission (`400`); a host name is
    /// checked at each delivery on the addresses it resolves to, so a name
    /// pointed at an internal address later is refused too.
    pub fn deny_private_addresses(mut self, deny: bool) -> Self {
        self.deny_private = deny;
        self
    }

    /// The largest JSON output inlined in an event, in bytes (default
    /// 256 KiB). A larger one, or one that is not JSON, is sent as the URL
    /// of `{prefix}/{id}/result` instead.
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes;
        self
    }

    /// At most this many deliveries in flight (default 16). They never take
    /// a worker's slot: a slow receiver does not slow the inner service.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn concurrency(mut self, n: usize) -> Self {
        assert!(n > 0, "webhook concurrency must be at least 1");
        self.concurrency = n;
        self
    }

    /// The public base URL of this service (`https://api.example.com`), to
    /// make the result URLs in events absolute. Without it they are paths.
    pub fn public_url(mut self, base: impl Into<String>) -> Self {
        self.public_url = Some(base.into().trim_end_matches('/').to_owned());
        self
    }

    /// Trusts one more root certificate (PEM) for https receivers, beside
    /// the built-in Mozilla roots: a private CA, or a self-signed receiver.
    ///
    /// # Panics
    ///
    /// If `pem` holds no certificate.
    #[cfg(feature = "tls")]
    pub fn add_root_certificate(mut self, pem: impl AsRef<[u8]>) -> Self {
        let certs = crate::tls::certificates_in_pem(pem.as_ref());
        assert!(!certs.is_empty(), "no PEM certificate found");
        self.roots.extend(certs);
        self
    }

    /// Whether `url` may receive webhooks: `Err` says why not, in words that
    /// follow a field's name.
    pub(crate) fn check_url(&self, url: &str) -> Result<(), String> {
        target::check(self, url)
    }

    /// The lease of one delivery attempt: its timeout, plus a margin for
    /// recording it, plus the first attempt's delay.
    pub(crate) fn lease(&self) -> Duration {
        self.schedule[0] + self.attempt_timeout + Duration::from_secs(15)
    }
}
