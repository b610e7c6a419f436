use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

use super::*;

fn request(body: Value) -> StoredRequest {
    request_with(body, HeaderMap::new())
}

fn request_with(body: Value, headers: HeaderMap) -> StoredRequest {
    StoredRequest {
        method: Method::POST,
        path_and_query: PathAndQuery::from_static("/v1/embeddings"),
        headers,
        body: Bytes::from(serde_json::to_vec(&body).unwrap()),
    }
}

fn openai() -> Batch {
    Batch::post("/v1/embeddings")
}

fn key(batch: &Batch, body: Value) -> Option<Arc<str>> {
    batch.tag(&request(body)).map(|t| t.key)
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn jobs_differing_only_in_their_input_share_a_key() {
    let b = openai();
    let one = key(&b, json!({"model": "m", "input": "a"})).unwrap();
    let two = key(&b, json!({"input": ["b", "c"], "model": "m"})).unwrap();
    assert_eq!(one, two, "field order and the input's shape do not matter");
    assert_eq!(one.len(), 32);
}

#[test]
fn a_different_model_or_any_other_field_keeps_jobs_apart() {
    let b = openai();
    let base = key(&b, json!({"model": "m", "input": "a"}));
    assert_ne!(base, key(&b, json!({"model": "n", "input": "a"})));
    assert_ne!(
        base,
        key(&b, json!({"model": "m", "input": "a", "dimensions": 8}))
    );
    assert_ne!(
        base,
        key(&b, json!({"model": "m", "input": "a", "nested": {"x": 1}}))
    );
}

#[test]
fn nested_objects_compare_whatever_their_key_order() {
    let b = openai();
    let one = key(
        &b,
        json!({"input": "a", "o": {"x": 1, "y": [1, {"p": 1, "q": 2}]}}),
    );
    let two = key(
        &b,
        json!({"o": {"y": [1, {"q": 2, "p": 1}], "x": 1}, "input": "a"}),
    );
    assert_eq!(one, two);
}

#[test]
fn headers_count_except_the_ones_that_differ_per_request() {
    let b = openai();
    let mut plain = HeaderMap::new();
    plain.insert("content-type", HeaderValue::from_static("application/json"));
    let mut traced = plain.clone();
    traced.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    traced.insert("idempotency-key", HeaderValue::from_static("k1"));
    let mut other = plain.clone();
    other.insert("x-tenant", HeaderValue::from_static("acme"));
    let body = json!({"input": "a"});
    let tag = |h: &HeaderMap| b.tag(&request_with(body.clone(), h.clone())).unwrap().key;
    assert_eq!(tag(&plain), tag(&traced));
    assert_ne!(tag(&plain), tag(&other));
}

#[test]
fn the_path_and_query_are_part_of_the_key() {
    let b = openai();
    let mut r = request(json!({"input": "a"}));
    let plain = b.tag(&r).unwrap().key;
    r.path_and_query = PathAndQuery::from_static("/v1/embeddings?dims=8");
    assert_ne!(plain, b.tag(&r).unwrap().key);
}

#[test]
fn a_body_that_cannot_batch_gets_no_tag() {
    let b = openai();
    assert!(key(&b, json!({"model": "m"})).is_none(), "no input");
    assert!(key(&b, json!({"input": []})).is_none(), "an empty array");
    assert!(key(&b, json!(["a"])).is_none(), "not an object");
    let mut r = request(json!({}));
    r.body = Bytes::from_static(b"not json");
    assert!(b.tag(&r).is_none());
}

#[test]
fn the_item_count_is_one_for_a_single_value_and_the_length_of_an_array() {
    let b = openai();
    assert_eq!(b.tag(&request(json!({"input": "a"}))).unwrap().items, 1);
    assert_eq!(
        b.tag(&request(json!({"input": ["a", "b", "c"]})))
            .unwrap()
            .items,
        3
    );
}

#[test]
fn routes_match_on_method_and_path_not_query() {
    let b = openai();
    assert!(b.matches(&Method::POST, "/v1/embeddings"));
    assert!(b.matches(&Method::POST, "/v1/embeddings?x=1"));
    assert!(!b.matches(&Method::GET, "/v1/embeddings"));
    assert!(!b.matches(&Method::POST, "/v1/embeddings/more"));
}

#[test]
fn merge_concatenates_inputs_in_member_order_and_keeps_the_rest() {
    let b = openai();
    let bodies: Vec<Vec<u8>> = [
        json!({"model": "m", "input": "a"}),
        json!({"input": ["b", "c"], "model": "m"}),
        json!({"model": "m", "input": "d"}),
    ]
    .iter()
    .map(|v| serde_json::to_vec(v).unwrap())
    .collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let (merged, shapes) = b.merge(&refs).unwrap();
    assert_eq!(
        json_of(&merged),
        json!({"model": "m", "input": ["a", "b", "c", "d"]})
    );
    assert_eq!(shapes, [Shape::Single, Shape::Many(2), Shape::Single]);
}

#[test]
fn merge_reaches_a_nested_pointer() {
    let b = openai().input("/params/texts");
    let bodies = [
        serde_json::to_vec(&json!({"params": {"texts": ["a"]}})).unwrap(),
        serde_json::to_vec(&json!({"params": {"texts": "b"}})).unwrap(),
    ];
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let (merged, _) = b.merge(&refs).unwrap();
    assert_eq!(json_of(&merged), json!({"params": {"texts": ["a", "b"]}}));
}

#[test]
fn an_openai_answer_splits_by_index_and_renumbers_each_members_items() {
    let b = openai();
    // Out of order on purpose: the index decides.
    let answer = json!({
        "object": "list",
        "model": "m",
        "data": [
            {"object": "embedding", "index": 2, "embedding": [2.0]},
            {"object": "embedding", "index": 0, "embedding": [0.0]},
            {"object": "embedding", "index": 1, "embedding": [1.0]},
        ],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    });
    let parts = b
        .split(
            &serde_json::to_vec(&answer).unwrap(),
            &[Shape::Single, Shape::Many(2)],
        )
        .unwrap();
    let first = json_of(&parts[0]);
    assert_eq!(
        first["data"],
        json!([{"object": "embedding", "index": 0, "embedding": [0.0]}])
    );
    assert_eq!(first["model"], "m");
    let second = json_of(&parts[1]);
    assert_eq!(
        second["data"],
        json!([
            {"object": "embedding", "index": 0, "embedding": [1.0]},
            {"object": "embedding", "index": 1, "embedding": [2.0]},
        ])
    );
}

#[test]
fn a_top_level_array_answer_splits_in_order() {
    let b = openai().input("/inputs").output("");
    let answer = json!([[0.0], [1.0], [2.0]]);
    let parts = b
        .split(
            &serde_json::to_vec(&answer).unwrap(),
            &[Shape::Many(2), Shape::Single],
        )
        .unwrap();
    assert_eq!(json_of(&parts[0]), json!([[0.0], [1.0]]));
    assert_eq!(json_of(&parts[1]), json!([[2.0]]));
}

#[test]
fn an_embeddings_field_answer_splits_and_keeps_its_other_fields() {
    let b = openai().input("/texts").output("/embeddings");
    let answer = json!({"embeddings": [[0.0], [1.0]], "dim": 1});
    let parts = b
        .split(
            &serde_json::to_vec(&answer).unwrap(),
            &[Shape::Single, Shape::Single],
        )
        .unwrap();
    assert_eq!(json_of(&parts[0]), json!({"embeddings": [[0.0]], "dim": 1}));
    assert_eq!(json_of(&parts[1]), json!({"embeddings": [[1.0]], "dim": 1}));
}

#[test]
fn an_answer_whose_array_does_not_match_the_inputs_is_an_error() {
    let b = openai();
    let short = json!({"data": [{"index": 0, "embedding": []}]});
    let err = b
        .split(
            &serde_json::to_vec(&short).unwrap(),
            &[Shape::Single, Shape::Single],
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "/data holds 1 items for 2 inputs");
    let gap = json!({"data": [{"index": 0}, {"index": 2}]});
    let err = b
        .split(&serde_json::to_vec(&gap).unwrap(), &[Shape::Many(2)])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the items' indexes in /data are not 0 to 1"
    );
    let err = b.split(b"{\"data\": 3}", &[Shape::Single]).unwrap_err();
    assert_eq!(err.to_string(), "/data is not an array");
    let err = b.split(b"{}", &[Shape::Single]).unwrap_err();
    assert_eq!(err.to_string(), "the answer has no /data");
    let err = openai()
        .output("")
        .split(b"oops", &[Shape::Single])
        .unwrap_err();
    assert!(err.to_string().starts_with("the answer is not JSON"));
}

#[test]
fn the_one_line_form_parses_and_refuses_what_it_cannot_read() {
    let b: Batch = "post /v1/embeddings input=/input output=/data max=16 bytes=2048 wait=0.02s"
        .parse()
        .unwrap();
    assert_eq!(
        b,
        Batch::post("/v1/embeddings")
            .max_items(16)
            .max_bytes(2048)
            .max_wait(Duration::from_millis(20))
    );
    let defaults: Batch = "POST /embed".parse().unwrap();
    assert_eq!(defaults, Batch::post("/embed"));
    for bad in [
        "",
        "POST",
        "POST embed",
        "POST /embed max=0",
        "POST /embed wait=soon",
        "POST /embed input=inputs",
        "POST /embed input=",
        "POST /embed colour=red",
        "POST /embed max",
    ] {
        assert!(bad.parse::<Batch>().is_err(), "{bad:?} parsed");
    }
}
