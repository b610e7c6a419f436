//! How a worker pool (and the webhook loop beside it) is told to stop.

use std::time::Duration;

use tokio::sync::watch;

/// What the pool is told to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    /// Stop claiming; in-flight calls get `grace` to finish, then go back to the queue.
    Stop {
        grace: Duration,
    },
}

/// Resolves with the grace period once the pool is told to stop (or every
/// handle to it is gone, which takes the default grace).
pub(crate) async fn stopped(
    control: &mut watch::Receiver<Control>,
    default_grace: Duration,
) -> Duration {
    match control.wait_for(|c| *c != Control::Run).await {
        Ok(c) => match *c {
            Control::Stop { grace } => grace,
            Control::Run => default_grace,
        },
        Err(_) => default_grace,
    }
}
