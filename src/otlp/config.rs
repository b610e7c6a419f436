//! The exporter's settings, from the standard `OTEL_*` variables (see the
//! module docs for the list). A value that cannot be used is an error that
//! names the variable, never a silent default: a typo in an endpoint would
//! otherwise lose every trace without a word.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

/// The wire protocol of the exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: `POST {endpoint}/v1/traces` with a protobuf body. The default.
    HttpProtobuf,
    /// `grpc`: the `TraceService/Export` call over HTTP/2 (h2c for `http://`).
    Grpc,
}

/// The gRPC method's path, after the endpoint's authority.
pub(crate) const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where spans go and how they are batched: built from the `OTEL_*`
/// variables by [`OtlpConfig::from_env`], or from any lookup with
/// [`OtlpConfig::from_lookup`].
#[derive(Clone)]
pub struct OtlpConfig {
    pub(crate) endpoint: Uri,
    pub(crate) protocol: Protocol,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) timeout: Duration,
    pub(crate) schedule_delay: Duration,
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    /// `service.name` first, then the other resource attributes.
    pub(crate) resource: Vec<(String, String)>,
}

impl fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are often credentials: names only.
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("schedule_delay", &self.schedule_delay)
            .field("max_queue", &self.max_queue)
            .field("max_batch", &self.max_batch)
            .field("resource", &self.resource)
            .finish()
    }
}

/// An `OTEL_*` variable with a value the exporter cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(variable: &str, why: impl fmt::Display) -> Self {
        ConfigError {
            message: format!("{variable}: {why}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl OtlpConfig {
    /// The exporter the process's environment asks for: `Ok(None)` when
    /// traces are not to be exported (`OTEL_SDK_DISABLED=true`,
    /// `OTEL_TRACES_EXPORTER=none`, or neither an endpoint nor
    /// `OTEL_TRACES_EXPORTER=otlp` is set). `default_service` is the
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor
    /// `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, ConfigError> {
        let mut bad = None;
        let config = Self::from_lookup(default_service, |name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                bad.get_or_insert_with(|| ConfigError::new(name, "is not valid UTF-8"));
                None
            }
        });
        match bad {
            Some(e) => Err(e),
            None => config,
        }
    }

    /// As [`from_env`](Self::from_env), reading each variable through `var`.
    pub fn from_lookup(
        default_service: &str,
        mut var: impl FnMut(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        // Empty means unset, as the specification says.
        let mut get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let mut asked = false;
        if let Some(exporters) = get("OTEL_TRACES_EXPORTER") {
            for exporter in exporters.split(',').map(str::trim) {
                match exporter {
                    "none" => return Ok(None),
                    "otlp" => asked = true,
                    other => {
                        return Err(ConfigError::new(
                            "OTEL_TRACES_EXPORTER",
                            format!("{other:?} is not supported; use otlp or none"),
                        ))
                    }
                }
            }
        }
        let per_signal = |get: &mut dyn FnMut(&str) -> Option<String>, suffix: &str| {
            let specific = format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}");
            match get(&specific) {
                Some(v) => Some((specific, v)),
                None => {
                    let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
                    get(&general).map(|v| (general, v))
                }
            }
        };
        let protocol = match per_signal(&mut get, "PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((_, v)) if v.trim() == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, v)) if v.trim() == "grpc" => Protocol::Grpc,
            Some((name, v)) => {
                return Err(ConfigError::new(
                    &name,
                    format!("{v:?} is not supported; use http/protobuf or grpc"),
                ))
            }
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => {
                endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url, protocol, false)?
            }
            (None, Some(url)) => endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &url, protocol, true)?,
            (None, None) if asked => {
                let default = match protocol {
                    Protocol::HttpProtobuf => "http://localhost:4318/v1/traces",
                    Protocol::Grpc => "http://localhost:4317",
                };
                endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", default, protocol, false)?
            }
            (None, None) => return Ok(None),
        };
        let headers = match per_signal(&mut get, "HEADERS") {
            Some((name, v)) => headers(&name, &v)?,
            None => Vec::new(),
        };
        let timeout = match per_signal(&mut get, "TIMEOUT") {
            Some((name, v)) => Duration::from_millis(whole(&name, &v, 1, "milliseconds")?),
            None => Duration::from_secs(10),
        };
        let schedule_delay = match get("OTEL_BSP_SCHEDULE_DELAY") {
            Some(v) => {
                Duration::from_millis(whole("OTEL_BSP_SCHEDULE_DELAY", &v, 1, "milliseconds")?)
            }
            None => Duration::from_secs(5),
        };
        let count = |get: &mut dyn FnMut(&str) -> Option<String>, name: &str, default| {
            get(name).map_or(Ok(default), |v| {
                whole(name, &v, 1, "spans").map(|n| n.min(1 << 20) as usize)
            })
        };
        let max_queue = count(&mut get, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let max_batch = count(&mut get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?;
        if max_batch > max_queue {
            return Err(ConfigError::new(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                format!("{max_batch} is more than OTEL_BSP_MAX_QUEUE_SIZE ({max_queue})"),
            ));
        }
        let mut resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => pairs("OTEL_RESOURCE_ATTRIBUTES", &v)?,
            None => Vec::new(),
        };
        let service = match get("OTEL_SERVICE_NAME") {
            Some(name) => name.trim().to_owned(),
            None => resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map_or_else(|| default_service.to_owned(), |(_, v)| v.clone()),
        };
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".into(), service));
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            schedule_delay,
            max_queue,
            max_batch,
            resource,
        }))
    }

    /// The URL spans are sent to.
    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// The wire protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Where to send: an `http` or `https` URL. The general variable names the
/// collector, and `/v1/traces` is appended for `http/protobuf`; the
/// per-signal one is used as written. For gRPC only the authority counts.
fn endpoint(name: &str, url: &str, protocol: Protocol, general: bool) -> Result<Uri, ConfigError> {
    let url = url.trim();
    let parsed: Uri = url
        .parse()
        .map_err(|_| ConfigError::new(name, format!("{url:?} is not a URL")))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") if cfg!(feature = "tls") => {}
        Some("https") => {
            return Err(ConfigError::new(
                name,
                format!("{url:?} is https, and this build has no TLS (feature \"tls\")"),
            ))
        }
        _ => {
            return Err(ConfigError::new(
                name,
                format!("{url:?} is not an http:// or https:// URL"),
            ))
        }
    }
    if parsed.authority().is_none() {
        return Err(ConfigError::new(name, format!("{url:?} has no host")));
    }
    let full = match protocol {
        Protocol::HttpProtobuf if general => {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
        Protocol::HttpProtobuf => return Ok(parsed),
        Protocol::Grpc => format!(
            "{}://{}{GRPC_PATH}",
            parsed.scheme_str().unwrap_or("http"),
            parsed.authority().map_or("", |a| a.as_str())
        ),
    };
    full.parse()
        .map_err(|_| ConfigError::new(name, format!("{url:?} is not a URL")))
}

/// `key=value,key=value`, each part percent-decoded (W3C Baggage's form,
/// as the specification says for both headers and resource attributes).
fn pairs(name: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::new(name, format!("{item:?} is not key=value")))?;
        let key = percent_decode(key.trim())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ConfigError::new(name, format!("{item:?} has a bad key")))?;
        let value = percent_decode(value.trim())
            .ok_or_else(|| ConfigError::new(name, format!("{item:?} has a bad %-escape")))?;
        out.push((key, value));
    }
    Ok(out)
}

fn headers(name: &str, text: &str) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    pairs(name, text)?
        .into_iter()
        .map(|(key, value)| {
            let header = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| ConfigError::new(name, format!("{key:?} is not a header name")))?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                // The value may be a credential: never echoed.
                ConfigError::new(name, format!("the value of {key:?} is not a header value"))
            })?;
            Ok((header, value))
        })
        .collect()
}

fn whole(name: &str, text: &str, min: u64, unit: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| {
            ConfigError::new(
                name,
                format!("{text:?} is not a whole number of {unit} (at least {min})"),
            )
        })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, ConfigError> {
        OtlpConfig::from_lookup("svc", |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn error(vars: &[(&str, &str)]) -> String {
        config(vars).unwrap_err().to_string()
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert!(config(&[]).unwrap().is_none());
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(config(&[endpoint]).unwrap().is_some());
        assert!(config(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])
            .unwrap()
            .is_none());
        assert!(config(&[endpoint, ("OTEL_SDK_DISABLED", "false")])
            .unwrap()
            .is_some());
        assert!(config(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])
            .unwrap()
            .is_none());
        // Asked for by name: the default collector.
        let c = config(&[("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://localhost:4318/v1/traces");
    }

    #[test]
    fn the_general_endpoint_gets_the_signal_path_and_the_traces_one_is_kept() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://c:4318/base/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://c:9/custom");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint.to_string(), format!("http://c:4317{GRPC_PATH}"));
    }

    #[test]
    fn headers_resource_and_batching_are_read() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Basic%20abc, x-tenant = t1",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment=prod",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5"),
        ])
        .unwrap()
        .unwrap();
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", "Basic abc"), ("x-tenant", "t1")]
        );
        assert_eq!(
            c.resource,
            [
                ("service.name".to_owned(), "from-attrs".to_owned()),
                ("deployment.environment".to_owned(), "prod".to_owned())
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.schedule_delay, Duration::from_millis(100));
        assert_eq!((c.max_queue, c.max_batch), (10, 5));
        assert!(
            !format!("{c:?}").contains("Basic"),
            "header values are not shown"
        );

        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SERVICE_NAME", "mine"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.resource, [("service.name".to_owned(), "mine".to_owned())]);
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(c.resource, [("service.name".to_owned(), "svc".to_owned())]);
        assert_eq!((c.max_queue, c.max_batch), (2048, 512));
        assert_eq!(c.schedule_delay, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_secs(10));
    }

    #[test]
    fn each_unusable_value_is_an_error_naming_its_variable() {
        let e = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OTEL_TRACES_EXPORTER", "zipkin")],
                r#"OTEL_TRACES_EXPORTER: "zipkin" is not supported; use otlp or none"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                r#"OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" is not supported; use http/protobuf or grpc"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp")],
                r#"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "udp" is not supported; use http/protobuf or grpc"#,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                r#"OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" is not an http:// or https:// URL"#,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://bad host/")],
                r#"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://bad host/" is not a URL"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                r#"OTEL_EXPORTER_OTLP_HEADERS: "novalue" is not key=value"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_HEADERS", "bad header=1")],
                r#"OTEL_EXPORTER_OTLP_HEADERS: "bad header" is not a header name"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz")],
                r#"OTEL_EXPORTER_OTLP_HEADERS: "k=%zz" has a bad %-escape"#,
            ),
            (
                &[e, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                r#"OTEL_EXPORTER_OTLP_TIMEOUT: "10s" is not a whole number of milliseconds (at least 1)"#,
            ),
            (
                &[e, ("OTEL_BSP_SCHEDULE_DELAY", "0")],
                r#"OTEL_BSP_SCHEDULE_DELAY: "0" is not a whole number of milliseconds (at least 1)"#,
            ),
            (
                &[e, ("OTEL_BSP_MAX_QUEUE_SIZE", "-1")],
                r#"OTEL_BSP_MAX_QUEUE_SIZE: "-1" is not a whole number of spans (at least 1)"#,
            ),
            (
                &[e, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")],
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 4096 is more than OTEL_BSP_MAX_QUEUE_SIZE (2048)",
            ),
            (
                &[e, ("OTEL_RESOURCE_ATTRIBUTES", "=x")],
                r#"OTEL_RESOURCE_ATTRIBUTES: "=x" has a bad key"#,
            ),
        ];
        for (vars, want) in cases {
            assert_eq!(error(vars), *want, "{vars:?}");
        }
        #[cfg(not(feature = "tls"))]
        assert_eq!(
            error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]),
            r#"OTEL_EXPORTER_OTLP_ENDPOINT: "https://c:4318" is https, and this build has no TLS (feature "tls")"#
        );
    }
}
