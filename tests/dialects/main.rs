//! The dialects: each reference document's requests replayed, every field
//! and status code it names asserted.

mod baseten;
mod bifrost;
mod native;
mod openapi;
