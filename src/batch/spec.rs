//! A [`Batch`] written on one line, as the program's `--batch` flag takes it:
//! `POST /v1/embeddings input=/input output=/data max=32 bytes=1048576 wait=10ms`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::Method;

use super::Batch;

/// Why a batch's one-line form did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBatchError(String);

impl fmt::Display for ParseBatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseBatchError {}

fn bad(message: impl Into<String>) -> ParseBatchError {
    ParseBatchError(message.into())
}

/// `10ms`, `1s`, or a bare number of milliseconds.
fn duration(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = text.strip_suffix('s') {
        return s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
    }
    text.parse().ok().map(Duration::from_millis)
}

/// A pointer is empty (the whole document) or starts with `/`.
fn pointer(key: &str, text: &str) -> Result<String, ParseBatchError> {
    if text.is_empty() || text.starts_with('/') {
        Ok(text.to_owned())
    } else {
        Err(bad(format!(
            "{key}={text}: a JSON pointer starts with '/' (or is empty, for the whole answer)"
        )))
    }
}

impl FromStr for Batch {
    type Err = ParseBatchError;

    /// `METHOD /path` then `key=value` settings: `input`, `output` (JSON
    /// pointers; `output=` for a top-level array), `max` (items), `bytes`,
    /// `wait` (`10ms`, `0.5s`, or milliseconds). Unnamed settings keep
    /// [`Batch::new`]'s defaults.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_defer::batch::Batch;
    ///
    /// let batch: Batch = "POST /embed input=/inputs output= max=64 wait=5ms".parse().unwrap();
    /// assert_eq!(batch.output_pointer(), "");
    /// assert_eq!(batch.items_limit(), 64);
    /// assert_eq!(batch.wait_limit(), Duration::from_millis(5));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace();
        let method = words
            .next()
            .ok_or_else(|| bad("empty: expected 'METHOD /path key=value...'"))?;
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad(format!("{method}: not an HTTP method")))?;
        let path = words
            .next()
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| bad("expected a path starting with '/' after the method"))?;
        let mut batch = Batch::new(method, path);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| bad(format!("{word}: expected key=value")))?;
            batch = match key {
                "input" => batch.input(pointer(key, value)?),
                "output" => batch.output(pointer(key, value)?),
                "max" | "max_items" => {
                    batch.max_items(value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(format!("{word}: a whole number of items, at least 1"))
                    })?)
                }
                "bytes" | "max_bytes" => batch.max_bytes(
                    value
                        .parse()
                        .map_err(|_| bad(format!("{word}: a whole number of bytes")))?,
                ),
                "wait" | "max_wait" => batch.max_wait(
                    duration(value)
                        .ok_or_else(|| bad(format!("{word}: a duration such as 10ms")))?,
                ),
                _ => {
                    return Err(bad(format!(
                        "{key}: unknown setting (input, output, max, bytes, wait)"
                    )))
                }
            };
        }
        if batch.input.is_empty() {
            return Err(bad("input=: the input must be a field of the body"));
        }
        Ok(batch)
    }
}
