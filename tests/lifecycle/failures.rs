//! Which failures spend an attempt and which do not, one case each, with
//! fake inner services on the paused clock (the README's table; the same
//! cases over real TCP against `Upstream` are in `tests/api/services.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tower_defer::job::{ErrorCode, MAX_LAPSES};

use super::*;
use tower_defer_testkit::inproc::*;

/// A body that yields one chunk, then fails: the upstream cut it mid-way.
struct CutBody(bool);

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ))));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"par")))))
    }
}

/// An inner service whose first `failing` calls end as `fail` makes them,
/// then answers 200; it records every call.
fn failing_then_ok<B>(
    failing: usize,
    calls: Calls,
    fail: impl Fn() -> Result<Response<B>, io::Error> + Clone + Send + Sync + 'static,
    ok: impl Fn() -> Response<B> + Clone + Send + Sync + 'static,
) -> impl tower_defer::InnerService<ResponseBody = B, BodyError = B::Error, Error = io::Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_defer::BoxError>,
{
    tower::service_fn(move |req: Request<Body>| {
        let (calls, fail, ok) = (calls.clone(), fail.clone(), ok.clone());
        async move {
            calls.record(&body_bytes(req).await);
            if calls.len() <= failing {
                fail()
            } else {
                Ok(ok())
            }
        }
    })
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer")
}

#[tokio::test(start_paused = true)]
async fn a_call_reset_before_its_answer_spends_an_attempt() {
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new()).layer(failing_then_ok(
        usize::MAX,
        calls.clone(),
        || Err(reset()),
        || json_response(200, json!({})),
    ));
    let doc = finished(&app, &submit(&app, json!({"data": 1})).await).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["attempts"], 3, "every reset spent one");
    assert_eq!(doc["error"]["code"], "upstream_error");
    assert_eq!(doc["error"]["message"], "connection reset by peer");
    assert_eq!(
        gaps(&calls.times()),
        [1_000, 2_000],
        "the attempts' backoff"
    );

    // Once it answers, the job succeeds with the attempts it spent.
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new()).layer(failing_then_ok(
        1,
        calls.clone(),
        || Err(reset()),
        || json_response(200, json!({})),
    ));
    let doc = finished(&app, &submit(&app, json!({"data": 1})).await).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["attempts"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_cut_mid_way_spends_an_attempt_and_is_retried() {
    let cut = || {
        let mut r = Response::new(CutBody(false));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new()).layer(failing_then_ok(
        1,
        calls.clone(),
        move || Ok(cut()),
        cut,
    ));
    let id = submit(
        &app,
        json!({"data": 1, "inference_retry_config": {"max_attempts": 2}}),
    )
    .await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["attempts"], 2);
    assert_eq!(doc["error"]["code"], "response_body_error");
    assert_eq!(
        doc["error"]["message"],
        "reading the response body failed: connection reset by peer"
    );
    assert_eq!(gaps(&calls.times()), [1_000]);
}

#[tokio::test(start_paused = true)]
async fn refusals_spend_no_attempt_until_the_queue_deadline() {
    let calls = Calls::default();
    let app = DeferLayer::new(MemoryStore::new()).layer(failing_then_ok(
        usize::MAX,
        calls.clone(),
        || Err(refused()),
        || json_response(200, json!({})),
    ));
    let id = submit(&app, json!({"data": 1, "max_time_in_queue_seconds": 30})).await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "expired", "{doc}");
    assert_eq!(doc["attempts"], 0);
    assert_eq!(doc["error"]["code"], "queue_timeout");
    assert!(calls.len() >= 5, "it kept trying: {} calls", calls.len());
}

#[tokio::test(start_paused = true)]
async fn other_statuses_are_final_at_the_first_attempt() {
    for status in [400, 404, 422, 501] {
        let calls = Calls::default();
        let app = DeferLayer::new(MemoryStore::new()).layer(failing_then_ok(
            usize::MAX,
            calls.clone(),
            move || Ok(json_response(status, json!({"status": status}))),
            || json_response(200, json!({})),
        ));
        let doc = finished(&app, &submit(&app, json!({"data": 1})).await).await;
        assert_eq!(doc["status"], "failed", "{doc}");
        assert_eq!(
            (doc["attempts"].clone(), doc["status_code"].clone()),
            (json!(1), json!(status))
        );
        assert_eq!(calls.len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_status_document_counts_lapses_and_the_fifth_abandons_the_job() {
    let store = MemoryStore::new();
    // The workers are never run: this test is the worker that keeps dying.
    let (app, _worker) = DeferLayer::new(store.clone()).pair(recording(Calls::default(), SECOND));
    let id = submit(
        &app,
        json!({"data": 1, "inference_retry_config": {"max_attempts": 1}}),
    )
    .await;
    for lapse in 1..=MAX_LAPSES {
        store.claim(SECOND, None).await.unwrap().unwrap();
        tokio::time::advance(2 * SECOND).await;
        store.sweep().await.unwrap();
        let doc = status(&app, &id).await;
        assert_eq!(doc["lapses"], lapse, "{doc}");
        assert_eq!(doc["attempts"], 0, "a lapse spends no attempt: {doc}");
        if lapse < MAX_LAPSES {
            assert_eq!(doc["status"], "queued", "{doc}");
            assert_eq!(doc["error"]["code"], "lease_expired");
        }
    }
    let doc = status(&app, &id).await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["error"]["code"], ErrorCode::Abandoned.as_str());
    assert_eq!(
        doc["error"]["message"],
        "abandoned by its workers: their leases lapsed 5 times (it may be crashing them)"
    );
    let output = call(&app, get(&format!("/async/{id}/output"))).await.json();
    assert_eq!(output["status"], "failed", "{output}");
}

#[tokio::test(start_paused = true)]
async fn the_jobs_waiting_for_the_upstream_run_as_soon_as_it_answers_again() {
    // Down for 10 s: by then every job backs off for up to 10 s more.
    let up_at = Instant::now() + Duration::from_secs(10);
    let inner = tower::service_fn(move |_req: Request<Body>| async move {
        if Instant::now() < up_at {
            return Err(refused());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(json_response(200, json!({})))
    });
    let app = DeferLayer::new(MemoryStore::new()).layer(inner);
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(submit(&app, json!({"data": n})).await);
    }
    let mut last = 0;
    for id in &ids {
        let doc = finished(&app, id).await;
        assert_eq!(
            (doc["status"].clone(), doc["attempts"].clone()),
            (json!("succeeded"), json!(1))
        );
        last = last.max(ms(&doc["completed_at"]));
    }
    let first = ms(&finished(&app, &ids[0]).await["created_at"]);
    // A job's backoff when the upstream came back was up to 10 s (without
    // waking, the backlog took nearly that long to clear). Woken, it is done within the
    // time to the first retry after the outage plus its run.
    let after_outage = last - first - 10_000;
    assert!(
        after_outage < 1_000,
        "the backlog took {after_outage} ms to clear"
    );
}

/// An OpenAI-style embeddings service whose `poll_ready` fails for the
/// readiness checks numbered in `failing` (counted across its clones).
#[derive(Clone)]
struct NotReadyAtTimes {
    checks: Arc<AtomicUsize>,
    failing: std::ops::RangeInclusive<usize>,
}

impl tower::Service<Request<Body>> for NotReadyAtTimes {
    type Response = Response<Body>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst) + 1;
        if self.failing.contains(&n) {
            return Poll::Ready(Err(io::Error::other("overloaded")));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        Box::pin(async {
            Ok(json_response(
                200,
                json!({"data": [{"index": 0, "embedding": [1]}]}),
            ))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_service_is_not_ready_goes_back_to_the_queue_with_no_lapse() {
    // Check 1 comes before the claim; check 2, after the batch gathered,
    // fails; so do the next six, more than the lapses a job may have.
    let checks = Arc::new(AtomicUsize::new(0));
    let inner = NotReadyAtTimes {
        checks: checks.clone(),
        failing: 2..=(MAX_LAPSES as usize + 3),
    };
    let route =
        tower_defer::batch::Batch::post("/v1/embeddings").max_wait(Duration::from_millis(10));
    let app = DeferLayer::new(MemoryStore::new())
        .concurrency(1)
        .batch(route)
        .layer(inner);
    let started = Instant::now();
    let id = submit(
        &app,
        json!({"path": "/v1/embeddings", "data": {"input": "x"}}),
    )
    .await;
    let doc = finished(&app, &id).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    // Nothing was sent while it was not ready: no attempt spent but the one
    // that ran, and no lapse (a lapse would wait out the 30 s lease).
    assert_eq!(doc["attempts"], 1, "{doc}");
    assert!(doc.get("lapses").is_none(), "{doc}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(checks.load(Ordering::SeqCst) > MAX_LAPSES as usize + 3);
}
