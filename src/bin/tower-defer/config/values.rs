//! The flags' values: how each is read (the parsers clap calls) and how
//! the start summary writes them back (durations, sizes, URLs with their
//! passwords masked).

use std::time::Duration;

use http::Uri;
use tower_defer::batch::Batch;

use super::{Aging, StoreUrl};

pub(super) fn upstream_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        Some("https") if uri.authority().is_some() => Ok(uri),
        _ => Err("write http://host:port, optionally with a base path".into()),
    }
}

pub(super) fn wake_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => Err("write an absolute URL: http://host[:port]/path or https://...".into()),
    }
}

pub(super) fn prefix(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.trim_end_matches('/').is_empty() {
        Ok(s.trim_end_matches('/').to_owned())
    } else {
        Err("must start with '/' and name a path, such as /async".into())
    }
}

pub(super) fn path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.parse::<http::uri::PathAndQuery>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err("must be a path starting with '/'".into())
    }
}

pub(super) fn batch(s: &str) -> Result<Batch, String> {
    s.parse()
        .map_err(|e: tower_defer::batch::ParseBatchError| e.to_string())
}

/// The routes of a `--batch-file`: a JSON array of objects, each a `route`
/// (`"POST /path"`) and the settings of the one-line form by their long
/// names (`input`, `output`, `max_items`, `max_bytes`, `max_wait_ms`).
pub(crate) fn batch_file(path: &std::path::Path) -> Result<Vec<Batch>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--batch-file {shown}: {e}"))?;
    let routes: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text)
        .map_err(|e| format!("--batch-file {shown}: expected an array of objects: {e}"))?;
    routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let mut line = route
                .get("route")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("--batch-file {shown}: route {i} has no \"route\""))?
                .to_owned();
            for (key, value) in route {
                let value = match (key.as_str(), value) {
                    ("route", _) => continue,
                    ("input" | "output", serde_json::Value::String(p)) => p.clone(),
                    ("max_items" | "max_bytes", serde_json::Value::Number(n)) => n.to_string(),
                    ("max_wait_ms", serde_json::Value::Number(n)) => format!("{n}ms"),
                    _ => {
                        return Err(format!(
                            "--batch-file {shown}: route {i}: bad or unknown field {key:?}"
                        ))
                    }
                };
                let key = key.strip_suffix("_ms").unwrap_or(key);
                line.push_str(&format!(" {key}={value}"));
            }
            line.parse::<Batch>()
                .map_err(|e| format!("--batch-file {shown}: route {i}: {e}"))
        })
        .collect()
}

pub(super) fn store(s: &str) -> Result<StoreUrl, String> {
    if s == "memory" || s.is_empty() {
        Ok(StoreUrl::Memory)
    } else if s
        .split(',')
        .all(|url| url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        Ok(StoreUrl::Redis(s.to_owned()))
    } else {
        Err("must be memory or redis://host:port/db (a cluster's nodes: redis://a:6379,redis://b:6379)".into())
    }
}

pub(super) fn namespace(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['{', '}']) {
        Err("must be a name without '{' or '}', such as my-app".into())
    } else {
        Ok(s.to_owned())
    }
}

pub(super) fn webhook_secret(s: &str) -> Result<String, String> {
    match s.strip_prefix("whsec_") {
        Some(rest) if !rest.is_empty() => Ok(s.to_owned()),
        _ => Err("a webhook secret is whsec_ followed by its base64 key".into()),
    }
}

pub(super) fn aging(s: &str) -> Result<Aging, String> {
    match s {
        "off" | "none" => Ok(Aging(None)),
        _ => match duration(s)? {
            Duration::ZERO => Err("must be positive, or off".into()),
            d => Ok(Aging(Some(d))),
        },
    }
}

/// A [`duration`] other than zero.
pub(super) fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        Duration::ZERO => Err("must be positive".into()),
        d => Ok(d),
    }
}

/// `500ms`, `30s`, `10m`, `1h`, `7d`; a bare number is seconds.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 30s, 10m, 1h or 7d"))?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// `512KiB`, `10MiB`, `1GiB` (or `k`, `M`, `G`, also binary); a bare number is bytes.
pub(crate) fn size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 512KiB or 10MiB"))?;
    let unit: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A URL with its password, if any, replaced by `****`; the user name
/// stays. Parsed as a URL, so a password holding `@`, `:` or `/` (written
/// percent-encoded, as a URL must) is masked whole. Text that is not a URL
/// is masked entirely: it may be a password with a typo around it.
pub(crate) fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Cannot fail: a URL with a password has a host.
                let _ = parsed.set_password(Some("****"));
            }
            parsed.to_string()
        }
        Err(_) => "**** (not a valid URL)".to_owned(),
    }
}

/// Every byte but a URL's unreserved characters as `%XX`: what a password
/// must be to sit whole in a URL's userinfo.
pub(super) fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

pub(super) fn bytes(n: usize) -> String {
    match n {
        n if n != 0 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n != 0 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n != 0 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_password_is_masked_whole_whatever_it_holds() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@redis:6379/0", "redis://:****@redis:6379/0"),
            (
                "rediss://app:s3cret@redis.example.com:6380/2",
                "rediss://app:****@redis.example.com:6380/2",
            ),
            // A password holding '@' and ':' (and '/'), percent-encoded.
            (
                "redis://app:p%40ss%3Aw%2Frd@redis:6379/0",
                "redis://app:****@redis:6379/0",
            ),
            // Written raw, the last '@' ends the userinfo: still masked whole.
            (
                "redis://app:p@ss:word@redis:6379/0",
                "redis://app:****@redis:6379/0",
            ),
            ("redis://app@redis:6379/0", "redis://app@redis:6379/0"),
        ];
        for (url, masked) in cases {
            assert_eq!(mask_url(url), masked, "{url}");
        }
        assert_eq!(mask_url("redis://a:b@[::1"), "**** (not a valid URL)");
    }

    /// Each form the README and `--help` show.
    #[test]
    fn durations_and_sizes_parse_in_every_documented_form() {
        let durations = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("45", Duration::from_secs(45)),
        ];
        for (text, expected) in durations {
            assert_eq!(duration(text), Ok(expected), "{text}");
            assert_eq!(
                duration(&human(expected)),
                Ok(expected),
                "{text} round trip"
            );
        }
        for bad in ["", "1w", "ms", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }

        let sizes = [
            ("512KiB", 512 << 10),
            ("10MiB", 10 << 20),
            ("1GiB", 1 << 30),
            ("4k", 4 << 10),
            ("2M", 2 << 20),
            ("1G", 1 << 30),
            ("2048", 2048),
        ];
        for (text, expected) in sizes {
            assert_eq!(size(text), Ok(expected), "{text}");
            assert_eq!(size(&bytes(expected)), Ok(expected), "{text} round trip");
        }
        for bad in ["", "1TiB", "KiB", "-1"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
    }
}
