//! The store's I/O thread, and running an operation on it within the
//! timeout.
//!
//! The store does its Redis I/O on a thread of its own (a current-thread
//! tokio runtime): its connection, reconnects and timeouts do not depend on
//! the caller's runtime or its clock. An operation is handed to that thread
//! and its answer awaited; it fails as unavailable when it takes longer
//! than the store's timeout or when the thread is gone.

use std::future::Future;
use std::time::Duration;

use ::redis::RedisError;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Runs `fut` on the store's I/O thread, bounded by `timeout`.
pub(super) async fn exec<T, F>(
    io: &Handle,
    hold_clock: bool,
    timeout: Duration,
    what: &'static str,
    fut: F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    let task = bounded(timeout, what, fut);
    // The task runs to its end even if the caller goes away, so a script
    // that was sent is never half-observed.
    let joined = if hold_clock {
        let io = io.clone();
        tokio::task::spawn_blocking(move || {
            let task = io.spawn(task);
            io.block_on(task)
        })
        .await
        .unwrap_or_else(|e| {
            Ok(Err(StoreError::unavailable(
                "redis: the I/O task failed",
                e,
            )))
        })
    } else {
        io.spawn(task).await
    };
    joined.map_err(io_gone)?
}

/// The store's I/O thread (or a task of it) has stopped: every call that
/// needs it fails so.
pub(super) fn io_gone(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::unavailable("redis: the store's I/O thread is gone", source)
}

/// `fut`, failing as unavailable after `timeout`.
pub(super) async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::unavailable(
                format!("redis: {what} timed out after {} ms", timeout.as_millis()),
                e,
            ))
        })
}

/// A failed Redis call as the store reports it.
pub(super) fn failed(what: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |e| StoreError::unavailable(format!("redis: {what} failed"), e)
}

/// The store's I/O thread: a current-thread runtime that runs the Redis
/// connection, the subscription and every operation's timeout. It stops when
/// the last clone of the store is dropped.
pub(super) struct IoThread(Option<oneshot::Sender<()>>);

impl IoThread {
    pub(super) fn start() -> std::io::Result<(Handle, IoThread)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tower-defer-redis".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok((handle, IoThread(Some(stop))))
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}
