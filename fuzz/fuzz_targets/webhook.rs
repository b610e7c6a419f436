//! Fuzzes Standard Webhooks signature verification
//! (`tower_defer::webhook::Verifier`, the public API a receiver calls).
//!
//! Two properties per input:
//!
//! - Arbitrary headers, body, secret and clock: `verify_at` answers, never
//!   panics, and a secret's text that parses gives a verifier like any other.
//! - Round trip: what `Secret::sign` signed verifies, and any single change
//!   to it (one bit of the body, one byte of the signature header, another
//!   timestamp or id, a clock outside the tolerance, another secret) is
//!   refused.
//!
//! Run (from the repository root; cargo-fuzz needs nightly flags, which the
//! stable toolchain accepts with RUSTC_BOOTSTRAP=1):
//!
//!     cargo install cargo-fuzz            # once
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run webhook -- -max_total_time=60
//!
//! or `cargo +nightly fuzz run webhook` where nightly is installed;
//! `.ci/fuzz-smoke` runs every target for a few seconds.

#![no_main]

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_defer::webhook::{Secret, Verifier};

/// The verifier's window in this target, in seconds.
const TOLERANCE: u64 = 300;

/// The input's six fields, one a line (the last one, the body, takes the
/// rest): a secret's text, then `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` as raw bytes, the receiver's clock, the body. A seed
/// is a delivery written out as text (`fuzz/seeds/webhook/`).
struct Fields<'a> {
    secret: &'a [u8],
    id: &'a [u8],
    timestamp: &'a [u8],
    signature: &'a [u8],
    now: &'a [u8],
    body: &'a [u8],
}

impl<'a> Fields<'a> {
    fn split(data: &'a [u8]) -> Self {
        let mut f = data.splitn(6, |&b| b == b'\n');
        let mut next = || f.next().unwrap_or_default();
        Fields {
            secret: next(),
            id: next(),
            timestamp: next(),
            signature: next(),
            now: next(),
            body: next(),
        }
    }
}

/// A number from a field: its value when it is one, else its bytes folded.
fn number(field: &[u8]) -> u64 {
    match std::str::from_utf8(field).ok().and_then(|t| t.parse().ok()) {
        Some(n) => n,
        None => field
            .iter()
            .fold(0u64, |n, &b| n.rotate_left(8) ^ u64::from(b)),
    }
}

fn headers(id: &[u8], timestamp: &[u8], signature: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signature),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.insert(name, v);
        }
    }
    h
}

fn free_form(f: &Fields) {
    let fallback: Secret = "whsec_c2VjcmV0".parse().unwrap();
    let text = String::from_utf8_lossy(f.secret);
    let secret = text.parse::<Secret>().unwrap_or(fallback.clone());
    let verifier = Verifier::new(secret).secret(fallback);
    let h = headers(f.id, f.timestamp, f.signature);
    // Whatever comes, an answer; a refusal has a message.
    if let Err(e) = verifier.verify_at(&h, f.body, number(f.now)) {
        assert!(!e.to_string().is_empty());
    }
}

fn round_trip(f: &Fields) {
    let body = f.body;
    // The secret field's bytes are the key; an id that can be a header
    // value (visible ASCII), never empty; the clock field says where and
    // how to change things.
    let key = if f.secret.is_empty() {
        vec![0]
    } else {
        f.secret.to_vec()
    };
    let mut id: String = String::from_utf8_lossy(f.id)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    if id.is_empty() {
        id.push('m');
    }
    let sent = number(f.timestamp);
    let dial = number(f.now);
    let (at, flip) = ((dial >> 8) as usize, dial as u8);
    let secret: Secret = format!("whsec_{}", BASE64.encode(&key)).parse().unwrap();
    let verifier = Verifier::new(secret.clone()).tolerance(Duration::from_secs(TOLERANCE));
    let signature = secret.sign(&id, sent, body);
    let timestamp = sent.to_string();
    let good = headers(id.as_bytes(), timestamp.as_bytes(), signature.as_bytes());
    let now = sent.saturating_add(at as u64 % (TOLERANCE + 1));

    verifier
        .verify_at(&good, body, now)
        .expect("a signed delivery verifies");

    // One bit of the body.
    let mut other = body.to_vec();
    if other.is_empty() {
        other.push(flip);
    } else {
        let i = at % other.len();
        other[i] ^= 1 << (flip % 8);
    }
    assert!(
        verifier.verify_at(&good, &other, now).is_err(),
        "body changed"
    );

    // One byte of the signature header, replaced by another.
    let mut sig = signature.clone().into_bytes();
    let i = at % sig.len();
    let replacement = if flip == sig[i] {
        flip.wrapping_add(1)
    } else {
        flip
    };
    sig[i] = replacement;
    let h = headers(id.as_bytes(), timestamp.as_bytes(), &sig);
    assert!(
        verifier.verify_at(&h, body, now).is_err(),
        "signature changed"
    );

    // Another timestamp in the window: the signature covers it.
    let shift = 1 + u64::from(flip) % TOLERANCE;
    let moved = if sent >= shift {
        sent - shift
    } else {
        sent + shift
    };
    let h = headers(
        id.as_bytes(),
        moved.to_string().as_bytes(),
        signature.as_bytes(),
    );
    assert!(
        verifier.verify_at(&h, body, moved).is_err(),
        "timestamp changed"
    );

    // The same value written otherwise: the text is what is signed.
    let h = headers(
        id.as_bytes(),
        format!("0{timestamp}").as_bytes(),
        signature.as_bytes(),
    );
    assert!(
        verifier.verify_at(&h, body, now).is_err(),
        "timestamp rewritten"
    );

    // Another id.
    let h = headers(
        format!("{id}x").as_bytes(),
        timestamp.as_bytes(),
        signature.as_bytes(),
    );
    assert!(verifier.verify_at(&h, body, now).is_err(), "id changed");

    // A clock outside the window, either way.
    let late = sent.checked_add(TOLERANCE + 1 + u64::from(flip));
    let early = sent.checked_sub(TOLERANCE + 1 + u64::from(flip));
    for clock in [late, early].into_iter().flatten() {
        assert!(
            verifier.verify_at(&good, body, clock).is_err(),
            "replayed at {clock}"
        );
    }

    // Another secret refuses; both secrets (a rotation) accept.
    let mut other_key = key.clone();
    other_key[at % key.len()] ^= 1 << (flip % 8);
    let other: Secret = format!("whsec_{}", BASE64.encode(&other_key))
        .parse()
        .unwrap();
    let stranger = Verifier::new(other.clone()).tolerance(Duration::from_secs(TOLERANCE));
    assert!(
        stranger.verify_at(&good, body, now).is_err(),
        "other secret"
    );
    let rotating = stranger.secret(secret);
    assert!(rotating.verify_at(&good, body, now).is_ok(), "rotation");
}

fuzz_target!(|data: &[u8]| {
    let fields = Fields::split(data);
    free_form(&fields);
    round_trip(&fields);
});
