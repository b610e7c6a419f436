//! Per-job options, from an envelope's fields or from `Defer-*` headers.
//!
//! One table names every option once: its envelope field, its header, its
//! range and unit. The native envelope, `Prefer: respond-async` submissions and
//! the other dialects all read options through it, so the same value means
//! the same thing, and is refused with the same words, everywhere.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;

use super::envelope::{Field, Fields};

use crate::context::DoorConfig;
use crate::error::Problem;
use crate::job::{JobOptions, Priority, WebhookFormat, WebhookTarget};

/// What an option sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Priority,
    MaxTimeInQueue,
    ResultTtl,
    ExecutionTimeout,
    MaxAttempts,
    InitialDelay,
    MaxDelay,
}

/// One option: where it is read from, and what values it takes.
struct Spec {
    field: &'static str,
    header: HeaderName,
    min: u64,
    max: u64,
    target: Target,
}

/// The options, with the ranges the hosted APIs use (Baseten's for the queue
/// deadline and the retry configuration).
static SPECS: [Spec; 7] = [
    Spec {
        field: "priority",
        header: HeaderName::from_static("defer-priority"),
        min: 0,
        max: 2,
        target: Target::Priority,
    },
    Spec {
        field: "max_time_in_queue_seconds",
        header: HeaderName::from_static("defer-max-time-in-queue"),
        min: 10,
        max: 259_200,
        target: Target::MaxTimeInQueue,
    },
    Spec {
        field: "result_ttl_seconds",
        header: HeaderName::from_static("defer-result-ttl"),
        min: 1,
        max: u32::MAX as u64,
        target: Target::ResultTtl,
    },
    Spec {
        field: "execution_timeout_seconds",
        header: HeaderName::from_static("defer-execution-timeout"),
        min: 1,
        max: 86_400,
        target: Target::ExecutionTimeout,
    },
    Spec {
        field: "max_attempts",
        header: HeaderName::from_static("defer-max-attempts"),
        min: 1,
        max: 10,
        target: Target::MaxAttempts,
    },
    Spec {
        field: "initial_delay_ms",
        header: HeaderName::from_static("defer-retry-initial-delay-ms"),
        min: 0,
        max: 10_000,
        target: Target::InitialDelay,
    },
    Spec {
        field: "max_delay_ms",
        header: HeaderName::from_static("defer-retry-max-delay-ms"),
        min: 0,
        max: 60_000,
        target: Target::MaxDelay,
    },
];

/// The envelope object holding the retry fields.
pub(crate) const RETRY_OBJECT: &str = "inference_retry_config";

fn is_retry_field(target: Target) -> bool {
    matches!(
        target,
        Target::MaxAttempts | Target::InitialDelay | Target::MaxDelay
    )
}

fn apply(options: &mut JobOptions, target: Target, n: u64, max_result_ttl: Duration) {
    match target {
        // In range by the spec's bounds.
        Target::Priority => options.priority = Priority::new(n as u8).unwrap_or_default(),
        Target::MaxTimeInQueue => options.max_time_in_queue = Duration::from_secs(n),
        Target::ResultTtl => options.result_ttl = Duration::from_secs(n).min(max_result_ttl),
        Target::ExecutionTimeout => options.execution_timeout = Duration::from_secs(n),
        Target::MaxAttempts => options.retry.max_attempts = n as u32,
        Target::InitialDelay => options.retry.initial_delay = Duration::from_millis(n),
        Target::MaxDelay => options.retry.max_delay = Duration::from_millis(n),
    }
}

fn out_of_range(name: &str, spec: &Spec, got: impl std::fmt::Display) -> Problem {
    Problem::bad_request(
        "invalid_field",
        format!(
            "`{name}` must be an integer from {} to {}, got {got}",
            spec.min, spec.max
        ),
    )
}

/// A non-negative whole number, also when written `60.0` (JSON Schema counts
/// that as an integer, and so do clients that serialize floats).
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// Reads the options of an envelope: the top-level fields, and the retry
/// fields inside `inference_retry_config`.
pub(crate) fn from_envelope(
    envelope: &impl Fields,
    options: &mut JobOptions,
    max_result_ttl: Duration,
) -> Result<(), Problem> {
    let retry = match envelope.field(RETRY_OBJECT)? {
        Field::Missing => None,
        Field::Other(m) if m.is_object() => Some(m),
        other => {
            return Err(Problem::bad_request(
                "invalid_field",
                format!(
                    "`{RETRY_OBJECT}` must be an object, got {}",
                    other.to_value()
                ),
            ))
        }
    };
    for spec in &SPECS {
        let retry_field = is_retry_field(spec.target);
        let value = if retry_field {
            match retry.as_deref().and_then(|m| m.get(spec.field)) {
                None | Some(Value::Null) => Field::Missing,
                Some(v) => Field::Other(Cow::Borrowed(v)),
            }
        } else {
            envelope.field(spec.field)?
        };
        let n = match &value {
            Field::Missing => continue,
            Field::Other(v) => whole_number(v),
            Field::Text(_) => None,
        };
        let n = n
            .filter(|n| (spec.min..=spec.max).contains(n))
            .ok_or_else(|| {
                // Named only when refused: this loop runs on every submission.
                let name = if retry_field {
                    format!("{RETRY_OBJECT}.{}", spec.field)
                } else {
                    spec.field.to_owned()
                };
                out_of_range(&name, spec, value.to_value())
            })?;
        apply(options, spec.target, n, max_result_ttl);
    }
    check_delays(options)
}

/// Reads the options of a `Prefer: respond-async` submission from its
/// `Defer-*` headers.
pub(crate) fn from_headers(
    headers: &HeaderMap,
    options: &mut JobOptions,
    max_result_ttl: Duration,
) -> Result<(), Problem> {
    for spec in &SPECS {
        let mut values = headers.get_all(&spec.header).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(Problem::bad_request(
                "invalid_header",
                format!("`{}` was sent more than once", spec.header),
            ));
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        let n = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (spec.min..=spec.max).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid_header",
                    format!(
                        "`{}` must be an integer from {} to {}, got {:?}",
                        spec.header,
                        spec.min,
                        spec.max,
                        text.chars().take(32).collect::<String>()
                    ),
                )
            })?;
        apply(options, spec.target, n, max_result_ttl);
    }
    check_delays(options)
}

/// The envelope field naming a job's webhook URL.
pub(crate) const WEBHOOK_FIELD: &str = "webhook";
/// The header naming it on a `Prefer: respond-async` submission.
pub(crate) const WEBHOOK_HEADER: &str = "defer-webhook";

/// Reads the envelope's `webhook` (a URL string), checked against the
/// layer's webhook settings.
pub(crate) fn webhook_from_envelope(
    envelope: &impl Fields,
    options: &mut JobOptions,
    config: &DoorConfig,
) -> Result<(), Problem> {
    match envelope.field(WEBHOOK_FIELD)? {
        Field::Missing => Ok(()),
        Field::Text(url) => {
            let target = webhook_target(config, &url, WebhookFormat::Standard, WEBHOOK_FIELD)?;
            options.webhook = Some(target);
            Ok(())
        }
        Field::Other(_) => Err(Problem::bad_request(
            "invalid_field",
            format!("`{WEBHOOK_FIELD}` must be a string (an http or https URL)"),
        )),
    }
}

/// Reads `Defer-Webhook`, checked against the layer's webhook settings.
pub(crate) fn webhook_from_headers(
    headers: &HeaderMap,
    options: &mut JobOptions,
    config: &DoorConfig,
) -> Result<(), Problem> {
    let mut values = headers.get_all(WEBHOOK_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Problem::bad_request(
            "invalid_header",
            format!("`{WEBHOOK_HEADER}` was sent more than once"),
        ));
    }
    let url = value.to_str().map_err(|_| {
        Problem::bad_request(
            "invalid_header",
            format!("`{WEBHOOK_HEADER}` must be an http or https URL"),
        )
    })?;
    let target = webhook_target(config, url.trim(), WebhookFormat::Standard, WEBHOOK_HEADER)?;
    options.webhook = Some(target);
    Ok(())
}

fn check_delays(options: &JobOptions) -> Result<(), Problem> {
    let retry = &options.retry;
    if retry.initial_delay > retry.max_delay {
        return Err(Problem::bad_request(
            "invalid_field",
            format!(
                "the retry delays are inconsistent: initial_delay_ms {} is more than max_delay_ms {}",
                retry.initial_delay.as_millis(),
                retry.max_delay.as_millis()
            ),
        ));
    }
    Ok(())
}

/// The job's webhook target for `url`, or a `400` naming `field` (the
/// envelope field or header it came from).
///
/// A layer without [`Webhooks`](crate::Webhooks) configured (or a crate built
/// without the `webhooks` feature) refuses every webhook.
pub(crate) fn webhook_target(
    config: &DoorConfig,
    url: &str,
    format: WebhookFormat,
    field: &str,
) -> Result<WebhookTarget, Problem> {
    #[cfg(feature = "webhooks")]
    if let Some(webhooks) = &config.webhooks {
        return match webhooks.check_url(url) {
            Ok(()) => Ok(WebhookTarget {
                url: url.to_owned(),
                format,
            }),
            Err(why) => Err(Problem::bad_request(
                "invalid_field",
                format!("`{field}` {why}"),
            )),
        };
    }
    let _ = (config, url, format);
    Err(Problem::new(
        StatusCode::BAD_REQUEST,
        "webhooks_unsupported",
        format!("`{field}`: this server does not deliver webhooks"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    const CAP: Duration = Duration::from_secs(86_400);

    fn envelope(v: Value) -> Result<JobOptions, Problem> {
        let mut o = JobOptions::default();
        from_envelope(v.as_object().unwrap(), &mut o, CAP).map(|()| o)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> Result<JobOptions, Problem> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        let mut o = JobOptions::default();
        from_headers(&h, &mut o, CAP).map(|()| o)
    }

    #[test]
    fn envelope_fields_set_every_option() {
        let o = envelope(json!({
            "priority": 0,
            "max_time_in_queue_seconds": 10,
            "result_ttl_seconds": 999_999,
            "execution_timeout_seconds": 5.0,
            "inference_retry_config": {"max_attempts": 10, "initial_delay_ms": 0, "max_delay_ms": 60000}
        }))
        .unwrap();
        assert_eq!(o.priority, Priority::HIGH);
        assert_eq!(o.max_time_in_queue, Duration::from_secs(10));
        assert_eq!(o.result_ttl, CAP, "capped by the builder's maximum");
        assert_eq!(o.execution_timeout, Duration::from_secs(5));
        assert_eq!(o.retry.max_attempts, 10);
        assert_eq!(o.retry.max_delay, Duration::from_secs(60));
    }

    #[test]
    fn out_of_range_names_the_field_and_its_range() {
        let cases = [
            (json!({"priority": 3}), "`priority` must be an integer from 0 to 2, got 3"),
            (json!({"priority": -1}), "`priority` must be an integer from 0 to 2, got -1"),
            (json!({"priority": 1.5}), "`priority` must be an integer from 0 to 2, got 1.5"),
            (json!({"priority": 2e9}), "`priority` must be an integer from 0 to 2, got 2000000000.0"),
            (
                json!({"max_time_in_queue_seconds": 9}),
                "`max_time_in_queue_seconds` must be an integer from 10 to 259200, got 9",
            ),
            (
                json!({"inference_retry_config": {"max_attempts": 0}}),
                "`inference_retry_config.max_attempts` must be an integer from 1 to 10, got 0",
            ),
            (json!({"inference_retry_config": 3}), "`inference_retry_config` must be an object, got 3"),
            (
                json!({"inference_retry_config": {"initial_delay_ms": 3000, "max_delay_ms": 1000}}),
                "the retry delays are inconsistent: initial_delay_ms 3000 is more than max_delay_ms 1000",
            ),
        ];
        for (input, detail) in cases {
            let p = envelope(input).unwrap_err();
            assert_eq!(p.status, 400);
            assert_eq!(p.detail, detail);
        }
    }

    #[test]
    fn headers_set_options_and_bad_ones_are_named() {
        let o = headers(&[("defer-priority", "2"), ("defer-max-time-in-queue", "60")]).unwrap();
        assert_eq!(o.priority, Priority::LOW);
        assert_eq!(o.max_time_in_queue, Duration::from_secs(60));
        let p = headers(&[("defer-priority", "high")]).unwrap_err();
        assert_eq!(
            p.detail,
            "`defer-priority` must be an integer from 0 to 2, got \"high\""
        );
        let p = headers(&[("defer-priority", "1"), ("defer-priority", "2")]).unwrap_err();
        assert_eq!(p.detail, "`defer-priority` was sent more than once");
    }
}
