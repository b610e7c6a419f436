//! Signatures: secret rotation, and agreement with the Standard Webhooks
//! reference implementation.

use tower_defer::webhook::{Secret, Verifier};

use crate::support::*;
use crate::{KEY, OLD_KEY};

#[tokio::test]
async fn rotation_signs_with_every_secret() {
    let mut receiver = Receiver::start(|_| ok()).await;
    let app = app(layer().webhooks(local().secret(secret(KEY)).secret(secret(OLD_KEY))));
    let id = submit_with(&app, &receiver.url("/")).await;
    let hit = receiver.next().await;
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 2);
    // A receiver holding only the second secret verifies, and so does one
    // holding only the first.
    assert!(verifies(&hit, OLD_KEY));
    assert!(verifies(&hit, KEY));
    for key in [KEY, OLD_KEY] {
        standardwebhooks::Webhook::new(&secret(key))
            .unwrap()
            .verify(&hit.body, &hit.headers)
            .unwrap();
        let ours = Verifier::new(secret(key).parse().unwrap());
        assert_eq!(ours.verify(&hit.headers, &hit.body), Ok(()));
    }
    // A receiver in the middle of its own rotation, with a secret the
    // sender no longer uses beside one it does.
    let rotating =
        Verifier::new(secret(b"retired").parse().unwrap()).secret(secret(OLD_KEY).parse().unwrap());
    assert_eq!(rotating.verify(&hit.headers, &hit.body), Ok(()));
    assert_eq!(delivered(&app, &id).await["webhook"]["status"], "succeeded");
}

#[test]
fn our_signatures_match_the_reference_implementation() {
    // The published test vector (the standardwebhooks crate's own test).
    let vector = Secret::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let payload = br#"{"email":"test@example.com","username":"test_user"}"#;
    assert_eq!(
        vector.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, payload),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
    // Signed by us, verified by them, and the other way round.
    for key in [KEY, OLD_KEY, b"k".as_slice()] {
        let text = secret(key);
        let ours = Secret::new(&text).unwrap();
        let theirs = standardwebhooks::Webhook::new(&text).unwrap();
        let now = unix_now();
        let signature = ours.sign("msg_abc", now, payload);
        assert_eq!(
            signature,
            theirs.sign("msg_abc", now as i64, payload).unwrap()
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "msg_abc".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        theirs.verify(payload, &headers).expect("verified");
        headers.insert("webhook-id", "msg_other".parse().unwrap());
        assert!(theirs.verify(payload, &headers).is_err());
    }
}

#[test]
fn our_verifier_agrees_with_the_reference_implementation() {
    let payload = br#"{"type":"job.succeeded","id":"0123456789abcdef"}"#;
    let now = unix_now() as i64;
    for key in [KEY, OLD_KEY, b"k".as_slice()] {
        let text = secret(key);
        let theirs = standardwebhooks::Webhook::new(&text).unwrap();
        let ours = Verifier::new(text.parse().unwrap());
        // Signed by the reference at times inside and outside its 5-minute
        // window (10 s clear of the edges, so a second ticking over in
        // between cannot tip either), then received as sent or changed.
        for at in [now, now - 290, now + 290, now - 310, now + 310] {
            let signature = theirs.sign("msg_abc", at, payload).unwrap();
            let sent = |id: &str, signature: &str| {
                let mut h = http::HeaderMap::new();
                h.insert("webhook-id", id.parse().unwrap());
                h.insert("webhook-timestamp", at.to_string().parse().unwrap());
                h.insert("webhook-signature", signature.parse().unwrap());
                h
            };
            let other = secret(b"another key").parse::<Secret>().unwrap();
            let cases = [
                (sent("msg_abc", &signature), &payload[..]),
                (sent("msg_abd", &signature), &payload[..]),
                (sent("msg_abc", &signature), &payload[1..]),
                (
                    sent(
                        "msg_abc",
                        &format!("{} {signature}", other.sign("msg_abc", at as u64, payload)),
                    ),
                    &payload[..],
                ),
                (
                    sent("msg_abc", &other.sign("msg_abc", at as u64, payload)),
                    &payload[..],
                ),
            ];
            for (n, (headers, body)) in cases.iter().enumerate() {
                let expected = theirs.verify(body, headers).is_ok();
                assert_eq!(
                    ours.verify(headers, body).is_ok(),
                    expected,
                    "case {n} at {at} (now {now})"
                );
            }
            // Both accept the delivery as sent exactly when it is in time.
            assert_eq!(
                theirs.verify(payload, &cases[0].0).is_ok(),
                (at - now).abs() < 300
            );
        }
    }
}
