//! Signatures: Standard Webhooks (`webhook-signature: v1,<base64>`) and
//! Baseten (`X-BASETEN-SIGNATURE: v1=<hex>`), both HMAC-SHA256.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks secret's text.
const PREFIX: &str = "whsec_";

/// A Standard Webhooks signing secret: `whsec_` followed by the key in base64
/// (the prefix may be left out, as the specification's libraries allow).
///
/// Its `Debug` shows no part of the key.
///
/// ```
/// use tower_defer::webhook::Secret;
///
/// // The specification's published test vector.
/// let secret: Secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".parse().unwrap();
/// let signature = secret.sign(
///     "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
///     1649367553,
///     br#"{"email":"test@example.com","username":"test_user"}"#,
/// );
/// assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
/// assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// Parses `whsec_<base64>` (or the base64 alone).
    pub fn new(text: &str) -> Result<Self, InvalidSecret> {
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        match BASE64.decode(encoded.trim()) {
            Ok(key) if !key.is_empty() => Ok(Secret { key }),
            _ => Err(InvalidSecret(())),
        }
    }

    /// The signature of one message: `v1,` and the base64 of
    /// HMAC-SHA256(key, `"{msg_id}.{timestamp}.{payload}"`).
    pub fn sign(&self, msg_id: &str, timestamp: u64, payload: &[u8]) -> String {
        let mac = self.mac(msg_id, timestamp.to_string().as_bytes(), payload);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The HMAC of one message, not yet finalized: [`sign`](Self::sign)
    /// encodes it, [`Verifier`](super::Verifier) compares it in constant
    /// time. The timestamp is the text as sent, so that a verifier checks
    /// the bytes the header carried, not a re-formatting of their value.
    pub(super) fn mac(&self, msg_id: &str, timestamp: &[u8], payload: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(payload);
        mac
    }
}

impl FromStr for Secret {
    type Err = InvalidSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::new(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The error of parsing a [`Secret`] that is not `whsec_` and base64.
///
/// Its message never repeats the text it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSecret(());

impl fmt::Display for InvalidSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a webhook secret is `whsec_` followed by a non-empty base64 key")
    }
}

impl std::error::Error for InvalidSecret {}

/// A Baseten webhook secret: its text is the HMAC key, byte for byte, as
/// Baseten's own verification example uses it. Its `Debug` shows none of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BasetenSecret(pub(crate) String);

impl fmt::Debug for BasetenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BasetenSecret(<redacted>)")
    }
}

/// Baseten's signature of a webhook body: `v1=` and the lowercase hex of
/// HMAC-SHA256 keyed with the secret's text exactly as configured.
///
/// ```
/// let sig = tower_defer::webhook::baseten_signature("my-secret", b"{}");
/// assert!(sig.starts_with("v1=") && sig.len() == 3 + 64);
/// ```
pub fn baseten_signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 2 * digest.len());
    out.push_str("v1=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_specification_vector() {
        let secret = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        // The prefix is optional.
        assert_eq!(
            Secret::new("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap(),
            secret
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        for bad in ["", "whsec_", "whsec_not base64!", "whsec_%%%%"] {
            let e = Secret::new(bad).unwrap_err();
            assert!(!e.to_string().contains("base64!"));
        }
    }

    #[test]
    fn baseten_signature_is_hex_hmac_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            baseten_signature("Jefe", b"what do ya want for nothing?"),
            "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
