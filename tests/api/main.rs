//! The native API over real TCP on 127.0.0.1:0, with a real client.

mod bad_input;
mod cancel;
mod services;
#[allow(dead_code)]
mod support;
mod vessl;
