//! OTLP's trace messages in protobuf, written by hand: the few fields the
//! exporter sends, in the wire format of `opentelemetry/proto/trace/v1/
//! trace.proto` and `collector/trace/v1/trace_service.proto`. A dependency
//! on prost and generated types would bring a build script or a tree of
//! crates for some 150 lines; the tests decode what this writes with the
//! reference types (`opentelemetry-proto`).
//!
//! Each nested message is written into a buffer of its own and copied into
//! its parent behind its length: the exporter runs off the request path, a
//! batch at a time, and the copies keep the code plain.

/// A span, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SpanData {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags (sampled, random).
    pub(crate) trace_flags: u8,
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
    pub(crate) attributes: Vec<(String, Value)>,
    pub(crate) events: Vec<EventData>,
    pub(crate) links: Vec<Link>,
    pub(crate) status: Status,
}

/// Something that happened during a span: a `tracing` event inside it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EventData {
    pub(crate) time_unix_nano: u64,
    pub(crate) name: String,
    pub(crate) attributes: Vec<(String, Value)>,
}

/// A span of another trace (or of the same) that this one is tied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) trace_flags: u8,
}

/// `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// `Status.StatusCode` with its message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Status {
    #[default]
    Unset,
    Ok,
    Error(String),
}

/// An attribute's value (`AnyValue`), of the kinds `tracing` records.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// `Span.flags`: the context has an is-remote bit, and whether it is set.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// An `ExportTraceServiceRequest` of one resource and one scope.
pub(crate) fn export_request(
    resource: &[(String, Value)],
    scope: (&str, &str),
    spans: &[SpanData],
) -> Vec<u8> {
    let mut scope_spans = Vec::new();
    message(&mut scope_spans, 1, |m| {
        string(m, 1, scope.0);
        string(m, 2, scope.1);
    });
    for span in spans {
        message(&mut scope_spans, 2, |m| encode_span(m, span));
    }
    let mut resource_spans = Vec::new();
    message(&mut resource_spans, 1, |m| {
        for (key, value) in resource {
            key_value(m, 1, key, value);
        }
    });
    bytes_field(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    bytes_field(&mut request, 1, &resource_spans);
    request
}

fn encode_span(m: &mut Vec<u8>, span: &SpanData) {
    bytes_field(m, 1, &span.trace_id);
    bytes_field(m, 2, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        bytes_field(m, 4, parent);
    }
    string(m, 5, span.name);
    varint_field(m, 6, span.kind as u64);
    fixed64(m, 7, span.start_unix_nano);
    fixed64(m, 8, span.end_unix_nano);
    for (key, value) in &span.attributes {
        key_value(m, 9, key, value);
    }
    for event in &span.events {
        message(m, 11, |e| {
            fixed64(e, 1, event.time_unix_nano);
            string(e, 2, &event.name);
            for (key, value) in &event.attributes {
                key_value(e, 3, key, value);
            }
        });
    }
    for link in &span.links {
        message(m, 13, |l| {
            bytes_field(l, 1, &link.trace_id);
            bytes_field(l, 2, &link.span_id);
            // A batch's members are linked while they run in this process.
            fixed32(l, 6, u32::from(link.trace_flags) | HAS_IS_REMOTE);
        });
    }
    let (code, text) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error(text) => (2, text.as_str()),
    };
    if code != 0 {
        message(m, 15, |s| {
            string(s, 2, text);
            varint_field(s, 3, code);
        });
    }
    // A job's spans never have their parent in this process (see trace.rs):
    // the submitter's span, or the submission's, is remote.
    let remote = if span.parent_span_id.is_some() {
        IS_REMOTE
    } else {
        0
    };
    fixed32(m, 16, u32::from(span.trace_flags) | HAS_IS_REMOTE | remote);
}

fn key_value(m: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(m, field, |kv| {
        string(kv, 1, key);
        message(kv, 2, |v| match value {
            Value::Str(s) => string(v, 1, s),
            Value::Bool(b) => varint_field(v, 2, u64::from(*b)),
            // int64 is a varint of the two's complement, 10 bytes when negative.
            Value::Int(i) => varint_field(v, 3, *i as u64),
            Value::Double(d) => {
                tag(v, 4, 1);
                v.extend_from_slice(&d.to_le_bytes());
            }
        });
    });
}

/// Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
fn tag(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(buf, u64::from(field) << 3 | u64::from(wire_type));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, 0);
    varint(buf, v);
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, 1);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    tag(buf, field, 5);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(buf, field, 2);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(buf, field, s.as_bytes());
}

fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(buf, field, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        for (v, want) in [
            (0u64, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf, want, "{v}");
        }
    }

    /// Every field written, read back by the reference decoder (prost and
    /// the types generated from the OTLP .proto files).
    #[test]
    fn the_reference_decoder_reads_every_field_back() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
        use prost::Message;

        let span = SpanData {
            trace_id: [0x4b; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            trace_flags: 0x01,
            name: "job",
            kind: Kind::Client,
            start_unix_nano: 1_700_000_000_123_456_789,
            end_unix_nano: u64::MAX - 1,
            attributes: vec![
                ("job_id".into(), Value::Str("0123456789abcdef".into())),
                ("attempt".into(), Value::Int(2)),
                ("negative".into(), Value::Int(-300)),
                ("sampled".into(), Value::Bool(true)),
                ("ratio".into(), Value::Double(0.25)),
                ("empty".into(), Value::Str(String::new())),
            ],
            events: vec![EventData {
                time_unix_nano: 1_700_000_000_200_000_000,
                name: "job finished".into(),
                attributes: vec![("status".into(), Value::Str("succeeded".into()))],
            }],
            links: vec![Link {
                trace_id: [0xaa; 16],
                span_id: [0xbb; 8],
                trace_flags: 0x01,
            }],
            status: Status::Error("retry".into()),
        };
        let root = SpanData {
            parent_span_id: None,
            name: "submit",
            kind: Kind::Server,
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            status: Status::Unset,
            ..span.clone()
        };
        let resource = [("service.name".to_owned(), Value::Str("svc".into()))];
        let bytes = export_request(&resource, ("tower-defer", "0.1.0"), &[span, root]);
        let request = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();

        assert_eq!(request.resource_spans.len(), 1);
        let rs = &request.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(
            attrs[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("svc".into()))
        );
        let scope = &rs.scope_spans[0];
        let s = scope.scope.as_ref().unwrap();
        assert_eq!(
            (s.name.as_str(), s.version.as_str()),
            ("tower-defer", "0.1.0")
        );
        assert_eq!(scope.spans.len(), 2);

        let got = &scope.spans[0];
        assert_eq!(got.trace_id, [0x4b; 16]);
        assert_eq!(got.span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(got.parent_span_id, [9; 8]);
        assert_eq!(got.name, "job");
        assert_eq!(got.kind, 3, "client");
        assert_eq!(got.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(got.end_time_unix_nano, u64::MAX - 1);
        assert_eq!(got.flags, 0x01 | HAS_IS_REMOTE | IS_REMOTE);
        let values: Vec<(&str, Option<Any>)> = got
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone()))
            .collect();
        assert_eq!(
            values,
            [
                ("job_id", Some(Any::StringValue("0123456789abcdef".into()))),
                ("attempt", Some(Any::IntValue(2))),
                ("negative", Some(Any::IntValue(-300))),
                ("sampled", Some(Any::BoolValue(true))),
                ("ratio", Some(Any::DoubleValue(0.25))),
                ("empty", Some(Any::StringValue(String::new()))),
            ]
        );
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.events[0].name, "job finished");
        assert_eq!(got.events[0].time_unix_nano, 1_700_000_000_200_000_000);
        assert_eq!(got.events[0].attributes[0].key, "status");
        assert_eq!(got.links.len(), 1);
        assert_eq!(got.links[0].trace_id, [0xaa; 16]);
        assert_eq!(got.links[0].span_id, [0xbb; 8]);
        assert_eq!(got.links[0].flags, 0x01 | HAS_IS_REMOTE);
        let status = got.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "retry"));

        let root = &scope.spans[1];
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.kind, 2, "server");
        assert_eq!(
            root.flags,
            0x01 | HAS_IS_REMOTE,
            "a root has no remote parent"
        );
        assert!(root.status.is_none(), "unset is not written");
    }

    #[test]
    fn a_nested_message_is_its_tag_its_length_and_its_bytes() {
        let mut buf = Vec::new();
        message(&mut buf, 2, |m| string(m, 1, "ab"));
        assert_eq!(buf, [0x12, 0x04, 0x0a, 0x02, b'a', b'b']);
    }
}
