//! Webhooks: a signed POST to the client's URL when its job ends
//! (feature `webhooks`; https receivers with feature `tls`).
//!
//! A submission names a receiver with the envelope field `webhook`, the
//! `Defer-Webhook` header of a `Prefer: respond-async` request, or Baseten's
//! `webhook_endpoint`. When the job ends (succeeded, failed, expired or
//! canceled) the layer POSTs an event to it:
//!
//! ```json
//! {"type": "job.succeeded", "id": "…", "status": "succeeded", "status_code": 200,
//!  "created_at": "…", "completed_at": "…", "output": {"text": "Hello!"}, "error": null}
//! ```
//!
//! `output` is the inner response body when it is JSON and at most
//! [`Webhooks::output_cap`] bytes, otherwise the URL of `{prefix}/{id}/result`
//! (absolute with [`Webhooks::public_url`]); `null` when the service never
//! answered. It is signed per the [Standard Webhooks] specification:
//! `webhook-id` (`msg_<job id>`, the same on every attempt), `webhook-timestamp`
//! (this attempt's Unix time) and `webhook-signature: v1,<base64>` with one
//! signature per [secret](Webhooks::secret), so secrets rotate without a gap.
//! Jobs submitted through the Baseten dialect get Baseten's body and
//! `X-BASETEN-SIGNATURE` instead.
//!
//! A receiver written in Rust checks those headers with [`Verifier`]
//! (constant-time comparison, a window on the timestamp against replays, any
//! of several secrets while one rotates); any Standard Webhooks library
//! does the same in other languages.
//!
//! # Delivery
//!
//! - Any `2xx` is delivered. `429`, `5xx`, no connection and no answer within
//!   [`attempt_timeout`](Webhooks::attempt_timeout) are tried again on the
//!   [schedule](Webhooks::schedule), waiting at least what `Retry-After` asks.
//!   Any other answer, redirects included (they are never followed), fails
//!   the delivery for good.
//! - The job records it, and its status document shows it:
//!   `"webhook": {"status": "pending" | "succeeded" | "failed", "attempts",
//!   "last_status_code", "last_error"}`. A job is kept while its delivery is
//!   pending; its output stays retrievable whatever the webhook does.
//! - Deliveries run beside the worker pool with their own concurrency, never
//!   in a worker's slot. They are leased in the store like jobs: a process
//!   that stops mid-attempt loses nothing, the attempt is made again.
//! - Receivers can be restricted to an [allowlist](Webhooks::allow_hosts),
//!   and private and loopback addresses are
//!   [refused](Webhooks::deny_private_addresses) unless allowed.
//!
//! ```
//! # #[cfg(feature = "webhooks")] mod example {
//! use tower::Layer;
//! use tower_defer::{Body, DeferLayer, MemoryStore, Webhooks};
//!
//! # pub async fn main() {
//! let model = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("{}")))
//! });
//! let app = DeferLayer::new(MemoryStore::new())
//!     .webhooks(Webhooks::new().secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"))
//!     .layer(model);
//! # let _ = app;
//! # } }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! #     #[cfg(feature = "webhooks")] example::main().await;
//! # }
//! ```
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

mod baseten;
#[cfg(feature = "webhooks")]
mod client;
#[cfg(feature = "webhooks")]
mod config;
#[cfg(feature = "webhooks")]
mod deliver;
#[cfg(feature = "webhooks")]
mod event;
#[cfg(feature = "webhooks")]
mod sign;
#[cfg(feature = "webhooks")]
mod target;
#[cfg(feature = "webhooks")]
mod verify;

pub(crate) use baseten::baseten_errors;
#[cfg(feature = "webhooks")]
pub use config::Webhooks;
#[cfg(feature = "webhooks")]
pub(crate) use deliver::{deliver_loop, About};
#[cfg(feature = "webhooks")]
pub use sign::{baseten_signature, InvalidSecret, Secret};
#[cfg(feature = "webhooks")]
pub use verify::{Verifier, VerifyError};
