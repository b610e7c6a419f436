//! Coalescing: calls of one kind that arrive while one is in flight are sent
//! to Redis together, in one script call, as soon as it returns.
//!
//! Redis runs one command at a time, and on a small host the fixed cost of a
//! round trip (reading the request, writing the answer, entering the script)
//! weighs as much as the script's own work. Sixteen workers that each claim a
//! job and each record a result would pay it thirty-two times; coalesced,
//! they pay it about twice. Submissions from many clients coalesce the same
//! way. Nothing waits on purpose: a call that finds the
//! line idle is sent at once, so a lone call costs what it did before, and a
//! batch only forms from calls that would otherwise queue behind each other.
//!
//! Each call still gets its own answer, in the order it was asked; a job a
//! batch claimed for a caller that has gone away lapses like any other lease
//! and runs again.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::super::StoreError;

/// One call waiting for its batch, with where its answer goes.
type Call<Req, Resp> = (Req, oneshot::Sender<Result<Resp, StoreError>>);

/// The sending end of one line of calls; its task sends them in batches and
/// stops when the last `Batcher` is dropped.
pub(super) struct Batcher<Req, Resp> {
    calls: mpsc::UnboundedSender<Call<Req, Resp>>,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Starts the line's task on `io`. `run` sends one batch (at most `max`
    /// calls) and answers each call of it, in order; an `Err` answers every
    /// call of the batch with that error.
    pub(super) fn start<F, Fut>(io: &Handle, max: usize, mut run: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<Resp, StoreError>>, StoreError>> + Send,
    {
        let (calls, mut queued) = mpsc::unbounded_channel::<Call<Req, Resp>>();
        io.spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while queued.recv_many(&mut batch, max).await > 0 {
                let (requests, answers): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                match run(requests).await {
                    Ok(results) => {
                        for (answer, result) in answers.into_iter().zip(results) {
                            let _ = answer.send(result);
                        }
                    }
                    Err(e) => {
                        for answer in answers {
                            let _ = answer.send(Err(copy(&e)));
                        }
                    }
                }
            }
        });
        Batcher { calls }
    }

    /// Queues one call and waits for its answer.
    pub(super) fn call(&self, request: Req) -> impl Future<Output = Result<Resp, StoreError>> {
        let (answer, answered) = oneshot::channel();
        let sent = self.calls.send((request, answer));
        async move {
            if sent.is_err() {
                return Err(gone());
            }
            answered.await.unwrap_or_else(|_| Err(gone()))
        }
    }
}

/// The same failure for each call of a batch (the source kept as its text).
fn copy(e: &StoreError) -> StoreError {
    StoreError {
        kind: e.kind,
        message: e.message.clone(),
        source: e.source.as_ref().map(|s| s.to_string().into()),
    }
}

fn gone() -> StoreError {
    super::io::io_gone("the batch task stopped")
}
