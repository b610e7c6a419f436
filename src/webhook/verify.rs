//! The receiving side of a Standard Webhooks signature: what a Rust service
//! that receives our webhooks runs on each request before it trusts the body.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::Mac;
use http::HeaderMap;

use super::sign::Secret;

/// The specification's default window: a delivery signed more than five
/// minutes before or after the receiver's clock is refused, so a captured
/// request cannot be replayed later.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Checks the `webhook-id`, `webhook-timestamp` and `webhook-signature`
/// headers of a received webhook against one or more [`Secret`]s.
///
/// A delivery verifies when its timestamp is within the
/// [tolerance](Self::tolerance) of the receiver's clock and one of the
/// `v1,<base64>` signatures in `webhook-signature` (space-separated; other
/// versions are skipped) is the HMAC-SHA256 of `{id}.{timestamp}.{body}`
/// under one of the secrets. Signatures are compared in constant time.
///
/// To rotate a secret, a sender signs with both the old and the new one
/// for a while ([`Webhooks::secret`](crate::Webhooks::secret), repeated),
/// and a receiver accepts either ([`Verifier::secret`], repeated), so
/// neither side has to switch at the same moment as the other.
///
/// ```
/// use std::time::Duration;
/// use tower_defer::webhook::{Secret, Verifier};
///
/// let new: Secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap();
/// let old: Secret = "whsec_b2xkLXNlY3JldC1rZXk=".parse().unwrap();
/// let verifier = Verifier::new(new.clone())
///     .secret(old)
///     .tolerance(Duration::from_secs(60));
///
/// // A delivery as it arrives (here signed with `new`, at Unix time 1649367553).
/// let body = br#"{"type":"job.succeeded","id":"0123456789abcdef"}"#;
/// let mut headers = http::HeaderMap::new();
/// headers.insert("webhook-id", "msg_0123456789abcdef".parse().unwrap());
/// headers.insert("webhook-timestamp", "1649367553".parse().unwrap());
/// let signature = new.sign("msg_0123456789abcdef", 1649367553, body);
/// headers.insert("webhook-signature", signature.parse().unwrap());
///
/// // A receiver calls `verify` (its clock); this example pins the clock.
/// assert!(verifier.verify_at(&headers, body, 1649367553 + 30).is_ok());
/// // A changed body, or the same delivery replayed later, is refused.
/// assert!(verifier.verify_at(&headers, b"{}", 1649367553).is_err());
/// let err = verifier.verify_at(&headers, body, 1649367553 + 61).unwrap_err();
/// assert_eq!(err.to_string(), "the webhook timestamp is outside the tolerance");
/// ```
#[derive(Clone, Debug)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier that accepts signatures made with `secret`, within five
    /// minutes of the receiver's clock.
    pub fn new(secret: Secret) -> Self {
        Verifier {
            secrets: vec![secret],
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Accepts signatures made with `secret` too (while a secret rotates).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// How far the `webhook-timestamp` may be from the receiver's clock,
    /// either way. Default: 5 minutes, the specification's.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a delivery's headers and its body, as received (the raw
    /// bytes, before any parsing), against the system clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.verify_at(headers, body, now)
    }

    /// [`verify`](Self::verify), with the receiver's clock at `now` (Unix
    /// seconds): for tests, and for receivers that keep their own clock.
    pub fn verify_at(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), VerifyError> {
        let id = header(headers, "webhook-id")?;
        let timestamp = header(headers, "webhook-timestamp")?;
        let sent = parse_timestamp(timestamp)?;
        if sent.abs_diff(now) > self.tolerance.as_secs() {
            return Err(VerifyError(Kind::Stale));
        }
        // Decoded once: a signature that is not base64, or not 32 bytes,
        // cannot match and is dropped here.
        let mut offered = Vec::new();
        for value in headers.get_all("webhook-signature") {
            let value = value
                .to_str()
                .map_err(|_| VerifyError(Kind::Invalid("webhook-signature")))?;
            offered.extend(
                value
                    .split(' ')
                    .filter_map(|s| s.strip_prefix("v1,"))
                    .filter_map(|s| BASE64.decode(s).ok()),
            );
        }
        // Every secret against every signature, with no early exit: how long
        // this takes says nothing about which one came close.
        let mut matched = false;
        for secret in &self.secrets {
            let mac = secret.mac(id, timestamp.as_bytes(), body);
            for signature in &offered {
                matched |= mac.clone().verify_slice(signature).is_ok();
            }
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError(Kind::NoMatch))
        }
    }
}

/// A header's one value (the first, if repeated), as text.
fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let value = headers.get(name).ok_or(VerifyError(Kind::Missing(name)))?;
    value.to_str().map_err(|_| VerifyError(Kind::Invalid(name)))
}

/// Unix seconds, digits only: a sign, a space or a fraction is refused
/// rather than read leniently, since the signature covers the text as sent.
fn parse_timestamp(text: &str) -> Result<u64, VerifyError> {
    let invalid = VerifyError(Kind::Invalid("webhook-timestamp"));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid);
    }
    text.parse().map_err(|_| invalid)
}

/// Why a webhook did not verify. The message names the header at fault,
/// never its value or the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError(Kind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Missing(&'static str),
    Invalid(&'static str),
    Stale,
    NoMatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Kind::Missing(name) => write!(f, "the webhook has no `{name}` header"),
            Kind::Invalid(name) => write!(f, "the webhook's `{name}` header is malformed"),
            Kind::Stale => f.write_str("the webhook timestamp is outside the tolerance"),
            Kind::NoMatch => f.write_str("no webhook signature matches"),
        }
    }
}

impl std::error::Error for VerifyError {}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    fn secret(text: &str) -> Secret {
        text.parse().unwrap()
    }

    fn key() -> Secret {
        secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
    }

    fn other() -> Secret {
        secret("whsec_b2xkLXNlY3JldC1rZXk=")
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", timestamp.parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    fn signed(by: &Secret) -> HeaderMap {
        headers("msg_1", &T.to_string(), &by.sign("msg_1", T, BODY))
    }

    fn kind(r: Result<(), VerifyError>) -> Kind {
        r.unwrap_err().0
    }

    #[test]
    fn the_specification_vector_verifies() {
        let h = headers(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        );
        assert_eq!(Verifier::new(key()).verify_at(&h, BODY, T), Ok(()));
        assert_eq!(
            kind(Verifier::new(other()).verify_at(&h, BODY, T)),
            Kind::NoMatch
        );
    }

    #[test]
    fn any_of_several_signatures_and_any_of_several_secrets() {
        let both = format!(
            "v2,ignored {} v1,not-base64 {}",
            other().sign("msg_1", T, BODY),
            key().sign("msg_1", T, BODY)
        );
        let h = headers("msg_1", &T.to_string(), &both);
        assert_eq!(Verifier::new(key()).verify_at(&h, BODY, T), Ok(()));
        assert_eq!(Verifier::new(other()).verify_at(&h, BODY, T), Ok(()));
        // Rotation on the receiving side: the old secret still verifies.
        let rotating = Verifier::new(secret("whsec_bmV3")).secret(key());
        assert_eq!(rotating.verify_at(&signed(&key()), BODY, T), Ok(()));
        assert_eq!(
            kind(Verifier::new(secret("whsec_bmV3")).verify_at(&signed(&key()), BODY, T)),
            Kind::NoMatch
        );
    }

    #[test]
    fn a_second_signature_header_counts_too() {
        let mut h = signed(&other());
        h.append(
            "webhook-signature",
            key().sign("msg_1", T, BODY).parse().unwrap(),
        );
        assert_eq!(Verifier::new(key()).verify_at(&h, BODY, T), Ok(()));
    }

    #[test]
    fn the_tolerance_is_inclusive_both_ways() {
        let v = Verifier::new(key()).tolerance(Duration::from_secs(10));
        let h = signed(&key());
        for now in [T - 10, T, T + 10] {
            assert_eq!(v.verify_at(&h, BODY, now), Ok(()), "{now}");
        }
        for now in [T - 11, T + 11, 0, u64::MAX] {
            assert_eq!(kind(v.verify_at(&h, BODY, now)), Kind::Stale, "{now}");
        }
        // The default is five minutes.
        let v = Verifier::new(key());
        assert_eq!(v.verify_at(&h, BODY, T + 300), Ok(()));
        assert_eq!(kind(v.verify_at(&h, BODY, T + 301)), Kind::Stale);
    }

    #[test]
    fn each_part_is_signed() {
        let v = Verifier::new(key());
        let good = key().sign("msg_1", T, BODY);
        let ts = T.to_string();
        // Another body, id or timestamp (even one in the window, or the same
        // value written with a leading zero).
        assert_eq!(kind(v.verify_at(&signed(&key()), b"{}", T)), Kind::NoMatch);
        for (id, timestamp) in [("msg_2", ts.as_str()), ("msg_1", "1649367554")] {
            let h = headers(id, timestamp, &good);
            assert_eq!(
                kind(v.verify_at(&h, BODY, T)),
                Kind::NoMatch,
                "{id} {timestamp}"
            );
        }
        let h = headers("msg_1", &format!("0{ts}"), &good);
        assert_eq!(kind(v.verify_at(&h, BODY, T)), Kind::NoMatch);
        // A truncated signature, or one of another version.
        let h = headers("msg_1", &ts, &good[..good.len() - 4]);
        assert_eq!(kind(v.verify_at(&h, BODY, T)), Kind::NoMatch);
        let h = headers("msg_1", &ts, &good.replacen("v1,", "v2,", 1));
        assert_eq!(kind(v.verify_at(&h, BODY, T)), Kind::NoMatch);
    }

    #[test]
    fn malformed_headers_are_named_without_their_values() {
        let v = Verifier::new(key());
        let good = key().sign("msg_1", T, BODY);
        let mut h = signed(&key());
        h.remove("webhook-id");
        let e = v.verify_at(&h, BODY, T).unwrap_err();
        assert_eq!(e.to_string(), "the webhook has no `webhook-id` header");
        for bad in [
            "",
            "+1649367553",
            "1649367553.0",
            " 1649367553",
            "-1",
            "99999999999999999999",
        ] {
            let h = headers("msg_1", bad, &good);
            let e = v.verify_at(&h, BODY, T).unwrap_err();
            assert_eq!(e.0, Kind::Invalid("webhook-timestamp"), "{bad:?}");
            assert_eq!(
                e.to_string(),
                "the webhook's `webhook-timestamp` header is malformed"
            );
        }
        let mut h = signed(&key());
        h.insert(
            "webhook-signature",
            http::HeaderValue::from_bytes(b"v1,\xff").unwrap(),
        );
        assert_eq!(
            kind(v.verify_at(&h, BODY, T)),
            Kind::Invalid("webhook-signature")
        );
    }

    #[test]
    fn verify_reads_the_system_clock() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let h = headers("msg_1", &now.to_string(), &key().sign("msg_1", now, BODY));
        assert_eq!(Verifier::new(key()).verify(&h, BODY), Ok(()));
        assert_eq!(
            kind(Verifier::new(key()).verify(&signed(&key()), BODY)),
            Kind::Stale
        );
    }
}
