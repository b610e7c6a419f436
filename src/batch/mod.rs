//! Queue-time batching: many queued jobs, one call to the inner service.
//!
//! Most model servers run one request at a time but run a batch of many
//! inputs almost as fast as one. A queue in front of the model holds exactly
//! what is needed to batch, so the workers take compatible queued jobs
//! together, send one request whose input array is the members' inputs one
//! after another, and split the answer back into one result per job.
//!
//! A [`Batch`] names a route (method and path) and says where its JSON body
//! keeps the inputs ([`input`](Batch::input), a JSON pointer such as
//! `/input` for OpenAI-style embeddings or `/inputs` for Text Embeddings
//! Inference) and where the answer keeps one item per input
//! ([`output`](Batch::output): `/data` for OpenAI, whose items carry an
//! `index`; `/embeddings`; or `""` for a top-level array).
//!
//! # What may merge
//!
//! Each submission to a batching route gets a compatibility key when it is
//! stored ([`BatchTag`]): a digest of its method, path and query, its
//! headers (less the ones that differ per request, such as `traceparent`,
//! `idempotency-key` or `user-agent`) and its body with the input field
//! taken out, canonicalised (object keys sorted). Jobs share a call only
//! when their keys are equal: two jobs naming different `model`s never do.
//! A body that is not JSON, or has no input at the pointer, or an empty
//! input array, gets no key and runs alone, as sent.
//!
//! # What each job gets back
//!
//! Each job keeps its own id, status, owner, priority, deadline, retries,
//! webhook and result. Its result is the batch's answer with the item array
//! cut down to its own items (`index` fields renumbered from 0), so it has
//! the shape the answer alone would have had. A job whose input was a single
//! value gets an array of one item back, as OpenAI and TEI answer a single
//! input. Fields beside the array (OpenAI's `usage`) describe the whole
//! batch. An answer whose array does not hold one item per input fails every
//! member with [`ErrorCode::BatchMismatch`](crate::job::ErrorCode::BatchMismatch).
//!
//! ```
//! use std::time::Duration;
//! use tower_defer::batch::Batch;
//!
//! let embeddings = Batch::post("/v1/embeddings")
//!     .input("/input")
//!     .output("/data")
//!     .max_items(32)
//!     .max_bytes(1 << 20)
//!     .max_wait(Duration::from_millis(10));
//! assert_eq!(embeddings.path(), "/v1/embeddings");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::job::{BatchTag, StoredRequest};

mod spec;

pub use spec::ParseBatchError;

/// Headers that differ from one submission to the next without changing
/// what the model computes: they never keep two jobs apart (the batch's
/// call sends its first member's).
const PER_REQUEST_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "baggage",
    "idempotency-key",
    "x-request-id",
    "x-correlation-id",
    "user-agent",
    "date",
    "content-length",
];

/// How one route batches: which requests, how to merge their inputs, how to
/// split the answer, and how large a batch and how long a wait.
/// See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    method: Method,
    path: String,
    input: String,
    output: String,
    max_items: u32,
    max_bytes: u64,
    max_wait: Duration,
}

impl Batch {
    /// Batches `method path` (the path without query), with the OpenAI
    /// embeddings layout (`/input` in, `/data` out), at most 32 items and
    /// 1 MiB of request bodies a batch, and a 10 ms wait for company.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Batch {
            method,
            path: path.into(),
            input: "/input".into(),
            output: "/data".into(),
            max_items: 32,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(10),
        }
    }

    /// [`Batch::new`] for `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Batch::new(Method::POST, path)
    }

    /// Where the request body keeps its input: a JSON pointer to a single
    /// value or an array of them (`/input`, `/inputs`, `/texts`).
    pub fn input(mut self, pointer: impl Into<String>) -> Self {
        self.input = pointer.into();
        self
    }

    /// Where the answer keeps one item per input, in order: a JSON pointer
    /// to an array (`/data`, `/embeddings`), `""` for a top-level array.
    pub fn output(mut self, pointer: impl Into<String>) -> Self {
        self.output = pointer.into();
        self
    }

    /// The most inputs one call carries (at least 1).
    pub fn max_items(mut self, n: u32) -> Self {
        self.max_items = n.max(1);
        self
    }

    /// The most request-body bytes one call's members add up to.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// The longest a job waits, once a worker holds it, for company. A job
    /// that waited this long in the queue already waits no more.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// The method it batches.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path it batches.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The JSON pointer to the input.
    pub fn input_pointer(&self) -> &str {
        &self.input
    }

    /// The JSON pointer to the answer's items.
    pub fn output_pointer(&self) -> &str {
        &self.output
    }

    /// The most inputs a call carries.
    pub fn items_limit(&self) -> u32 {
        self.max_items
    }

    /// The most request-body bytes a call's members add up to.
    pub fn bytes_limit(&self) -> u64 {
        self.max_bytes
    }

    /// The longest wait for company.
    pub fn wait_limit(&self) -> Duration {
        self.max_wait
    }

    /// Whether this route batches `method` on `path_and_query`.
    pub(crate) fn matches(&self, method: &Method, path_and_query: &str) -> bool {
        let path = path_and_query.split('?').next().unwrap_or("");
        *method == self.method && path == self.path
    }

    /// The job's compatibility key and item count, or `None` when the body
    /// cannot batch (not JSON, no input at the pointer, an empty array).
    pub(crate) fn tag(&self, request: &StoredRequest) -> Option<BatchTag> {
        let mut body: Value = serde_json::from_slice(&request.body).ok()?;
        let input = take(&mut body, &self.input)?;
        let items = match &input {
            Value::Array(a) if a.is_empty() => return None,
            Value::Array(a) => u32::try_from(a.len()).ok()?,
            _ => 1,
        };
        let mut digest = Sha256::new();
        let mut part = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        part(request.method.as_str().as_bytes());
        part(request.path_and_query.as_str().as_bytes());
        part(self.input.as_bytes());
        for (name, value) in relevant_headers(&request.headers) {
            part(name.as_bytes());
            part(value);
        }
        let mut canonical = Vec::with_capacity(request.body.len());
        write_canonical(&body, &mut canonical);
        part(&canonical);
        let key: String = digest.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(BatchTag {
            key: Arc::from(key),
            items,
        })
    }

    /// The body of one call for `bodies`, the members' bodies in order
    /// (each tagged by [`tag`](Self::tag) with one key): the first
    /// member's body with its input replaced by every member's inputs, one
    /// after another; and each member's shape, for [`split`](Self::split).
    pub(crate) fn merge(&self, bodies: &[&[u8]]) -> Result<(Bytes, Vec<Shape>), BatchError> {
        let mut merged: Option<Value> = None;
        let mut inputs = Vec::new();
        let mut shapes = Vec::with_capacity(bodies.len());
        for body in bodies {
            let mut value: Value = serde_json::from_slice(body)
                .map_err(|e| BatchError::new(format!("a member's body is not JSON: {e}")))?;
            let input = take(&mut value, &self.input)
                .ok_or_else(|| BatchError::new("a member's body has no input"))?;
            match input {
                Value::Array(items) => {
                    shapes.push(Shape::Many(items.len()));
                    inputs.extend(items);
                }
                single => {
                    shapes.push(Shape::Single);
                    inputs.push(single);
                }
            }
            merged.get_or_insert(value);
        }
        let mut merged = merged.ok_or_else(|| BatchError::new("an empty batch"))?;
        put(&mut merged, &self.input, Value::Array(inputs))
            .ok_or_else(|| BatchError::new("the input pointer has no parent object"))?;
        let bytes = serde_json::to_vec(&merged).map_err(|e| BatchError::new(e.to_string()))?;
        Ok((Bytes::from(bytes), shapes))
    }

    /// Splits a batch's answer into one body per member, in the order of
    /// `shapes`. The answer's item array must hold one item per input; when
    /// every item has a whole-number `index`, items are ordered by it, and
    /// each member's are numbered again from 0.
    pub(crate) fn split(&self, answer: &[u8], shapes: &[Shape]) -> Result<Vec<Bytes>, BatchError> {
        let mut answer: Value = serde_json::from_slice(answer)
            .map_err(|e| BatchError::new(format!("the answer is not JSON: {e}")))?;
        let where_ = if self.output.is_empty() {
            "the answer"
        } else {
            self.output.as_str()
        };
        let items = match answer.pointer_mut(&self.output) {
            Some(Value::Array(items)) => std::mem::take(items),
            Some(_) => return Err(BatchError::new(format!("{where_} is not an array"))),
            None => return Err(BatchError::new(format!("the answer has no {where_}"))),
        };
        let inputs: usize = shapes.iter().map(Shape::len).sum();
        if items.len() != inputs {
            return Err(BatchError::new(format!(
                "{where_} holds {} items for {inputs} inputs",
                items.len()
            )));
        }
        let mut items = items;
        let indexed: Option<Vec<u64>> = items.iter().map(index_of).collect();
        if let Some(indexes) = indexed {
            let mut sorted = indexes.clone();
            sorted.sort_unstable();
            if sorted.iter().enumerate().any(|(i, &n)| n != i as u64) {
                return Err(BatchError::new(format!(
                    "the items' indexes in {where_} are not 0 to {}",
                    inputs - 1
                )));
            }
            let mut paired: Vec<(u64, Value)> = indexes.into_iter().zip(items).collect();
            paired.sort_by_key(|(i, _)| *i);
            items = paired.into_iter().map(|(_, v)| v).collect();
        }
        let mut items = items.into_iter();
        let mut out = Vec::with_capacity(shapes.len());
        for shape in shapes {
            let mut mine: Vec<Value> = items.by_ref().take(shape.len()).collect();
            for (i, item) in mine.iter_mut().enumerate() {
                if let Some(index) = item.get_mut("index") {
                    *index = Value::from(i);
                }
            }
            let mut body = answer.clone();
            if let Some(slot) = body.pointer_mut(&self.output) {
                *slot = Value::Array(mine);
            }
            let bytes = serde_json::to_vec(&body).map_err(|e| BatchError::new(e.to_string()))?;
            out.push(Bytes::from(bytes));
        }
        Ok(out)
    }
}

/// How many inputs a member brought, and in what form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A single value.
    Single,
    /// An array of this many.
    Many(usize),
}

impl Shape {
    fn len(&self) -> usize {
        match self {
            Shape::Single => 1,
            Shape::Many(n) => *n,
        }
    }
}

/// Why a batch could not be merged or its answer split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchError(String);

impl BatchError {
    fn new(message: impl Into<String>) -> Self {
        BatchError(message.into())
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The route among `routes` that batches this request, if any.
pub(crate) fn route_for<'a>(routes: &'a [Batch], request: &StoredRequest) -> Option<&'a Batch> {
    routes
        .iter()
        .find(|b| b.matches(&request.method, request.path_and_query.as_str()))
}

fn index_of(item: &Value) -> Option<u64> {
    item.get("index").and_then(Value::as_u64)
}

/// The headers that keep jobs apart, by name then value, lowercase names.
fn relevant_headers(headers: &HeaderMap) -> Vec<(&str, &[u8])> {
    let mut out: Vec<(&str, &[u8])> = headers
        .iter()
        .filter(|(name, _)| !PER_REQUEST_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    out.sort_unstable();
    out
}

/// The parent of the value at `pointer` and the last token, unescaped.
fn parent_and_key(pointer: &str) -> Option<(&str, String)> {
    let at = pointer.rfind('/')?;
    let key = pointer[at + 1..].replace("~1", "/").replace("~0", "~");
    Some((&pointer[..at], key))
}

/// Takes the value at `pointer` out of `value`.
fn take(value: &mut Value, pointer: &str) -> Option<Value> {
    let (parent, key) = parent_and_key(pointer)?;
    match value.pointer_mut(parent)? {
        Value::Object(map) => map.remove(&key),
        Value::Array(items) => {
            let i: usize = key.parse().ok()?;
            (i < items.len()).then(|| items.remove(i))
        }
        _ => None,
    }
}

/// Puts `new` at `pointer` in `value` (whose parent must be an object).
fn put(value: &mut Value, pointer: &str, new: Value) -> Option<()> {
    let (parent, key) = parent_and_key(pointer)?;
    match value.pointer_mut(parent)? {
        Value::Object(map) => {
            map.insert(key, new);
            Some(())
        }
        _ => None,
    }
}

/// JSON with every object's keys sorted, whatever order the map keeps:
/// equal documents write equal bytes.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

#[cfg(test)]
mod tests;
