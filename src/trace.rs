//! W3C trace context: one trace per job, from submission through each
//! attempt and each webhook delivery, on whichever replica runs them.
//!
//! At submission the layer reads the request's `traceparent`. A valid one
//! keeps its trace id and its sampled flag; a missing or malformed one (never
//! a `4xx`: tracing is not the client's contract) is replaced by a new trace.
//! The submission gets a span id of its own, and the job's stored headers get
//! `traceparent: 00-<trace id>-<submission span id>-<flags>`, so the store
//! carries the trace to any replica at no cost beyond one header. Each attempt
//! and each webhook delivery is a child of the submission: a fresh span id,
//! sent on as the `parent-id` of its own `traceparent`, so the upstream can
//! tell attempts apart while their trace id stays the job's.
//!
//! The `tracing` spans carry the same ids as fields (`job_id`, `trace_id`,
//! `span_id`, `parent_span_id`): `submit` while the job is enqueued, `job`
//! around each attempt, `webhook` around each delivery. An attempt's span is
//! not a child of the submission's in-process: that span ended with the
//! answer to the client, and keeping it (or anything else per job) alive for
//! the job's time in the queue would cost memory per queued job. The fields
//! are the link, and they also join attempts that another replica ran.

use std::fmt;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The flags we pass on: `sampled` (01) and, from trace context level 2,
/// `random` (02). Other bits have no meaning in version 00.
const KNOWN_FLAGS: u8 = 0x03;
/// A trace we start is sampled: the submitter sent no decision to honour.
const SAMPLED: u8 = 0x01;

/// One span's place in a trace: what a `traceparent` header says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// The context a valid `traceparent` in `headers` names; `None` when it
    /// is missing, repeated or malformed.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Self::parse(value.as_bytes()),
            _ => None,
        }
    }

    /// Parses `version-traceid-parentid-flags` as W3C Trace Context says: lowercase
    /// hex, version `ff` invalid, version 00 exactly 55 characters, a later
    /// version at least that with a `-` after them, ids not all zeros.
    fn parse(s: &[u8]) -> Option<Self> {
        let version = hex_byte(s.get(0..2)?)?;
        let fits = match version {
            0xff => false,
            0x00 => s.len() == 55,
            _ => s.len() == 55 || (s.len() > 55 && s[55] == b'-'),
        };
        if !fits || s[2] != b'-' || s[35] != b'-' || s[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        hex_into(&s[3..35], &mut trace_id)?;
        let mut span_id = [0u8; 8];
        hex_into(&s[36..52], &mut span_id)?;
        let flags = hex_byte(&s[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: flags & KNOWN_FLAGS,
        })
    }

    /// A new, sampled trace, this span its first.
    pub(crate) fn new_trace() -> Self {
        // One read of the OS source for both ids: this is on the submit path.
        let both: [u8; 24] = random_nonzero();
        let (trace_id, span_id) = both.split_at(16);
        let mut context = TraceContext {
            trace_id: trace_id.try_into().expect("16 bytes"),
            span_id: span_id.try_into().expect("8 bytes"),
            flags: SAMPLED,
        };
        // Either half may still be all zeros (about 2^-64): draw those again.
        if context.trace_id == [0; 16] {
            context.trace_id = random_nonzero();
        }
        if context.span_id == [0; 8] {
            context.span_id = random_nonzero();
        }
        context
    }

    /// A span of the same trace, with an id of its own.
    pub(crate) fn child(&self) -> Self {
        TraceContext {
            span_id: random_nonzero(),
            ..*self
        }
    }

    pub(crate) fn trace_id(&self) -> impl fmt::Display {
        Hex(self.trace_id)
    }

    pub(crate) fn span_id(&self) -> impl fmt::Display {
        Hex(self.span_id)
    }

    /// Sets `traceparent` in `headers` to this context, replacing any.
    pub(crate) fn set_on(&self, headers: &mut HeaderMap) {
        let value =
            HeaderValue::try_from(self.to_string()).expect("a traceparent is ASCII hex and dashes");
        headers.insert(TRACEPARENT, value);
    }
}

/// `00-<trace id>-<span id>-<flags>`: the `traceparent` that names this span
/// as the parent of the next hop.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            Hex(self.trace_id),
            Hex(self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The submission's side: the context the job is stored with, and the
/// submitter's span it continues, if any.
pub(crate) struct Submission {
    /// The submission's own span, the parent of every attempt.
    pub(crate) context: TraceContext,
    /// The submitter's span, from a valid incoming `traceparent`.
    pub(crate) parent: Option<TraceContext>,
}

impl Submission {
    /// Reads the trace the job's `headers` name or, failing that, the one
    /// the submission request's `submitted` headers name (an envelope's
    /// inner headers are the client's choice; its HTTP headers are its
    /// tracing library's), else starts one; then writes the submission's own
    /// span in `headers` in its place. A `tracestate` travels with the
    /// `traceparent` it came with, and is dropped with a malformed one.
    pub(crate) fn stamp(headers: &mut HeaderMap, submitted: &HeaderMap) -> Self {
        let parent = TraceContext::from_headers(headers).or_else(|| {
            headers.remove(TRACESTATE);
            let theirs = TraceContext::from_headers(submitted)?;
            for state in submitted.get_all(TRACESTATE) {
                headers.append(TRACESTATE, state.clone());
            }
            Some(theirs)
        });
        let context = parent
            .as_ref()
            .map_or_else(TraceContext::new_trace, TraceContext::child);
        context.set_on(headers);
        Submission { context, parent }
    }
}

/// One call made for a job (an attempt, or a webhook delivery): a child of
/// the span the job was stored with.
pub(crate) struct Call {
    pub(crate) context: TraceContext,
    /// The submission's span; `None` for a job stored without a valid
    /// `traceparent` (by an older version), whose calls start a trace each.
    pub(crate) parent: Option<TraceContext>,
}

impl Call {
    /// A new call for a job stored with `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let parent = TraceContext::from_headers(headers);
        let context = parent
            .as_ref()
            .map_or_else(TraceContext::new_trace, TraceContext::child);
        Call { context, parent }
    }
}

/// The parent's span id as a span field: empty when there is none.
pub(crate) fn parent_span_id(parent: Option<&TraceContext>) -> String {
    parent.map(|p| p.span_id().to_string()).unwrap_or_default()
}

/// An info span of a job's trace, with the fields that join its logs, on
/// this replica or another: `job_id`, `trace_id`, `span_id` (this span's,
/// as sent on in `traceparent`) and `parent_span_id`; more fields may follow.
macro_rules! job_span {
    ($name:literal, $job_id:expr, $context:expr, $parent:expr $(, $($field:tt)*)?) => {
        tracing::info_span!(
            $name,
            job_id = $job_id,
            trace_id = %$context.trace_id(),
            span_id = %$context.span_id(),
            parent_span_id = $crate::trace::parent_span_id($parent),
            $($($field)*)?
        )
    };
}
pub(crate) use job_span;

struct Hex<const N: usize>([u8; N]);

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    // All zeros is the one invalid id; the loop almost never runs twice.
    while id == [0; N] {
        getrandom::fill(&mut id).expect("the OS random source failed");
    }
    id
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // Uppercase is invalid in a traceparent.
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *byte = hex_byte(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Option<TraceContext> {
        TraceContext::parse(s.as_bytes())
    }

    #[test]
    fn a_valid_traceparent_reads_back_as_written() {
        let t = parse(VALID).unwrap();
        assert_eq!(t.to_string(), VALID);
        assert_eq!(t.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "garbage",
            // All-zero trace id, all-zero parent id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // Version ff, and version 00 with something after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong separators, short ids, non-hex flags.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            // A later version must have a dash after the known fields.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let t = parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-more").unwrap();
        assert_eq!(t.to_string(), VALID, "unknown flag bits dropped");
    }

    #[test]
    fn two_traceparent_headers_are_no_trace_context() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceContext::from_headers(&headers).is_some());
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(TraceContext::from_headers(&headers), None);
    }

    #[test]
    fn a_submission_continues_a_valid_trace_and_replaces_a_bad_one() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let s = Submission::stamp(&mut headers, &HeaderMap::new());
        let parent = s.parent.unwrap();
        assert_eq!(parent.to_string(), VALID);
        assert_eq!(s.context.trace_id, parent.trace_id);
        assert_ne!(s.context.span_id, parent.span_id);
        assert_eq!(TraceContext::from_headers(&headers), Some(s.context));
        assert_eq!(headers[TRACESTATE], "vendor=1", "kept with its trace");

        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("not a trace"));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let s = Submission::stamp(&mut headers, &HeaderMap::new());
        assert!(s.parent.is_none());
        assert_eq!(TraceContext::from_headers(&headers), Some(s.context));
        assert!(headers[TRACEPARENT].to_str().unwrap().ends_with("-01"));
        assert!(
            !headers.contains_key(TRACESTATE),
            "it described another trace"
        );
    }

    #[test]
    fn without_a_trace_of_its_own_a_job_continues_the_submission_requests() {
        let mut submitted = HeaderMap::new();
        submitted.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        submitted.insert(TRACESTATE, HeaderValue::from_static("vendor=2"));
        let mut headers = HeaderMap::new();
        let s = Submission::stamp(&mut headers, &submitted);
        assert_eq!(s.parent.unwrap().to_string(), VALID);
        assert_eq!(s.context.trace_id, s.parent.unwrap().trace_id);
        assert_eq!(headers[TRACESTATE], "vendor=2");

        // The job's own trace wins over the submission request's.
        let mut own = HeaderMap::new();
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        own.insert(TRACEPARENT, HeaderValue::from_static(theirs));
        let s = Submission::stamp(&mut own, &submitted);
        assert_eq!(s.parent.unwrap().to_string(), theirs);
        assert!(
            own[TRACEPARENT].to_str().unwrap().ends_with("-00"),
            "not sampled"
        );
    }

    #[test]
    fn each_call_is_a_new_child_of_the_stored_span() {
        let mut headers = HeaderMap::new();
        let stored = Submission::stamp(&mut headers, &HeaderMap::new()).context;
        let (a, b) = (Call::of(&headers), Call::of(&headers));
        assert_eq!(a.parent, Some(stored));
        assert_eq!(a.context.trace_id, stored.trace_id);
        assert_eq!(b.context.trace_id, stored.trace_id);
        assert_ne!(a.context.span_id, b.context.span_id);
        assert_ne!(a.context.span_id, stored.span_id);
        let orphan = Call::of(&HeaderMap::new());
        assert!(orphan.parent.is_none());
    }
}
