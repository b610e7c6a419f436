//! Reading the native envelope without re-encoding its `data`.
//!
//! `data` becomes the inner request's body. Parsing it into a JSON tree only
//! to write it out again cost most of a submission, and changed what the
//! model receives (numbers beyond `f64`, key order, spacing). So the envelope
//! is read as its fields' raw JSON text: `data` is kept byte for byte, and
//! the other fields are parsed only when read, strings borrowed from the body
//! where they hold no escapes (a submission then allocates nothing for its
//! `path`, and nothing at all for fields nobody reads).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::Problem;

/// An envelope's top-level fields, as written.
pub(crate) struct Envelope<'a> {
    /// The raw JSON text of `data`, if present (the last one, if repeated).
    pub(crate) data: Option<&'a RawValue>,
    /// Every other field, in order (a repeated one is read from its last).
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Why a body is not an envelope.
pub(crate) enum EnvelopeError {
    /// Not JSON at all.
    Malformed(serde_json::Error),
    /// JSON, but not an object.
    NotAnObject,
}

impl<'a> Envelope<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        // Checked as UTF-8 once, whole: parsed from bytes, each string and
        // the raw `data` would be checked on their own.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str::<Envelope<'a>>(text),
            // Not UTF-8: parsed as bytes, the error says where.
            Err(_) => serde_json::from_slice::<Envelope<'a>>(bytes),
        };
        match parsed {
            Ok(envelope) => Ok(envelope),
            // Well-formed JSON of another type: the visitor refused it.
            Err(e) if e.is_data() => match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => Err(EnvelopeError::NotAnObject),
                Err(e) => Err(EnvelopeError::Malformed(e)),
            },
            Err(e) => Err(EnvelopeError::Malformed(e)),
        }
    }
}

/// One field's value, read when asked for.
pub(crate) enum Field<'a> {
    /// Absent, or `null`.
    Missing,
    /// A string.
    Text(Cow<'a, str>),
    /// Any other JSON value.
    Other(Cow<'a, Value>),
}

impl Field<'_> {
    /// The value as JSON, for a message that quotes it.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Field::Missing => Value::Null,
            Field::Text(s) => Value::String(s.to_string()),
            Field::Other(v) => Value::clone(v),
        }
    }
}

/// Where the fields of a submission are read from: the native envelope, or
/// the JSON object of another dialect's body.
pub(crate) trait Fields {
    /// The field `name`. A value JSON allows but `serde_json` cannot hold
    /// (a number beyond `f64`) is refused as malformed, as it was before
    /// fields were read lazily.
    fn field(&self, name: &str) -> Result<Field<'_>, Problem>;
}

impl Fields for Map<String, Value> {
    fn field(&self, name: &str) -> Result<Field<'_>, Problem> {
        Ok(match self.get(name) {
            None | Some(Value::Null) => Field::Missing,
            Some(Value::String(s)) => Field::Text(Cow::Borrowed(s)),
            Some(v) => Field::Other(Cow::Borrowed(v)),
        })
    }
}

impl Fields for Envelope<'_> {
    fn field(&self, name: &str) -> Result<Field<'_>, Problem> {
        let Some((_, raw)) = self.fields.iter().rev().find(|(key, _)| key == name) else {
            return Ok(Field::Missing);
        };
        let text = raw.get();
        let malformed = |e: serde_json::Error| {
            Problem::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: `{name}`: {e}"),
            )
        };
        if text.starts_with('"') {
            // Borrowed unless it has escapes to undo.
            return match serde_json::from_str::<&str>(text) {
                Ok(s) => Ok(Field::Text(Cow::Borrowed(s))),
                Err(_) => serde_json::from_str::<String>(text)
                    .map(|s| Field::Text(Cow::Owned(s)))
                    .map_err(malformed),
            };
        }
        match serde_json::from_str::<Value>(text).map_err(malformed)? {
            Value::Null => Ok(Field::Missing),
            value => Ok(Field::Other(Cow::Owned(value))),
        }
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope {
            data: None,
            fields: Vec::new(),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "data" {
                envelope.data = Some(map.next_value()?);
            } else {
                envelope.fields.push((key, map.next_value()?));
            }
        }
        Ok(envelope)
    }
}

/// A key, borrowed from the body unless it had escapes to undo.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Envelope<'_> {
        Envelope::parse(body.as_bytes()).unwrap_or_else(|_| panic!("{body} parses"))
    }

    fn value(envelope: &Envelope<'_>, name: &str) -> Value {
        match envelope.field(name) {
            Ok(field) => field.to_value(),
            Err(p) => panic!("{name}: {}", p.detail),
        }
    }

    #[test]
    fn data_is_kept_as_written() {
        let body = r#"{ "data" : {"b": 1.0, "a": 123456789012345678901234567890} , "path": "/p"}"#;
        let envelope = parse(body);
        assert_eq!(
            envelope.data.unwrap().get(),
            r#"{"b": 1.0, "a": 123456789012345678901234567890}"#
        );
        assert_eq!(value(&envelope, "path"), "/p");
    }

    #[test]
    fn escaped_keys_are_read_and_the_last_data_wins() {
        let envelope = parse(r#"{"d\u0061ta": 1, "data": [2], "pri\u006frity": 0}"#);
        assert_eq!(envelope.data.unwrap().get(), "[2]");
        assert_eq!(value(&envelope, "priority"), 0);
    }

    #[test]
    fn fields_are_read_when_asked_strings_borrowed_unless_escaped() {
        let envelope = parse(
            r#"{"data": 1, "path": "/a", "path": "/b", "method": "P\u004fST", "n": null, "big": 1e400, "o": {"x": [1]}}"#,
        );
        assert!(matches!(
            envelope.field("path"),
            Ok(Field::Text(Cow::Borrowed("/b")))
        ));
        assert!(matches!(envelope.field("method"), Ok(Field::Text(Cow::Owned(m))) if m == "POST"));
        assert!(matches!(envelope.field("n"), Ok(Field::Missing)));
        assert!(matches!(envelope.field("absent"), Ok(Field::Missing)));
        assert_eq!(value(&envelope, "o"), serde_json::json!({"x": [1]}));
        // Read only when asked: an unread field beyond f64 is no error.
        let refused = envelope.field("big").err().expect("1e400 is refused");
        assert_eq!(refused.code, "malformed_json");
        assert!(
            refused
                .detail
                .starts_with("the body is not valid JSON: `big`: number out of range"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn other_json_is_not_an_object_and_broken_json_is_malformed() {
        for body in ["[]", "1", "\"data\"", "null"] {
            assert!(matches!(
                Envelope::parse(body.as_bytes()),
                Err(EnvelopeError::NotAnObject)
            ));
        }
        // Not UTF-8, inside `data` or out of it: malformed, and said where.
        for body in [&b"{\"data\": \"\xff\"}"[..], b"{\"data\": 1, \"p\xc3\": 2}"] {
            match Envelope::parse(body) {
                Err(EnvelopeError::Malformed(e)) => assert!(e.column() > 0, "{e}"),
                _ => panic!("{body:?} is malformed"),
            }
        }
        for body in ["", "{", "{\"data\": }", "[1,", "{} x"] {
            assert!(matches!(
                Envelope::parse(body.as_bytes()),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }
}
