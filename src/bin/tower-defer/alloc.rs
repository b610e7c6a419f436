//! The proxy's memory allocator: jemalloc, with its background purging on.
//!
//! The allocator is the binary's choice, never the library's: `tower-defer`
//! allocates through whatever `#[global_allocator]` the program sets.
//!
//! Why not the system allocator: with glibc malloc, a proxy that held a burst
//! of results keeps most of that memory after the results expire. The store
//! frees every job (the soak's live heap falls from 310 MiB to 3.4 MiB), but
//! glibc keeps the freed pages in its arenas for reuse, so RSS stays near its
//! peak (370 MiB after a 550 MiB peak, in the soak before this allocator).
//! jemalloc's background thread returns dirty pages to the OS after a decay
//! (`dirty_decay_ms`, 10 s by default), so RSS follows the live heap down.
//! The `examples/soak.rs` run measures this very allocator (it includes
//! this file).
//!
//! Tuning goes through the environment, as jemalloc reads it at start:
//! `_RJEM_MALLOC_CONF=dirty_decay_ms:1000` (the tikv build's prefixed name).

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
