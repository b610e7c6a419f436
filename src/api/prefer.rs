//! The `Prefer` request header (RFC 7240), as far as the layer acts on it.
//!
//! `respond-async` asks for a job; `wait=N` bounds how long the layer may hold
//! the request. A preference that cannot be parsed is ignored, as RFC 7240
//! §2 requires, and only what was applied is echoed in `Preference-Applied`.
//! When a preference appears more than once, the first one that parses counts.

use std::borrow::Cow;

use http::header::HeaderName;
use http::HeaderMap;

/// `Prefer` (RFC 7240), which `http` has no constant for.
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");

/// The preferences the layer understands, as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prefer {
    pub(crate) respond_async: bool,
    /// `wait=N`, in seconds.
    pub(crate) wait: Option<u64>,
}

impl Prefer {
    /// Reads every `Prefer` header of a request.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut prefer = Prefer::default();
        let mut seen_async = false;
        for value in headers.get_all(PREFER) {
            let Ok(value) = value.to_str() else { continue };
            for_each_preference(value, |name, value| {
                if name.eq_ignore_ascii_case("respond-async") {
                    if !seen_async {
                        seen_async = true;
                        prefer.respond_async = value.is_none();
                    }
                } else if name.eq_ignore_ascii_case("wait") && prefer.wait.is_none() {
                    // Only delta-seconds; anything else is not this preference.
                    prefer.wait = value
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
                }
            });
        }
        prefer
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '.'
                | '^'
                | '_'
                | '`'
                | '|'
                | '~'
        )
}

/// Calls `f` with each `(name, value)` preference of a header value, skipping
/// every one that does not parse. Parameters after `;` are parsed and
/// discarded. (A callback, not a list: this runs on every request that
/// carries `Prefer`, and a list would be allocated for each.)
fn for_each_preference<'a>(header: &'a str, mut f: impl FnMut(&'a str, Option<Cow<'a, str>>)) {
    let mut rest = header;
    loop {
        let (item, next) = split_unquoted(rest, ',');
        if let Some((name, value)) = preference(item) {
            f(name, value);
        }
        match next {
            Some(n) => rest = n,
            None => return,
        }
    }
}

/// Splits at the first `sep` outside a quoted string.
fn split_unquoted(s: &str, sep: char) -> (&str, Option<&str>) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => return (&s[..i], Some(&s[i + 1..])),
            _ => {}
        }
    }
    (s, None)
}

fn preference(item: &str) -> Option<(&str, Option<Cow<'_, str>>)> {
    let (head, params) = split_unquoted(item, ';');
    let (name, value) = match head.split_once('=') {
        Some((n, v)) => (n.trim(), Some(word(v.trim())?)),
        None => (head.trim(), None),
    };
    if name.is_empty() || !name.chars().all(is_tchar) {
        return None;
    }
    // Every parameter must parse too, or the whole preference is dropped.
    let mut params = params;
    while let Some(p) = params {
        let (param, next) = split_unquoted(p, ';');
        let param = param.trim();
        if !param.is_empty() {
            let (pn, pv) = param
                .split_once('=')
                .map_or((param, None), |(n, v)| (n.trim(), Some(v.trim())));
            if pn.is_empty() || !pn.chars().all(is_tchar) || pv.is_some_and(|v| word(v).is_none()) {
                return None;
            }
        }
        params = next;
    }
    Some((name, value))
}

/// `token / quoted-string`, unquoted (borrowed, unless it had quotes).
fn word(v: &str) -> Option<Cow<'_, str>> {
    if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return None,
                c => out.push(c),
            }
        }
        Some(Cow::Owned(out))
    } else if !v.is_empty() && v.chars().all(is_tchar) {
        Some(Cow::Borrowed(v))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(values: &[&'static str]) -> Prefer {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(PREFER, HeaderValue::from_static(v));
        }
        Prefer::from_headers(&h)
    }

    #[test]
    fn reads_respond_async_and_wait() {
        assert_eq!(parse(&[]), Prefer::default());
        assert_eq!(
            parse(&["respond-async"]),
            Prefer {
                respond_async: true,
                wait: None
            }
        );
        assert_eq!(
            parse(&["respond-async, wait=10"]),
            Prefer {
                respond_async: true,
                wait: Some(10)
            }
        );
        assert_eq!(
            parse(&["Respond-Async", "WAIT = \"5\""]),
            Prefer {
                respond_async: true,
                wait: Some(5)
            }
        );
        assert!(parse(&["return=minimal; foo=\"a,b\", respond-async"]).respond_async);
    }

    #[test]
    fn ignores_what_does_not_parse() {
        assert!(!parse(&["respond async"]).respond_async);
        assert!(!parse(&["respond-async=yes"]).respond_async);
        assert_eq!(parse(&["respond-async, wait=soon"]).wait, None);
        assert_eq!(parse(&["respond-async, wait=-1"]).wait, None);
        assert!(!parse(&["respond-async; bad param"]).respond_async);
        assert_eq!(
            parse(&["wait=\"unterminated, respond-async"]),
            Prefer::default()
        );
        assert_eq!(
            parse(&["wait=99999999999999999999999"]).wait,
            Some(u64::MAX)
        );
    }

    #[test]
    fn the_first_of_a_repeated_preference_counts() {
        assert_eq!(parse(&["wait=3, wait=100"]).wait, Some(3));
        assert_eq!(parse(&["wait=3", "wait=100"]).wait, Some(3));
        assert!(!parse(&["respond-async=x", "respond-async"]).respond_async);
    }
}
