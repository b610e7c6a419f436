//! W3C trace context: one trace per job, from submission through each
//! attempt and each webhook delivery, on whichever replica runs them.
//!
//! At submission the layer reads the request's `traceparent`. A valid one
//! keeps its trace id and its sampled flag: the submission gets a span id of
//! its own, and the job's stored headers get `traceparent: 00-<trace id>-
//! <submission span id>-<flags>`, so the store carries the trace to any
//! replica. A missing or malformed one (never a `4xx`: tracing is not the
//! client's contract) starts a trace of the job's own, derived from its id:
//! every replica derives the same ids, so nothing is stored and a job whose
//! client sends no trace context costs no memory for one. Each attempt and
//! each webhook delivery is a child of the submission: a fresh span id, sent
//! on as the `parent-id` of its own `traceparent`, so the upstream can tell
//! attempts apart while their trace id stays the job's.
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

use crate::job::JobId;

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

    /// The trace of a job whose client sent no trace context, and its
    /// submission's span: derived from the job's id, the same on every
    /// replica. The id is 16 random characters; two rounds of a bijective
    /// mix spread them over the 128-bit trace id (distinct jobs, distinct
    /// traces) and a third gives the span id.
    pub(crate) fn of_job(id: JobId) -> Self {
        let b = id.as_str().as_bytes();
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let (lo, hi) = (word(0), word(8));
        let first = mix(lo ^ mix(hi));
        let second = mix(hi ^ 0x6a09_e667_f3bc_c908 ^ first);
        let span = mix(first ^ second ^ 0xbb67_ae85_84ca_a73b);
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&first.to_be_bytes());
        trace_id[8..].copy_from_slice(&second.to_be_bytes());
        TraceContext {
            trace_id: nonzero(trace_id),
            span_id: nonzero(span.to_be_bytes()),
            flags: SAMPLED,
        }
    }

    /// The submission span a stored job names: its stored `traceparent`, or
    /// else the one derived from its id.
    pub(crate) fn of_stored(headers: &HeaderMap, id: JobId) -> Self {
        Self::from_headers(headers).unwrap_or_else(|| Self::of_job(id))
    }

    /// A span of the same trace, with an id of its own.
    pub(crate) fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero(crate::random::bytes()),
            ..*self
        }
    }

    pub(crate) fn trace_id(&self) -> impl fmt::Display {
        Hex(self.trace_id)
    }

    /// Whether the trace's flags say it is sampled.
    #[cfg(feature = "otlp")]
    pub(crate) fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    pub(crate) fn span_id(&self) -> impl fmt::Display {
        Hex(self.span_id)
    }

    /// Sets `traceparent` in `headers` to this context, replacing any.
    pub(crate) fn set_on(&self, headers: &mut HeaderMap) {
        let value =
            HeaderValue::from_bytes(&self.encode()).expect("a traceparent is ASCII hex and dashes");
        headers.insert(TRACEPARENT, value);
    }

    /// `00-<trace id>-<span id>-<flags>`, written without the formatting
    /// machinery: this is on the path of every attempt.
    fn encode(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_to(&self.trace_id, &mut out[3..35]);
        hex_to(&self.span_id, &mut out[36..52]);
        hex_to(&[self.flags], &mut out[53..55]);
        out
    }
}

/// `00-<trace id>-<span id>-<flags>`: the `traceparent` that names this span
/// as the parent of the next hop.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.encode()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The submission's side: the submitter's span, if it named one, and the
/// submission's own span when it is stored with the job.
pub(crate) struct Submission {
    /// The submitter's span, from a valid incoming `traceparent`.
    pub(crate) parent: Option<TraceContext>,
    /// The submission's span, stored in the job's headers; `None` when the
    /// job's trace is derived from its id (see [`TraceContext::of_job`]).
    stored: Option<TraceContext>,
}

impl Submission {
    /// Reads the trace the job's `headers` name or, failing that, the one
    /// the submission request's `submitted` headers name (an envelope's
    /// inner headers are the client's choice; its HTTP headers are its
    /// tracing library's). With one, writes the submission's own span in
    /// `headers` in its place; without, removes a malformed one, and the
    /// job's trace will be derived from its id. A `tracestate` travels with
    /// the `traceparent` it came with, and is dropped with a malformed one.
    pub(crate) fn stamp(headers: &mut HeaderMap, submitted: &HeaderMap) -> Self {
        let parent = TraceContext::from_headers(headers).or_else(|| {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
            let theirs = TraceContext::from_headers(submitted)?;
            for state in submitted.get_all(TRACESTATE) {
                headers.append(TRACESTATE, state.clone());
            }
            Some(theirs)
        });
        let stored = parent.as_ref().map(TraceContext::child);
        if let Some(context) = &stored {
            context.set_on(headers);
        }
        Submission { parent, stored }
    }

    /// The submission's span, once the store has named the job.
    pub(crate) fn context(&self, id: JobId) -> TraceContext {
        self.stored.unwrap_or_else(|| TraceContext::of_job(id))
    }
}

/// One call made for a job (an attempt, or a webhook delivery): a child of
/// the job's submission span.
pub(crate) struct Call {
    pub(crate) context: TraceContext,
    /// The submission's span.
    pub(crate) parent: TraceContext,
}

impl Call {
    /// A new call for the job `id`, stored with `headers`.
    pub(crate) fn of(headers: &HeaderMap, id: JobId) -> Self {
        let parent = TraceContext::of_stored(headers, id);
        Call {
            context: parent.child(),
            parent,
        }
    }
}

/// The parent's span id as a span field: empty when there is none.
pub(crate) fn parent_span_id(parent: Option<&TraceContext>) -> String {
    parent.map(|p| p.span_id().to_string()).unwrap_or_default()
}

/// An info span of a job's trace, with the fields that join its logs, on
/// this replica or another: `job_id`, `trace_id`, `span_id` (this span's,
/// as sent on in `traceparent`) and `parent_span_id`; more fields may follow.
///
/// The fields `sampled`, `status_code`, `outcome` and `otel.status_code`
/// are declared for the OTLP exporter (feature `otlp`), which records them
/// ([`note_outcome`], [`note_status_code`]); without the feature they stay
/// empty, and an empty field is neither shown nor paid for.
macro_rules! job_span {
    ($name:literal, $job_id:expr, $context:expr, $parent:expr $(, $($field:tt)*)?) => {{
        let span = tracing::info_span!(
            $name,
            job_id = $job_id,
            trace_id = %$context.trace_id(),
            span_id = %$context.span_id(),
            parent_span_id = $crate::trace::parent_span_id($parent),
            sampled = tracing::field::Empty,
            status_code = tracing::field::Empty,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            $($($field)*)?
        );
        $crate::trace::note_sampled(&span, &$context);
        span
    }};
}
pub(crate) use job_span;

/// Marks `span` as not to be exported when its trace is not sampled
/// (feature `otlp`; nothing without it).
pub(crate) fn note_sampled(span: &tracing::Span, context: &TraceContext) {
    #[cfg(feature = "otlp")]
    if !context.sampled() {
        span.record("sampled", false);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, context);
}

/// Records how the current job span's call ended (feature `otlp`): its
/// `outcome`, and an error status unless `ok`.
pub(crate) fn note_outcome(outcome: &str, ok: bool) {
    #[cfg(feature = "otlp")]
    {
        let span = tracing::Span::current();
        span.record("outcome", outcome);
        if !ok {
            span.record("otel.status_code", "ERROR");
        }
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (outcome, ok);
}

/// Records the HTTP status the current job span's call was answered with
/// (feature `otlp`).
pub(crate) fn note_status_code(code: u16) {
    #[cfg(feature = "otlp")]
    tracing::Span::current().record("status_code", code);
    #[cfg(not(feature = "otlp"))]
    let _ = code;
}

struct Hex<const N: usize>([u8; N]);

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 32];
        let out = &mut out[..2 * N];
        hex_to(&self.0, out);
        f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
    }
}

/// Lowercase hex of `bytes` into `out`, two digits a byte.
fn hex_to(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// All zeros is the one invalid id: make the last bit 1 (about 2^-64 odds).
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

/// SplitMix64's finalizer: a bijection on 64 bits that spreads every input bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

    /// Headers with a `traceparent` and a `tracestate`.
    fn traced(traceparent: &'static str, tracestate: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(traceparent));
        headers.insert(TRACESTATE, HeaderValue::from_static(tracestate));
        headers
    }

    #[test]
    fn a_submission_continues_a_valid_trace_and_replaces_a_bad_one() {
        let id: JobId = "0123456789abcdef".parse().unwrap();
        let mut headers = traced(VALID, "vendor=1");
        let s = Submission::stamp(&mut headers, &HeaderMap::new());
        let parent = s.parent.unwrap();
        assert_eq!(parent.to_string(), VALID);
        assert_eq!(s.context(id).trace_id, parent.trace_id);
        assert_ne!(s.context(id).span_id, parent.span_id);
        assert_eq!(TraceContext::from_headers(&headers), Some(s.context(id)));
        assert_eq!(headers[TRACESTATE], "vendor=1", "kept with its trace");

        let mut headers = traced("not a trace", "vendor=1");
        let s = Submission::stamp(&mut headers, &HeaderMap::new());
        assert!(s.parent.is_none());
        assert!(headers.is_empty(), "nothing stored: {headers:?}");
        assert_eq!(s.context(id), TraceContext::of_job(id));
    }

    #[test]
    fn without_a_trace_of_its_own_a_job_continues_the_submission_requests() {
        let id: JobId = "0123456789abcdef".parse().unwrap();
        let submitted = traced(VALID, "vendor=2");
        let mut headers = HeaderMap::new();
        let s = Submission::stamp(&mut headers, &submitted);
        assert_eq!(s.parent.unwrap().to_string(), VALID);
        assert_eq!(s.context(id).trace_id, s.parent.unwrap().trace_id);
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
    fn a_job_without_a_trace_derives_one_from_its_id_the_same_everywhere() {
        let a: JobId = "0123456789abcdef".parse().unwrap();
        let b: JobId = "0123456789abcdeg".parse().unwrap();
        let (ta, tb) = (TraceContext::of_job(a), TraceContext::of_job(b));
        assert_eq!(ta, TraceContext::of_job(a), "deterministic");
        assert_ne!(
            ta.trace_id, tb.trace_id,
            "one character apart, other traces"
        );
        assert_ne!(ta.span_id, tb.span_id);
        // A valid traceparent, sampled, that parses back to itself.
        assert_eq!(parse(&ta.to_string()), Some(ta));
        assert!(ta.to_string().ends_with("-01"));
        // Pinned, so that replicas of other versions derive the same trace.
        assert_eq!(
            ta.to_string(),
            "00-39f2a7a0701fc21178e5fd3ee69ecd86-8772053b1617af10-01"
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(TraceContext::of_job(JobId::random()).trace_id));
        }
    }

    #[test]
    fn each_call_is_a_new_child_of_the_submission_span() {
        let id = JobId::random();
        let mut headers = HeaderMap::new();
        let stored = Submission::stamp(&mut headers, &HeaderMap::new()).context(id);
        let (a, b) = (Call::of(&headers, id), Call::of(&headers, id));
        assert_eq!(a.parent, stored);
        assert_eq!(a.context.trace_id, stored.trace_id);
        assert_eq!(b.context.trace_id, stored.trace_id);
        assert_ne!(a.context.span_id, b.context.span_id);
        assert_ne!(a.context.span_id, stored.span_id);
    }
}
