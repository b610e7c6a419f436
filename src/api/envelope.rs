//! Reading the native envelope without re-encoding its `data`.
//!
//! `data` becomes the inner request's body. Parsing it into a JSON tree only
//! to write it out again cost most of a submission, and changed what the
//! model receives (numbers beyond `f64`, key order, spacing). So the envelope
//! is read as its fields' raw JSON text: `data` is kept byte for byte, and
//! only the other fields, which are few and small, are parsed into values.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// An envelope's top-level fields: `data` raw, the rest parsed.
pub(crate) struct Envelope<'a> {
    /// The raw JSON text of `data`, if present (the last one, if repeated).
    pub(crate) data: Option<&'a RawValue>,
    /// Every other field.
    pub(crate) fields: Map<String, Value>,
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
        match serde_json::from_slice::<Envelope<'a>>(bytes) {
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
            fields: Map::new(),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "data" {
                envelope.data = Some(map.next_value()?);
            } else {
                let value: Value = map.next_value()?;
                envelope.fields.insert(key.into_owned(), value);
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

    #[test]
    fn data_is_kept_as_written() {
        let body = r#"{ "data" : {"b": 1.0, "a": 123456789012345678901234567890} , "path": "/p"}"#;
        let envelope = parse(body);
        assert_eq!(
            envelope.data.unwrap().get(),
            r#"{"b": 1.0, "a": 123456789012345678901234567890}"#
        );
        assert_eq!(envelope.fields["path"], "/p");
    }

    #[test]
    fn escaped_keys_are_read_and_the_last_data_wins() {
        let envelope = parse(r#"{"d\u0061ta": 1, "data": [2], "pri\u006frity": 0}"#);
        assert_eq!(envelope.data.unwrap().get(), "[2]");
        assert_eq!(envelope.fields["priority"], 0);
    }

    #[test]
    fn other_json_is_not_an_object_and_broken_json_is_malformed() {
        for body in ["[]", "1", "\"data\"", "null"] {
            assert!(matches!(
                Envelope::parse(body.as_bytes()),
                Err(EnvelopeError::NotAnObject)
            ));
        }
        for body in ["", "{", "{\"data\": }", "[1,", "{} x"] {
            assert!(matches!(
                Envelope::parse(body.as_bytes()),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }
}
